"""Renderers: style in `__init__`, data in `annotate(canvas, regions, ctx)` (supervision-style).

A canvas is an HxWx3 uint8 RGB image; renderers draw on it in place and return it. All
coordinates (region points, `RenderContext` geometry) are canvas px: the composers warp
camera-frame regions to the canvas before calling the renderers. Colours are (R, G, B).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .errors import OverlayError
from .regions import SHIFT, Regions, to_fixed

RGB = tuple[int, int, int]
FONT = cv2.FONT_HERSHEY_SIMPLEX

# Contour line width in display px per objective (thicker lines at higher magnification,
# where the regions are larger on the display and a fine line is easily lost).
DEFAULT_WIDTHS: dict[str, int] = {"4x": 2, "10x": 3, "20x": 3, "40x": 4, "default": 3}


@dataclass(frozen=True)
class RenderContext:
    """What a renderer may need besides the regions; geometry is in canvas px.

    objective: the objective in use ("10x"), None when unknown.
    um_per_px: micrometres per canvas px (for the scale bar and labels), None when unknown.
    model / fps / text: shown by the HUD (text is a free status line).
    heatmap: HxW float32 probabilities, and heatmap_to_canvas: 3x3 map from heatmap cell
        coordinates (cell centres at integers) to canvas px; both None when not drawn.
    viewport: (x, y, w, h) of the part of the canvas the observer sees (the square inside
        the eyepiece circle in AR mode); corner items (HUD, scale bar) go inside it.
    classes: the model's drawable classes (overlay.classes.ClassStyle: index, name, colour,
        on/off), for per-class colours and the legend; None for a single-class overlay.
    """

    objective: str | None = None
    um_per_px: float | None = None
    model: str | None = None
    fps: float | None = None
    text: str | None = None
    heatmap: np.ndarray | None = None
    heatmap_to_canvas: np.ndarray | None = None
    viewport: tuple[int, int, int, int] | None = None
    classes: tuple | None = None


class Renderer(Protocol):
    """Anything with `annotate(canvas, regions, ctx) -> canvas`."""

    def annotate(
        self, canvas: np.ndarray, regions: Regions, ctx: RenderContext | None = None
    ) -> np.ndarray: ...


def check_canvas(canvas: np.ndarray) -> np.ndarray:
    """Raise OverlayError unless canvas is an HxWx3 uint8 (RGB) array."""
    if not isinstance(canvas, np.ndarray) or canvas.dtype != np.uint8 or canvas.ndim != 3:
        raise OverlayError(
            f"canvas {getattr(canvas, 'dtype', type(canvas).__name__)} "
            f"{getattr(canvas, 'shape', '')}: expected an HxWx3 uint8 RGB image"
        )
    if canvas.shape[2] != 3:
        raise OverlayError(f"canvas of shape {canvas.shape}: expected 3 channels (RGB)")
    return canvas


def _color(value: RGB) -> tuple[int, int, int]:
    if len(value) != 3 or not all(0 <= int(c) <= 255 for c in value):
        raise OverlayError(f"colour {value!r}: expected (R, G, B) with values 0..255")
    return (int(value[0]), int(value[1]), int(value[2]))


def _viewport(canvas: np.ndarray, ctx: RenderContext) -> tuple[int, int, int, int]:
    if ctx.viewport is not None:
        return ctx.viewport
    return 0, 0, canvas.shape[1], canvas.shape[0]


def _bbox(polys: list[np.ndarray], pad: float, w: int, h: int) -> tuple[int, int, int, int] | None:
    """Integer (x0, y0, x1, y1) bounding box of the points, padded and clipped to the canvas."""
    pts = np.concatenate(polys)
    x0, y0 = np.floor(pts.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0) + pad).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def _put_text(canvas: np.ndarray, text: str, org: tuple[int, int], color, scale, thickness):
    """Text with a dark outline (invisible on the AR display, legible on a camera frame)."""
    cv2.putText(canvas, text, org, FONT, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(canvas, text, org, FONT, scale, color, thickness, cv2.LINE_AA)


class ContourRenderer:
    """Region outlines (and hole outlines) as anti-aliased polylines.

    color: (R, G, B); width_px: line width in canvas px, or a dict objective -> width
    with an optional "default" key (see DEFAULT_WIDTHS).
    """

    def __init__(self, color: RGB = (0, 255, 0), width_px: int | Mapping[str, int] | None = None):
        self.color = _color(color)
        if width_px is None:
            width_px = DEFAULT_WIDTHS
        self.width_px: int | dict[str, int] = (
            int(width_px) if isinstance(width_px, int) else dict(width_px)
        )

    def width_for(self, objective: str | None) -> int:
        """Line width in px for an objective."""
        if isinstance(self.width_px, int):
            return max(1, self.width_px)
        w = self.width_px.get(objective or "", self.width_px.get("default", 3))
        return max(1, int(w))

    def annotate(self, canvas, regions: Regions, ctx: RenderContext | None = None):
        """Outlines in `color`; regions tagged with a class in that class's colour (ctx.classes)."""
        if regions.empty:
            return canvas
        ctx = ctx or RenderContext()
        width = self.width_for(ctx.objective)
        for color, polys in _by_color(regions, ctx, self.color):
            cv2.polylines(canvas, to_fixed(polys), True, color, width, cv2.LINE_AA, SHIFT)
        return canvas


def _by_color(regions: Regions, ctx: RenderContext, default: RGB) -> list:
    """[(colour, polygons incl. holes)] grouping the regions by their class's colour."""
    if regions.class_ids is None or not ctx.classes:
        return [(default, regions.all_polygons())]
    colors = {c.index: c.color for c in ctx.classes}
    groups: dict = {}
    for k, outer, holes in zip(regions.class_ids, regions.contours, regions.holes):
        groups.setdefault(colors.get(k, default), []).extend([outer, *holes])
    return list(groups.items())


class LegendRenderer:
    """The classes' colours and names in a corner of the viewport (preview mode); a class that
    is switched off is listed in grey with "(off)". Draws nothing for a single-class model."""

    def __init__(self, scale: float = 0.5, corner: str = "top-right"):
        if corner not in ("top-right", "top-left"):
            raise OverlayError(f"legend corner {corner!r}: expected 'top-right' or 'top-left'")
        self.scale, self.corner = float(scale), corner

    def annotate(self, canvas, regions: Regions, ctx: RenderContext | None = None):
        ctx = ctx or RenderContext()
        if not ctx.classes or len(ctx.classes) < 2:
            return canvas
        vx, vy, vw, _vh = _viewport(canvas, ctx)
        line = int(28 * self.scale) + 6
        labels = [c.name + ("" if c.on else " (off)") for c in ctx.classes]
        text_w = max(cv2.getTextSize(t, FONT, self.scale, 1)[0][0] for t in labels)
        box = line - 8
        x0 = vx + 8 if self.corner == "top-left" else vx + vw - 8 - box - 6 - text_w
        for i, (c, text) in enumerate(zip(ctx.classes, labels)):
            y = vy + 8 + i * line
            color = c.color if c.on else (128, 128, 128)
            cv2.rectangle(canvas, (x0, y), (x0 + box, y + box), color, -1 if c.on else 1)
            _put_text(canvas, text, (x0 + box + 6, y + box), color, self.scale, 1)
        return canvas


class FilledRenderer:
    """Translucent region interiors (holes left clear). alpha: 0 (invisible) .. 1 (opaque)."""

    def __init__(self, color: RGB = (0, 255, 0), alpha: float = 0.25):
        if not 0.0 <= alpha <= 1.0:
            raise OverlayError(f"fill alpha {alpha!r}: expected 0 <= alpha <= 1")
        self.color = _color(color)
        self.alpha = float(alpha)

    def annotate(self, canvas, regions: Regions, ctx: RenderContext | None = None):
        if regions.empty or self.alpha == 0:
            return canvas
        h, w = canvas.shape[:2]
        box = _bbox(regions.contours, 1.0, w, h)
        if box is None:
            return canvas
        x0, y0, x1, y1 = box
        shift = np.array([x0, y0], np.float32)
        roi = canvas[y0:y1, x0:x1]
        painted = roi.copy()
        cv2.fillPoly(
            painted,
            to_fixed([p - shift for p in regions.all_polygons()]),
            self.color,
            cv2.LINE_8,
            SHIFT,
        )
        # Outside the polygons painted == roi, so the blend leaves those pixels unchanged.
        roi[:] = cv2.addWeighted(roi, 1.0 - self.alpha, painted, self.alpha, 0.0)
        return canvas


class HeatmapRenderer:
    """The probability map itself in a colour map, weighted by probability.

    colormap: an OpenCV colormap id (cv2.COLORMAP_*); alpha: weight at probability 1;
    min_prob: probabilities at or below this are not drawn at all (stay black in AR mode).
    Needs ctx.heatmap and ctx.heatmap_to_canvas (the composers fill them in).
    """

    def __init__(self, colormap: int = cv2.COLORMAP_JET, alpha: float = 0.5, min_prob: float = 0.2):
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= min_prob < 1.0:
            raise OverlayError(
                f"heatmap alpha {alpha!r} / min_prob {min_prob!r}: expected 0..1 and 0..<1"
            )
        self.colormap = int(colormap)
        self.alpha = float(alpha)
        self.min_prob = float(min_prob)

    def annotate(self, canvas, regions: Regions, ctx: RenderContext | None = None):
        if ctx is None or ctx.heatmap is None or ctx.heatmap_to_canvas is None:
            return canvas
        probs = np.clip(np.asarray(ctx.heatmap, np.float32), 0.0, 1.0)
        hh, hw = probs.shape
        m = np.asarray(ctx.heatmap_to_canvas, np.float64)
        corners = np.array(
            [[-0.5, -0.5], [hw - 0.5, -0.5], [hw - 0.5, hh - 0.5], [-0.5, hh - 0.5]], np.float32
        ).reshape(-1, 1, 2)
        h, w = canvas.shape[:2]
        box = _bbox([cv2.perspectiveTransform(corners, m).reshape(-1, 2)], 1.0, w, h)
        if box is None:
            return canvas
        x0, y0, x1, y1 = box
        to_roi = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64) @ m
        colour = cv2.applyColorMap((probs * 255).astype(np.uint8), self.colormap)
        colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
        weight = np.clip((probs - self.min_prob) / (1.0 - self.min_prob), 0, 1) * self.alpha
        size = (x1 - x0, y1 - y0)
        colour = cv2.warpPerspective(
            colour, to_roi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        weight = cv2.warpPerspective(
            weight.astype(np.float32),
            to_roi,
            size,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        roi = canvas[y0:y1, x0:x1]
        roi[:] = cv2.blendLinear(roi, colour, 1.0 - weight, weight)
        return canvas


class TextRenderer:
    """Area labels above the largest regions ("0.42 mm2", or "1234 px2" without a pixel size).

    max_labels: how many of the largest regions get a label.
    """

    def __init__(
        self,
        color: RGB = (255, 255, 255),
        font_scale: float = 0.7,
        thickness: int = 2,
        max_labels: int = 3,
    ):
        self.color = _color(color)
        self.font_scale = float(font_scale)
        self.thickness = int(thickness)
        self.max_labels = int(max_labels)

    @staticmethod
    def label(regions: Regions, i: int) -> str:
        """The label of region i."""
        if regions.areas_um2 is not None:
            um2 = regions.areas_um2[i]
            return f"{um2 / 1e6:.2f} mm2" if um2 >= 1e4 else f"{um2:.0f} um2"
        return f"{regions.areas_px2[i]:.0f} px2"

    def annotate(self, canvas, regions: Regions, ctx: RenderContext | None = None):
        # Labels are kept inside the viewport (what the observer sees).
        vx, vy, vw, vh = _viewport(canvas, ctx or RenderContext())
        for i in range(min(self.max_labels, len(regions))):
            text = self.label(regions, i)
            (tw, th), base = cv2.getTextSize(text, FONT, self.font_scale, self.thickness)
            pts = regions.contours[i]
            top = pts[np.argmin(pts[:, 1])]  # centred above the region's topmost point
            x = int(np.clip(top[0] - tw / 2, vx, max(vx, vx + vw - tw)))
            y = int(top[1]) - 10
            if y - th < vy:  # no room above: put it below the region
                y = int(pts[:, 1].max()) + th + 10
            y = int(np.clip(y, vy + th, max(vy + th, vy + vh - base)))
            _put_text(canvas, text, (x, y), self.color, self.font_scale, self.thickness)
        return canvas


class ArrowRenderer:
    """An arrow pointing at the largest region, coming from the side facing the viewport centre
    (from the upper left when the region covers the centre).

    length_px: arrow length in canvas px; the tip lands on the region's outline.
    """

    def __init__(self, color: RGB = (255, 255, 0), length_px: int = 120, thickness: int = 3):
        self.color = _color(color)
        self.length_px = int(length_px)
        self.thickness = int(thickness)

    def annotate(self, canvas, regions: Regions, ctx: RenderContext | None = None):
        if regions.empty:
            return canvas
        h, w = canvas.shape[:2]
        ctx = ctx or RenderContext()
        vx, vy, vw, vh = _viewport(canvas, ctx)
        centre = np.array([vx + vw / 2, vy + vh / 2])
        pts = regions.contours[0].astype(np.float64)
        m = cv2.moments(pts.astype(np.float32))
        c = np.array([m["m10"] / m["m00"], m["m01"] / m["m00"]]) if m["m00"] else pts.mean(0)
        d = centre - c
        n = float(np.hypot(*d))
        inside = cv2.pointPolygonTest(pts.astype(np.float32), tuple(centre), False) >= 0
        # From the centre's side; from the upper left when the region covers the centre.
        d = d / n if n > 1e-6 and not inside else np.array([-np.sqrt(0.5), -np.sqrt(0.5)])
        tip = pts[np.argmax((pts - c) @ d)]
        tail = tip + d * self.length_px
        tail = np.clip(tail, [0, 0], [w - 1, h - 1])
        cv2.arrowedLine(
            canvas,
            tuple(int(v) for v in np.round(tail)),
            tuple(int(v) for v in np.round(tip)),
            self.color,
            self.thickness,
            cv2.LINE_AA,
            0,
            0.2,
        )
        return canvas


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above target (target > 0)."""
    k = np.floor(np.log10(target))
    for m in (5.0, 2.0, 1.0):
        if m * 10**k <= target:
            return float(m * 10**k)
    return float(10**k)


class ScaleBarRenderer:
    """A scale bar in micrometres at the bottom right of the viewport.

    length_um: fixed bar length, or None for a 1-2-5 length near `fraction` of the viewport
    width. Drawn only when ctx.um_per_px (micrometres per canvas px) is known.
    """

    def __init__(
        self,
        length_um: float | None = None,
        color: RGB = (255, 255, 255),
        thickness: int = 4,
        font_scale: float = 0.6,
        fraction: float = 0.2,
        margin_px: int = 24,
    ):
        self.length_um = length_um
        self.color = _color(color)
        self.thickness = int(thickness)
        self.font_scale = float(font_scale)
        self.fraction = float(fraction)
        self.margin_px = int(margin_px)

    def annotate(self, canvas, regions: Regions, ctx: RenderContext | None = None):
        if ctx is None or not ctx.um_per_px:
            return canvas
        vx, vy, vw, vh = _viewport(canvas, ctx)
        um = self.length_um or nice_length(self.fraction * vw * ctx.um_per_px)
        px = int(round(um / ctx.um_per_px))
        x1 = vx + vw - self.margin_px
        x0 = max(vx, x1 - px)
        y = vy + vh - self.margin_px
        half = self.thickness // 2  # a filled box: exactly px wide, no round caps
        cv2.rectangle(
            canvas, (x0, y - half), (x1 - 1, y - half + self.thickness - 1), self.color, -1
        )
        text = f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} um"
        (tw, _), _ = cv2.getTextSize(text, FONT, self.font_scale, 1)
        _put_text(
            canvas,
            text,
            ((x0 + x1 - tw) // 2, y - self.thickness - 6),
            self.color,
            self.font_scale,
            1,
        )
        return canvas


class HudRenderer:
    """A status line at the top left of the viewport: model, objective, fps, status.

    Outlined text sized for the display: font_scale None means 1.0 per 1080 px of canvas height
    (about 22 px capital height at 1080p, never below 0.55), stroke 2 px from 720 px up.
    model / objective / fps given here are defaults; the values in ctx take precedence.
    """

    def __init__(
        self,
        model: str | None = None,
        objective: str | None = None,
        fps: float | None = None,
        color: RGB = (255, 255, 255),
        font_scale: float | None = None,
        margin_px: int = 16,
    ):
        self.model, self.objective, self.fps = model, objective, fps
        self.color = _color(color)
        self.font_scale = None if font_scale is None else float(font_scale)
        self.margin_px = int(margin_px)

    def lines(self, ctx: RenderContext) -> list[str]:
        """The text lines to show."""
        parts = []
        model = ctx.model or self.model
        objective = ctx.objective or self.objective
        fps = ctx.fps if ctx.fps is not None else self.fps
        if model:
            parts.append(str(model))
        if objective:
            parts.append(str(objective))
        if fps is not None:
            parts.append(f"{fps:.1f} fps")
        out = [" | ".join(parts)] if parts else []
        if ctx.text:
            out.append(ctx.text)
        return out

    def annotate(self, canvas, regions: Regions, ctx: RenderContext | None = None):
        ctx = ctx or RenderContext()
        vx, vy, _, _ = _viewport(canvas, ctx)
        y = vy + self.margin_px
        h = canvas.shape[0]
        scale = self.font_scale if self.font_scale is not None else max(0.55, h / 1080)
        thick = 2 if h >= 720 else 1
        for line in self.lines(ctx):
            (_, th), base = cv2.getTextSize(line, FONT, scale, thick)
            y += th
            _put_text(canvas, line, (vx + self.margin_px, y), self.color, scale, thick)
            y += base + max(6, th // 2)
        return canvas
