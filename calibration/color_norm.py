"""Colour (stain) normalization of camera frames to a model's training domain.

Applied to the model's input only, never to the image shown to the pathologist.

- Reinhard: match the per-channel mean and standard deviation in CIE L*a*b* to a
  target (`lab_mean`, `lab_std`; L in 0..100, a and b in about -128..127). Each
  channel is an affine map, so after one RGB->Lab conversion it is a single 8-bit
  look-up table, then Lab->RGB: a few ms for a 1080p frame.
- Macenko: estimate the two stain vectors (haematoxylin, eosin) of the frame from
  optical density, and re-synthesise with the target's stain vectors and maximum
  concentrations. Slower (float maths per pixel); optional.

Source statistics are measured on tissue pixels (glass is left out) of each frame,
on a subsample, and smoothed over frames (`momentum`) so the colours do not flicker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

from .errors import MeasurementError

GLASS_L = 88.0  # L* above this (and low chroma) is glass, not tissue
_L8 = 255.0 / 100.0  # OpenCV 8-bit Lab: L * 255 / 100, a + 128, b + 128


@dataclass(frozen=True)
class LabStats:
    """Per-channel mean and std in CIE L*a*b* (L 0..100; a, b about -128..127)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> dict:
        return {
            "lab_mean": [round(v, 4) for v in self.mean],
            "lab_std": [round(v, 4) for v in self.std],
        }


def _lab8(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)


def _tissue(lab8: np.ndarray) -> np.ndarray:
    """Nx3 float64 8-bit Lab pixels that are tissue (not bright, colourless glass)."""
    px = lab8.reshape(-1, 3).astype(np.float64)
    chroma = np.hypot(px[:, 1] - 128, px[:, 2] - 128)
    keep = (px[:, 0] < GLASS_L * _L8) | (chroma > 12)
    return px[keep] if keep.sum() >= max(64, 0.02 * len(px)) else px


def lab_stats(image: np.ndarray, step: int = 1) -> LabStats:
    """Lab mean/std of the tissue in an RGB uint8 image (every `step`-th pixel each way)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise MeasurementError(
            f"colour statistics need HxWx3 uint8 RGB, got {image.dtype} {image.shape}"
        )
    px = _tissue(_lab8(np.ascontiguousarray(image[::step, ::step])))
    mean8, std8 = px.mean(axis=0), px.std(axis=0)
    mean = (mean8[0] / _L8, mean8[1] - 128.0, mean8[2] - 128.0)
    std = (std8[0] / _L8, std8[1], std8[2])
    return LabStats(tuple(float(v) for v in mean), tuple(float(max(v, 1e-3)) for v in std))


def fit_target(images: Sequence[np.ndarray]) -> LabStats:
    """Target statistics of a training domain: pooled Lab mean/std over its images."""
    if not images:
        raise MeasurementError("no images to compute colour target statistics from")
    pools = [_tissue(_lab8(np.ascontiguousarray(im[::2, ::2]))) for im in images]
    px = np.concatenate(pools)
    m8, s8 = px.mean(axis=0), px.std(axis=0)
    return LabStats(
        (float(m8[0] / _L8), float(m8[1] - 128), float(m8[2] - 128)),
        (float(s8[0] / _L8), float(s8[1]), float(s8[2])),
    )


class ReinhardNormalizer:
    """Maps the Lab statistics of frames onto `target`.

    source: fixed source statistics (e.g. measured once on a calibration slide);
    None measures each frame (on every 4th pixel) and smooths with `momentum`
    (0 = no smoothing, 0.9 = slow).
    """

    def __init__(self, target: LabStats, source: Optional[LabStats] = None, momentum: float = 0.8):
        if not 0 <= momentum < 1:
            raise MeasurementError(f"momentum must be in [0, 1), got {momentum}")
        self.target = target
        self.fixed_source = source
        self.momentum = momentum
        self._source: Optional[np.ndarray] = None  # 2x3 (mean, std) in 8-bit Lab units

    @staticmethod
    def _to8(stats: LabStats) -> np.ndarray:
        m, s = stats.mean, stats.std
        return np.array(
            [[m[0] * _L8, m[1] + 128, m[2] + 128], [s[0] * _L8, s[1], s[2]]], np.float64
        )

    def lut(self, source: LabStats) -> np.ndarray:
        """256x1x3 uint8 look-up table in 8-bit Lab for `source` -> target."""
        s, t = self._to8(source), self._to8(self.target)
        x = np.arange(256, dtype=np.float64)[:, None]
        y = (x - s[0]) * (t[1] / np.maximum(s[1], 1e-3)) + t[0]
        return np.clip(np.rint(y), 0, 255).astype(np.uint8).reshape(256, 1, 3)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Normalized HxWx3 uint8 RGB copy of `image`."""
        lab = _lab8(image)
        if self.fixed_source is not None:
            src = self._to8(self.fixed_source)
        else:
            px = _tissue(np.ascontiguousarray(lab[::4, ::4]))
            cur = np.stack([px.mean(axis=0), np.maximum(px.std(axis=0), 1e-3)])
            if self._source is None or self.momentum == 0:
                self._source = cur
            else:
                self._source = self.momentum * self._source + (1 - self.momentum) * cur
            src = self._source
        t = self._to8(self.target)
        x = np.arange(256, dtype=np.float64)[:, None]
        y = (x - src[0]) * (t[1] / np.maximum(src[1], 1e-3)) + t[0]
        table = np.clip(np.rint(y), 0, 255).astype(np.uint8).reshape(256, 1, 3)
        return cv2.cvtColor(cv2.LUT(lab, table), cv2.COLOR_LAB2RGB)


# ------------------------------------------------------------------ Macenko


@dataclass(frozen=True)
class StainTarget:
    """Macenko target: stain optical-density unit vectors (2x3, haematoxylin first, RGB
    order) and the 99th percentile concentration of each stain."""

    stains: tuple[tuple[float, float, float], tuple[float, float, float]]
    max_conc: tuple[float, float]
    background: float = 240.0


def _od(image: np.ndarray, background: float) -> np.ndarray:
    return -np.log((image.reshape(-1, 3).astype(np.float64) + 1.0) / background)


def stain_vectors(
    image: np.ndarray, background: float = 240.0, beta: float = 0.15, alpha: float = 1.0
):
    """(2x3 stain unit vectors, haematoxylin first; 2 max concentrations) of an RGB image."""
    od = _od(image, background)
    od = od[np.all(od > beta, axis=1)]
    if len(od) < 100:
        raise MeasurementError("too little stained tissue for Macenko stain estimation")
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]  # the two largest eigenvectors
    if plane[:, 0].sum() < 0:
        plane[:, 0] *= -1
    if plane[:, 1].sum() < 0:
        plane[:, 1] *= -1
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2]) if v1[0] > v2[0] else np.stack([v2, v1])  # H has more red OD
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]
    return stains, np.percentile(conc, 99, axis=1)


def fit_stain_target(image: np.ndarray, background: float = 240.0) -> StainTarget:
    """A Macenko target from a reference image of the training domain."""
    s, m = stain_vectors(image, background)
    return StainTarget((tuple(s[0]), tuple(s[1])), (float(m[0]), float(m[1])), background)


class MacenkoNormalizer:
    """Re-synthesises frames with the target's stains (stain vectors estimated per frame
    on every 4th pixel)."""

    def __init__(self, target: StainTarget):
        self.target = target

    def __call__(self, image: np.ndarray) -> np.ndarray:
        bg = self.target.background
        try:
            stains, max_c = stain_vectors(np.ascontiguousarray(image[::4, ::4]), bg)
        except MeasurementError:
            return image.copy()  # glass only: nothing to normalize
        od = _od(image, bg)
        conc = od @ np.linalg.pinv(stains)  # N x 2
        conc *= np.asarray(self.target.max_conc) / np.maximum(max_c, 1e-6)
        out = bg * np.exp(-conc @ np.asarray(self.target.stains))
        return np.clip(out, 0, 255).astype(np.uint8).reshape(image.shape)


def normalizer_from_manifest(color_norm) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """The normalizer a bundle asks for, or None.

    color_norm: the bundle manifest's `color_norm` section (an object or a dict) with
    `method` ("none", "reinhard" or "macenko"), and for reinhard `lab_mean`, `lab_std`
    (CIE Lab units), for macenko `stains` (2x3), `max_conc` (2), optional `background`.
    """
    if color_norm is None:
        return None
    get = (
        color_norm.get
        if isinstance(color_norm, dict)
        else lambda k, d=None: getattr(color_norm, k, d)
    )
    method = str(get("method", "none") or "none").lower()
    if method == "none":
        return None
    if method == "reinhard":
        mean, std = get("lab_mean"), get("lab_std")
        if mean is None or std is None or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise MeasurementError(
                "colour normalization 'reinhard' needs lab_mean[3] and positive lab_std[3]"
            )
        return ReinhardNormalizer(LabStats(tuple(map(float, mean)), tuple(map(float, std))))
    if method == "macenko":
        stains, max_c = get("stains"), get("max_conc")
        if stains is None or max_c is None:
            raise MeasurementError(
                "colour normalization 'macenko' needs stains[2][3] and max_conc[2]"
            )
        bg = float(get("background", 240.0) or 240.0)
        return MacenkoNormalizer(
            StainTarget(tuple(tuple(map(float, s)) for s in stains), tuple(map(float, max_c)), bg)
        )
    raise MeasurementError(
        f"unknown colour normalization method {method!r}; expected none, reinhard or macenko"
    )
