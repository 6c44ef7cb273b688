"""Assemble a bundle from TFLite bytes: manifest from the model's own tensors, golden I/O from a run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from lucida.models import Bundle, load_bundle, write_bundle

from .quantize import tensor_quant


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
