"""Golden outputs and the tolerance they earn, measured across LiteRT's kernels.

`golden_figures(bundle, x)` runs the golden input on cpu.tflite with the default (XNNPACK),
builtin and reference kernels; the reference kernels run in a child process.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from lucida.models import Bundle, load_bundle

GOLDEN_QUANTA = 3  # output codes a backend may round differently (golden tolerance)


def golden_figures(bundle: Bundle, golden_input: np.ndarray) -> dict:
    """The golden output of cpu.tflite (XNNPACK kernels) and the tolerance it earns.

    atol = the larger of GOLDEN_QUANTA output quanta carried through the decoding and twice the
    spread measured between LiteRT's default (XNNPACK) and other kernels on this input.
    Class maps: max_mismatch = the larger of 1% and twice the measured fraction that changed.
    The reference kernels run in a child process: LiteRT's abort the process on some models
    (e.g. a 1000-class int8 SOFTMAX), which must not take `lucida bundle` down with them.
    """
    from lucida.runtime.engine import KERNELS, Engine

    engine = Engine(bundle, device="cpu", num_threads=1)
    dec = engine.decoder
    raw = engine.raw_tile(golden_input)
    want = dec.golden_values(raw)
    spreads, failed = {}, {}
    for kernels in KERNELS:
        if kernels == "default":
            continue
        if kernels == "reference":
            got, why = _values_in_child(bundle.path, kernels)
        else:  # the optimized builtin kernels run in this process
            other = Engine(bundle, device="cpu", num_threads=1, kernels=kernels)
            got, why = dec.golden_values(other.raw_tile(golden_input)), ""
        if got is None:
            failed[kernels] = why
        elif dec.kind == "class_map":
            spreads[kernels] = float(np.mean(got != want))
        else:
            spreads[kernels] = float(np.max(np.abs(got - want))) if got.size else 0.0
    spread = max(spreads.values(), default=0.0)
    fig = {"output": np.asarray(want, np.float32), "spread": spreads, "failed": failed}
    if dec.kind == "class_map":
        fig["max_mismatch"] = round(max(0.01, 2 * spread), 6)
        fig["atol"] = 0.5
    else:
        quanta = dec.quanta_error(raw, GOLDEN_QUANTA)
        fig["quanta_error"] = quanta
        fig["atol"] = float(f"{max(quanta, 2 * spread, 1e-4):.3g}")
    return fig


def _values_in_child(bundle_path: Path, kernels: str) -> tuple[np.ndarray | None, str]:
    """Golden values of the bundle's golden-less staging copy under `kernels`, in a child
    process: (values, "") or (None, why it failed)."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "values.npy"
        code = (
            "import sys; from lucida.tools.toolchain.golden import _golden_worker; "
            "_golden_worker(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])"
        )
        gin = Path(tmp) / "input.npy"
        np.save(gin, _STAGED_INPUT[bundle_path])
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, str(bundle_path), kernels, str(gin), str(out)],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            return None, "timed out"
        if proc.returncode != 0 or not out.exists():
            last = (proc.stderr.strip().splitlines() or [""])[-1]
            why = f"exit {proc.returncode}" + (f": {last[:160]}" if last else "")
            return None, why
        return np.load(out), ""


_STAGED_INPUT: dict = {}  # staging bundle path -> golden input (for the child process)


def _golden_worker(bundle_path: str, kernels: str, input_npy: str, out_npy: str) -> None:
    """Child process of _values_in_child: run the golden input under `kernels`, save values."""
    from lucida.runtime.engine import Engine

    engine = Engine(load_bundle(bundle_path), device="cpu", num_threads=1, kernels=kernels)
    x = np.load(input_npy, allow_pickle=False)
    np.save(out_npy, engine.decoder.golden_values(engine.raw_tile(x)))
