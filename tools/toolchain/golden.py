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


# -- a golden output per model file (recorded where that file runs) --------------------------------
class GoldenError(ValueError):
    """A golden output that cannot be recorded (no device, no golden input, too far off)."""

    exit_code = 1


def model_golden_name(model_file: str) -> str:
    """The bundle file holding `model_file`'s own golden output (edgetpu.tflite ->
    golden_output.edgetpu.npy)."""
    return f"golden_output.{Path(model_file).stem}.npy"


def add_model_golden(bundle: Bundle, model_file: str, values: np.ndarray) -> Bundle:
    """Record `values` (decoded as golden_values decodes) as `model_file`'s own golden output:
    written beside the others, hashed into the manifest's files and `golden.outputs`, the
    folder swapped in atomically. The health check of an engine running `model_file` uses it."""
    from lucida.models import write_bundle

    m = bundle.manifest
    if m.golden is None:
        raise GoldenError(f"bundle {bundle.name}: no golden input to record an output for")
    if model_file not in m.files or not model_file.endswith(".tflite"):
        raise GoldenError(f"bundle {bundle.name}: no model file {model_file!r} in the bundle")
    cpu = bundle.golden("cpu.tflite")[1]
    values = np.asarray(values, np.float32)
    if values.shape != cpu.shape:
        raise GoldenError(
            f"bundle {bundle.name}: golden output of shape {values.shape}, expected {cpu.shape}"
        )
    manifest = m.model_dump(mode="json")
    name = model_golden_name(model_file)
    manifest["golden"]["outputs"][model_file] = name
    files = {n: bundle.path / n for n in m.files if n != name}
    files[name] = values
    return write_bundle(bundle.path, manifest, files)


def record_golden(bundle_path: str, device: str = "edgetpu", max_diff: float | None = None):
    """Run a bundle's golden input on `device` and record the output as the golden of the model
    file that ran there (edgetpu.tflite on an Edge TPU). Run once on the device, e.g. after the
    first deploy; refuses when the engine fell back to cpu.tflite (whose golden `lucida bundle`
    recorded) and when the output is further than `max_diff` from cpu.tflite's golden (default:
    0.1 in probability units, or 5 % of the cells changing class for class maps)."""
    from lucida.models import BundleError
    from lucida.runtime.engine import Engine

    try:
        bundle = load_bundle(bundle_path)
    except BundleError as exc:
        raise GoldenError(str(exc)) from None
    if not bundle.path.is_dir() or bundle.path.resolve() != Path(bundle_path).resolve():
        raise GoldenError(f"{bundle_path}: a bundle folder is needed (unpack a .tar.gz first)")
    if bundle.manifest.golden is None:
        raise GoldenError(f"bundle {bundle.name}: no golden input to record an output for")
    engine = Engine(bundle, device=device, num_threads=1)
    model_file = engine.info.model_file
    if model_file == "cpu.tflite":
        why = engine.info.fallback_reason or f"device {device!r} runs it"
        raise GoldenError(
            f"bundle {bundle.name}: cpu.tflite ran ({why}); its golden output was recorded by "
            "`lucida bundle`. Record an Edge TPU's on a machine where edgetpu.tflite runs on one"
        )
    x, want = bundle.golden("cpu.tflite")
    got = engine.decoder.golden_values(engine.raw_tile(x))
    if engine.decoder.kind == "class_map":
        diff, limit, what = float(np.mean(got != want)), 0.05, "of the cells changed class"
    else:
        diff, limit, what = float(np.max(np.abs(got - want))), 0.1, "max abs difference"
    limit = limit if max_diff is None else max_diff
    if diff > limit:
        raise GoldenError(
            f"bundle {bundle.name}: {model_file} on {engine.info.delegate} is {diff:.4g} from "
            f"cpu.tflite's golden output ({what}; limit {limit:g}): not recorded. Check the "
            "compiled model and the device; --max-diff raises the limit"
        )
    add_model_golden(bundle, model_file, got)
    return {
        "bundle": bundle.name,
        "model_file": model_file,
        "delegate": engine.info.delegate,
        "file": model_golden_name(model_file),
        "difference_from_cpu": round(diff, 6),
        "limit": limit,
    }


def register(sub) -> None:
    p = sub.add_parser(
        "golden",
        help="record the golden output of the model file a device runs (edgetpu.tflite on an "
        "Edge TPU) into a bundle folder; run once on the device",
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--device", default="edgetpu", help="edgetpu (default), usb:0, pci:0, ...")
    p.add_argument(
        "--max-diff",
        type=float,
        help="largest difference from cpu.tflite's golden accepted (default 0.1 probability, "
        "or 0.05 of the cells for class maps)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import json

    r = record_golden(args.bundle, device=args.device, max_diff=args.max_diff)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(
            f"bundle {r['bundle']}: {r['model_file']} on {r['delegate']}: golden output recorded "
            f"as {r['file']} ({r['difference_from_cpu']:.4g} from cpu.tflite's)"
        )
    return 0
