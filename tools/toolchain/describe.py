"""What a bare .tflite means, from the model and the flags: output kind, activation, labels,
positive classes, input normalization presets, and the input-range check.

Used by `lucida bundle`; everything here reads the model or files, nothing is written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from lucida.models import BundleError


class BundleInputError(BundleError):
    """A bundle that would feed its model garbage (e.g. every input code saturated)."""


# --normalization presets: float input = (pixel - mean) / std, pixels 0..255.
NORMALIZATIONS = {
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # the model takes 0..255
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),  # 0..1
    "inception": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),  # -1..1 (MobileNet, Inception)
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),  # torchvision mean/std
}
NORMALIZATION_NAMES = (*NORMALIZATIONS, "raw")


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
