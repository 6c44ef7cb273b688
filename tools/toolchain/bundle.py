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
from pathlib import Path

import numpy as np
from lucida.models import Bundle, BundleError, load_bundle, write_bundle
from lucida.tools.toolchain.convert import tensor_quant

REPORT_FILE = "quant_report.json"
# Manifest fields carried over from a --from bundle (files, quantization and golden are rebuilt).
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
    **manifest_fields,
) -> Bundle:
    """Write a verified bundle folder; the golden output is what this model gives on golden_input.

    stride: tile stride in model px (default: 3/4 of the input, whole output cells).
    output: manifest "output" section (default: 1-channel heatmap of probabilities).
    """
    q = tensor_quant(cpu_tflite)
    _, h, w, _c = q["input"]["shape"]
    output = output or {"kind": "heatmap", "channels": int(q["output"]["shape"][-1])}
    if stride is None:
        cell = w // q["output"]["shape"][2] if output.get("kind", "heatmap") == "heatmap" else 1
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
    files = {"cpu.tflite": cpu_tflite, **(extra_files or {})}
    if edgetpu_tflite is not None:
        files["edgetpu.tflite"] = edgetpu_tflite
        manifest["edgetpu"] = edgetpu_figures(edgetpu_tflite)
    bundle = write_bundle(out_dir, manifest, files)
    # Golden output = this model's answer on the golden input, through the real engine.
    from lucida.runtime.engine import Engine

    golden_input = np.ascontiguousarray(golden_input, dtype=np.uint8)
    golden_output = Engine(bundle, device="cpu", num_threads=1).infer_tile(golden_input)
    staged = {n: Path(bundle.path) / n for n in bundle.manifest.files}
    staged["golden_input.npy"] = golden_input
    staged["golden_output.npy"] = np.asarray(golden_output, np.float32)
    manifest["golden"] = {"input": "golden_input.npy", "output": "golden_output.npy", "atol": 0.02}
    tmp_copy = {n: (p.read_bytes() if isinstance(p, Path) else p) for n, p in staged.items()}
    write_bundle(out_dir, manifest, tmp_copy)
    return load_bundle(out_dir)


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
    **manifest_fields,
) -> Bundle:
    """Build a bundle folder from files; fields not given come from `from_bundle` when there is one.

    cpu_tflite: the full-integer model (default: from_bundle's); edgetpu_tflite: its compiled twin;
    report: a quantization report JSON (default: from_bundle's); golden_input: .npy or image
    (default: from_bundle's, else a seeded noise tile).
    """
    base = load_bundle(from_bundle) if from_bundle else None
    bm = base.manifest if base else None
    if cpu_tflite is None and base is None:
        raise BundleError("give the int8 model (--cpu MODEL.tflite) or a bundle to start from")
    cpu_path = Path(cpu_tflite) if cpu_tflite else base.file("cpu.tflite")
    cpu = _read_model(cpu_path)
    q = tensor_quant(cpu)
    _, h, w, _ = q["input"]["shape"]
    extra: dict = {}
    edgetpu = None
    if edgetpu_tflite is not None:
        check_edgetpu_model(cpu, str(edgetpu_tflite))
        edgetpu = Path(edgetpu_tflite).read_bytes()
    elif base is not None and base.has_edgetpu and cpu_tflite is None:
        edgetpu = base.file("edgetpu.tflite").read_bytes()
    report_path = Path(report) if report else None
    if report_path is None and base is not None and REPORT_FILE in bm.files:
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
    if bm is not None and cpu_tflite is not None and "tiling" in fields:
        fields.pop("tiling")  # a new model may have another input size; recompute the stride
    fields.update({k: v for k, v in manifest_fields.items() if v is not None})
    name = name or (bm.name if bm else None)
    task = task or (bm.task if bm else None)
    objectives = objectives or (list(bm.objectives) if bm else None)
    if not (name and task and objectives):
        raise BundleError("a new bundle needs --name, --task and --objectives (or --from BUNDLE)")
    if um_per_px is None and bm is not None:
        um_per_px = bm.input.um_per_px
    tiling = fields.pop("tiling", None)
    stride = (tiling["stride_x"], tiling["stride_y"]) if tiling else None
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
        extra_files=extra,
        **fields,
    )


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
    p.add_argument("--cpu", help="full-integer model (cpu.tflite)")
    p.add_argument("--edgetpu", help="the same model compiled by edgetpu_compiler")
    p.add_argument("--report", help="quantization report JSON to include")
    p.add_argument("--golden-input", help="golden input tile: image or uint8 HxWx3 .npy")
    p.add_argument("--name")
    p.add_argument("--task")
    p.add_argument("--objectives", help="comma-separated, e.g. 10x,20x")
    p.add_argument("--um-per-px", type=float)
    p.add_argument("--version", dest="bundle_version", help="bundle version, e.g. 1.2.0")
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
            golden = (
                f"golden max error {err:.4f} <= {g['atol']}"
                if err is not None
                else g.get("skipped", "no golden I/O")
            )
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
    )
    packed = str(pack_bundle(bundle.path, args.pack)) if args.pack else None
    files = {n: e.sha256 for n, e in bundle.manifest.files.items()}
    if args.json:
        print(
            json.dumps(
                {"bundle": bundle.name, "path": str(bundle.path), "files": files, "packed": packed},
                indent=2,
            )
        )
    else:
        print(f"bundle {bundle.name} {bundle.manifest.version} -> {bundle.path}")
        for n, digest in files.items():
            print(f"  {n:<22} sha256 {digest[:16]}...")
        if packed:
            print(f"packed: {packed}")
    return 0
