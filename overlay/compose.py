"""The two outputs: AR mode (for the eyepiece micro-display) and preview mode (for a monitor).

Both return a HxWx3 uint8 RGB canvas that nobody writes into afterwards (sinks may keep a
reference): a new one whenever what it shows changed; AR mode returns its last canvas again
when the same regions are drawn the same way (a still field: nothing is redrawn).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .errors import OverlayError
from .regions import Regions
from .render import ContourRenderer, FilledRenderer, RenderContext, Renderer, check_canvas


def _homography(h: np.ndarray | None) -> np.ndarray:
    m = np.eye(3) if h is None else np.asarray(h, np.float64)
    if m.shape != (3, 3) or not np.isfinite(m).all() or abs(np.linalg.det(m)) < 1e-12:
        raise OverlayError(
            f"homography of shape {np.shape(h)}: expected an invertible finite 3x3 matrix"
        )
    return m


def _affine3(affine: np.ndarray | None, heatmap: np.ndarray | None) -> np.ndarray | None:
    if heatmap is not None and affine is None:
        raise OverlayError("heatmap given without heatmap_affine: expected its 2x3 cell -> px map")
    if affine is None:
        return None
    a = np.asarray(affine, np.float64)
    if a.shape == (2, 3):
        a = np.vstack([a, [0.0, 0.0, 1.0]])
    if a.shape != (3, 3):
        raise OverlayError(f"heatmap affine of shape {np.shape(affine)}: expected 2x3")
    return a


def _outside_rects(inside: np.ndarray, band: int = 32) -> list[tuple[int, int, int, int]]:
    """Rectangles (y0, y1, x0, x1) that together hold every False pixel of `inside` (a disc
    mask): per band of rows, the part left of and the part right of the columns inside for
    all of the band's rows."""
    h, w = inside.shape
    any_in = inside.any(axis=1)
    first = np.where(any_in, inside.argmax(axis=1), w)
    last = np.where(any_in, w - 1 - inside[:, ::-1].argmax(axis=1), -1)
    rects = []
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        xl, xr = int(first[y0:y1].max()), int(last[y0:y1].min()) + 1
        if xl >= xr:  # some row of the band is (almost) all outside
            rects.append((y0, y1, 0, w))
            continue
        if xl > 0:
            rects.append((y0, y1, 0, xl))
        if xr < w:
            rects.append((y0, y1, xr, w))
    return rects


class ARComposer:
    """Black canvas at the display's resolution with the overlay warped onto it.

    display_size: (width, height) of the micro-display in px.
    homography: 3x3 map from camera px to display px (from calibration); None = identity.
    eyepiece_circle: (cx, cy, r) in display px; everything outside it is blanked. None = off.
    renderers: drawn in order on display-coordinate regions; default: a ContourRenderer.
    Only the region points are warped (cv2.perspectiveTransform), never the canvas.
    """

    def __init__(
        self,
        display_size: tuple[int, int],
        homography: np.ndarray | None = None,
        eyepiece_circle: tuple[float, float, float] | None = None,
        renderers: Sequence[Renderer] | None = None,
    ) -> None:
        w, h = (int(v) for v in display_size)
        if w < 1 or h < 1:
            raise OverlayError(f"display size {display_size!r}: expected (width, height) > 0")
        self.display_size = (w, h)
        self.renderers = list(renderers) if renderers is not None else [ContourRenderer()]
        self.set_homography(homography)
        self.set_eyepiece(eyepiece_circle)
        self.reused = 0  # canvases returned again because nothing they show changed (bench, tests)

    def set_homography(self, homography: np.ndarray | None) -> None:
        """Replace the camera px -> display px homography (e.g. after recalibration)."""
        self.homography = _homography(homography)
        self._inverse = np.linalg.inv(self.homography)
        self._scale = None  # camera_px_per_display_px, computed once per homography and viewport
        self._last = None  # (what was drawn, the canvas): see compose

    def set_eyepiece(self, circle: tuple[float, float, float] | None) -> None:
        """Set (cx, cy, r) in display px, or None to show the whole display.

        Renderers then draw only into the circle's bounding box (a view of the canvas), and
        the precomputed circular mask is applied to that box alone: the rest of the display
        stays black without being touched.
        """
        w, h = self.display_size
        self._last = None
        if circle is None:
            self.eyepiece_circle = None
            self._box = (0, 0, w, h)
            self._mask = None
            self._outside = []
            self.viewport = (0, 0, w, h)
            self._scale = None
            return
        cx, cy, r = (float(v) for v in circle)
        if not r > 0:
            raise OverlayError(f"eyepiece circle {circle!r}: expected (cx, cy, r) with r > 0")
        bx0, by0 = max(0, int(np.floor(cx - r))), max(0, int(np.floor(cy - r)))
        bx1, by1 = min(w, int(np.ceil(cx + r)) + 1), min(h, int(np.ceil(cy + r)) + 1)
        if bx0 >= bx1 or by0 >= by1:
            raise OverlayError(
                f"eyepiece circle {circle!r}: expected it to overlap the {w}x{h} display"
            )
        self.eyepiece_circle = (cx, cy, r)
        self._box = (bx0, by0, bx1, by1)
        mask = np.zeros((by1 - by0, bx1 - bx0, 3), np.uint8)
        centre = (int(round((cx - bx0) * 16)), int(round((cy - by0) * 16)))
        cv2.circle(mask, centre, int(round(r * 16)), (255, 255, 255), -1, cv2.LINE_8, 4)
        self._mask = mask
        self._outside = _outside_rects(mask[:, :, 0] > 0)
        self._outside_arr = np.array(self._outside, np.float64).reshape(-1, 4)  # y0 y1 x0 x1
        half = r / np.sqrt(2.0)
        x0, y0 = max(0, int(np.ceil(cx - half))), max(0, int(np.ceil(cy - half)))
        x1, y1 = min(w, int(cx + half)), min(h, int(cy + half))
        self.viewport = (x0, y0, max(1, x1 - x0), max(1, y1 - y0))
        self._scale = None

    def camera_px_per_display_px(self) -> float:
        """Local scale of the display -> camera map at the viewport centre."""
        if self._scale is not None:
            return self._scale
        x, y, w, h = self.viewport
        c = np.array(
            [[[x + w / 2, y + h / 2]], [[x + w / 2 + 1, y + h / 2]], [[x + w / 2, y + h / 2 + 1]]],
            np.float64,
        )
        p = cv2.perspectiveTransform(c, self._inverse).reshape(3, 2)
        self._scale = float(np.sqrt(abs(np.linalg.det(np.stack([p[1] - p[0], p[2] - p[0]])))))
        return self._scale

    def blank(self) -> np.ndarray:
        """An all-black canvas (nothing visible in the eyepiece)."""
        w, h = self.display_size
        return np.zeros((h, w, 3), np.uint8)

    def compose(
        self,
        regions: Regions,
        *,
        heatmap: np.ndarray | None = None,
        heatmap_affine: np.ndarray | None = None,
        objective: str | None = None,
        um_per_px: float | None = None,
        model: str | None = None,
        fps: float | None = None,
        text: str | None = None,
        classes: tuple | None = None,
    ) -> np.ndarray:
        """Draw camera-frame regions onto a new black display canvas (RGB uint8).

        heatmap / heatmap_affine: probabilities and their 2x3 cell -> camera px map, for a
        HeatmapRenderer. um_per_px: camera pixel size in um (converted to display px here).
        classes: ClassStyle per drawable class (per-class colours, legend), or None.
        The last canvas is returned again (not redrawn) when it showed the same `regions` object
        with the same classes and objective and every renderer draws only the regions (contour
        outlines, fills): what a still field looks like (the contour cache returns its regions).
        """
        key = None
        if all(type(r) in (ContourRenderer, FilledRenderer) for r in self.renderers):
            key = (objective, classes)
            last = self._last
            if last is not None and last[0] is regions and last[1] == key:
                self.reused += 1
                return last[2]
        canvas = self.blank()
        bx0, by0, bx1, by1 = self._box
        box = canvas[by0:by1, bx0:bx1]  # renderers draw here, in box coordinates
        to_box = np.array([[1.0, 0.0, -bx0], [0.0, 1.0, -by0], [0.0, 0.0, 1.0]]) @ self.homography
        a3 = _affine3(heatmap_affine, heatmap)
        vx, vy, vw, vh = self.viewport
        ctx = RenderContext(
            objective=objective,
            um_per_px=None if not um_per_px else um_per_px * self.camera_px_per_display_px(),
            model=model,
            fps=fps,
            text=text,
            heatmap=heatmap,
            heatmap_to_canvas=None if a3 is None else to_box @ a3,
            viewport=(vx - bx0, vy - by0, vw, vh),
            classes=classes,
        )
        shown = regions.warped(to_box)
        for r in self.renderers:
            r.annotate(box, shown, ctx)
        self._apply_eyepiece(box, self._drawn_boxes(shown, objective))
        self._last = None if key is None else (regions, key, canvas)
        return canvas

    def _drawn_boxes(self, shown: Regions, objective: str | None) -> np.ndarray | None:
        """Px boxes (x0, y0, x1, y1, in box coordinates) that hold everything the renderers
        drew, when every renderer draws only along or inside the regions (contour outlines,
        fills): a polygon's outline lies within its points' bounding box widened by half the
        line and the anti-aliasing. None when some renderer may draw elsewhere."""
        if self._mask is None:
            return None
        margin = 2.0
        for r in self.renderers:
            if isinstance(r, ContourRenderer):
                margin = max(margin, r.width_for(objective) / 2 + 2)
            elif not isinstance(r, FilledRenderer):
                return None
        polys = shown.all_polygons()
        if not polys:
            return np.zeros((0, 4))
        boxes = np.array([[*p.min(axis=0), *p.max(axis=0)] for p in polys], np.float64)
        return boxes + np.array([-margin, -margin, margin + 1, margin + 1])

    def _apply_eyepiece(self, box: np.ndarray, drawn: np.ndarray | None = None) -> None:
        """Blank what was drawn outside the circle. Only the strips that hold outside pixels
        are looked at (those that meet a box of `drawn`, when given), and only those with
        something drawn are masked (reading untouched canvas pages costs page faults; writing
        them more)."""
        if self._mask is None:
            return
        flat = box.reshape(box.shape[0], -1)  # a view: H x (W*3)
        rects = self._outside
        if drawn is not None:
            if not len(drawn):
                return
            r = self._outside_arr
            meets = (
                (r[:, None, 2] < drawn[None, :, 2])
                & (drawn[None, :, 0] < r[:, None, 3])
                & (r[:, None, 0] < drawn[None, :, 3])
                & (drawn[None, :, 1] < r[:, None, 1])
            ).any(axis=1)
            rects = [rects[i] for i in np.flatnonzero(meets)]
        for y0, y1, x0, x1 in rects:
            if cv2.countNonZero(flat[y0:y1, 3 * x0 : 3 * x1]):
                part = box[y0:y1, x0:x1]
                cv2.bitwise_and(part, self._mask[y0:y1, x0:x1], dst=part)


class PreviewComposer:
    """The overlay drawn over the camera frame, for a monitor or a recording.

    renderers: drawn in order on a copy of the frame (camera px); default: a ContourRenderer.
    alpha: opacity of what the renderers drew, 0..1 (translucent renderers such as
    FilledRenderer and HeatmapRenderer apply their own alpha on top).
    """

    def __init__(self, renderers: Sequence[Renderer] | None = None, alpha: float = 0.85):
        if not 0.0 <= alpha <= 1.0:
            raise OverlayError(f"preview alpha {alpha!r}: expected 0 <= alpha <= 1")
        self.renderers = list(renderers) if renderers is not None else [ContourRenderer()]
        self.alpha = float(alpha)

    def compose(
        self,
        frame_rgb: np.ndarray,
        regions: Regions,
        heatmap: np.ndarray | None = None,
        *,
        heatmap_affine: np.ndarray | None = None,
        objective: str | None = None,
        um_per_px: float | None = None,
        model: str | None = None,
        fps: float | None = None,
        text: str | None = None,
        classes: tuple | None = None,
    ) -> np.ndarray:
        """A new RGB image: frame_rgb (HxWx3 uint8) with the overlay blended on it."""
        frame = check_canvas(frame_rgb)
        a3 = _affine3(heatmap_affine, heatmap)
        ctx = RenderContext(
            objective=objective,
            um_per_px=um_per_px,
            model=model,
            fps=fps,
            text=text,
            heatmap=heatmap,
            heatmap_to_canvas=a3,
            viewport=(0, 0, frame.shape[1], frame.shape[0]),
            classes=classes,
        )
        drawn = np.ascontiguousarray(frame).copy()
        for r in self.renderers:
            drawn = r.annotate(drawn, regions, ctx)
        if self.alpha >= 1.0:
            return drawn
        return cv2.addWeighted(frame, 1.0 - self.alpha, drawn, self.alpha, 0.0)
