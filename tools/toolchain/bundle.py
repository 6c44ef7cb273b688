"""`lucida bundle`: assemble a bundle from its parts, pack it, or verify one.

    lucida bundle --from BUNDLE --edgetpu model_edgetpu.tflite --out NEW [--pack NEW.tar.gz]
    lucida bundle --cpu model.tflite --name N --task T --objectives 10x --out DIR [--report R.json]
    lucida bundle --verify DIR_OR_TAR_GZ [--json]

Assembling hashes every file into the manifest and recomputes the golden output with the engine.
Verifying checks hashes, that each model reads and fits the manifest, the compiled model's I/O,
and the golden run: exit 0 verified, 1 failed (the reason in one line).

The manifest comes from the model's own tensors, the golden I/O from a real run.

`build_bundle` writes a bundle from TFLite bytes; `assemble_bundle` builds one from files
(cpu.tflite, an optional edgetpu.tflite, a quantization report, a golden input image), optionally
starting from an existing bundle's manifest; `verify_bundle` re-checks one end to end (hashes,
models readable and matching the manifest, the compiled model's I/O, the golden run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from lucida.models import Bundle, BundleError, load_bundle, write_bundle
from lucida.tools.toolchain.convert import tensor_quant

REPORT_FILE = "quant_report.json"
# Manifest fields carried over from a --from bundle when the model file is the same (sha256).
_CARRIED = (
    "version",
    "description",
    "normalization",
    "output",
    "tiling",
    "contours",
    "color_norm",
    "metrics",
    "latency",
)
# ... and what is dropped when --cpu brings another model: figures and settings of that model.
_MODEL_SPECIFIC = (
    "description",
    "metrics",
    "latency",
    "contours",
    "tiling",
    "objectives",
    "um_per_px",
)
GOLDEN_QUANTA = 3  # output codes a backend may round differently (golden tolerance)
# --normalization presets: float input = (pixel - mean) / std, pixels 0..255.
NORMALIZATIONS = {
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # the model takes 0..255
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),  # 0..1
    "inception": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),  # -1..1 (MobileNet, Inception)
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),  # torchvision mean/std
}
NORMALIZATION_NAMES = (*NORMALIZATIONS, "raw")


class BundleInputError(BundleError):
    """A bundle that would feed its model garbage (e.g. every input code saturated)."""


def normalization_for(name: str, input_quant: dict) -> dict:
    """A --normalization preset as the manifest's {"mean", "std"}.

    "raw": pixels go in as the model's own input codes (pycoral's way for uint8 models):
    mean and std undo the input quantization, so the engine's input table is the identity.
    """
    if name == "raw":
        dt, scale, zp = input_quant["dtype"], input_quant["scale"], input_quant["zero_point"]
        if dt == "float32" or not scale:
            return {"mean": [0.0] * 3, "std": [1.0] * 3}
        mean = zp + (128 if dt == "int8" else 0)
        return {"mean": [float(mean)] * 3, "std": [1.0 / scale] * 3}
    if name not in NORMALIZATIONS:
        raise BundleError(
            f"normalization {name!r}: expected one of {', '.join(NORMALIZATION_NAMES)}"
        )
    mean, std = NORMALIZATIONS[name]
    return {"mean": list(mean), "std": list(std)}


def read_labels(path: str | os.PathLike, classes: int | None = None) -> list[dict]:
    """A labels file -> manifest labels in index order.

    Formats: one label a line (line i is class i), or `index label` lines (pycoral's
    read_label_file; also `index: label`); either may end with an `#rrggbb` colour.
    """
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read labels ({exc})") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise BundleError(f"{path}: no labels (expected one a line, or 'index label' lines)")
    indexed = all(re.match(r"^\d+[\s:,]+\S", ln) for ln in lines)
    by_index: dict[int, dict] = {}
    for i, ln in enumerate(lines):
        if indexed:
            head, rest = re.split(r"[\s:,]+", ln, maxsplit=1)
            i = int(head)
            if i in by_index:
                raise BundleError(f"{path}: class index {i} appears twice")
        else:
            rest = ln
        entry: dict = {}
        m = re.search(r"\s+#([0-9a-fA-F]{6})$", rest)
        if m:
            rest = rest[: m.start()].rstrip()
            entry["color"] = [int(m.group(1)[j : j + 2], 16) for j in (0, 2, 4)]
        by_index[i] = {"name": rest, **entry}
    n = classes if classes is not None else max(by_index) + 1
    if max(by_index) >= n:
        raise BundleError(
            f"{path}: label index {max(by_index)} but the model has {n} classes (0..{n - 1})"
        )
    if not indexed and len(lines) != n:
        raise BundleError(f"{path}: {len(lines)} labels, the model outputs {n} classes")
    return [by_index.get(i, {"name": f"class {i}"}) for i in range(n)]


def _output_op(cpu: bytes) -> str:
    """Opcode of the op computing the model's output, looking through the (de)quantize and
    reshape ops a converter appends ("" when unknown)."""
    from lucida.tools.toolchain.tflite_reader import read_tflite

    model = read_tflite(cpu)
    producer = {t.index: op for op in model.ops for t in op.outputs}
    op = producer.get(model.outputs[0].index)
    while op is not None and op.opcode in ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE"):
        op = producer.get(op.inputs[0].index) if op.inputs else None
    return op.opcode if op is not None else ""


def infer_output(
    q: dict,
    cpu: bytes,
    *,
    kind: str | None = None,
    activation: str | None = None,
    labels: list[dict] | None = None,
    positive: list | None = None,
) -> tuple[dict, list[str]]:
    """The manifest "output" section from the model's output tensor and the flags given.

    Returns (section, notes): notes say what was inferred, for the user to check."""
    shape, dtype = q["output"]["shape"], q["output"]["dtype"]
    notes: list[str] = []
    wide_int = dtype in ("int16", "int32", "int64")
    if kind is None:
        if len(shape) == 2:
            kind = "class_scores"
        elif len(shape) == 3 or (len(shape) == 4 and shape[-1] == 1 and wide_int):
            kind = "class_map"
        elif len(shape) == 4:
            kind = "heatmap"
        else:
            raise BundleError(
                f"model output shape {shape}: expected [1, C] (classifier), [1, H, W, C] "
                "(heatmap) or [1, H, W] (class map)"
            )
        notes.append(f"kind {kind} (from the output shape {shape} {dtype})")
    want_dims = {"class_scores": (2,), "heatmap": (4,), "class_map": (3, 4)}[kind]
    if len(shape) not in want_dims or shape[0] != 1:
        raise BundleError(f"--kind {kind}: the model's output shape {shape} does not fit it")
    if kind == "class_map":
        if not (dtype.startswith("int") or dtype.startswith("uint")):
            raise BundleError(f"--kind class_map: the output is {dtype}, expected class indices")
        if labels is None:
            raise BundleError(
                "a class-map output does not say how many classes there are: give --labels FILE"
            )
        channels = len(labels)
        activation = "none"
    else:
        channels = int(shape[-1])
        if dtype not in ("uint8", "int8", "float32"):
            raise BundleError(f"{kind} output of dtype {dtype}: expected uint8, int8 or float32")
    if activation is None and kind != "class_map":
        op = _output_op(cpu)
        if op in ("SOFTMAX", "LOGISTIC"):
            activation = "none"
        else:
            activation = "sigmoid" if channels == 1 else "softmax"
        notes.append(f"activation {activation} (the output comes from {op or 'an unknown op'})")
    out: dict = {"kind": kind, "channels": channels, "activation": activation}
    if labels is not None:
        if len(labels) != channels:
            raise BundleError(f"{len(labels)} labels, the model outputs {channels} classes")
        out["labels"] = labels
    if positive:
        names = [lab["name"] for lab in labels or []]
        ids = []
        for p in positive:
            p = str(p).strip()
            if p.isdigit():
                ids.append(int(p))
            elif p in names:
                ids.append(names.index(p))
            else:
                raise BundleError(f"--positive {p!r}: not a class index or a label name")
        out["positive_classes"] = ids
    elif channels > 1 and kind != "class_scores":
        out["positive_classes"] = list(range(1, channels))
        notes.append(f"positive classes 1..{channels - 1} (class 0 taken as background)")
    elif kind == "class_scores":
        first = (labels or [{"name": "class 0"}])[0]["name"]
        notes.append(
            f"positive class 0 ({first}), what the overlay outlines: set it with --positive"
        )
    return out, notes


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
            "import sys; from lucida.tools.toolchain.bundle import _golden_worker; "
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


def check_input_range(manifest: dict, golden_input: np.ndarray, model: str = "model") -> float:
    """Refuse a normalization that saturates the quantized input; returns the saturated fraction."""
    from lucida.runtime.engine import SATURATED_FRACTION
    from lucida.runtime.quant import input_lut, saturated_fraction

    qi = manifest["quantization"]["input"]
    if qi["dtype"] == "float32":
        return 0.0
    norm = manifest.get("normalization") or {"mean": [0.0] * 3, "std": [1.0] * 3}
    lut = input_lut(norm["mean"], norm["std"], qi["scale"], qi["zero_point"], qi["dtype"])
    sat = saturated_fraction(golden_input, lut)
    if sat > SATURATED_FRACTION:
        info = np.iinfo(np.dtype(qi["dtype"]))
        lo = qi["scale"] * (info.min - qi["zero_point"])
        hi = qi["scale"] * (info.max - qi["zero_point"])
        raise BundleInputError(
            f"{model}: {sat:.0%} of the input codes saturate with normalization mean "
            f"{_fmt(norm['mean'])} std {_fmt(norm['std'])}: the model's input range is "
            f"[{lo:.3g}, {hi:.3g}]; give --normalization raw (pixels as input codes), "
            "inception (-1..1), unit (0..1) or imagenet, or --mean/--std mapping 0..255 into it"
        )
    return sat


def _fmt(v) -> str:
    v = [float(x) for x in v]
    return f"{v[0]:g}" if len(set(v)) == 1 else ",".join(f"{x:g}" for x in v)


def build_bundle(
    out_dir: str | os.PathLike,
    *,
    name: str,
    task: str,
    objectives: list[str],
    cpu_tflite: bytes,
    golden_input: np.ndarray,
    edgetpu_tflite: bytes | None = None,
    um_per_px: float | None = None,
    stride: tuple[int, int] | None = None,
    output: dict | None = None,
    normalization: dict | None = None,
    contours: dict | None = None,
    extra_files: dict | None = None,
    notes: list | None = None,
    check_input: bool = True,
    **manifest_fields,
) -> Bundle:
    """Write a verified bundle folder; the golden output is what this model gives on golden_input.

    stride: tile stride in model px (default: 3/4 of the input, whole output cells).
    output: manifest "output" section (default: inferred from the output tensor).
    Nothing is written at out_dir unless every step succeeds (the bundle is staged beside it).
    notes: a list that receives what was inferred and measured, one line each.
    check_input: refuse a normalization that saturates the quantized input (BundleInputError);
    False only where a report already says the model is bad (lucida quantize's BAD verdict):
    such a bundle then fails its health check, as it should.
    """
    q = tensor_quant(cpu_tflite)
    shape = q["input"]["shape"]
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise BundleError(f"model input shape {shape}: expected [1, H, W, 3] (one RGB image)")
    _, h, w, _c = shape
    notes = notes if notes is not None else []
    if output is None:
        output, inferred = infer_output(q, cpu_tflite)
        notes.extend(inferred)
    out_shape = q["output"]["shape"]
    if stride is None:
        cell = w // out_shape[2] if output.get("kind", "heatmap") != "class_scores" else 1
        stride = (max(cell, (w * 3 // 4) // cell * cell), max(cell, (h * 3 // 4) // cell * cell))
    manifest = {
        "schema_version": 1,
        "name": name,
        "task": task,
        "objectives": list(objectives),
        "input": {"width": w, "height": h, "dtype": q["input"]["dtype"], "um_per_px": um_per_px},
        "quantization": {
            k: {kk: q[k][kk] for kk in ("dtype", "scale", "zero_point")}
            for k in ("input", "output")
        },
        "output": output,
        "tiling": {"stride_x": int(stride[0]), "stride_y": int(stride[1])},
        **manifest_fields,
    }
    if normalization:
        manifest["normalization"] = normalization
    if contours:
        manifest["contours"] = contours
    golden_input = np.ascontiguousarray(golden_input, dtype=np.uint8)
    if check_input:
        check_input_range(manifest, golden_input, name)
    files = {"cpu.tflite": cpu_tflite, **(extra_files or {})}
    if edgetpu_tflite is not None:
        files["edgetpu.tflite"] = edgetpu_tflite
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stage-", dir=out_dir.parent))
    try:
        staged = write_bundle(stage / "b", manifest, files)
        _STAGED_INPUT[staged.path] = golden_input
        fig = golden_figures(staged, golden_input)  # through the real engine
        files = {n: staged.path / n for n in staged.manifest.files}
        files["golden_input.npy"] = golden_input
        files["golden_output.npy"] = fig["output"]
        manifest["golden"] = {
            "input": "golden_input.npy",
            "output": "golden_output.npy",
            "atol": fig["atol"],
        }
        if "max_mismatch" in fig:
            manifest["golden"]["max_mismatch"] = fig["max_mismatch"]
        why = [f"spread vs XNNPACK: {k} kernels {v:.4g}" for k, v in fig["spread"].items()]
        why += [f"{k} kernels failed ({v})" for k, v in fig["failed"].items()]
        if "quanta_error" in fig:
            why.insert(0, f"{GOLDEN_QUANTA} output quanta {fig['quanta_error']:.4g}")
        limit = (
            f"max_mismatch {fig['max_mismatch']:g}"
            if "max_mismatch" in fig
            else (f"atol {fig['atol']:g}")
        )
        notes.append(f"golden: {limit} ({'; '.join(why)})")
        return write_bundle(out_dir, manifest, files)
    finally:
        _STAGED_INPUT.clear()
        shutil.rmtree(stage, ignore_errors=True)


def model_path(path: str | os.PathLike, file: str = "cpu.tflite") -> Path:
    """A model path, or a bundle folder / .tar.gz standing for its `file`."""
    p = Path(path)
    if p.is_dir() or p.name.endswith((".tar.gz", ".tgz")):
        return load_bundle(p).file(file)
    return p


def _read_model(path: str | os.PathLike) -> bytes:
    from lucida.tools.toolchain.tflite_reader import read_tflite

    read_tflite(path)  # readable TFLite, or TFLiteReadError naming the file
    return Path(path).read_bytes()


def check_edgetpu_model(cpu: bytes | str, edgetpu: bytes | str) -> None:
    """The compiled model must hold an edgetpu-custom-op and have cpu.tflite's input and output."""
    from lucida.tools.toolchain.edgetpu_ops import EDGETPU_CUSTOM_OP
    from lucida.tools.toolchain.tflite_reader import read_tflite

    c, e = read_tflite(cpu), read_tflite(edgetpu)
    if not any(op.custom and op.opcode == EDGETPU_CUSTOM_OP for op in e.ops):
        raise BundleError(
            f"{e.path}: not compiled for the Edge TPU (no {EDGETPU_CUSTOM_OP}); run `lucida compile`"
        )
    for which, a, b in (("input", c.inputs, e.inputs), ("output", c.outputs, e.outputs)):
        sig_a = [(t.dtype, t.shape, t.scale, t.zero_point) for t in a]
        sig_b = [(t.dtype, t.shape, t.scale, t.zero_point) for t in b]
        if sig_a != sig_b:
            raise BundleError(
                f"{e.path}: {which} {sig_b} differs from cpu.tflite's {sig_a}: compiled from "
                "another model?"
            )


def load_golden_input(path: str | os.PathLike, width: int, height: int) -> np.ndarray:
    """A golden input tile: an .npy (uint8 HxWx3) or an image file, fitted to the input size."""
    from lucida.tools.toolchain.representative import fit_to_input, load_rgb

    path = Path(path)
    if path.suffix == ".npy":
        x = np.load(path, allow_pickle=False)
    else:
        x = fit_to_input(load_rgb(path), width, height)
    if x.shape != (height, width, 3):
        raise BundleError(
            f"{path}: golden input is {x.shape}, the model takes {(height, width, 3)}"
        )
    return np.ascontiguousarray(x, dtype=np.uint8)


def assemble_bundle(
    out_dir: str | os.PathLike,
    *,
    cpu_tflite: str | os.PathLike | None = None,
    edgetpu_tflite: str | os.PathLike | None = None,
    from_bundle: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    golden_input: str | os.PathLike | None = None,
    name: str | None = None,
    task: str | None = None,
    objectives: list[str] | None = None,
    um_per_px: float | None = None,
    kind: str | None = None,
    activation: str | None = None,
    labels: str | os.PathLike | None = None,
    positive: list | None = None,
    normalization: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    tile_stride: tuple[int, int] | None = None,
    notes: list | None = None,
    **manifest_fields,
) -> Bundle:
    """Build a bundle folder from files: a bare .tflite (everything read from the model, the rest
    from flags), or starting from `from_bundle`.

    cpu_tflite: the full-integer model, or a bundle folder (default: from_bundle's);
    edgetpu_tflite: its compiled twin; report: a quantization report JSON; golden_input: .npy or
    image (default: from_bundle's, else a seeded noise tile). From another bundle, only what
    describes the same model file (sha256) is carried: with another cpu.tflite its description,
    metrics, latency, objectives, pixel size, contours and tiling are dropped (listed in notes).
    """
    import hashlib

    notes = notes if notes is not None else []
    base = load_bundle(from_bundle) if from_bundle else None
    bm = base.manifest if base else None
    if cpu_tflite is None and base is None:
        raise BundleError("give the int8 model (--cpu MODEL.tflite) or a bundle to start from")
    cpu_path = model_path(cpu_tflite) if cpu_tflite else base.file("cpu.tflite")
    cpu = _read_model(cpu_path)
    q = tensor_quant(cpu)
    shape = q["input"]["shape"]
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise BundleError(f"{cpu_path}: input shape {shape}: expected [1, H, W, 3] (one RGB image)")
    _, h, w, _ = shape
    same_model = base is not None and hashlib.sha256(cpu).hexdigest() == base.sha256("cpu.tflite")
    extra: dict = {}
    edgetpu = None
    if edgetpu_tflite is not None:
        etpu_path = model_path(edgetpu_tflite, "edgetpu.tflite")
        check_edgetpu_model(cpu, str(etpu_path))
        edgetpu = etpu_path.read_bytes()
    elif base is not None and base.has_edgetpu and same_model:
        edgetpu = base.file("edgetpu.tflite").read_bytes()
    report_path = Path(report) if report else None
    if report_path is None and same_model and REPORT_FILE in bm.files:
        report_path = base.file(REPORT_FILE)
    if report_path is not None:
        try:
            json.loads(report_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{report_path}: not a readable JSON report ({exc})") from None
        extra[REPORT_FILE] = report_path.read_bytes()
    if golden_input is not None:
        gin = load_golden_input(golden_input, w, h)
    elif base is not None and base.golden() is not None and base.golden()[0].shape == (h, w, 3):
        gin = base.golden()[0]
    else:
        gin = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    carried = bm.model_dump(mode="json") if bm else {}
    fields = {k: v for k, v in carried.items() if k in _CARRIED}
    if base is not None and not same_model:
        dropped = [
            k
            for k in _MODEL_SPECIFIC
            if carried.get(k) or (k == "um_per_px" and bm.input.um_per_px is not None)
        ]
        for k in dropped:
            fields.pop(k, None)
        out_old = fields.get("output") or {}
        if out_old and out_old.get("channels") != _channels(q, out_old):
            fields.pop("output")
            dropped.append("output")
        if dropped:
            notes.append(
                f"--from {bm.name}: its cpu.tflite is another model (sha256 "
                f"{base.sha256()[:12]}...), not carried: {', '.join(dropped)}"
            )
        bm_objectives, bm_um = None, None
    else:
        bm_objectives = list(bm.objectives) if bm else None
        bm_um = bm.input.um_per_px if bm else None
    fields.update({k: v for k, v in manifest_fields.items() if v is not None})
    name = name or (bm.name if bm else None)
    task = task or (bm.task if bm else None)
    objectives = objectives or bm_objectives
    if not (name and task and objectives):
        raise BundleError(
            "a new bundle needs --name, --task and --objectives"
            + (" (the --from bundle's belong to another model)" if base is not None else "")
        )
    if um_per_px is None:
        um_per_px = bm_um
    # the output: flags over what was carried, else read from the model
    label_list = read_labels(labels, _channels(q, None)) if labels else None
    out = fields.pop("output", None)
    if any(v is not None for v in (kind, activation, label_list, positive)) or out is None:
        base_out = out or {}
        out, inferred = infer_output(
            q,
            cpu,
            kind=kind or base_out.get("kind"),
            activation=activation or base_out.get("activation"),
            labels=label_list if label_list is not None else (base_out.get("labels") or None),
            positive=positive,
        )
        notes.extend(inferred)
    if normalization is not None or mean is not None or std is not None:
        norm = normalization_for(normalization or "none", q["input"])
        if mean is not None:
            norm["mean"] = _three(mean, "--mean")
        if std is not None:
            norm["std"] = _three(std, "--std")
        fields["normalization"] = norm
    tiling = fields.pop("tiling", None)
    stride = tile_stride or ((tiling["stride_x"], tiling["stride_y"]) if tiling else None)
    return build_bundle(
        out_dir,
        name=name,
        task=task,
        objectives=objectives,
        cpu_tflite=cpu,
        edgetpu_tflite=edgetpu,
        golden_input=gin,
        um_per_px=um_per_px,
        stride=stride,
        output=out,
        extra_files=extra,
        notes=notes,
        **fields,
    )


def _channels(q: dict, output: dict | None) -> int | None:
    """Classes the model's output holds (None for a class map: its labels say)."""
    shape, dtype = q["output"]["shape"], q["output"]["dtype"]
    if (
        len(shape) == 3
        or (output or {}).get("kind") == "class_map"
        or dtype in ("int16", "int32", "int64")
    ):
        return (output or {}).get("channels")
    return int(shape[-1])


def _three(values, flag: str) -> list[float]:
    v = [float(x) for x in values]
    if len(v) == 1:
        v = v * 3
    if len(v) != 3:
        raise BundleError(f"{flag} {values}: expected one value or three (R,G,B)")
    if flag == "--std" and any(x == 0 for x in v):
        raise BundleError(f"{flag} {values}: must be non-zero")
    return v


def verify_bundle(path: str | os.PathLike) -> dict:
    """Check a bundle folder or .tar.gz end to end; BundleError / EngineError on the first failure.

    Returns what was checked: name, version, files with sizes, the golden error against atol.
    """
    from lucida.runtime.engine import Engine
    from lucida.tools.toolchain.tflite_reader import read_tflite

    bundle = load_bundle(path)  # manifest valid, every file's size and sha256
    for name in bundle.manifest.files:
        if name.endswith(".tflite"):
            read_tflite(bundle.file(name))
    if bundle.has_edgetpu:
        check_edgetpu_model(str(bundle.file("cpu.tflite")), str(bundle.file("edgetpu.tflite")))
    if REPORT_FILE in bundle.manifest.files:
        try:
            json.loads(bundle.file(REPORT_FILE).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BundleError(f"bundle {bundle.name}: {REPORT_FILE} is not valid JSON") from None
    engine = Engine(bundle, device="cpu", num_threads=1)  # model matches the manifest
    health = engine.health_check(raise_on_fail=True)
    return {
        "ok": True,
        "bundle": bundle.name,
        "version": bundle.manifest.version,
        "path": str(bundle.path),
        "files": {n: e.bytes for n, e in bundle.manifest.files.items()},
        "edgetpu": bundle.has_edgetpu,
        "golden": health,
    }


def register(sub) -> None:
    p = sub.add_parser("bundle", help="assemble, pack or verify a model bundle")
    p.add_argument("--verify", metavar="BUNDLE", help="verify a bundle folder or .tar.gz")
    p.add_argument("--from", dest="from_bundle", metavar="BUNDLE", help="start from this bundle")
    p.add_argument("--cpu", help="full-integer model (cpu.tflite), or a bundle folder")
    p.add_argument("--edgetpu", help="the same model compiled by edgetpu_compiler (or a bundle)")
    p.add_argument("--report", help="quantization report JSON to include")
    p.add_argument("--golden-input", help="golden input tile: image or uint8 HxWx3 .npy")
    p.add_argument("--name")
    p.add_argument("--task")
    p.add_argument("--objectives", help="comma-separated, e.g. 10x,20x")
    p.add_argument("--um-per-px", type=float, help="pixel size (um) the model was trained at")
    p.add_argument("--version", dest="bundle_version", help="bundle version, e.g. 1.2.0")
    p.add_argument(
        "--kind",
        choices=("heatmap", "class_scores", "class_map"),
        help="what the output means (default: from its shape and dtype)",
    )
    p.add_argument(
        "--activation",
        choices=("none", "sigmoid", "softmax"),
        help="applied to the output (default: none after a SOFTMAX/LOGISTIC op, else softmax, "
        "or sigmoid for one channel)",
    )
    p.add_argument(
        "--labels", help="labels file: one a line, or 'index label' lines (optional #rrggbb)"
    )
    p.add_argument(
        "--positive",
        help="comma-separated positive classes (indices or label names), summed into the overlay",
    )
    p.add_argument(
        "--normalization",
        choices=NORMALIZATION_NAMES,
        help="input normalization preset: none (0..255), unit (0..1), inception (-1..1), "
        "imagenet (mean/std), raw (pixels are the model's input codes)",
    )
    p.add_argument("--mean", help="per-channel mean (one value or R,G,B), pixels 0..255")
    p.add_argument("--std", help="per-channel std (one value or R,G,B)")
    p.add_argument("--tile-stride", help="tile stride in model px: N or X,Y")
    p.add_argument("--out", help="bundle folder to write")
    p.add_argument("--pack", help="also write the bundle as this .tar.gz")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from lucida.models import pack_bundle

    if args.verify:
        try:
            result = verify_bundle(args.verify)
        except (ValueError, OSError) as exc:
            result = {"ok": False, "bundle": str(args.verify), "error": str(exc)}
        if args.json:
            print(json.dumps(result, indent=2))
        elif result["ok"]:
            g = result["golden"]
            err = g.get("max_abs_error")
            if err is not None:
                golden = f"golden max error {err:.4f} <= {g['atol']}"
            elif g.get("mismatch") is not None:
                golden = f"golden class map {g['mismatch']:.2%} changed <= {g['max_mismatch']:.2%}"
            else:
                golden = g.get("skipped", "no golden I/O")
            print(
                f"verified: bundle {result['bundle']} {result['version']}: {len(result['files'])} "
                f"files hashed, edgetpu.tflite {'yes' if result['edgetpu'] else 'no'}, {golden}"
            )
        else:
            print(f"FAILED: {result['error']}")
        return 0 if result["ok"] else 1
    if not args.out:
        raise BundleError("give --out DIR to assemble a bundle (or --verify BUNDLE)")
    objectives = [o.strip() for o in args.objectives.split(",")] if args.objectives else None
    notes: list[str] = []
    bundle = assemble_bundle(
        args.out,
        cpu_tflite=args.cpu,
        edgetpu_tflite=args.edgetpu,
        from_bundle=args.from_bundle,
        report=args.report,
        golden_input=args.golden_input,
        name=args.name,
        task=args.task,
        objectives=objectives,
        um_per_px=args.um_per_px,
        version=args.bundle_version,
        kind=args.kind,
        activation=args.activation,
        labels=args.labels,
        positive=args.positive.split(",") if args.positive else None,
        normalization=args.normalization,
        mean=_floats(args.mean, "--mean"),
        std=_floats(args.std, "--std"),
        tile_stride=_stride(args.tile_stride),
        notes=notes,
    )
    packed = str(pack_bundle(bundle.path, args.pack)) if args.pack else None
    files = {n: e.sha256 for n, e in bundle.manifest.files.items()}
    if args.json:
        print(
            json.dumps(
                {
                    "bundle": bundle.name,
                    "path": str(bundle.path),
                    "files": files,
                    "packed": packed,
                    "notes": notes,
                },
                indent=2,
            )
        )
    else:
        print(f"bundle {bundle.name} {bundle.manifest.version} -> {bundle.path}")
        for n in notes:
            print(f"  note: {n}")
        for n, digest in files.items():
            print(f"  {n:<22} sha256 {digest[:16]}...")
        if packed:
            print(f"packed: {packed}")
    return 0


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise BundleError(
            f"{flag} {text!r}: expected numbers, e.g. 127.5 or 123.7,116.3,103.5"
        ) from None


def _stride(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        v = [int(x) for x in text.split(",")]
    except ValueError:
        v = []
    if len(v) not in (1, 2) or min(v) < 1:
        raise BundleError(f"--tile-stride {text!r}: expected N or X,Y in model px (> 0)")
    return (v[0], v[-1])
