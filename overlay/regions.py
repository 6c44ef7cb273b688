"""Regions: the contours found in one heatmap, in frame (or display) pixel coordinates."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class Regions:
    """Connected tumour regions, largest first.

    contours: one float32 Nx2 array (x, y) per region: its outer boundary, in the pixel
              coordinates of the image the regions were mapped to (the camera frame after
              extraction, the display after `warped`).
    holes: per region, a list of float32 Mx2 arrays, the boundaries of holes inside it.
    areas_px2: per region, area in square camera-frame px (holes subtracted). Warping to
               the display keeps these camera-frame numbers.
    areas_um2: per region, area in square micrometres, or None when the pixel size is unknown.
    class_ids: per region, the model class it outlines (drawn in that class's colour), or None
               when the regions are one positive map.
    """

    contours: list[np.ndarray] = field(default_factory=list)
    holes: list[list[np.ndarray]] = field(default_factory=list)
    areas_px2: list[float] = field(default_factory=list)
    areas_um2: list[float] | None = None
    class_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.contours)

    @property
    def empty(self) -> bool:
        """True when there is no region to draw."""
        return not self.contours

    @property
    def total_area_um2(self) -> float | None:
        """Sum of region areas in um2, None when the pixel size is unknown."""
        return None if self.areas_um2 is None else float(sum(self.areas_um2))

    def all_polygons(self) -> list[np.ndarray]:
        """Outer boundaries followed by all holes (for even-odd filling)."""
        return list(self.contours) + [h for hs in self.holes for h in hs]

    def warped(self, homography: np.ndarray) -> Regions:
        """The same regions with every point mapped by a 3x3 homography (one cv2 call).

        Areas are kept as they were (camera-frame units).
        """
        polys = self.all_polygons()
        if not polys:
            return self
        lengths = [len(p) for p in polys]
        pts = np.concatenate(polys).reshape(-1, 1, 2).astype(np.float32, copy=False)
        out = cv2.perspectiveTransform(pts, np.asarray(homography, np.float64)).reshape(-1, 2)
        parts = np.split(out, np.cumsum(lengths)[:-1])
        n = len(self.contours)
        holes: list[list[np.ndarray]] = []
        i = n
        for hs in self.holes:
            holes.append(parts[i : i + len(hs)])
            i += len(hs)
        return Regions(parts[:n], holes, list(self.areas_px2), self.areas_um2, self.class_ids)

    @staticmethod
    def of_classes(parts: list[tuple[int, Regions]]) -> Regions:
        """One Regions from per-class ones, each region tagged with its class, largest first."""
        rows = [
            (cls, c, h, a, None if r.areas_um2 is None else r.areas_um2[i])
            for cls, r in parts
            for i, (c, h, a) in enumerate(zip(r.contours, r.holes, r.areas_px2))
        ]
        rows.sort(key=lambda row: -row[3])
        um = None if any(r.areas_um2 is None for _, r in parts) else [row[4] for row in rows]
        return Regions(
            [row[1] for row in rows],
            [row[2] for row in rows],
            [row[3] for row in rows],
            um,
            [row[0] for row in rows],
        )

    def rasterize(self, width: int, height: int) -> np.ndarray:
        """HxW bool mask of the region interiors (holes left out) at the given size in px."""
        mask = np.zeros((height, width), np.uint8)
        if self.contours:
            cv2.fillPoly(mask, to_fixed(self.all_polygons()), 255, cv2.LINE_8, SHIFT)
        return mask.astype(bool)


# Fixed-point bits used when handing float points to OpenCV drawing calls.
SHIFT = 4


def to_fixed(polys: list[np.ndarray]) -> list[np.ndarray]:
    """Float Nx2 points -> int32 Nx1x2 points with SHIFT fractional bits (for cv2 drawing)."""
    scale = float(1 << SHIFT)
    lim = float(1 << 28)  # far outside any canvas, still safe in int32
    return [
        np.clip(np.round(p.reshape(-1, 1, 2) * scale), -lim, lim).astype(np.int32) for p in polys
    ]
