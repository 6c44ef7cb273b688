"""Flat-field (vignetting, dust, uneven light) and white-balance correction.

Built once from blank-field frames (and optionally dark frames):
    corrected = (I - D) * G,   G_c(x) = wb_c * mean_c(F - D) / (F_c(x) - D_c(x))
so a blank field becomes uniform and neutral. G is precomputed as an 8-bit fixed-point
map with a random dither (the dither makes the *local average* gain exact, the
per-pixel rounding error is below sensor noise), so applying it is one saturating
uint8 x uint8 multiply in OpenCV: about 2 ms for a 1080p frame on one core.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import MeasurementError, RefusedInputError


def _stack_mean(frames: Iterable[np.ndarray], what: str) -> np.ndarray:
    acc, n, shape = None, 0, None
    for f in frames:
        f = np.asarray(f)
        if f.ndim != 3 or f.shape[2] != 3:
            raise MeasurementError(f"{what} frames must be HxWx3 RGB, got shape {f.shape}")
        if shape is None:
            shape = f.shape
            acc = np.zeros(shape, np.float64)
        elif f.shape != shape:
            raise MeasurementError(f"{what} frames differ in size: {f.shape} vs {shape}")
        acc += f
        n += 1
    if n == 0:
        raise MeasurementError(f"no {what} frames given")
    return (acc / n).astype(np.float32)


MAX_STRUCTURE = 0.02  # fine-detail RMS / mean of a blank field (dust edges, tissue: more)
MAX_SPOT = 0.06  # strongest local deviation from the shading (99.9th pct) of a blank field
MAX_CHROMA = 8.0  # Lab chroma spread around the field's own colour (a cast is fine; stain is not)
MIN_LEVEL = 10.0  # DN: darker than this is no light at all


def check_blank(frame: np.ndarray, what: str = "blank-field frame") -> None:
    """Refuse (RefusedInputError, exit 10) a frame that is not a blank field: black, or
    with structure finer than shading (tissue, dust edges, a pattern), or stained colour.

    Shading and vignetting are smooth: they survive a 1/40-of-the-field blur; the detail
    left after removing it (its RMS relative to the mean level) is only sensor noise on a
    real blank field. Noise itself is averaged out first with a 2 px blur.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise MeasurementError(f"{what} must be HxWx3 uint8 RGB, got {frame.dtype} {frame.shape}")
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    level = float(gray.mean())
    if level < MIN_LEVEL:
        raise RefusedInputError(
            f"{what} is too dark (mean {level:.1f} DN): lamp off or shutter closed, not a blank field"
        )
    h, w = gray.shape
    detail = cv2.GaussianBlur(gray, (0, 0), 2.0)
    shading = cv2.GaussianBlur(detail, (0, 0), max(h, w) / 40.0)
    dev = np.abs(detail - shading) / level
    rel, spot = float(np.sqrt(np.mean(dev**2))), float(np.percentile(dev, 99.9))
    lab = cv2.cvtColor(cv2.GaussianBlur(frame, (0, 0), 2.0), cv2.COLOR_RGB2LAB).astype(np.float32)
    a, b = lab[..., 1], lab[..., 2]
    spread = float(np.percentile(np.hypot(a - np.median(a), b - np.median(b)), 99))
    if rel > MAX_STRUCTURE or spot > MAX_SPOT:
        raise RefusedInputError(
            f"{what} is not a blank field: it has structure ({rel:.1%} fine detail, limit "
            f"{MAX_STRUCTURE:.0%}; strongest spots {spot:.0%}, limit {MAX_SPOT:.0%}); tissue, "
            "dust edges or a pattern in view? Use clear glass"
        )
    if spread > MAX_CHROMA:
        raise RefusedInputError(
            f"{what} is not a blank field: its colour varies (chroma spread {spread:.0f}, limit "
            f"{MAX_CHROMA:.0f}); stained tissue in view? Use clear glass"
        )


@dataclass
class FlatField:
    """A flat (mean blank-field frame) and an optional dark frame, HxWx3 float32 DN."""

    flat: np.ndarray
    dark: np.ndarray | None = None

    @classmethod
    def from_frames(
        cls,
        blank: Iterable[np.ndarray],
        dark: Iterable[np.ndarray] | None = None,
        smooth_px: float = 2.0,
    ) -> FlatField:
        """Average blank-field frames (and dark frames); smooth the flat by `smooth_px`
        (each blank frame is checked first: see check_blank, RefusedInputError)
        (Gaussian sigma, px) to keep sensor noise out of the gain map."""
        blank = list(blank)
        for i, f in enumerate(blank):
            check_blank(np.asarray(f), f"blank-field frame {i + 1}")
        flat = _stack_mean(blank, "blank-field")
        d = _stack_mean(dark, "dark") if dark is not None else None
        if smooth_px > 0:
            flat = cv2.GaussianBlur(flat, (0, 0), smooth_px)
            if d is not None:
                d = cv2.GaussianBlur(d, (0, 0), smooth_px)
        signal = flat - d if d is not None else flat
        if float(np.percentile(signal, 1)) < 4.0:
            raise MeasurementError(
                "blank-field frames are too dark in places (signal < 4 DN); raise the light or exposure"
            )
        if float(np.percentile(flat, 99)) >= 254.0:
            raise MeasurementError("blank-field frames are saturated; lower the light or exposure")
        return cls(flat, d)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) px."""
        return self.flat.shape[1], self.flat.shape[0]

    def signal(self) -> np.ndarray:
        """F - D, HxWx3 float32 DN."""
        return self.flat - self.dark if self.dark is not None else self.flat

    def white_balance(self) -> tuple[float, float, float]:
        """Gains that make the blank field neutral (its mean colour grey)."""
        m = self.signal().reshape(-1, 3).mean(axis=0).astype(np.float64)
        g = m.mean() / m
        return float(g[0]), float(g[1]), float(g[2])

    def gain_map(self, white_balance: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """HxWx3 float32 gains: each channel flattened to its mean, times white balance."""
        sig = np.maximum(self.signal(), 1.0)
        means = sig.reshape(-1, 3).mean(axis=0)
        wb = np.asarray(white_balance, np.float32).reshape(3)
        return (means * wb / sig).astype(np.float32)

    def resized(self, size: tuple[int, int]) -> FlatField:
        """The same flat for another frame size (binning, another capture mode)."""
        if size == self.size:
            return self
        flat = cv2.resize(self.flat, size, interpolation=cv2.INTER_AREA)
        dark = (
            cv2.resize(self.dark, size, interpolation=cv2.INTER_AREA)
            if self.dark is not None
            else None
        )
        return FlatField(flat, dark)


class FrameCorrector:
    """Applies flat-field and white balance to RGB uint8 frames: (I - D) * G.

    flat: a FlatField or None (white balance only). white_balance: (r, g, b) gains.
    exact=True multiplies by the float32 map instead of the dithered 8-bit one
    (about 2x slower, no dither).
    """

    def __init__(
        self,
        flat: FlatField | None,
        white_balance: Sequence[float] = (1.0, 1.0, 1.0),
        exact: bool = False,
        seed: int = 0,
    ):
        self.flat = flat
        self.white_balance = tuple(float(v) for v in white_balance)
        if len(self.white_balance) != 3 or min(self.white_balance) <= 0:
            raise MeasurementError(f"white balance must be 3 positive gains, got {white_balance}")
        self.exact = exact
        self._seed = seed
        self._size: tuple[int, int] | None = None
        self._gain_q: np.ndarray | None = None
        self._gain_f: np.ndarray | None = None
        self._dark_u8: np.ndarray | None = None
        self._scale = 1.0

    def _prepare(self, size: tuple[int, int]) -> None:
        w, h = size
        if self.flat is None:
            gain = np.broadcast_to(np.asarray(self.white_balance, np.float32), (h, w, 3)).copy()
            dark = None
        else:
            ff = self.flat.resized(size)
            gain = ff.gain_map(self.white_balance)
            dark = ff.dark
        # fixed point: the largest power-of-two scale that keeps every gain in 0..255
        q = 128.0
        while q > 1 and float(gain.max()) * q > 255.0:
            q /= 2
        rng = np.random.default_rng(self._seed)
        dither = rng.random(gain.shape, dtype=np.float32)
        self._gain_q = np.clip(np.floor(gain * q + dither), 0, 255).astype(np.uint8)
        self._scale = 1.0 / q
        self._gain_f = gain
        self._dark_u8 = None if dark is None else np.clip(np.round(dark), 0, 255).astype(np.uint8)
        self._size = size

    def apply(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Corrected HxWx3 uint8 RGB frame (written into `out` when given)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise MeasurementError(
                f"frames must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}"
            )
        size = (image.shape[1], image.shape[0])
        if size != self._size:
            self._prepare(size)
        src = image
        if self._dark_u8 is not None:  # subtract into the output buffer, then scale in place
            src = cv2.subtract(image, self._dark_u8, dst=out)
            out = src
        if self.exact:
            return cv2.multiply(src, self._gain_f, dst=out, dtype=cv2.CV_8U)
        return cv2.multiply(src, self._gain_q, dst=out, scale=self._scale)

    __call__ = apply


def nonuniformity(image: np.ndarray, blocks: int = 24) -> float:
    """Spatial non-uniformity of a (blank-field) image: (max - min) / mean of the mean
    luminance over a grid of blocks (`blocks` along the short side; sensor noise averages
    out inside a block). 0.02 = 2 %."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    b = max(2, min(h, w) // blocks)
    small = cv2.resize(
        gray[: (h // b) * b, : (w // b) * b].astype(np.float32),
        (w // b, h // b),
        interpolation=cv2.INTER_AREA,
    )
    mean = float(small.mean())
    if mean <= 0:
        raise MeasurementError("non-uniformity of a black image is undefined")
    return float((small.max() - small.min()) / mean)
