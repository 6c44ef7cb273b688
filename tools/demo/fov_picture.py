"""A picture of one virtual field of view: the camera frame, the ground-truth tumour outline and
the model's contours, drawn with the overlay's own renderers (host side, for docs and reports).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

TRUTH_RGB = (255, 255, 255)
MODEL_RGB = (0, 230, 0)


def truth_regions(mask: np.ndarray):
    """The truth mask's outlines as overlay Regions (frame px)."""
    from lucida.overlay.regions import Regions

    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    polys = [c.reshape(-1, 2).astype(np.float32) for c in found if len(c) >= 3]
    return Regions(polys, [[] for _ in polys], [0.0] * len(polys), None)


def fov_picture(
    image: np.ndarray,
    mask: np.ndarray,
    regions,
    um_per_px: float,
    title: str,
    width: int = 960,
) -> np.ndarray:
    """RGB uint8 picture `width` px wide: frame, truth outline (white), model contours (green),
    a scale bar and a legend."""
    from lucida.overlay.render import ContourRenderer, RenderContext, ScaleBarRenderer

    h, w = image.shape[:2]
    f = width / w
    canvas = cv2.resize(image, (width, int(round(h * f))), interpolation=cv2.INTER_AREA)
    scale = np.array([[f, 0, 0], [0, f, 0], [0, 0, 1]], np.float64)
    ctx = RenderContext(um_per_px=um_per_px / f)
    ContourRenderer(TRUTH_RGB, width_px=2).annotate(canvas, truth_regions(mask).warped(scale), ctx)
    ContourRenderer(MODEL_RGB, width_px=3).annotate(canvas, regions.warped(scale), ctx)
    ScaleBarRenderer().annotate(canvas, regions, ctx)
    band = np.full((30, canvas.shape[1], 3), 24, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(band, title, (10, 21), font, 0.55, (230, 230, 230), 1, cv2.LINE_AA)
    x = canvas.shape[1] - 330
    cv2.line(band, (x, 15), (x + 24, 15), TRUTH_RGB, 2, cv2.LINE_AA)
    cv2.putText(band, "ground truth", (x + 30, 21), font, 0.5, TRUTH_RGB, 1, cv2.LINE_AA)
    x += 150
    cv2.line(band, (x, 15), (x + 24, 15), MODEL_RGB, 3, cv2.LINE_AA)
    cv2.putText(band, "model contour", (x + 30, 21), font, 0.5, MODEL_RGB, 1, cv2.LINE_AA)
    return np.concatenate([band, canvas], axis=0)


def save_png(rgb: np.ndarray, path: str | os.PathLike, max_bytes: int = 500_000) -> int:
    """Write an RGB picture as PNG atomically; palette-quantized (256 colours) when the full-colour
    file would exceed max_bytes. Returns the file size in bytes."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img = Image.fromarray(rgb)
    img.save(tmp, format="PNG", optimize=True)
    if tmp.stat().st_size > max_bytes:
        img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            tmp, format="PNG", optimize=True
        )
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path.stat().st_size
