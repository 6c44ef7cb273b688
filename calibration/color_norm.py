"""Colour (stain) normalization of camera frames to a model's training domain.

Applied to the model's input only, never to the image shown to the pathologist.

- Reinhard: match the per-channel mean and standard deviation in CIE L*a*b* of the
  tissue to a target (`lab_mean`, `lab_std`; L in 0..100, a and b about -128..127).
- Macenko: estimate the two stain vectors (haematoxylin, eosin) of the frame from
  optical density, and re-synthesise with the target's stain vectors and maximum
  concentrations.

Both change tissue only: the result is blended with the original by a smooth tissue
weight (a function of the pixel's colour: darker than glass, or coloured), so glass
stays as it is and nothing jumps at any tissue fraction; the statistics are weighted
by it too, smoothed over frames (`momentum`) so colours do not flicker.

Per frame, each method runs exactly on every 24th pixel and a colour map is fitted to
what it did there, then applied to the whole frame: for Reinhard a map affine in RGB
(RGBMap: one 3x4 cv2.transform; refitted only when the smoothed source statistics move),
for Macenko a map affine in optical density (ODMap: two 8-bit LUTs and one transform), the
form each method nearly has. Glass is copied through unchanged by both. `lucida calibrate
bench-color` measures the cost against 5 ms / 20 ms per 1080p frame and the error against
the exact method on real H&E. `.exact(frame)` runs the method on every pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

from .errors import MeasurementError, RefusedInputError

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


def _weight_luts() -> tuple[np.ndarray, np.ndarray]:
    """8-bit LUTs of the tissue weight (0..255) from L (darker than glass) and from a
    single chroma axis (|a| or |b|, colour): smoothstep ramps, no hard cut-off."""
    x = np.arange(256, dtype=np.float64)
    dark = np.clip((GLASS_L - x / _L8) / DARK_RAMP_L, 0, 1)
    colour = np.clip((np.abs(x - 128) - CHROMA_START) / CHROMA_RAMP, 0, 1)

    def smooth(t):
        return np.rint(255 * t * t * (3 - 2 * t)).astype(np.uint8)

    return smooth(dark), smooth(colour)


DARK_RAMP_L = 10.0  # L* below GLASS_L over which a pixel goes from glass to tissue
CHROMA_START, CHROMA_RAMP = 5.0, 10.0  # |a*| or |b*| where colour starts to mean tissue
_LUT_DARK, _LUT_COLOUR = _weight_luts()


def tissue_weight(lab8: np.ndarray) -> np.ndarray:
    """HxW uint8 tissue weight (0 glass .. 255 tissue) of an 8-bit Lab image: a smooth
    function of the pixel's colour (darker than glass, or coloured), so a normalization
    blended by it leaves glass alone and has no jump at any tissue fraction."""
    L, a, b = cv2.split(lab8)
    return cv2.max(cv2.LUT(L, _LUT_DARK), cv2.max(cv2.LUT(a, _LUT_COLOUR), cv2.LUT(b, _LUT_COLOUR)))


def _weighted(
    lab8: np.ndarray, weight8: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, std) 3-vectors in 8-bit Lab units, weighted by the tissue weight (`weight8`,
    HxW uint8, computed when None), and the tissue fraction (mean weight, 0..1).

    Sums of w * x and w * x^2 in OpenCV calls, a handful per frame where NumPy took a dozen:
    both products are exact in float32 (at most 255^3 < 2^24) and the sums run in float64."""
    w8 = tissue_weight(lab8) if weight8 is None else weight8
    total = cv2.sumElems(w8)[0]
    if total <= 0:
        mean, std = cv2.meanStdDev(lab8)
        return mean[:, 0], std[:, 0], 0.0
    wx = cv2.multiply(lab8, cv2.merge([w8, w8, w8]), dtype=cv2.CV_32F)
    mean = np.array(cv2.sumElems(wx)[:3]) / total
    mean_sq = np.array(cv2.sumElems(cv2.multiply(wx, lab8, dtype=cv2.CV_32F))[:3]) / total
    std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    return mean, std, total / 255.0 / w8.size


MIN_TISSUE = 0.05  # tissue fraction a colour target must be measured on
MIN_STD = 0.5  # Lab units: a target with less spread in any channel is degenerate
MIN_MEAN_L = 15.0  # L*: a darker field is black, not tissue
MIN_A = 6.0  # a*: H&E tissue is pink to purple (real and virtual 10-42; a board photo 2)


def _check_tissue(lab8: np.ndarray, what: str) -> None:
    """Refuse a colour-target image without enough stained tissue (RefusedInputError)."""
    mean8, std8, frac = _weighted(lab8)
    if mean8[0] / _L8 < MIN_MEAN_L:
        raise RefusedInputError(
            f"{what} is black (mean L* {mean8[0] / _L8:.0f}, need >= {MIN_MEAN_L:.0f}): no light, "
            "no tissue to take a colour target from"
        )
    if frac < MIN_TISSUE:
        raise RefusedInputError(
            f"{what} has too little tissue for a colour target ({frac:.1%} of the field, need "
            f"{MIN_TISSUE:.0%}): blank glass, black or an empty field?"
        )
    if float(np.min(std8)) < MIN_STD:
        raise RefusedInputError(
            f"{what} has no colour spread (Lab std {np.round(std8, 2).tolist()}, need >= "
            f"{MIN_STD} in every channel): a flat or synthetic field, not stained tissue"
        )
    if mean8[1] - 128 < MIN_A:
        raise RefusedInputError(
            f"{what} has no stained tissue: its dark parts are not pink or purple (mean a* "
            f"{mean8[1] - 128:.1f}, need >= {MIN_A:.0f}; H&E is 10-40); a pattern or a "
            "black-and-white image?"
        )


def _to_stats(mean8: np.ndarray, std8: np.ndarray) -> LabStats:
    mean = (mean8[0] / _L8, mean8[1] - 128.0, mean8[2] - 128.0)
    std = (std8[0] / _L8, std8[1], std8[2])
    return LabStats(tuple(float(v) for v in mean), tuple(float(max(v, 1e-3)) for v in std))


def lab_stats(image: np.ndarray, step: int = 1) -> LabStats:
    """Lab mean/std of the tissue in an RGB uint8 image (every `step`-th pixel each way),
    weighted by the smooth tissue weight (glass counts ~0)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise MeasurementError(
            f"colour statistics need HxWx3 uint8 RGB, got {image.dtype} {image.shape}"
        )
    mean8, std8, _ = _weighted(_lab8(np.ascontiguousarray(image[::step, ::step])))
    return _to_stats(mean8, std8)


def fit_target(images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> LabStats:
    """Target statistics of a training domain: pooled, tissue-weighted Lab mean/std over
    its images. Refuses (RefusedInputError, naming the image) an image with too little
    tissue or no colour spread."""
    if not images:
        raise MeasurementError("no images to compute colour target statistics from")
    labs = []
    for i, im in enumerate(images):
        what = f"image {names[i]!r}" if names else f"image {i + 1}"
        lab = _lab8(np.ascontiguousarray(im[::2, ::2]))
        _check_tissue(lab, what)
        labs.append(lab.reshape(-1, 1, 3))
    mean8, std8, _ = _weighted(np.concatenate(labs))
    return _to_stats(mean8, std8)


# ------------------------------------------------------------ fast per-frame path

OD_CODES = 255.0 / 2.0  # uint8 optical-density code per OD unit (base 10)
FIT_STEP = 24  # the exact method runs on every 24th pixel each way; the map is fitted there
MIN_SAMPLE = 4000  # pixels: smaller frames are sampled more densely
RIDGE, RIDGE_CODE = 1e-4, 20.0  # identity prior: weight (share of the rows) and its OD code
GLASS_DN = 226  # min(R, G, B) at or above which a pixel is glass for ODMap (L* ~ 90)
GLASS_WEIGHT = 0.25  # the glass rows together weigh this many times all tissue rows


def _od_codes(v: np.ndarray) -> np.ndarray:
    return OD_CODES * -np.log10(np.maximum(v, 0.5) / 255.0)


_LUT_OD = np.clip(np.rint(_od_codes(np.arange(256.0))), 0, 255).astype(np.uint8)
_LUT_EXP = np.clip(np.rint(255.0 * 10 ** (-np.arange(256.0) / OD_CODES)), 0, 255).astype(np.uint8)


_GREYS = np.repeat(np.arange(205, 256, 2, dtype=np.uint8)[:, None], 3, axis=1)  # map to selves
_GREY_TISSUE = tissue_weight(_lab8(_GREYS.reshape(-1, 1, 3))).reshape(-1) / 255.0


def _fit_weights(before: np.ndarray, weight8: np.ndarray | None) -> np.ndarray:
    """Row weights of a map fit on `before` (N sample px, then the grey ramp _GREYS): tissue
    by its tissue weight; glass (the sample's and the ramp, which must map to itself)
    together GLASS_WEIGHT x all the tissue."""
    src = np.concatenate([before.reshape(-1, 3), _GREYS])
    if weight8 is None:
        tissue = tissue_weight(_lab8(src.reshape(-1, 1, 3))).reshape(-1) / 255.0
    else:
        tissue = np.concatenate([weight8.reshape(-1) / 255.0, _GREY_TISSUE])
    glass = 1.0 - tissue
    glass[len(src) - len(_GREYS) :] = 1.0
    return tissue + glass * (GLASS_WEIGHT * tissue.sum() / max(glass.sum(), 1e-9))


def _fit_affine(x: np.ndarray, y: np.ndarray, wt: np.ndarray, prior: float) -> np.ndarray:
    """3x4 M minimising sum wt * |M @ [x, 1] - y|^2 plus a weak pull towards "no change"
    (identity, zero offset) of RIDGE x the total weight at scale `prior` (x's units): the
    4x4 normal equations, so the fit costs a few small products, not an SVD."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    xw = xa * wt[:, None]
    ridge = RIDGE * float(wt.sum()) * prior * prior
    lhs = xw.T @ xa + ridge * np.eye(4)
    rhs = xw.T @ y + ridge * np.eye(4)[:, :3]
    return np.linalg.solve(lhs, rhs).T


class ODMap:
    """A colour map that is affine in optical density: od_out = M @ [od_in, 1] (3x4, in
    uint8 OD codes). Macenko's stain swap is exactly this. Applying it to a frame is an
    8-bit LUT to OD, one 3x4 cv2.transform and an 8-bit LUT back: ~3 passes over the frame
    instead of a float OD round trip. Glass (OD ~0) maps to ~itself when the fit saw it
    unchanged.
    """

    def __init__(self, m: np.ndarray):
        self.m = np.asarray(m, np.float32).reshape(3, 4)

    @classmethod
    def fit(cls, before: np.ndarray, after: np.ndarray, weight8: np.ndarray | None = None) -> ODMap:
        """Weighted least-squares map from the RGB pixels `before` to `after` (HxWx3
        uint8 each; weight8: their tissue weight, computed when None). Glass is pinned:
        the sample's glass pixels and a ramp of bright neutral greys (which must map to
        themselves) weigh GLASS_WEIGHT x all the tissue."""
        src = np.concatenate([before.reshape(-1, 3), _GREYS]).astype(np.float64)
        dst = np.concatenate([after.reshape(-1, 3), _GREYS]).astype(np.float64)
        wt = _fit_weights(before, weight8)
        return cls(_fit_affine(_od_codes(src), _od_codes(dst), wt, RIDGE_CODE))

    def __call__(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The mapped frame (written into `out` when given); pixels bright in every channel
        (glass, min >= GLASS_DN) are copied through, so 8-bit OD rounding (a few DN near
        white) never tints glass."""
        h, w = image.shape[:2]
        flat = np.ascontiguousarray(image).reshape(h, w * 3)
        od = cv2.LUT(flat, _LUT_OD).reshape(h, w, 3)
        od2 = cv2.transform(od, self.m)
        res = cv2.LUT(
            od2.reshape(h, w * 3), _LUT_EXP, dst=None if out is None else out.reshape(h, w * 3)
        )
        out = res.reshape(h, w, 3)
        _keep_glass(image, out)
        return out


RIDGE_DN = 20.0  # RGBMap's identity prior scale, in DN


def _keep_glass(image: np.ndarray, out: np.ndarray) -> None:
    """Copy the pixels of `image` bright in every channel (glass, min >= GLASS_DN) into
    `out` (same shape): a colour map never tints glass."""
    r, g, b = cv2.split(image)  # min of the planes + one threshold: ~2x faster than inRange
    low = cv2.min(cv2.min(r, g), b)
    glass = cv2.threshold(low, GLASS_DN - 1, 255, cv2.THRESH_BINARY)[1]
    cv2.copyTo(image, glass, out)


class RGBMap:
    """A colour map affine in RGB: out = M @ [r, g, b, 1] (3x4, DN), one cv2.transform per
    frame (uint8 in and out, rounded and saturated), glass copied through.

    Reinhard is affine in CIE Lab, whose L*, a*, b* are close to affine in 8-bit sRGB over
    the colours of stained tissue (cube root of linear light ~ the camera's gamma): on real
    H&E and on the virtual slide this follows the exact method more closely than ODMap, in
    one pass instead of three (`lucida calibrate bench-color` prints both errors).
    """

    def __init__(self, m: np.ndarray):
        self.m = np.asarray(m, np.float32).reshape(3, 4)

    @classmethod
    def fit(
        cls, before: np.ndarray, after: np.ndarray, weight8: np.ndarray | None = None
    ) -> RGBMap:
        """Weighted least-squares map from RGB pixels `before` to `after` (HxWx3 uint8
        each; weight8: their tissue weight, computed when None), glass pinned as in
        ODMap.fit."""
        src = np.concatenate([before.reshape(-1, 3), _GREYS]).astype(np.float64)
        dst = np.concatenate([after.reshape(-1, 3), _GREYS]).astype(np.float64)
        return cls(_fit_affine(src, dst, _fit_weights(before, weight8), RIDGE_DN))

    def __call__(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The mapped frame (HxWx3 uint8), written into `out` when given (same shape)."""
        out = cv2.transform(image, self.m, dst=out)
        _keep_glass(image, out)
        return out


def map_error(m, before: np.ndarray, after_lab8: np.ndarray, weight8: np.ndarray) -> float:
    """Tissue-weighted mean CIE76 colour difference (Delta E, Lab units) between a map's
    result on the sample `before` and the exact method's result there (8-bit Lab)."""
    d = _lab8(m(before)).astype(np.float32) - after_lab8
    d[..., 0] *= 1.0 / _L8
    de = np.sqrt((d * d).sum(axis=-1)).reshape(-1)
    w = weight8.reshape(-1).astype(np.float32)
    return float(de @ w / max(float(w.sum()), 1e-9))


def _sample(image: np.ndarray) -> np.ndarray:
    """Every n-th pixel each way (n <= FIT_STEP) keeping at least MIN_SAMPLE pixels."""
    h, w = image.shape[:2]
    step = int(max(1, min(FIT_STEP, np.sqrt(h * w / MIN_SAMPLE))))
    return np.ascontiguousarray(image[::step, ::step])


REFIT_LAB = 0.5  # 8-bit Lab units: source statistics moved this far -> refit the RGBMap
REFIT_FRAMES = 30  # ... and at least every this many frames (the sample's colours change)


class ReinhardNormalizer:
    """Maps the Lab statistics of the tissue in frames onto `target`, blended by the
    smooth tissue weight so glass stays as it is.

    source: fixed source statistics (e.g. measured once on a calibration slide);
    None measures each frame (on every 24th pixel) and smooths with `momentum`
    (0 = no smoothing, 0.9 = slow).
    """

    def __init__(self, target: LabStats, source: Optional[LabStats] = None, momentum: float = 0.8):
        if not 0 <= momentum < 1:
            raise MeasurementError(f"momentum must be in [0, 1), got {momentum}")
        self.target = target
        self.fixed_source = source
        self.momentum = momentum
        self._source: Optional[np.ndarray] = None  # 2x3 (mean, std) in 8-bit Lab units
        self._map: RGBMap | None = None  # the map in use, fitted for the source stats _map_src
        self._map_src: np.ndarray | None = None
        self._map_age = 0
        self.fits = 0  # how many times a map was fitted (bench, tests)
        self.map_error = 0.0  # Delta E against the exact method on the sample, at the last choice

    @staticmethod
    def _to8(stats: LabStats) -> np.ndarray:
        m, s = stats.mean, stats.std
        return np.array(
            [[m[0] * _L8, m[1] + 128, m[2] + 128], [s[0] * _L8, s[1], s[2]]], np.float64
        )

    def lut(self, source: LabStats) -> np.ndarray:
        """256x1x3 uint8 look-up table in 8-bit Lab for `source` -> target."""
        return self._table(self._to8(source))

    def _table(self, src: np.ndarray) -> np.ndarray:
        t = self._to8(self.target)
        x = np.arange(256, dtype=np.float64)[:, None]
        y = (x - src[0]) * (t[1] / np.maximum(src[1], 1e-3)) + t[0]
        return np.clip(np.rint(y), 0, 255).astype(np.uint8).reshape(256, 1, 3)

    def exact(self, image: np.ndarray, src: np.ndarray | None = None) -> np.ndarray:
        """The method itself on every pixel: Lab statistics mapped to the target, blended
        by the tissue weight (HxWx3 uint8 RGB; `src` 2x3 source stats, 8-bit Lab)."""
        lab = _lab8(image)
        weight = tissue_weight(lab)
        if src is None:
            src = self._source_stats(lab, weight)
            if src is None:
                return image.copy()  # glass only: nothing to normalize
        return self._exact(image, lab, weight, src)

    def _exact(self, image, lab, weight, src) -> np.ndarray:
        norm = cv2.cvtColor(cv2.LUT(lab, self._table(src)), cv2.COLOR_LAB2RGB)
        return blend(image, norm, weight)

    def _source_stats(self, lab_small: np.ndarray, weight8=None) -> np.ndarray | None:
        if self.fixed_source is not None:
            return self._to8(self.fixed_source)
        mean8, std8, frac = _weighted(lab_small, weight8)
        if frac <= 0:
            return None
        cur = np.stack([mean8, np.maximum(std8, 1e-3)])
        if self._source is None or self.momentum == 0:
            self._source = cur
        else:
            self._source = self.momentum * self._source + (1 - self.momentum) * cur
        return self._source

    def map_for(self, image: np.ndarray) -> RGBMap | ODMap | None:
        """The colour map for this frame: the source statistics measured on every 24th pixel
        (smoothed), the exact method run there, an RGBMap and an ODMap fitted to it and the
        one closer to the exact method there kept (map_error, Delta E); refitted (in the form
        kept) when the statistics move more than REFIT_LAB, chosen again every REFIT_FRAMES.
        None when the frame is glass only (nothing to normalize)."""
        small = _sample(image)
        lab = _lab8(small)
        weight = tissue_weight(lab)
        src = self._source_stats(lab, weight)
        if src is None:
            return None
        self._map_age += 1
        full = self._map is None or self._map_age >= REFIT_FRAMES
        if full or float(np.abs(src - self._map_src).max()) > REFIT_LAB:
            after = self._exact(small, lab, weight, src)
            # which form follows the method closer is chosen on a full refit; in between, the
            # map is refitted in the form in use (one small fit, no comparison)
            kinds = (RGBMap, ODMap) if full else (type(self._map),)
            fitted = [k.fit(small, after, weight) for k in kinds]
            if len(fitted) > 1:
                after_lab = _lab8(after).astype(np.float32)
                errors = [map_error(m, small, after_lab, weight) for m in fitted]
                best = int(np.argmin(errors))
                self._map, self.map_error = fitted[best], errors[best]
            else:
                self._map = fitted[0]
            self._map_src, self._map_age = src.copy(), 0
            self.fits += 1
        return self._map

    def __call__(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalized HxWx3 uint8 RGB copy of `image` (glass unchanged), written into `out`
        when given: the exact method on every 24th pixel, a map fitted to it (see map_for),
        applied to the whole frame (one pass for an RGBMap)."""
        m = self.map_for(image)
        if m is None:
            if out is None:
                return image.copy()
            np.copyto(out, image)
            return out
        return m(image, out)


def blend(original: np.ndarray, normalized: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """original + (normalized - original) * weight / 255 per pixel (weight HxW uint8)."""
    w = weight.astype(np.float32) * (1.0 / 255.0)
    return cv2.blendLinear(normalized, original, w, 1.0 - w)


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


MIN_STAIN_ANGLE_DEG = 5.0  # H and E optical-density directions closer than this are one stain


def fit_stain_target(
    image: np.ndarray, background: float = 240.0, what: str = "image"
) -> StainTarget:
    """A Macenko target from a reference image of the training domain. Refuses
    (RefusedInputError, naming `what`) too little stained tissue or stain vectors that
    are not two distinct stains."""
    _check_tissue(_lab8(np.ascontiguousarray(image[::2, ::2])), what)
    try:
        s, m = stain_vectors(image, background)
    except MeasurementError as exc:
        raise RefusedInputError(f"{what}: {exc}") from None
    angle = float(np.degrees(np.arccos(np.clip(abs(float(s[0] @ s[1])), 0, 1))))
    if angle < MIN_STAIN_ANGLE_DEG or not np.all(np.isfinite(m)) or float(np.min(m)) <= 0:
        raise RefusedInputError(
            f"{what}: stain vectors are degenerate (H and E {angle:.1f} deg apart, need "
            f">= {MIN_STAIN_ANGLE_DEG}; max concentrations {np.round(m, 3).tolist()}): not H&E?"
        )
    return StainTarget((tuple(s[0]), tuple(s[1])), (float(m[0]), float(m[1])), background)


class MacenkoNormalizer:
    """Re-synthesises the tissue of frames with the target's stains (stain vectors
    estimated per frame on every 24th pixel), blended by the tissue weight.

    Per pixel the stain swap is linear in optical density: od_out = od @ M with the 3x3
    M = pinv(frame stains) * (target max / frame max) @ target stains.
    """

    def __init__(self, target: StainTarget):
        self.target = target
        bg = target.background
        self._od_lut = (-np.log((np.arange(256) + 1.0) / bg)).astype(np.float32).reshape(256, 1)

    def _matrix(self, image: np.ndarray) -> np.ndarray | None:
        try:
            stains, max_c = stain_vectors(_sample(image), self.target.background)
        except MeasurementError:
            return None  # glass only: nothing to normalize
        scale = np.asarray(self.target.max_conc) / np.maximum(max_c, 1e-6)
        return (np.linalg.pinv(stains) * scale[None, :]) @ np.asarray(self.target.stains)

    def exact(self, image: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
        """The method on every pixel (float OD maths), blended by the tissue weight."""
        m = self._matrix(image) if m is None else m
        if m is None:
            return image.copy()
        bg = self.target.background
        od = cv2.LUT(image, np.repeat(self._od_lut, 3, axis=1).reshape(256, 1, 3))
        out = cv2.exp(cv2.transform(od, (-m.T).astype(np.float32)))  # exp(-od_out)
        norm = cv2.convertScaleAbs(out, alpha=bg)
        return blend(image, norm, tissue_weight(_lab8(image)))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Normalized copy: stains from every 24th pixel, the exact method there, an ODMap
        fitted to it applied to the whole frame."""
        m = self._matrix(image)
        if m is None:
            return image.copy()
        small = _sample(image)
        return ODMap.fit(small, self.exact(small, m))(image)


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
