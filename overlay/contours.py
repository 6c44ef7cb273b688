"""Heatmap -> contours: upscale, blur, opening, hysteresis threshold, area filter, simplify.

The work happens at heatmap resolution upscaled by a small factor (4 by default, e.g.
60x34 cells -> 240x136 px), never at frame size; contour points are then mapped to frame
pixels through the heatmap's affine. Anti-flicker state (the values last shown per cell)
lives in the extractor: call `reset()` on stage motion, model switch or objective change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from .errors import OverlayError
from .regions import Regions

# The ARM's anti-flicker margin: a displayed cell changes only when the model's value
# moves by more than 96 of 255 grey levels from the value shown.
ARM_FLICKER_MARGIN = 96.0 / 255.0


@dataclass(frozen=True)
class ContourParams:
    """How a probability heatmap becomes contours. Lengths are in frame px, areas in um2.

    threshold: a region must contain at least one point with probability >= threshold.
    threshold_low: hysteresis; the region grows over connected points >= threshold_low.
        None (or equal to threshold) turns hysteresis off.
    upscale: heatmap upscaling factor (bilinear) before blurring and tracing (1..16).
    blur_sigma_px: Gaussian blur sigma in frame px (0 = none), smooths the cell grid away.
    open_px: radius in frame px of a morphological opening (0 = none); removes thin spurs
        and specks narrower than about twice this radius.
    min_area_um2: regions smaller than this many square micrometres are dropped and holes
        smaller than it are ignored (filled); uses the pixel size (um_per_px) given to extract.
    min_area_px2: the same limit in square frame px, used when um_per_px is unknown.
    simplify_px: Douglas-Peucker tolerance in frame px (0 = keep every traced point).
    flicker_margin: anti-flicker dead band in probability units (0 = off). Each cell keeps
        the value last shown until the model's value differs from it by more than this
        margin (the ARM's 96/255 by default), so a cell hovering near the threshold does
        not toggle from frame to frame; a real change (e.g. 0.1 -> 0.9) passes at once.
    """

    threshold: float = 0.5
    threshold_low: float | None = 0.4
    upscale: int = 4
    blur_sigma_px: float = 20.0
    open_px: float = 0.0
    min_area_um2: float = 2000.0
    min_area_px2: float = 0.0
    simplify_px: float = 1.5
    flicker_margin: float = ARM_FLICKER_MARGIN

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise OverlayError(f"contour threshold {self.threshold!r}: expected 0 < t <= 1")
        low = self.threshold_low
        if low is not None and not 0.0 < low <= self.threshold:
            raise OverlayError(
                f"contour threshold_low {low!r}: expected 0 < threshold_low <= threshold "
                f"({self.threshold}) or None"
            )
        if not (isinstance(self.upscale, int) and 1 <= self.upscale <= 16):
            raise OverlayError(f"contour upscale {self.upscale!r}: expected an integer 1..16")
        for name in ("blur_sigma_px", "open_px", "min_area_um2", "min_area_px2", "simplify_px"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise OverlayError(f"contour {name} {value!r}: expected a number >= 0")
        if not 0.0 <= self.flicker_margin < 1.0:
            raise OverlayError(
                f"contour flicker_margin {self.flicker_margin!r}: expected 0 <= margin < 1 "
                "(probability units)"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ContourParams:
        """Build from a dict (e.g. a bundle manifest's contour section); unknown keys fail."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OverlayError(
                f"contour parameters: unknown key(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - dataclass signature errors
            raise OverlayError(f"contour parameters: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, the inverse of from_mapping."""
        return asdict(self)


class ContourExtractor:
    """Turns heatmaps into `Regions`; holds the anti-flicker state between frames."""

    def __init__(self, params: ContourParams | None = None) -> None:
        self.params = params or ContourParams()
        self._shown: np.ndarray | None = None
        self._changed = True  # the last stabilize() changed a shown value (or started afresh)
        self._last: tuple | None = None  # (affine, um_per_px, Regions) of the last extraction
        self.reused = 0  # extractions answered from the last one (nothing shown changed)

    def reset(self) -> None:
        """Forget the anti-flicker state (stage motion, model switch, objective change)."""
        self._shown = None
        self._last = None

    def stabilize(self, probs: np.ndarray) -> np.ndarray:
        """Apply the anti-flicker dead band to HxW probabilities; returns the values to show."""
        margin = self.params.flicker_margin
        if margin <= 0:
            return probs
        shown = self._shown
        if shown is None or shown.shape != probs.shape:
            shown = probs.copy()
            self._changed = True
        else:
            moved = np.abs(probs - shown) > margin
            self._changed = bool(moved.any())
            np.copyto(shown, probs, where=moved)
        self._shown = shown
        return shown

    def extract(
        self, probs: np.ndarray, affine: np.ndarray, um_per_px: float | None = None
    ) -> Regions:
        """Find regions in one heatmap.

        probs: HxW float32 probabilities in [0, 1] (values outside are clipped).
        affine: 2x3 map from heatmap cell coordinates (cell centres at integers) to frame px.
        um_per_px: frame pixel size in micrometres (from calibration), or None if unknown.
        Returns regions with contours in frame px, largest first.
        """
        p = self.params
        probs = _check_probs(probs)
        affine = _check_affine(affine)
        if um_per_px is not None and not (np.isfinite(um_per_px) and um_per_px > 0):
            raise OverlayError(f"um_per_px {um_per_px!r}: expected a positive number or None")

        shown = self.stabilize(probs)
        last = self._last
        if (
            p.flicker_margin > 0
            and not self._changed
            and last is not None
            and last[1] == um_per_px
            and np.array_equal(last[0], affine)
        ):
            # no cell of what is shown moved past the dead band: the same heatmap gives the
            # same regions (a still field costs no contour work)
            self.reused += 1
            return last[2]
        regions = self._extract(shown, affine, um_per_px)
        self._last = (affine, um_per_px, regions) if p.flicker_margin > 0 else None
        return regions

    def _extract(self, shown: np.ndarray, affine: np.ndarray, um_per_px: float | None) -> Regions:
        p = self.params
        u = p.upscale
        cell_px = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))  # frame px per cell
        if cell_px <= 0:
            raise OverlayError("heatmap affine is singular: expected a 2x3 map with non-zero scale")
        up_px = cell_px / u  # frame px per upscaled px

        h, w = shown.shape
        img = shown if u == 1 else cv2.resize(shown, (w * u, h * u), interpolation=cv2.INTER_LINEAR)
        if p.blur_sigma_px > 0:
            sigma = p.blur_sigma_px / up_px
            img = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        if p.open_px > 0:
            r = max(1, int(round(p.open_px / up_px)))
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            img = cv2.morphologyEx(img, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REPLICATE)

        mask = _hysteresis(img, p.threshold, p.threshold_low)

        if um_per_px is not None:
            min_area_px2 = p.min_area_um2 / (um_per_px * um_per_px)
        else:
            min_area_px2 = p.min_area_px2
        min_up = min_area_px2 / (up_px * up_px)  # in upscaled px^2

        found, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        areas_um2: list[float] | None = [] if um_per_px is not None else None
        if not found:
            return Regions([], [], [], areas_um2)
        # For the area filter: traced points are boundary pixel centres, half a pixel inside
        # the edge, so area ~ polygon area + perimeter / 2 (outline), - perimeter / 2 (hole).
        outer: dict[int, float] = {}
        holes: dict[int, list[int]] = {}
        hole_area: dict[int, float] = {}
        for i, (_nxt, _prev, _child, parent) in enumerate(hierarchy[0]):
            c = found[i]
            half_perimeter = 0.5 * cv2.arcLength(c, True)
            if parent < 0:
                outer[i] = cv2.contourArea(c) + half_perimeter + 1.0
            else:
                hole = cv2.contourArea(c) - half_perimeter
                if hole >= max(min_up, 0.5):
                    holes.setdefault(int(parent), []).append(i)
                    hole_area[int(parent)] = hole_area.get(int(parent), 0.0) + hole
        for i, a in hole_area.items():
            outer[i] -= a
        kept = sorted((i for i, a in outer.items() if a >= min_up), key=lambda i: -outer[i])
        if not kept:
            return Regions([], [], [], areas_um2)

        order = kept + [j for i in kept for j in holes.get(i, [])]
        # Traced points are pixel centres; move each onto the iso-line of the level that
        # bounds the region (sub-pixel), then simplify, then map to frame px.
        level = p.threshold if p.threshold_low is None else p.threshold_low
        lengths = [len(found[i]) for i in order]
        pts = _refine(np.concatenate([found[i] for i in order]).reshape(-1, 2), img, level)
        chosen = np.split(pts.reshape(-1, 1, 2), np.cumsum(lengths)[:-1])
        eps = p.simplify_px / up_px
        if eps > 0:
            chosen = [_simplify(c, eps) for c in chosen]
        # Upscaled pixel centre j sits at heatmap coordinate (j + 0.5) / u - 0.5.
        lin = affine[:, :2] / u
        off = affine[:, :2] @ np.full(2, 0.5 / u - 0.5) + affine[:, 2]
        to_frame = np.hstack([lin, off[:, None]])
        lengths = [len(c) for c in chosen]
        mapped = cv2.transform(np.concatenate(chosen), to_frame).reshape(-1, 2)
        polys = np.split(mapped, np.cumsum(lengths)[:-1])

        n = len(kept)
        region_holes: list[list[np.ndarray]] = []
        k = n
        for i in kept:
            m = len(holes.get(i, []))
            region_holes.append(polys[k : k + m])
            k += m
        # Reported areas come from the refined polygons in frame px (holes subtracted).
        areas_px2 = [
            float(cv2.contourArea(polys[j]) - sum(cv2.contourArea(hp) for hp in region_holes[j]))
            for j in range(n)
        ]
        if um_per_px is not None:
            areas_um2 = [a * um_per_px * um_per_px for a in areas_px2]
        return Regions(polys[:n], region_holes, areas_px2, areas_um2)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] < 1:
        raise OverlayError(f"heatmap of shape {probs.shape}: expected a 2-D HxW array")
    if probs.dtype != np.float32:
        probs = probs.astype(np.float32)
    if not np.isfinite(probs).all():
        raise OverlayError("heatmap has NaN or infinite values: expected probabilities in [0, 1]")
    return np.clip(probs, 0.0, 1.0)


def _check_affine(affine: np.ndarray) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape == (3, 3):
        a = a[:2]
    if a.shape != (2, 3) or not np.isfinite(a).all():
        raise OverlayError(
            f"heatmap affine of shape {np.shape(affine)}: expected a finite 2x3 matrix"
        )
    return a


def _hysteresis(img: np.ndarray, high: float, low: float | None) -> np.ndarray:
    """uint8 mask (0/255): components of img >= low that contain a point >= high."""
    strong = img >= high
    if low is None or low >= high:
        return strong.astype(np.uint8) * 255
    weak = (img >= low).astype(np.uint8)
    n, labels = cv2.connectedComponents(weak, connectivity=8)
    keep = np.zeros(n, np.uint8)
    keep[labels[strong]] = 255
    keep[0] = 0
    return keep[labels]


def _refine(pts: np.ndarray, img: np.ndarray, level: float) -> np.ndarray:
    """Move Nx2 integer pixel (x, y) points along the local gradient onto img == level.

    Steps are capped at one pixel (the next pixel outwards is already below the level) and
    points are kept within the image's coverage (-0.5 .. size - 0.5). Returns float32 Nx2.
    """
    h, w = img.shape
    x, y = pts[:, 0], pts[:, 1]
    xl, xr = np.maximum(x - 1, 0), np.minimum(x + 1, w - 1)
    yu, yd = np.maximum(y - 1, 0), np.minimum(y + 1, h - 1)
    gx = (img[y, xr] - img[y, xl]) / np.maximum(xr - xl, 1)
    gy = (img[yd, x] - img[yu, x]) / np.maximum(yd - yu, 1)
    g2 = gx * gx + gy * gy
    t = np.where(g2 > 1e-12, (level - img[y, x]) / np.maximum(g2, 1e-12), 0.0)
    step = np.stack([t * gx, t * gy], axis=1)
    n = np.hypot(step[:, 0], step[:, 1])
    step *= (1.0 / np.maximum(n, 1.0))[:, None]
    out = pts.astype(np.float32) + step.astype(np.float32)
    np.clip(out[:, 0], -0.5, w - 0.5, out=out[:, 0])
    np.clip(out[:, 1], -0.5, h - 0.5, out=out[:, 1])
    return out


def _simplify(contour: np.ndarray, eps: float) -> np.ndarray:
    approx = cv2.approxPolyDP(contour, eps, True)
    return approx if len(approx) >= 3 else contour
