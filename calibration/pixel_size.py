"""Pixel size from a photo of a stage micrometer (parallel rulings at a known pitch).

1. Orientation: the strongest peak of the image's 2-D power spectrum lies along the
   rulings' normal (its harmonics and the sub-harmonics of longer ticks do too); the
   angle is then refined by maximising the sharpness of the projected profile.
2. Profile: pixels where the rulings are (a band-pass energy mask) are projected on
   the normal and averaged into a profile sampled every 0.25 px.
3. Period: every rational multiple of the spectral peak (harmonics of thin lines,
   sub-harmonics of longer 5th/10th ticks) is comb-tested on the profile; the smallest
   whose predicted rulings are nearly all really there is the pitch. Each ruling's
   centroid is located and position = phase + k * period is fitted.
4. Cross-checks: enough rulings, found without gaps, regular (residuals), spectral
   and line-fit periods agree, and the lines are straight and parallel (phase agrees
   along them; a chessboard's does not). Any failure refuses (RefusedInputError, exit
   10) instead of printing a precise wrong figure; the uncertainty is the line fit's
   standard error from its residuals.

Works for dark rulings on a bright field and bright on dark, any rotation, blur,
noise and uneven light.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import MeasurementError, RefusedInputError

BIN_PX = 0.25  # profile sampling, px
MIN_PERIOD_PX = 3.0  # finer rulings are too close to the pixel pitch to measure
SYSTEMATIC_REL = 3e-4  # relative uncertainty floor of um/px
MAX_SECOND_PEAK = 0.5  # power of a periodic second direction / main peak (a grid: >= 1)
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
        raise RefusedInputError(
            f"no clear periodic ruling in the micrometer image (strongest period stands only "
            f"{prominence:.0f}x above the background spectrum, need {MIN_PROMINENCE:.0f}x)"
        )
    # a ruling is periodic in one direction only; a chessboard or grid is the sum of
    # two gratings at an angle, with a second peak as strong as the first
    pk_angle = np.arctan2(fy[iy, 0], fx[0, ix])
    away = np.abs((np.arctan2(fy, fx) - pk_angle + np.pi / 2) % np.pi - np.pi / 2)
    other = (radius >= f_min) & (radius <= 1.0 / MIN_PERIOD_PX) & (away > np.radians(20))
    # only isolated peaks count (periodic); an edge or the scale's baseline spreads its
    # power along a line through the origin
    local = cv2.blur(spec.astype(np.float32), (9, 9)).astype(np.float64)
    other &= spec > 6.0 * local
    second = float(np.max(np.where(other, spec, 0)))
    if second > MAX_SECOND_PEAK * peak:
        raise RefusedInputError(
            "the pattern is periodic in two directions (a chessboard or grid), not a ruling: "
            f"a second direction has {second / peak:.0%} of the main period's power"
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


def _signed(prof: np.ndarray) -> np.ndarray:
    """Profile with its median removed and the rulings as peaks (rulings are the sparse,
    skewed side of the profile: dark lines on bright glass or bright on dark)."""
    p = prof - np.median(prof)
    return -p if np.mean(p**3) < 0 else p


def _dft_period(p: np.ndarray, period: float, span: float = 0.03) -> float:
    """Period (px) within +-`span` of `period` where the profile's Fourier amplitude
    peaks (a fine grid, then a parabola through the best three points)."""
    u = np.arange(len(p)) * BIN_PX
    grid = period * (1 + np.linspace(-span, span, 121))
    amp = np.abs(np.exp(-2j * np.pi * np.outer(1.0 / grid, u)) @ p)
    i = int(np.clip(np.argmax(amp), 1, len(grid) - 2))
    a, b, c = amp[i - 1], amp[i], amp[i + 1]
    d = a - 2 * b + c
    off = 0.0 if d == 0 else float(np.clip(0.5 * (a - c) / d, -1, 1))
    return float(grid[i] + off * (grid[1] - grid[0]))


@dataclass
class _Comb:
    """How well a comb of lines at `period` fits the profile: `present` predicted lines
    stand out of their half-period surroundings, out of `expected` predicted between
    the first and the last one that does."""

    period: float
    present: int
    expected: int
    contrast: float = 0.0  # typical (80th percentile) line prominence, profile units

    @property
    def coverage(self) -> float:
        return self.present / max(self.expected, 1)


def _comb(p: np.ndarray, period: float) -> _Comb:
    """Comb test of one candidate period on the signed profile `p`.

    Each predicted ruling (phase from the profile's Fourier component at 1/period) is
    compared with the two points half a period away: a ruling is there when it stands
    above both by a quarter of the typical (80th percentile) contrast. A period that is
    a fraction of the true pitch predicts lines on bare glass, so its coverage is ~1/m.
    """
    u = np.arange(len(p)) * BIN_PX
    z = np.sum(p * np.exp(-2j * np.pi * u / period))
    first = (-np.angle(z) / (2 * np.pi)) * period % period
    pos = first + np.arange(0, int((u[-1] - first) / period) + 1) * period
    if len(pos) < 4:
        return _Comb(period, 0, 1)
    # prominence of the highest point within +-0.1 period (a small period error adds up
    # over many lines) above the lowest points on each side up to half a period away:
    # high for a peak, ~0 for a slope or bare glass, and a longer tick next to a fine
    # one does not hide it
    f32 = p.astype(np.float32).reshape(1, -1)
    near = max(1, int(0.1 * period / BIN_PX))
    wide = max(1, int(0.2 * period / BIN_PX))
    peak = cv2.dilate(f32, np.ones((1, 2 * near + 1), np.uint8)).ravel().astype(np.float64)
    low = cv2.erode(f32, np.ones((1, 2 * wide + 1), np.uint8)).ravel().astype(np.float64)
    line = np.interp(pos, u, peak)
    side = np.maximum(np.interp(pos - 0.3 * period, u, low), np.interp(pos + 0.3 * period, u, low))
    c = line - side
    ref = float(np.percentile(c, 80))  # a fine tick even when every 5th is longer
    if ref <= 0:
        return _Comb(period, 0, len(pos))
    ok = c > 0.25 * ref
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return _Comb(period, 0, len(pos))
    return _Comb(period, int(ok.sum()), int(idx[-1] - idx[0] + 1), ref)


MIN_COVERAGE = 0.85  # share of predicted rulings that must really be there
MIN_LINES = 8  # rulings a trustworthy fit needs
MIN_RELATIVE_CONTRAST = 0.2  # pitch's line prominence / the spectral peak's


def _fundamental(prof: np.ndarray, p_hint: float) -> _Comb:
    """The ruling pitch (px) from the spectrum's strongest period `p_hint`.

    p_hint may be the pitch, a harmonic of it (thin sharp lines: pitch / 2, / 3) or a
    multiple (every 5th / 10th tick longer, numbers every 10th). Every rational
    candidate p_hint * k / m (k = 1..3, m = 1..10) is refined on the profile's spectrum
    and comb-tested; the smallest period whose predicted rulings are nearly all there
    (>= MIN_COVERAGE, >= MIN_LINES) is the pitch. Raises RefusedInputError when none is.
    """
    p = cv2.GaussianBlur(_signed(prof).reshape(1, -1), (0, 0), 1.0).ravel()
    length = len(p) * BIN_PX
    cands: list[float] = []
    for k in (1, 2, 3):
        for m in range(1, 11):
            c = p_hint * k / m
            if MIN_PERIOD_PX <= c <= length / 4 and all(abs(c / o - 1) > 0.02 for o in cands):
                cands.append(c)
    # the spectral peak's own comb sits on real lines: a candidate whose lines are far
    # fainter than those is a fraction of the pitch that found noise
    hint = _comb(p, _dft_period(p, p_hint))
    best: _Comb | None = None
    for c in sorted(cands):
        comb = _comb(p, _dft_period(p, c))
        if (
            comb.coverage >= MIN_COVERAGE
            and comb.present >= MIN_LINES
            and comb.contrast >= MIN_RELATIVE_CONTRAST * hint.contrast
        ):
            return comb
        if best is None or comb.present * comb.coverage > best.present * best.coverage:
            best = comb
    raise RefusedInputError(
        "not a regular ruling: no period explains the lines (best "
        f"{best.period if best else p_hint:.2f} px finds "
        f"{best.present if best else 0} of {best.expected if best else 0} predicted rulings); "
        "is this a stage micrometer photo?"
    )


def _strip_coherence(img: np.ndarray, weight: np.ndarray, angle: float, period: float) -> float:
    """Phase agreement (0..1) of the ruling's fundamental between strips taken along the
    lines: 1 for straight parallel lines; low for a chessboard (its rows alternate) or
    other 2-D texture."""
    ys, xs = np.nonzero(weight > 0)
    v = -xs * np.sin(angle) + ys * np.cos(angle)
    u = xs * np.cos(angle) + ys * np.sin(angle)
    val = img[ys, xs].astype(np.float64)
    edges = np.quantile(v, np.linspace(0, 1, 5))
    phasors = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (v >= lo) & (v <= hi)
        if sel.sum() < 50:
            continue
        x = val[sel] - val[sel].mean()
        phasors.append(np.sum(x * np.exp(-2j * np.pi * u[sel] / period)) / sel.sum())
    if len(phasors) < 2:
        return 0.0
    ph = np.asarray(phasors)
    return float(abs(ph.sum()) / max(np.abs(ph).sum(), 1e-12))


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


@dataclass
class _LineFit:
    """Straight-line fit position = first + k * period of the rulings' centroids (px)."""

    period: float
    se: float  # standard error of period from the residuals, px
    lines: int  # rulings in the fit
    span: int  # index range they cover (last k - first k + 1)
    rms: float  # residual RMS, px


def _fit_lines(prof: np.ndarray, period: float) -> _LineFit:
    """Locate each ruling's centroid and fit a straight line against its index
    (robust: outlying rulings are dropped); the residuals give the standard error."""
    u = np.arange(len(prof)) * BIN_PX
    p = _signed(prof)
    phase = np.angle(np.sum(p * np.exp(-2j * np.pi * u / period)))
    first = (-phase / (2 * np.pi)) * period % period
    for _ in range(3):
        ks = np.arange(-1, int((u[-1] - first) / period) + 2)
        found = [(k, _centroid(u, p, first + k * period, period)) for k in ks]
        found = [(k, r) for k, r in found if r is not None]
        if len(found) < 4:
            raise RefusedInputError(f"only {len(found)} rulings could be located; need at least 4")
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
            raise RefusedInputError("fewer than 4 clear rulings in the micrometer image")
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
    return _LineFit(period, se, n, int(k.max() - k.min() + 1), float(np.sqrt(np.mean(resid**2))))


MAX_RESIDUAL = 0.1  # line-position residual RMS, in periods, of a real ruling
MIN_COHERENCE = 0.8  # phase agreement of the ruling between strips along its lines
MAX_DISAGREEMENT = 0.005  # spectral vs line-fit period, relative (at least; see below)


def _gray(image: np.ndarray) -> np.ndarray:
    """HxW float32 luminance at the image's own depth (uint8, uint16 or float)."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2GRAY)
    return img.astype(np.float32)


def _refine_angle(proj: _Projector, angle: float, period: float) -> float:
    """The angle (rad) within +-4 deg of `angle` whose profile is sharpest at `period`:
    a grid of 33, then a golden-section search around the best grid point."""
    grid = angle + np.radians(np.linspace(-4.0, 4.0, 33))
    scores = [_sharpness(proj.profile(a), period) for a in grid]
    i = int(np.argmax(scores))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    golden = (np.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa = _sharpness(proj.profile(a), period)
    fb = _sharpness(proj.profile(b), period)
    for _ in range(12):
        if fa > fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = _sharpness(proj.profile(a), period)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = _sharpness(proj.profile(b), period)
    return float((lo + hi) / 2)


def measure_pixel_size(image: np.ndarray, spacing_um: float) -> PixelSize:
    """Measure um per px from a stage micrometer image (HxWx3 RGB or HxW; uint8, uint16
    or float at the camera's own depth).

    spacing_um: the micrometer's ruling pitch (e.g. 10 um for a 0.01 mm scale).
    Raises RefusedInputError (exit code 10) when the image is not a ruling or the
    cross-checks (lines found, their regularity, spectral vs line-fit period, straight
    parallel lines) fail, MeasurementError for other bad input.
    """
    if spacing_um <= 0:
        raise MeasurementError(f"ruling spacing must be > 0 um, got {spacing_um}")
    gray = _gray(image)
    if min(gray.shape) < 32:
        raise MeasurementError(f"micrometer image {gray.shape[1]}x{gray.shape[0]} is too small")
    full = 65535.0 if np.asarray(image).dtype == np.uint16 else 255.0
    lo, hi = np.percentile(gray[::2, ::2], [1, 99])
    if hi < 0.03 * full and np.asarray(image).dtype == np.uint8:
        raise RefusedInputError("micrometer image is black: no light, no rulings visible")
    if hi - lo < max(0.02 * hi, 1e-6) or float(gray.std()) < 1e-3 * max(float(gray.mean()), 1):
        raise RefusedInputError("micrometer image is blank: no rulings visible")
    img = _prepare(gray)
    fx, fy = _spectrum_peak(img, _dominant_normal(img))
    f0 = float(np.hypot(fx, fy))
    angle = float(np.arctan2(fy, fx))
    weight = _band_mask(img, f0, angle)
    if weight.sum() < 100:
        raise RefusedInputError("no ruling band found in the micrometer image")
    proj = _Projector(img, weight)
    angle = _refine_angle(proj, angle, 1.0 / f0)
    comb = _fundamental(proj.profile(angle), 1.0 / f0)
    if abs(comb.period * f0 - 1) > 0.02:  # the pitch is not the spectral peak: re-aim
        angle = _refine_angle(proj, angle, comb.period)
    prof = proj.profile(angle)
    fit = _fit_lines(prof, comb.period)
    period, se = fit.period, fit.se
    if not np.isfinite(period) or period <= MIN_PERIOD_PX * 0.9:
        raise RefusedInputError(f"measured ruling period {period:.3f} px is not plausible")
    # cross-checks: a precise figure is only given when independent views agree
    spectral = _dft_period(_signed(prof), period, span=0.01)
    problems = []
    if fit.lines < MIN_LINES:
        problems.append(f"only {fit.lines} rulings fit, need {MIN_LINES}")
    if fit.lines < MIN_COVERAGE * fit.span:
        problems.append(f"only {fit.lines} of {fit.span} rulings in the fitted range were found")
    if fit.rms > MAX_RESIDUAL * period:
        problems.append(
            f"rulings are irregular (residual {fit.rms:.2f} px = {fit.rms / period:.0%} of the "
            f"period, limit {MAX_RESIDUAL:.0%})"
        )
    # the spectral peak is as sharp as the ruling is long: ~ 1/span of the period
    tol = max(MAX_DISAGREEMENT, 0.1 / max(fit.span, 1))
    if abs(spectral / period - 1) > tol:
        problems.append(
            f"spectral period {spectral:.3f} px and line fit {period:.3f} px disagree by "
            f"{abs(spectral / period - 1):.2%} (limit {tol:.2%})"
        )
    coherence = _strip_coherence(img, weight, angle, period)
    if coherence < MIN_COHERENCE:
        problems.append(
            f"the pattern is not straight parallel lines (phase agreement {coherence:.2f} "
            f"along the lines, need {MIN_COHERENCE}); a chessboard or texture?"
        )
    if problems:
        raise RefusedInputError("pixel size refused: " + "; ".join(problems))
    um = spacing_um / period
    # statistical error of the line fit (from its residuals), plus a floor for what a
    # line fit does not see (illumination gradients across thick rulings)
    rel = float(np.hypot(se / period, SYSTEMATIC_REL))
    return PixelSize(
        um_per_px=float(um),
        um_per_px_uncertainty=float(um * rel),
        period_px=float(period),
        period_px_uncertainty=float(se),
        angle_deg=float(np.degrees(angle) % 180.0),
        lines=int(fit.lines),
        spacing_um=float(spacing_um),
    )
