"""`lucida bundle`: assemble a bundle from its parts, pack it, or verify one.

    lucida bundle --from BUNDLE --edgetpu model_edgetpu.tflite --out NEW [--pack NEW.tar.gz]
    lucida bundle --cpu model.tflite --name N --task T --objectives 10x --out DIR [--report R.json]
        [--labels FILE] [--kind K] [--positive A,B] [--normalization P | --mean M --std S]
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
import shutil
import tempfile
from pathlib import Path

import numpy as np
from lucida.models import Bundle, BundleError, load_bundle, write_bundle
from lucida.tools.toolchain.convert import tensor_quant
from lucida.tools.toolchain.describe import (  # noqa: F401 (re-exported for other rooms)
    NORMALIZATION_NAMES,
    BundleInputError,
    check_input_range,
    infer_output,
    normalization_for,
    read_labels,
)
from lucida.tools.toolchain.golden import _STAGED_INPUT, GOLDEN_QUANTA, golden_figures

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
        manifest["edgetpu"] = edgetpu_figures(edgetpu_tflite)
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
        why = [f"{k} kernels differ from XNNPACK by {v:.4g}" for k, v in fig["spread"].items()]
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


def edgetpu_figures(edgetpu: bytes) -> dict:
    """The manifest's "edgetpu" section: what the compiled model's packages hold."""
    from lucida.tools.toolchain.edgetpu_ops import EDGETPU_CUSTOM_OP
    from lucida.tools.toolchain.edgetpu_package import PackageReadError, read_compiled, summarize
    from lucida.tools.toolchain.tflite_reader import read_tflite

    model = read_tflite(edgetpu)
    try:
        s = summarize(read_compiled(model))
    except PackageReadError as exc:
        raise BundleError(f"edgetpu.tflite: {exc}") from None
    return {
        "subgraphs": s["edgetpu_subgraphs"],
        "min_runtime_version": s["min_runtime_version"],
        "compiler_version": s["compiler_version"],
        "on_chip_bytes": s["on_chip_bytes"],
        "off_chip_bytes": s["off_chip_bytes"],
        "caching_tokens": s["caching_tokens"],
        "cpu_ops": [op.opcode for op in model.ops if op.opcode != EDGETPU_CUSTOM_OP],
    }


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
    from lucida.models import resolve_bundle
    from lucida.runtime.engine import Engine
    from lucida.tools.toolchain.tflite_reader import read_tflite

    bundle = resolve_bundle(str(path))  # manifest valid, every file's size and sha256
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
    from lucida.runtime.sandbox import check_in_child

    check_in_child(bundle.path)  # a crafted model crashes a child process, never this one
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
    p.add_argument(
        "--verify", metavar="BUNDLE", help="verify a bundle folder, .tar.gz or shipped name"
    )
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
