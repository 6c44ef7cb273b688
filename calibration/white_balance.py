"""White balance: per-channel gains (r, g, b) that make a neutral surface grey.

Gains are normalised so the mean brightness is kept: a blank field of channel
means (R, G, B) maps to a grey at their average.
"""

from __future__ import annotations

import numpy as np

from .errors import MeasurementError


def _gains_from_means(means: np.ndarray, what: str) -> tuple[float, float, float]:
    means = np.asarray(means, np.float64).reshape(3)
    if np.any(~np.isfinite(means)) or np.any(means < 1.0):
        raise MeasurementError(
            f"{what} is too dark for white balance (channel means {means.round(1)})"
        )
    gains = means.mean() / means
    return float(gains[0]), float(gains[1]), float(gains[2])


def grey_world(image: np.ndarray, saturated: int = 250) -> tuple[float, float, float]:
    """Grey-world gains from an RGB uint8 image: the average colour is assumed grey.

    Pixels with any channel >= `saturated` are left out (clipped values lie about
    the colour). Best on a blank field or a field mostly of glass.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise MeasurementError(f"white balance needs an HxWx3 RGB image, got shape {image.shape}")
    px = image.reshape(-1, 3)
    ok = px.max(axis=1) < saturated
    if ok.sum() < 0.01 * len(px):
        raise MeasurementError(
            "white balance: the image is saturated almost everywhere; lower exposure"
        )
    return _gains_from_means(px[ok].mean(axis=0), "image")


def from_patch(image: np.ndarray, roi: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """Gains that make a reference patch neutral; roi = (x, y, width, height) in px."""
    x, y, w, h = (int(v) for v in roi)
    H, W = image.shape[:2]
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise MeasurementError(f"white reference patch {roi} is not inside the {W}x{H} image")
    patch = image[y : y + h, x : x + w].reshape(-1, 3).astype(np.float64)
    return _gains_from_means(patch.mean(axis=0), f"reference patch {roi}")


def apply_gains(image: np.ndarray, gains) -> np.ndarray:
    """RGB uint8 image times per-channel gains, saturated to uint8."""
    g = np.asarray(gains, np.float32).reshape(1, 1, 3)
    return np.clip(image.astype(np.float32) * g + 0.5, 0, 255).astype(np.uint8)
