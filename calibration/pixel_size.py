"""Pixel size from a photo of a stage micrometer (parallel rulings at a known pitch).

1. Orientation: the strongest peak of the image's 2-D power spectrum lies along the
   rulings' normal (its harmonics and the sub-harmonics of longer ticks do too); the
   angle is then refined by maximising the sharpness of the projected profile.
2. Profile: pixels where the rulings are (a band-pass energy mask) are projected on
   the normal and averaged into a profile sampled every 0.25 px.
3. Period: the first strong peak of the profile's autocorrelation (so every-5th
   and every-10th longer ticks do not fool it), then each ruling's centroid is
   located and a straight line position = phase + k * period is fitted; its standard
   error gives the uncertainty.

Works for dark rulings on a bright field and bright on dark, any rotation, blur,
noise and uneven light.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import MeasurementError

BIN_PX = 0.25  # profile sampling, px
MIN_PERIOD_PX = 3.0  # finer rulings are too close to the pixel pitch to measure
SYSTEMATIC_REL = 3e-4  # relative uncertainty floor of um/px
MIN_PROMINENCE = 100.0  # spectral peak / median of its frequency ring (noise gives ~10-20)


@dataclass
class PixelSize:
    """A pixel-size measurement.

    um_per_px: micrometres per camera pixel; um_per_px_uncertainty: 1-sigma, same unit.
    period_px: the ruling pitch in px; angle_deg: direction of the rulings' normal,
    degrees from the image x axis; lines: rulings used in the fit.
    """

    um_per_px: float
    um_per_px_uncertainty: float
    period_px: float
    period_px_uncertainty: float
    angle_deg: float
    lines: int
    spacing_um: float

    def to_json(self) -> dict:
        return {
            "um_per_px": round(self.um_per_px, 6),
            "um_per_px_uncertainty": round(self.um_per_px_uncertainty, 6),
            "relative_uncertainty": round(self.um_per_px_uncertainty / self.um_per_px, 6),
            "period_px": round(self.period_px, 4),
            "period_px_uncertainty": round(self.period_px_uncertainty, 4),
            "angle_deg": round(self.angle_deg, 3),
            "lines": self.lines,
            "spacing_um": self.spacing_um,
        }


def _big_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a large sigma (px), computed on a downsampled copy (fast)."""
    h, w = img.shape
    f = max(1, int(sigma / 4))
    if f == 1:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    small = cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / f)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _prepare(gray: np.ndarray) -> np.ndarray:
    """Float image with the illumination and its slow variation removed (zero mean)."""
    img = gray.astype(np.float32)
    background = _big_blur(img, max(img.shape) / 12.0)
    img = img / np.maximum(background, 1.0) - 1.0
    return img - float(img.mean())


def _dominant_normal(img: np.ndarray) -> float:
    """Direction (rad) of the dominant gradient, i.e. the normal of the dominant lines
    (structure tensor; the ticks outweigh the micrometer's baseline)."""
    sm = cv2.GaussianBlur(img, (0, 0), 1.0)
    gx = cv2.Sobel(sm, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(sm, cv2.CV_32F, 0, 1, ksize=3)
    jxx, jyy, jxy = float(np.sum(gx * gx)), float(np.sum(gy * gy)), float(np.sum(gx * gy))
    return 0.5 * float(np.arctan2(2 * jxy, jxx - jyy))


def _spectrum_peak(
    img: np.ndarray, near_angle: float, cone_deg: float = 10.0
) -> tuple[float, float]:
    """(fx, fy) in cycles/px of the strongest periodic component whose direction is
    within `cone_deg` of `near_angle` (rad), in the half-plane fx >= 0."""
    h, w = img.shape
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    n = cv2.getOptimalDFTSize(max(h, w) * 2)
    padded = np.zeros((n, n), np.float32)
    padded[:h, :w] = img * win
    spec = np.abs(np.fft.rfft2(padded)) ** 2  # n x (n//2+1), axis 0 = fy, axis 1 = fx
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    diff = np.abs((np.arctan2(fy, fx) - near_angle + np.pi / 2) % np.pi - np.pi / 2)
    f_min = 3.0 / min(h, w)  # at least ~3 periods across the short side
    allowed = (radius >= f_min) & (radius <= 1.0 / MIN_PERIOD_PX) & (diff <= np.radians(cone_deg))
    iy, ix = np.unravel_index(int(np.argmax(np.where(allowed, spec, 0))), spec.shape)
    peak = float(spec[iy, ix])
    ring = np.abs(radius - radius[iy, ix]) < 2.0 / n
    prominence = peak / max(float(np.median(spec[ring])), 1e-30)
    if not allowed[iy, ix] or prominence < MIN_PROMINENCE:
        raise MeasurementError(
            f"no clear periodic ruling in the micrometer image (strongest period stands only "
            f"{prominence:.0f}x above the background spectrum, need {MIN_PROMINENCE:.0f}x)"
        )

    def parabolic(a: float, b: float, c: float) -> float:
        d = a - 2 * b + c
        return 0.0 if d == 0 else 0.5 * (a - c) / d

    dy = parabolic(spec[(iy - 1) % n, ix], spec[iy, ix], spec[(iy + 1) % n, ix])
    dx = 0.0
    if 0 < ix < spec.shape[1] - 1:
        dx = parabolic(spec[iy, ix - 1], spec[iy, ix], spec[iy, ix + 1])
    return float((ix + dx) / n), float(np.fft.fftfreq(n)[iy] + dy / n)


class _Projector:
    """Bins the masked pixels of an image along a direction (the ruling normal)."""

    def __init__(self, img: np.ndarray, weight: np.ndarray, max_px: int = 300_000):
        ys, xs = np.nonzero(weight > 0)
        if len(xs) > max_px:  # a regular subsample keeps it fast on big images
            step = int(np.ceil(len(xs) / max_px))
            ys, xs = ys[::step], xs[::step]
        self.x, self.y = xs.astype(np.float64), ys.astype(np.float64)
        self.v = img[ys, xs].astype(np.float64)

    def profile(self, angle: float) -> np.ndarray:
        """Mean intensity per BIN_PX bin of u = x cos(angle) + y sin(angle)."""
        u = self.x * np.cos(angle) + self.y * np.sin(angle)
        idx = ((u - u.min()) / BIN_PX).astype(np.int64)
        num = np.bincount(idx, self.v)
        den = np.bincount(idx)
        return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def _band_mask(img: np.ndarray, f: float, angle: float) -> np.ndarray:
    """HxW float32 0/1 weight: where the image has energy at the ruling frequency
    (complex demodulation at f along `angle`, then a Gaussian low-pass)."""
    h, w = img.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (2 * np.pi * f) * (x * np.cos(angle) + y * np.sin(angle))
    sigma = 2.0 / f
    re = _big_blur(img * np.cos(phase), sigma)
    im = _big_blur(img * np.sin(phase), sigma)
    energy = np.sqrt(re**2 + im**2)
    return (energy > 0.3 * float(np.percentile(energy, 99.5))).astype(np.float32)


def _sharpness(prof: np.ndarray, period_px: float) -> float:
    """Power of the profile at the ruling frequency and its first harmonics."""
    n = len(prof)
    u = np.arange(n) * BIN_PX
    p = prof - prof.mean()
    return float(
        sum(abs(np.sum(p * np.exp(-2j * np.pi * k * u / period_px))) ** 2 for k in (1, 2, 3))
    )


def _fundamental(prof: np.ndarray, p_hint: float) -> float:
    """Ruling period (px) from the profile's autocorrelation.

    The spectral peak `p_hint` is the pitch or, when every 5th / 10th tick is longer,
    a multiple of it: the smallest lag p_hint / m (m = 1..10) where the autocorrelation
    has a clear peak (after a dip, at least half as high as at p_hint) is the pitch.
    """
    p = cv2.GaussianBlur((prof - prof.mean()).reshape(1, -1), (0, 0), 1.5).ravel()
    n = len(p)
    m_fft = cv2.getOptimalDFTSize(2 * n)
    f = np.fft.rfft(p, m_fft)
    ac = np.fft.irfft(f * np.conj(f), m_fft)[:n] / np.maximum(np.arange(n, 0, -1), 1)
    ac = ac / max(ac[0], 1e-12)

    def peak_near(lag_px: float) -> tuple[int, float] | None:
        c = lag_px / BIN_PX
        lo, hi = int(c * 0.85), int(np.ceil(c * 1.15)) + 1
        if lo < 2 or hi >= min(n - 1, n * 2 // 3):
            return None
        i = lo + int(np.argmax(ac[lo:hi]))
        if not (ac[i] >= ac[i - 1] and ac[i] >= ac[i + 1]) or i in (lo, hi - 1):
            return None
        dip = float(ac[1:i].min())
        if ac[i] - dip < 0.25:
            return None
        return i, float(ac[i])

    base = peak_near(p_hint)
    if base is None:
        return p_hint
    best = base[0]
    for m in range(10, 1, -1):
        if p_hint / m < 2.0:
            continue
        cand = peak_near(p_hint / m)
        if cand is not None and cand[1] >= 0.5 * base[1]:
            best = cand[0]
            break
    a, b, c = ac[best - 1], ac[best], ac[best + 1]
    d = a - 2 * b + c
    off = 0.0 if d == 0 else 0.5 * (a - c) / d
    return (best + off) * BIN_PX


def _centroid(u: np.ndarray, p: np.ndarray, c: float, period: float) -> tuple[float, float] | None:
    """Sub-pixel centre and height of the ruling peak nearest `c` (px) in profile p(u):
    start at the highest sample within half a period, then re-centre a symmetric
    +-0.3 period centroid window on it until it settles (no pull towards `c`)."""
    near = np.abs(u - c) <= 0.5 * period
    if near.sum() < 4:
        return None
    c1 = float(u[near][int(np.argmax(p[near]))])
    base = float(np.min(p[near]))
    for _ in range(4):
        win = np.abs(u - c1) <= 0.3 * period
        wgt = np.clip(p[win] - base, 0, None)
        if win.sum() < 3 or wgt.sum() <= 0:
            return None
        c2 = float(np.sum(wgt * u[win]) / wgt.sum())
        if abs(c2 - c1) < 1e-3:
            c1 = c2
            break
        c1 = c2
    return c1, float(np.max(p[near]) - base)


def _fit_lines(prof: np.ndarray, period: float) -> tuple[float, float, int]:
    """(period px, its standard error, rulings used) from a straight-line fit of the
    rulings' centroids against their index."""
    u = np.arange(len(prof)) * BIN_PX
    p = prof - np.median(prof)
    if np.mean(p**3) < 0:  # rulings are the sparse side of the profile: make them peaks
        p = -p
    phase = np.angle(np.sum(p * np.exp(-2j * np.pi * u / period)))
    first = (-phase / (2 * np.pi)) * period % period
    for _ in range(3):
        ks = np.arange(-1, int((u[-1] - first) / period) + 2)
        found = [(k, _centroid(u, p, first + k * period, period)) for k in ks]
        found = [(k, r) for k, r in found if r is not None]
        if len(found) < 4:
            raise MeasurementError(f"only {len(found)} rulings could be located; need at least 4")
        kept = np.array([k for k, _ in found], float)
        pos = np.array([r[0] for _, r in found])
        amp = np.array([r[1] for _, r in found])
        good = amp >= 0.3 * np.median(amp)
        # the same ruling found twice (from neighbouring predictions): keep one
        _, first_idx = np.unique(np.round(pos / (0.5 * period)), return_index=True)
        uniq = np.zeros(len(pos), bool)
        uniq[first_idx] = True
        good &= uniq
        if good.sum() < 4:
            raise MeasurementError("fewer than 4 clear rulings in the micrometer image")
        for _ in range(4):
            a = np.polyfit(kept[good], pos[good], 1)
            r = pos - np.polyval(a, kept)
            mad = 1.4826 * np.median(np.abs(r[good] - np.median(r[good]))) + 1e-6
            new = good & (np.abs(r) <= 4 * mad + 0.02 * period)
            if new.sum() == good.sum() or new.sum() < 4:
                break
            good = new
        period, first = float(a[0]), float(a[1])
    k, x = kept[good], pos[good]
    n = len(k)
    resid = x - np.polyval([period, first], k)
    s2 = float(np.sum(resid**2) / max(n - 2, 1))
    se = float(np.sqrt(s2 / np.sum((k - k.mean()) ** 2)))
    return period, se, n


def measure_pixel_size(image: np.ndarray, spacing_um: float) -> PixelSize:
    """Measure um per px from a stage micrometer image (HxWx3 RGB or HxW uint8).

    spacing_um: the micrometer's ruling pitch (e.g. 10 um for a 0.01 mm scale).
    Raises MeasurementError when no clear periodic ruling is found.
    """
    if spacing_um <= 0:
        raise MeasurementError(f"ruling spacing must be > 0 um, got {spacing_um}")
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if min(gray.shape) < 32:
        raise MeasurementError(f"micrometer image {gray.shape[1]}x{gray.shape[0]} is too small")
    if float(gray.std()) < 1.0:
        raise MeasurementError("micrometer image is blank: no rulings visible")
    img = _prepare(gray)
    fx, fy = _spectrum_peak(img, _dominant_normal(img))
    f0 = float(np.hypot(fx, fy))
    angle = float(np.arctan2(fy, fx))
    weight = _band_mask(img, f0, angle)
    if weight.sum() < 100:
        raise MeasurementError("no ruling band found in the micrometer image")
    proj = _Projector(img, weight)
    period0 = _fundamental(proj.profile(angle), 1.0 / f0)
    # refine the angle: the sharpest profile, first on a grid of +-4 deg, then by
    # golden-section search around the best grid point
    grid = angle + np.radians(np.linspace(-4.0, 4.0, 33))
    scores = [_sharpness(proj.profile(a), period0) for a in grid]
    i = int(np.argmax(scores))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    golden = (np.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa = _sharpness(proj.profile(a), period0)
    fb = _sharpness(proj.profile(b), period0)
    for _ in range(12):
        if fa > fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = _sharpness(proj.profile(a), period0)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = _sharpness(proj.profile(b), period0)
    angle = (lo + hi) / 2
    prof = proj.profile(angle)
    period, se, n = _fit_lines(prof, period0)
    if not np.isfinite(period) or period <= 1.5:
        raise MeasurementError(f"measured ruling period {period:.3f} px is not plausible")
    um = spacing_um / period
    # statistical error of the fit, plus a floor for what a line fit does not see
    # (illumination gradients across thick rulings; ~0.03 % on the simulated micrometers)
    rel = float(np.hypot(se / period, SYSTEMATIC_REL))
    return PixelSize(
        um_per_px=float(um),
        um_per_px_uncertainty=float(um * rel),
        period_px=float(period),
        period_px_uncertainty=float(se),
        angle_deg=float(np.degrees(angle) % 180.0),
        lines=int(n),
        spacing_um=float(spacing_um),
    )
