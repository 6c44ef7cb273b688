"""Calibration and validation images for `lucida quantize`: folders of RGB tiles (PNG/JPG/TIFF).

The preprocessing here is exactly the bundle's: RGB uint8 pixels, cropped (or, when smaller,
enlarged) to the model's input size, then (pixel - mean) / std as float32; the defaults (mean 0,
std 1) feed raw 0..255 pixels, for models that normalize inside their graph.

Labels for validation: a heatmap model's ground truth is a sibling mask (`img.png` +
`img.mask.png`, non-zero = positive); a class-score model's is the image's parent folder name
(`val/0/a.png`, `val/1/b.png`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_TAG = ".mask"


class ImageSetError(ValueError):
    """A calibration or validation folder that cannot be used."""


@dataclass
class Sample:
    """One image after preprocessing to the model input: rgb uint8 HxWx3, label or None.

    label: for heatmaps a bool HxW mask at input resolution; for class scores an int class.
    """

    path: Path
    rgb: np.ndarray
    label: np.ndarray | int | None = None


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under folder (recursively), sorted, masks (`*.mask.*`) left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageSetError(f"{folder}: no such image folder")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not p.stem.lower().endswith(MASK_TAG)
    )
    if not files:
        raise ImageSetError(
            f"{folder}: no images (expected {', '.join(IMAGE_SUFFIXES)} files of RGB tiles)"
        )
    return files


def pick_subset(paths: list[Path], n: int, seed: int) -> list[Path]:
    """n paths drawn without replacement with a seeded generator (all of them when n >= len)."""
    if n <= 0:
        raise ImageSetError(f"sample count must be positive, got {n}")
    if n >= len(paths):
        return list(paths)
    idx = np.sort(np.random.default_rng(seed).choice(len(paths), size=n, replace=False))
    return [paths[i] for i in idx]


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 HxWx3 (grey and alpha images converted)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageSetError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def fit_to_input(img: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    """Centre-crop to width x height px; an image smaller than that is first enlarged to cover it.

    Cropping (not resizing) keeps the pixel size the model was trained at.
    """
    h, w = img.shape[:2]
    if w < width or h < height:
        f = max(width / w, height / h)
        size = (max(width, round(w * f)), max(height, round(h * f)))
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        img = cv2.resize(img, size, interpolation=interp)
        h, w = img.shape[:2]
    y0, x0 = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(img[y0 : y0 + height, x0 : x0 + width])


def mask_path(image: Path) -> Path | None:
    """The sibling mask of an image (img.png -> img.mask.png, any image suffix), if present."""
    for suffix in (".png", image.suffix, ".tif", ".jpg"):
        p = image.with_name(image.stem + MASK_TAG + suffix)
        if p.is_file():
            return p
    return None


def load_samples(
    paths: list[Path], width: int, height: int, labels: str | None = None
) -> list[Sample]:
    """Images fitted to the input; labels: None, "mask" (sibling masks) or "folder" (class index)."""
    out = []
    for p in paths:
        rgb = fit_to_input(load_rgb(p), width, height)
        label = None
        if labels == "mask":
            mp = mask_path(p)
            if mp is not None:
                m = cv2.imread(str(mp), cv2.IMREAD_GRAYSCALE)
                if m is None:
                    raise ImageSetError(f"{mp}: not a readable mask image")
                label = fit_to_input(m, width, height, nearest=True) > 0
        elif labels == "folder" and p.parent.name.isdigit():
            label = int(p.parent.name)
        out.append(Sample(p, rgb, label))
    return out


def normalize(rgb: np.ndarray, mean, std) -> np.ndarray:
    """RGB uint8 -> float32 model input, (pixel - mean) / std per channel."""
    x = rgb.astype(np.float32)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
