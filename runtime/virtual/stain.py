"""H&E colour of a synthetic slide: stain vectors, per-slide stain variation, colour cast.

Colour follows Beer-Lambert in optical density (OD = -log10(I / I0)): a pixel holding
hematoxylin concentration cH and eosin concentration cE has OD = cH * h_od + cE * e_od + glass_od
per RGB channel. Each slide draws its own stain vectors (hue shift), stain strengths and a
scanner/camera colour cast, so the same tissue looks different from slide to slide.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Reference OD vectors (R, G, B) per unit concentration, close to measured H&E vectors:
# hematoxylin absorbs red and green (purple-blue), eosin mostly green (pink).
H_OD = (0.55, 0.75, 0.32)
E_OD = (0.10, 0.86, 0.36)

# The colour look-up image has LUT_LEVELS x LUT_LEVELS entries, LUT_SCALE entries per unit of
# concentration, so concentrations up to LUT_LEVELS / LUT_SCALE are represented.
LUT_SCALE = 100.0
LUT_LEVELS = 300


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class Stain:
    """One slide's staining and scanning.

    h_od, e_od: unit OD vectors (R, G, B) of hematoxylin and eosin.
    h_scale, e_scale: stain strength multipliers (over/under-staining).
    glass_od: OD of bare glass + mounting medium (R, G, B).
    cast: per-channel gains (R, G, B) of the scanner or camera white balance.
    blur_um: Gaussian sigma of the optical blur, um.
    """

    h_od: tuple[float, float, float]
    e_od: tuple[float, float, float]
    h_scale: float
    e_scale: float
    glass_od: tuple[float, float, float]
    cast: tuple[float, float, float]
    blur_um: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Stain:
        """A plausible random stain: hue shifts of the vectors, +-35 % strengths, a colour cast."""
        h = _unit(np.asarray(H_OD) + rng.normal(0.0, 0.07, 3)).clip(0.05, None)
        e = _unit(np.asarray(E_OD) + rng.normal(0.0, 0.07, 3)).clip(0.03, None)
        cast = 1.0 + rng.uniform(-0.06, 0.03, 3)
        return cls(
            h_od=tuple(float(v) for v in _unit(h)),
            e_od=tuple(float(v) for v in _unit(e)),
            h_scale=float(rng.uniform(0.6, 1.4)),
            e_scale=float(rng.uniform(0.55, 1.5)),
            glass_od=tuple(float(v) for v in rng.uniform(0.005, 0.03, 3)),
            cast=tuple(float(v) for v in cast / max(1.0, cast.max())),
            blur_um=float(rng.uniform(0.25, 0.6)),
        )

    def lut_image(self) -> np.ndarray:
        """RGB uint8 image of LUT_LEVELS x LUT_LEVELS: row = cH * LUT_SCALE, column = cE * LUT_SCALE."""
        c = np.arange(LUT_LEVELS, dtype=np.float64) / LUT_SCALE
        h = np.asarray(self.h_od) * self.h_scale
        e = np.asarray(self.e_od) * self.e_scale
        od = c[:, None, None] * h + c[None, :, None] * e + np.asarray(self.glass_od)
        rgb = 255.0 * np.power(10.0, -od) * np.asarray(self.cast)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def to_rgb(lut: np.ndarray, h_units: np.ndarray, e_units: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB from HxW float32 concentrations in LUT units (concentration * LUT_SCALE),
    interpolating the stain LUT; out-of-range values clamp to its edges."""
    return cv2.remap(
        lut, e_units, h_units, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def _hue_turn(v, deg: float) -> np.ndarray:
    """OD vector `v` turned by `deg` about the grey axis (1, 1, 1): a hue change."""
    k = np.ones(3) / np.sqrt(3.0)
    t = np.radians(deg)
    v = np.asarray(v, np.float64)
    r = v * np.cos(t) + np.cross(k, v) * np.sin(t) + k * np.dot(k, v) * (1 - np.cos(t))
    return _unit(np.clip(r, 0.02, None))


# Held-out stain protocols: each is beyond the range Stain.random draws for training
# slides (vector noise sd 0.07, strengths 0.6-1.4 / 0.55-1.5, casts -6..+3 %).
HUE_TURN_DEG = 60.0  # about grey: H and E turn by ~18 deg; training varies by ~6 (sd 0.07)
STAIN_SHIFTS = {
    "hue": "both stain vectors turned 60 deg about grey (another haematoxylin / eosin lot)",
    "faded": "H and E at 0.35x (an old, faded or under-stained slide)",
    "over": "H and E at 2x (over-stained)",
    "ratio": "H 1.8x, E 0.4x (a different H:E ratio)",
}


def shifted_stain(stain: Stain, kind: str) -> Stain:
    """`stain` under one held-out protocol of STAIN_SHIFTS (same tissue, other colours)."""
    from dataclasses import replace

    if kind == "hue":
        return replace(
            stain,
            h_od=tuple(float(v) for v in _hue_turn(stain.h_od, HUE_TURN_DEG)),
            e_od=tuple(float(v) for v in _hue_turn(stain.e_od, HUE_TURN_DEG)),
        )
    if kind == "faded":
        return replace(stain, h_scale=stain.h_scale * 0.35, e_scale=stain.e_scale * 0.35)
    if kind == "over":
        return replace(stain, h_scale=stain.h_scale * 2.0, e_scale=stain.e_scale * 2.0)
    if kind == "ratio":
        return replace(stain, h_scale=stain.h_scale * 1.8, e_scale=stain.e_scale * 0.4)
    raise ValueError(f"unknown stain shift {kind!r}; expected one of {', '.join(STAIN_SHIFTS)}")
