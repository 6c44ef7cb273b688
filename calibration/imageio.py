"""Read and write RGB images with clear errors (OpenCV underneath, which is BGR)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .atomic import atomic_write_bytes
from .errors import ImageReadError


def _decode(p: Path, what: str) -> np.ndarray:
    """The file's pixels as stored (any depth, BGR order), or ImageReadError naming it."""
    if not p.is_file():
        raise ImageReadError(f"{what} {str(p)!r} does not exist or is not a file")
    data = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ImageReadError(f"{what} {str(p)!r} is not a readable image (PNG, JPEG, TIFF, ...)")
    return img


def read_image(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Read `path` as HxWx3 uint8 RGB (grey images are expanded; 16-bit is scaled).

    Raises ImageReadError (exit code 6) when the file is missing or not an image.
    """
    p = Path(path)
    img = _decode(p, what)
    if img.dtype == np.uint16:
        img = (img / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(f"{what} {str(p)!r} has pixel type {img.dtype}, expected 8 or 16 bit")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_gray_native(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Read `path` as HxW float32 luminance at the file's own depth (8- or 16-bit; 12-bit
    camera data in 16-bit files keeps all its levels instead of being cut to 8 bits).

    Raises ImageReadError (exit code 6) when the file is missing or not an image.
    """
    p = Path(path)
    img = _decode(p, what)
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{what} {str(p)!r} has pixel type {img.dtype}, expected 8 or 16 bit")
    img = img.astype(np.float32)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return img


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB (or grey) uint8 image atomically; the format follows the suffix."""
    p = Path(path)
    img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(p.suffix or ".png", img)
    if not ok:
        raise ImageReadError(f"cannot encode an image as {p.suffix!r} for {str(p)!r}")
    return atomic_write_bytes(p, buf.tobytes())


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 RGB (or HxW) uint8 -> HxW uint8 luminance."""
    if rgb.ndim == 2:
        return rgb
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
