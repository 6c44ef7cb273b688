"""Stage motion measured from the image itself: real cameras never report it.

`MotionEstimator` finds the frame-to-frame displacement of the field of view by phase
correlation of two small grey copies (the green channel, every 4th pixel of a 1080p frame,
area-averaged by 2; of a frame already resampled to half size, every 2nd), with the
correlation peak as its confidence, in camera px. Each frame's spectrum is computed once and
kept for the next frame; the peak is located to a fraction of a grey px from its larger
neighbour (Foroosh et al. 2002), which fits the peak's sinc shape: cv2.phaseCorrelate's 5x5
centroid pulls sub-pixel shifts towards whole grey px (8 camera px), measured on real H&E as
3.4 camera px read as 2.5.
`MotionGate` turns displacements into what the display may do: blank at once above the
blanking speed (um/s, through the calibration's um/px), let the overlay come back only from a
frame taken after the field settled, and keep the field's track (camera px over time) so an
overlay can be shifted by the displacement since its own frame (motion compensation).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Motion:
    """Displacement of the field between two frames.

    dx_px, dy_px: how far the image content moved, in camera px (+x right, +y down);
    dt_s: time between the two captures; confidence: phase-correlation peak, 0..1 (about 1 for
    the same texture shifted; near 0 when the two frames show unrelated images).
    """

    dx_px: float
    dy_px: float
    dt_s: float
    confidence: float

    @property
    def speed_px_s(self) -> float:
        return math.hypot(self.dx_px, self.dy_px) / self.dt_s if self.dt_s > 0 else 0.0


class MotionEstimator:
    """Phase correlation of consecutive frames on a grey copy 1/(stride*scale) of the frame's
    size (every `stride`-th green pixel, area-averaged by `scale`; 1920x1080 -> 240x128 after
    cropping to a multiple of 16 px): well under a millisecond per 1080p frame. By default the
    factor is chosen per frame width so the copy is about `width_px` wide (x8 at 1080p, x1 at
    320x240).

    min_confidence: below this peak the displacement is not trusted; the frames then count as
    still only when they are nearly the same image (mean abs difference under `still_diff`
    of the mean level), else as unknown motion (`update` returns a Motion with confidence 0 and
    an infinite displacement).
    """

    def __init__(
        self,
        scale: int | None = None,
        stride: int | None = None,
        min_confidence: float = 0.05,
        still_diff: float = 0.03,
        width_px: int = 240,
    ):
        if (scale is not None and scale < 1) or (stride is not None and stride < 1):
            raise ValueError(f"motion scale {scale}, stride {stride}: expected integers >= 1")
        self.scale, self.stride = scale, stride
        self.width_px = width_px
        self.min_confidence = min_confidence
        self.still_diff = still_diff
        self._prev: np.ndarray | None = None  # the previous windowed grey copy
        self._prev_spectrum: np.ndarray | None = None  # ... and its spectrum (cv2.dft, CCS)
        self._prev_ns = 0
        self._window: np.ndarray | None = None
        self.last_small: np.ndarray | None = None  # the newest frame's grey copy (focus guard)

    def factors(self, width: int) -> tuple[int, int]:
        """(stride, scale) for an image `width` px wide: as given, or chosen so that the grey
        copy is about `width_px` wide."""
        f = max(1, width // self.width_px)
        stride = self.stride or max(1, f // 2)
        return stride, self.scale or max(1, f // stride)

    def small(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> float32 grey copy (green channel), 1/(stride*scale) the size."""
        st, s = self.factors(rgb.shape[1])
        g = rgb[::st, ::st, 1]
        h, w = g.shape
        out = cv2.resize(g, (max(16, w // s), max(16, h // s)), interpolation=cv2.INTER_AREA)
        # the packed spectra need even sizes, and the FFT is fastest on them: a multiple of 16
        h, w = out.shape
        y0, x0 = (h % 16) // 2, (w % 16) // 2
        return out[y0 : y0 + h - h % 16, x0 : x0 + w - w % 16].astype(np.float32)

    def reset(self) -> None:
        """Forget the previous frame (a reopened camera, a new objective)."""
        self._prev = None

    def update(self, rgb: np.ndarray, t_ns: int, px_scale: float = 1.0) -> Motion | None:
        """The displacement since the previous frame given here (None for the first one, or when
        its grey copy has another size). px_scale: camera px per px of `rgb` (2 for a frame
        resampled to half size): the Motion is in camera px."""
        cur = self.last_small = self.small(rgb)
        if self._window is None or self._window.shape != cur.shape:
            self._window = cv2.createHanningWindow(cur.shape[::-1], cv2.CV_32F)
        cur = cv2.multiply(cur, self._window)
        spectrum = cv2.dft(cur)
        prev, prev_spectrum, prev_ns = self._prev, self._prev_spectrum, self._prev_ns
        self._prev, self._prev_spectrum, self._prev_ns = cur, spectrum, t_ns
        if prev is None or prev.shape != cur.shape:
            return None
        (dx, dy), peak = phase_correlate(prev_spectrum, spectrum)
        dt = max(1, t_ns - prev_ns) / 1e9
        if not peak >= self.min_confidence:
            level = float(cur.mean()) or 1.0
            diff = float(cv2.norm(prev, cur, cv2.NORM_L1)) / cur.size / level
            if diff <= self.still_diff:
                return Motion(0.0, 0.0, dt, float(peak))
            return Motion(math.inf, math.inf, dt, 0.0)
        stride, scale = self.factors(rgb.shape[1])
        f = stride * scale * px_scale
        return Motion(dx * f, dy * f, dt, float(peak))


def phase_correlate(before: np.ndarray, after: np.ndarray) -> tuple[tuple[float, float], float]:
    """Phase correlation of two images from their spectra (cv2.dft of a float32 image, CCS
    packed; even width and height) -> ((dx, dy) px the content moved from `before` to `after`,
    peak), the peak being the correlation in the 5x5 px around it (about 1 for the same texture
    shifted, near 0 for unrelated images), as cv2.phaseCorrelate reports it.

    The fraction of a px comes from the peak and its larger neighbour on each axis: a shift of
    d in (0, 1) px makes them sinc(d) and sinc(1 - d), so d = C(1) / (C(1) + C(0)).
    """
    cross = cv2.mulSpectrums(before, after, 0, conjB=True)
    # |cross| in both slots of each (re, im) pair: pairs run along the rows, except in the
    # first and last columns, where they run down (CCS packing)
    mag = cv2.sqrt(cv2.mulSpectrums(cross, cross, 0, conjB=True))
    mag[:, 2:-1:2] = mag[:, 1:-2:2]
    mag[2:-1:2, 0] = mag[1:-2:2, 0]
    mag[2:-1:2, -1] = mag[1:-2:2, -1]
    cv2.divide(cross, cv2.max(mag, 1e-30), dst=cross)
    surface = cv2.idft(cross, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    h, w = surface.shape
    _, _, _, (px, py) = cv2.minMaxLoc(surface)
    rows, cols = (py + np.arange(-2, 3)) % h, (px + np.arange(-2, 3)) % w
    near = surface[np.ix_(rows, cols)]  # the 5x5 px around the peak, wrapped
    peak = float(near.sum())
    fx = _fraction(float(near[2, 1]), float(near[2, 2]), float(near[2, 3]))
    fy = _fraction(float(near[1, 2]), float(near[2, 2]), float(near[3, 2]))
    x, y = px + fx, py + fy
    # the surface is circular: a peak past the middle is a negative shift; the content moved
    # by minus the peak's position (before = after shifted back)
    x, y = (x - w if x > w / 2 else x), (y - h if y > h / 2 else y)
    return (-x, -y), peak


def _fraction(left: float, centre: float, right: float) -> float:
    """Sub-px offset (-0.5..0.5) of a sinc-shaped peak from its samples left of, at and right
    of the highest one (Foroosh, Zerubia and Berthod 2002)."""
    side, sign = (right, 1.0) if right >= left else (left, -1.0)
    if side <= 0.0:  # no neighbour on the peak's side of the sinc: the peak is on its sample
        return 0.0
    return sign * side / (side + centre)


def blank_speed_um_s(
    display_px: float, camera_px_per_display_px: float, um_per_px: float, latency_s: float
) -> float:
    """The stage speed (um/s) at which a contour drawn `latency_s` after its frame was taken
    lies `display_px` display px off the tissue: the default blanking speed."""
    return display_px * camera_px_per_display_px * um_per_px / max(latency_s, 1e-3)


@dataclass(frozen=True)
class GateState:
    """What the gate decided for one frame.

    moving: faster than the blanking speed (or about to be): the display blanks;
    onset: this frame started a motion episode (the display must blank now);
    settled: the field has been below the blanking speed for `settle_frames` frames: this
    frame may be inferred and its overlay shown; speed_um_s: measured speed (inf: unknown);
    position_px: the field's track (cumulative displacement, camera px) at this frame.
    """

    moving: bool
    onset: bool
    settled: bool
    speed_um_s: float
    confidence: float
    position_px: tuple[float, float]


class MotionGate:
    """Per-frame motion decisions and the field's track (see the module docstring).

    blank_speed_um_s: blank above this stage speed; settle_frames: consecutive frames below
    `settle_ratio` x the blanking speed before the overlay may come back; predict: blank when
    the measured acceleration says the stage is past the blanking speed by now (a frame's
    displacement is the mean speed over its interval, half an interval behind).
    """

    def __init__(
        self,
        blank_speed_um_s: float = 100.0,
        settle_frames: int = 2,
        settle_ratio: float = 0.8,
        predict: bool = True,
        estimator: MotionEstimator | None = None,
        track_len: int = 256,
    ):
        self.blank_speed_um_s = float(blank_speed_um_s)
        self.settle_frames = int(settle_frames)
        self.settle_ratio = settle_ratio
        self.predict = predict
        self.estimator = estimator or MotionEstimator()
        self._lock = threading.Lock()
        self._track: deque[tuple[int, float, float]] = deque(maxlen=track_len)
        self._x = self._y = 0.0
        self._speed = 0.0  # um/s, previous frame
        self._still = 0
        self._moving = False
        self.last: GateState | None = None

    def reset(self) -> None:
        """Start over (camera reopened, objective changed): unsettled until frames agree."""
        with self._lock:
            self.estimator.reset()
            self._still = 0
            self._speed = 0.0

    def update(
        self, rgb: np.ndarray, t_ns: int, um_per_px: float | None, px_scale: float = 1.0
    ) -> GateState:
        """Measure this frame against the previous one and decide (capture thread). um_per_px:
        the camera's; px_scale: camera px per px of `rgb` (see MotionEstimator.update)."""
        m = self.estimator.update(rgb, t_ns, px_scale)
        um = um_per_px or 1.0
        with self._lock:
            if m is None:
                speed, conf = math.inf if self._moving else 0.0, 0.0
                self._still = 0
            elif not math.isfinite(m.dx_px):
                speed, conf = math.inf, 0.0
            else:
                speed, conf = m.speed_px_s * um, m.confidence
                if math.hypot(m.dx_px, m.dy_px) < self.noise_px(conf):
                    speed = 0.0  # below what a match this weak can resolve (glass, faint tissue)
                self._x += m.dx_px
                self._y += m.dy_px
            limit = self.blank_speed_um_s
            ahead = speed
            # a weak match's one-frame jump is not a trend: predict from strong peaks or on motion
            trusted = conf >= 0.75 or self._speed > 0
            if self.predict and trusted and math.isfinite(speed) and speed > 0.4 * limit:
                ahead = speed + max(0.0, speed - self._speed)
            moving = speed > limit or ahead > limit
            onset = moving and not self._moving
            if moving:
                self._still = 0
            elif m is not None and speed <= self.settle_ratio * limit:
                self._still += 1
            self._moving = moving
            self._speed = speed if math.isfinite(speed) else 0.0
            settled = not moving and self._still >= self.settle_frames
            self._track.append((t_ns, self._x, self._y))
            st = GateState(moving, onset, settled, speed, conf, (self._x, self._y))
            self.last = st
            return st

    @staticmethod
    def noise_px(confidence: float) -> float:
        """Displacement (camera px) a match of this confidence cannot tell from still: 0.3 px
        for a strong peak, 2.1 px at 0.5 (little texture: glass, faint stain)."""
        return 0.3 + 6.0 * max(0.0, 0.8 - confidence)

    def shift_since(self, t_ns: int, now_ns: int | None = None) -> tuple[float, float] | None:
        """Displacement (camera px) of the field from the frame captured at `t_ns` to the newest
        frame, carried on to `now_ns` at the last measured velocity (at most 3 frame intervals
        ahead: a late frame); None when `t_ns` is no longer on the track."""
        with self._lock:
            if not self._track:
                return None
            at = next((p for p in reversed(self._track) if p[0] == t_ns), None)
            if at is None:
                return None
            t_last, x, y = self._track[-1]
            dx, dy = x - at[1], y - at[2]
            if now_ns is not None and len(self._track) > 1:
                t0, x0, y0 = self._track[max(0, len(self._track) - 5)]  # velocity over 4 frames
                frame_s = (t_last - self._track[-2][0]) / 1e9
                ahead = min(max(0.0, (now_ns - t_last) / 1e9), 3.0 * frame_s)
                span = (t_last - t0) / 1e9
                if span > 0 and not self._moving:
                    dx += (x - x0) / span * ahead
                    dy += (y - y0) / span * ahead
            return dx, dy
