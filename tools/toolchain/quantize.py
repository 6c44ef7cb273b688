"""`lucida quantize MODEL --calib DIR --out BUNDLE_DIR`: a float model to a runnable int8 bundle.

One command for bringing your own model: Keras file or SavedModel -> full-integer TFLite (uint8
I/O, per-channel weights, batch 1) calibrated on a seeded subset of your tiles -> quantization
report (float vs int8 on validation tiles, per-layer errors) -> a verified bundle folder with
golden I/O and the report, which `lucida check`, `lucida compile` and the runtime take as is.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

DEFAULT_SAMPLES = 200
MAX_VAL_IMAGES = 500
DEBUG_SAMPLES = 16


def _triple(text: str) -> tuple[float, float, float]:
    parts = [float(v) for v in str(text).replace(",", " ").split()]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise ValueError(f"expected 1 or 3 numbers (R,G,B), got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"expected WIDTHxHEIGHT in px, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _bundle_name(text: str) -> str:
    """A valid bundle name from a folder name (letters, digits, '.', '_', '-')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "model"
    return name if name[0].isalnum() else "m" + name


def quantize_to_bundle(
    model: str | Path,
    calib_dir: str | Path,
    out_dir: str | Path,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    val_dir: str | Path | None = None,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    io_dtype: str = "uint8",
    input_size: tuple[int, int] | None = None,
    name: str | None = None,
    task: str = "custom",
    objectives: tuple[str, ...] = ("10x",),
    um_per_px: float | None = None,
    kind: str = "auto",
    activation: str = "none",
    positive_index: int = 0,
    threshold: float = 0.5,
    layer_report: bool = True,
    max_metric_drop: float = 0.01,
    progress: bool = True,
):
    """Quantize `model` with calibration tiles from `calib_dir` and write a bundle to `out_dir`.

    Returns (bundle, report dict). mean/std: per-channel normalization the model expects on
    0..255 pixels (written to the manifest; the runtime applies it). input_size: (W, H) px for
    models with a dynamic spatial size.
    """
    from lucida.tools.toolchain import representative as rep
    from lucida.tools.toolchain.bundle import REPORT_FILE, build_bundle
    from lucida.tools.toolchain.convert import QuantizeError, convert_int8, load_float_model
    from lucida.tools.toolchain.quant_report import (
        Int8Runner,
        compare,
        format_report,
        layer_errors,
        verdict,
    )

    model = Path(model)
    available = rep.list_images(calib_dir)  # fail fast, before TensorFlow loads the model
    chosen = rep.pick_subset(available, samples, seed)
    fm = load_float_model(model, input_size)
    h, w, _ = fm.input_shape
    out_shape = fm.output_shape
    if kind == "auto":
        kind = "heatmap" if len(out_shape) == 3 else "class_scores"
    if (kind == "heatmap" and len(out_shape) != 3) or (
        kind == "class_scores" and len(out_shape) != 1
    ):
        raise QuantizeError(f"{model}: output shape {out_shape} does not fit a {kind} model")
    channels = int(out_shape[-1])
    if positive_index >= channels:
        raise QuantizeError(
            f"--positive-index {positive_index} but the model has {channels} channel(s)"
        )

    calib = rep.load_samples(chosen, w, h)
    calib_inputs = [rep.normalize(s.rgb, mean, std) for s in calib]
    notes = []
    if len(calib) < 100:
        notes.append(f"only {len(calib)} calibration images (100-500 recommended)")
    tflite = convert_int8(fm, calib_inputs, io_dtype, progress=progress)

    if val_dir is not None:
        val_paths = rep.list_images(val_dir)[:MAX_VAL_IMAGES]
        val_source = f"--val {val_dir}"
    else:
        held_out = sorted(set(available) - set(chosen))[:MAX_VAL_IMAGES]
        val_paths = held_out or chosen
        val_source = (
            "calibration images not used for calibration (no --val)"
            if held_out
            else "the calibration images themselves (no --val): optimistic"
        )
    labels = "mask" if kind == "heatmap" else "folder"
    val = rep.load_samples(val_paths, w, h, labels=labels)
    runner = Int8Runner(tflite, mean, std)
    float_out = [fm.predict(rep.normalize(s.rgb, mean, std)) for s in val]
    int8_out = [runner(s.rgb) for s in val]
    output = compare(
        float_out,
        int8_out,
        [s.label for s in val],
        kind=kind,
        activation=activation,
        positive_index=positive_index,
        threshold=threshold,
    )
    report: dict = {
        "model": str(model),
        "io_dtype": io_dtype,
        "tflite_bytes": len(tflite),
        "input": {"width": w, "height": h, "mean": list(mean), "std": list(std)},
        "calibration": {
            "folder": str(calib_dir),
            "images_available": len(available),
            "samples": len(calib),
            "seed": seed,
            "files": [str(p.relative_to(calib_dir)) for p in chosen],
        },
        "validation": {
            "source": val_source,
            "images": len(val),
            "labelled": sum(s.label is not None for s in val),
        },
        "output": output,
        "notes": notes,
    }
    if layer_report:
        debug = [rep.normalize(s.rgb, mean, std) for s in val[:DEBUG_SAMPLES]]
        try:
            conv = fm.converter(calib_inputs, io_dtype, progress=progress, desc="layer debugger")
            report["layers"] = layer_errors(conv, debug)
        except Exception as exc:  # the debugger is experimental; the report stands without it
            report["layers"] = []
            report["layers_error"] = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
    report["verdict"] = verdict(report, max_metric_drop=max_metric_drop)

    metric = output.get("metric") or {}
    metrics = {
        "quantization_ok": report["verdict"]["ok"],
        "output_rmse": output["rmse"],
        "calibration_samples": len(calib),
        "calibration_seed": seed,
    }
    for key in ("threshold_agreement", "top1_agreement"):
        if key in output:
            metrics[key] = output[key]
    if metric.get("delta") is not None:
        metrics[f"float_{metric['key']}"] = metric["float"]
        metrics[f"int8_{metric['key']}"] = metric["int8"]
        metrics[f"{metric['key']}_delta"] = metric["delta"]
    norm = None
    if tuple(mean) != (0.0, 0.0, 0.0) or tuple(std) != (1.0, 1.0, 1.0):
        norm = {"mean": list(mean), "std": list(std)}
    bundle = build_bundle(
        out_dir,
        name=name or _bundle_name(Path(out_dir).name),
        task=task,
        objectives=list(objectives),
        cpu_tflite=tflite,
        golden_input=val[0].rgb,
        um_per_px=um_per_px,
        check_input=report["verdict"]["ok"],  # a BAD report already names the problem
        output={
            "kind": kind,
            "channels": channels,
            "positive_index": positive_index,
            "activation": activation,
        },
        normalization=norm,
        extra_files={REPORT_FILE: (json.dumps(report, indent=2) + "\n").encode()},
        metrics=metrics,
        description=f"full-integer quantization of {model.name} by lucida quantize",
    )
    report["text"] = format_report(report)
    return bundle, report


def register(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="float Keras/SavedModel -> full-int8 TFLite bundle with a float-vs-int8 report",
    )
    p.add_argument("model", help="a .keras / .h5 file or a SavedModel folder")
    p.add_argument("--calib", required=True, help="folder of RGB calibration tiles (PNG/JPG)")
    p.add_argument(
        "--samples", type=int, default=DEFAULT_SAMPLES, help="calibration images (100-500)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset")
    p.add_argument("--val", help="validation tiles (img.png + img.mask.png, or class folders)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--pack", help="also write the bundle as this .tar.gz")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--name", help="bundle name (default: the --out folder's name)")
    p.add_argument("--task", default="custom", help="task key, e.g. tumor (default custom)")
    p.add_argument("--objectives", default="10x", help="comma-separated, e.g. 10x,20x")
    p.add_argument("--um-per-px", type=float, help="pixel size (um) the model was trained at")
    p.add_argument("--mean", type=_triple, default=(0.0, 0.0, 0.0), help="R,G,B on 0..255")
    p.add_argument("--std", type=_triple, default=(1.0, 1.0, 1.0), help="R,G,B on 0..255")
    p.add_argument("--io-dtype", choices=("uint8", "int8"), default="uint8")
    p.add_argument("--input-size", type=_size, help="WxH px, for models with a dynamic input")
    p.add_argument("--kind", choices=("auto", "heatmap", "class_scores"), default="auto")
    p.add_argument(
        "--activation",
        choices=("none", "sigmoid", "softmax"),
        default="none",
        help="what the runtime applies to the output (none: the model outputs probabilities)",
    )
    p.add_argument("--positive-index", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.5, help="for threshold agreement")
    p.add_argument("--max-metric-drop", type=float, default=0.01, help="AUC/accuracy drop to flag")
    p.add_argument("--no-layer-report", action="store_true", help="skip the per-layer debugger")
    p.add_argument("--strict", action="store_true", help="exit 1 when the report says BAD")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from lucida.models import pack_bundle
    from lucida.tools.cli import require_host

    require_host("tensorflow")

    bundle, report = quantize_to_bundle(
        args.model,
        args.calib,
        args.out,
        samples=args.samples,
        seed=args.seed,
        val_dir=args.val,
        mean=args.mean,
        std=args.std,
        io_dtype=args.io_dtype,
        input_size=args.input_size,
        name=args.name,
        task=args.task,
        objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
        um_per_px=args.um_per_px,
        kind=args.kind,
        activation=args.activation,
        positive_index=args.positive_index,
        threshold=args.threshold,
        layer_report=not args.no_layer_report,
        max_metric_drop=args.max_metric_drop,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    if args.pack:
        pack_bundle(bundle.path, args.pack)
    text = report.pop("text")
    if args.json:
        print(json.dumps({**report, "bundle": str(bundle.path)}, indent=2, default=_jsonable))
    else:
        print(text)
        print(f"bundle: {bundle.path}" + (f" (packed: {args.pack})" if args.pack else ""))
    return 1 if args.strict and not report["verdict"]["ok"] else 0


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    return str(o)
