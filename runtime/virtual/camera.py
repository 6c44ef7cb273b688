"""The camera of the virtual microscope: what a real sensor does to the optical image.

Applied to an RGB uint8 image of the field of view, in this order:
- motion blur along the stage velocity (a box blur along x and y, length speed * exposure);
- exposure, analogue gain, per-channel colour gains (white balance cast) and vignetting
  (radial falloff, 1 - vignetting * (r / r_corner)^2, so `vignetting` is the loss at the
  corners), all folded into one precomputed gain map; saturation clips at 255;
- Gaussian read noise and shot noise, sigma(I) = gain * sqrt(read_noise^2 + shot_noise^2 * I / gain)
  in digital numbers (DN), added through a variance-stabilising transform so it costs four
  uint8 passes (two look-ups, one add, one subtract) with precomputed noise planes (used in
  turn, at a random offset, so two consecutive frames never share a noise pattern).
Everything per frame is uint8 OpenCV arithmetic; maps and banks are built once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

REFERENCE_EXPOSURE_MS = 10.0  # exposure at which the image has its nominal brightness


class CameraError(ValueError):
    """A camera setting out of range."""


# Camera colour casts / white-balance errors held out from training (colour_gains R, G, B).
CAMERA_SHIFTS = {
    "warm": (1.0, 0.82, 0.6),  # tungsten lamp, daylight white balance
    "cool": (0.72, 0.86, 1.0),  # LED / daylight lamp, tungsten white balance
    "green": (0.82, 1.0, 0.78),  # a green-heavy sensor left unbalanced
}


@dataclass(frozen=True)
class CameraConfig:
    """Camera settings.

    resolution: (width, height) px; fps: frames per second; exposure_ms: exposure time (the
    image brightness scales with exposure_ms / 10 ms, motion blur with exposure_ms); gain:
    analogue gain (brightness and noise); read_noise_dn, shot_noise: noise model (DN, see the
    module docstring; 0 and 0 turn noise off); vignetting: fractional brightness loss at the
    corners (0 = none); colour_gains: (R, G, B) white-balance error; motion_blur: on/off;
    flicker: lamp flicker, the brightness of each frame varies by up to +-flicker (0.03 = 3 %).
    """

    resolution: tuple[int, int] = (1920, 1080)
    fps: float = 30.0
    exposure_ms: float = 10.0
    gain: float = 1.0
    read_noise_dn: float = 1.5
    shot_noise: float = 0.35
    vignetting: float = 0.25
    colour_gains: tuple[float, float, float] = (1.0, 0.97, 0.9)
    motion_blur: bool = True
    flicker: float = 0.0

    def __post_init__(self):
        w, h = self.resolution
        if not (isinstance(w, int) and isinstance(h, int) and 16 <= w <= 8192 and 16 <= h <= 8192):
            raise CameraError(
                f"camera resolution must be (width, height), 16..8192 px each, got {self.resolution!r}"
            )
        if not 0.1 <= self.fps <= 1000:
            raise CameraError(f"camera fps must be 0.1..1000, got {self.fps!r}")
        if not 0.01 <= self.exposure_ms <= 10000:
            raise CameraError(f"camera exposure_ms must be 0.01..10000, got {self.exposure_ms!r}")
        if not 0.05 <= self.gain <= 64:
            raise CameraError(f"camera gain must be 0.05..64, got {self.gain!r}")
        if self.read_noise_dn < 0 or self.shot_noise < 0:
            raise CameraError("camera read_noise_dn and shot_noise must be >= 0")
        if not 0 <= self.vignetting < 1:
            raise CameraError(f"camera vignetting must be in [0, 1), got {self.vignetting!r}")
        if not 0 <= self.flicker < 0.5:
            raise CameraError(f"camera flicker must be in [0, 0.5), got {self.flicker!r}")
        if len(self.colour_gains) != 3 or not all(0 < g <= 4 for g in self.colour_gains):
            raise CameraError(
                f"camera colour_gains must be three gains in (0, 4], got {self.colour_gains!r}"
            )


class CameraModel:
    """Applies a CameraConfig to frames; `seed` makes the noise reproducible."""

    NOISE_PAD = 64  # px of slack in the noise bank for per-frame random offsets
    NOISE_PLANES = 3  # independent noise planes, used in turn: a sensor's noise is not a
    # pattern that moves (shifted copies of one plane look like stage motion to a motion estimate)

    def __init__(self, config: CameraConfig, seed: int = 0):
        self.config = c = config
        w, h = c.resolution
        self._rng = np.random.default_rng([int(seed), 202])
        brightness = c.exposure_ms / REFERENCE_EXPOSURE_MS * c.gain
        self.gain_map = self.vignette_map(c.resolution, c.vignetting)[..., None] * (
            np.asarray(c.colour_gains, np.float32) * np.float32(brightness)
        )
        top = float(self.gain_map.max())
        self._gain_scale = top / 255.0
        self._gain_u8 = np.clip(np.rint(self.gain_map / self._gain_scale), 0, 255).astype(np.uint8)
        self._noise = c.read_noise_dn > 0 or c.shot_noise > 0
        if self._noise:
            self._build_noise(w, h)

    @staticmethod
    def vignette_map(resolution: tuple[int, int], vignetting: float) -> np.ndarray:
        """HxW float32 relative illumination: 1 at the centre, 1 - vignetting at the corners."""
        w, h = resolution
        x = (np.arange(w, dtype=np.float32) - (w - 1) / 2) / ((w - 1) / 2 or 1)
        y = (np.arange(h, dtype=np.float32) - (h - 1) / 2) / ((h - 1) / 2 or 1)
        r2 = (
            x[None, :] ** 2 * (w / math.hypot(w, h)) ** 2
            + y[:, None] ** 2 * (h / math.hypot(w, h)) ** 2
        )
        return (1.0 - vignetting * r2).astype(np.float32)

    def _build_noise(self, w: int, h: int) -> None:
        """Forward/inverse variance-stabilising LUTs and a bank of unit Gaussian noise."""
        c = self.config
        g = c.gain
        read2 = (g * c.read_noise_dn) ** 2
        k = g * c.shot_noise**2  # sigma^2 = read2 + k * I (DN)
        i = np.arange(256, dtype=np.float64)
        if k > 0:
            t = (2.0 / k) * (np.sqrt(read2 + k * i) - math.sqrt(read2))
        else:
            t = i / math.sqrt(read2)
        q = 250.0 / t[-1]  # uint8 units per sigma, so the transform fills uint8
        self._fwd = np.clip(np.rint(t * q), 0, 255).astype(np.uint8)
        # Inverse: for each transformed level, the intensity with the nearest forward value.
        levels = np.arange(256, dtype=np.float64) / q
        inv = np.interp(levels, t, i)
        self._inv = np.clip(np.rint(inv), 0, 255).astype(np.uint8)
        self._npos, self._nneg = [], []
        for _ in range(self.NOISE_PLANES):
            n = self._rng.standard_normal((h + self.NOISE_PAD, w + self.NOISE_PAD, 3), np.float32)
            n = np.clip(np.rint(n * q), -255, 255)
            self._npos.append(np.maximum(n, 0).astype(np.uint8))
            self._nneg.append(np.maximum(-n, 0).astype(np.uint8))
        self._frame = 0

    def apply(
        self, image: np.ndarray, velocity_px_s: tuple[float, float] = (0.0, 0.0)
    ) -> np.ndarray:
        """The camera's view of `image` (HxWx3 uint8, the configured resolution) while the image
        moves at velocity_px_s (px/s) across the sensor."""
        c = self.config
        out = image
        if c.motion_blur:
            ex = c.exposure_ms / 1000.0
            lx = int(round(abs(velocity_px_s[0]) * ex))
            ly = int(round(abs(velocity_px_s[1]) * ex))
            if lx >= 2 or ly >= 2:
                out = cv2.blur(out, (max(1, lx), max(1, ly)))
        scale = self._gain_scale
        if c.flicker:
            scale *= 1.0 + c.flicker * float(self._rng.uniform(-1.0, 1.0))
        out = cv2.multiply(out, self._gain_u8, scale=scale)
        if self._noise:
            h, w = out.shape[:2]
            ox, oy = (int(v) for v in self._rng.integers(0, self.NOISE_PAD + 1, 2))
            k = self._frame % self.NOISE_PLANES  # consecutive frames: independent noise
            self._frame += 1
            out = cv2.LUT(out, self._fwd)
            out = cv2.add(out, self._npos[k][oy : oy + h, ox : ox + w])
            out = cv2.subtract(out, self._nneg[k][oy : oy + h, ox : ox + w])
            out = cv2.LUT(out, self._inv)
        return out

    def dark(self, shape: tuple[int, int]) -> np.ndarray:
        """A frame with no light (turret between positions): black level plus noise."""
        h, w = shape
        return self.apply(np.full((h, w, 3), 4, np.uint8))
