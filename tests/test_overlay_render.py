"""Renderers and composers: AR mode (black, warped, eyepiece mask) and preview mode."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from lucida.overlay.compose import ARComposer, PreviewComposer
from lucida.overlay.errors import OverlayError
from lucida.overlay.regions import Regions
from lucida.overlay.render import (
    ArrowRenderer,
    ContourRenderer,
    FilledRenderer,
    HeatmapRenderer,
    HudRenderer,
    RenderContext,
    ScaleBarRenderer,
    TextRenderer,
)

GREEN = (0, 255, 0)


def square(x0, y0, x1, y1, area_um2=None) -> Regions:
    pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    area = float((x1 - x0) * (y1 - y0))
    return Regions([pts], [[]], [area], None if area_um2 is None else [area_um2])


def homography(scale=0.8, angle_deg=10.0, tx=150.0, ty=40.0, persp=(2e-5, -1e-5)):
    a = np.deg2rad(angle_deg)
    return np.array(
        [
            [scale * np.cos(a), -scale * np.sin(a), tx],
            [scale * np.sin(a), scale * np.cos(a), ty],
            [persp[0], persp[1], 1.0],
        ]
    )


def test_ar_canvas_is_black_except_on_the_drawn_contour():
    comp = ARComposer((320, 240), renderers=[ContourRenderer(GREEN, width_px=3)])
    canvas = comp.compose(square(60, 50, 260, 190))
    assert canvas.shape == (240, 320, 3) and canvas.dtype == np.uint8
    edge = np.zeros((240, 320), np.uint8)
    cv2.rectangle(edge, (60, 50), (260, 190), 255, 9)  # the line +- 4 px
    lit = canvas.any(axis=2)
    assert lit.sum() > 1500
    assert not lit[edge == 0].any()
    assert tuple(canvas[50, 160]) == GREEN  # on the top edge
    assert canvas[:, :, 0].max() == 0 and canvas[:, :, 2].max() == 0


def test_contour_pixels_land_where_the_homography_says():
    h = homography()
    comp = ARComposer((640, 480), homography=h, renderers=[ContourRenderer(GREEN, width_px=3)])
    regions = square(100, 100, 500, 400)
    canvas = comp.compose(regions)
    corners = regions.contours[0].reshape(-1, 1, 2)
    warped = cv2.perspectiveTransform(corners.astype(np.float64), h).reshape(-1, 2)
    for (x0, y0), (x1, y1) in zip(warped, np.roll(warped, -1, axis=0)):
        for t in (0.25, 0.5, 0.75):  # points along each warped edge are lit
            x, y = np.round([x0 + t * (x1 - x0), y0 + t * (y1 - y0)]).astype(int)
            assert canvas[y, x, 1] > 100, (x, y)
    x, y = np.round(warped.mean(axis=0)).astype(int)
    assert not canvas[y, x].any()  # the interior stays black
    assert not canvas[100, 300].any()  # where the unwarped top edge would be: black


def test_eyepiece_mask_blanks_everything_outside_the_circle():
    comp = ARComposer(
        (320, 240), eyepiece_circle=(160, 120, 100), renderers=[FilledRenderer(GREEN, alpha=1.0)]
    )
    canvas = comp.compose(square(-10, -10, 330, 250))  # covers the whole display
    yy, xx = np.mgrid[0:240, 0:320]
    d = np.hypot(xx - 160, yy - 120)
    assert not canvas[d > 101].any()
    assert (canvas[d < 99] == GREEN).all()
    x, y, w, h = comp.viewport
    assert x >= 160 - 100 and x + w <= 160 + 100 and w >= 130  # square inside the circle


@pytest.mark.parametrize("corner", [(-40, -40), (250, 170), (10, 100)])
def test_eyepiece_mask_holds_for_outlines_anywhere(corner):
    """Outlines (thick, anti-aliased) crossing the circle anywhere are cut at it, whether the
    strips outside the circle are all read or only those near the regions; and the same pixels
    come out either way."""
    x0, y0 = corner
    regions = Regions(
        [*square(x0, y0, x0 + 110, y0 + 90).contours, *square(150, 110, 170, 130).contours]
    )
    fast = ARComposer(
        (320, 240), eyepiece_circle=(160, 120, 100), renderers=[ContourRenderer(GREEN, 7)]
    )
    canvas = fast.compose(regions)
    yy, xx = np.mgrid[0:240, 0:320]
    assert not canvas[np.hypot(xx - 160, yy - 120) > 101].any()

    class Outline:  # a renderer the composer does not know: every outside strip is read
        annotate = ContourRenderer(GREEN, 7).annotate

    full = ARComposer((320, 240), eyepiece_circle=(160, 120, 100), renderers=[Outline()])
    full = full.compose(regions)
    np.testing.assert_array_equal(canvas, full)


def test_blank_is_black_and_compose_returns_a_new_canvas():
    comp = ARComposer((64, 48))
    assert not comp.blank().any()
    a = comp.compose(square(10, 10, 40, 30))
    b = comp.compose(Regions())
    assert a is not b and a.any() and not b.any()


def test_ar_canvas_of_unchanged_regions_is_not_redrawn():
    """The same Regions object drawn the same way (a still field) returns the last canvas; other
    regions, another objective (line width) or class colours draw a new one; a renderer that
    draws more than the regions (a HUD with its fps) always draws anew."""
    comp = ARComposer((64, 48), eyepiece_circle=(32, 24, 30))
    regions = square(10, 10, 40, 30)
    a = comp.compose(regions, objective="10x")
    assert comp.compose(regions, objective="10x") is a and comp.reused == 1
    assert comp.compose(square(10, 10, 40, 30), objective="10x") is not a
    b = comp.compose(regions, objective="40x")
    assert b is not a and comp.compose(regions, objective="40x") is b
    comp.set_eyepiece((32, 24, 10))
    assert comp.compose(regions, objective="40x") is not b
    hud = ARComposer((64, 48), renderers=[ContourRenderer(), HudRenderer()])
    assert hud.compose(regions, fps=10.0) is not hud.compose(regions, fps=10.0)


def test_preview_blends_the_overlay_over_the_camera_frame():
    frame = np.empty((240, 320, 3), np.uint8)
    frame[:] = (230, 150, 200)  # pink, like H&E
    comp = PreviewComposer([ContourRenderer(GREEN, width_px=5)], alpha=0.6)
    out = comp.compose(frame, square(60, 50, 260, 190))
    assert out.shape == frame.shape
    assert (out[120, 160] == frame[120, 160]).all()  # away from the contour: the frame
    on = out[50, 160].astype(int)
    expected = 0.4 * np.array([230, 150, 200]) + 0.6 * np.array(GREEN)
    assert np.abs(on - expected).max() <= 2  # on the contour: a blend of both
    assert (frame == (230, 150, 200)).all()  # the input frame is untouched


def test_filled_renderer_is_translucent_and_keeps_holes_clear():
    outer = np.array([[20, 20], [180, 20], [180, 180], [20, 180]], np.float32)
    hole = np.array([[80, 80], [120, 80], [120, 120], [80, 120]], np.float32)
    regions = Regions([outer], [[hole]], [1.0], None)
    canvas = np.full((200, 200, 3), 100, np.uint8)
    FilledRenderer((0, 200, 0), alpha=0.5).annotate(canvas, regions)
    assert tuple(canvas[50, 50]) == (50, 150, 50)
    assert tuple(canvas[100, 100]) == (100, 100, 100)
    assert tuple(canvas[5, 5]) == (100, 100, 100)


def test_heatmap_renderer_colours_high_probability_only():
    probs = np.zeros((10, 10), np.float32)
    probs[:, 5:] = 1.0
    affine = np.array([[32.0, 0, 16], [0, 32.0, 16]])
    comp = ARComposer((320, 320), renderers=[HeatmapRenderer(cv2.COLORMAP_JET, alpha=1.0)])
    canvas = comp.compose(Regions(), heatmap=probs, heatmap_affine=affine)
    assert not canvas[:, :120].any()  # probability 0: nothing drawn
    assert canvas[160, 250, 0] > 100 and canvas[160, 250, 2] < 50  # jet at 1.0 is red
    with pytest.raises(OverlayError, match="heatmap_affine"):
        comp.compose(Regions(), heatmap=probs)


def test_labels_arrow_scale_bar_and_hud_draw_in_the_right_places():
    canvas = np.zeros((400, 600, 3), np.uint8)
    regions = square(300, 200, 400, 300, area_um2=25_000.0)
    ctx = RenderContext(objective="20x", um_per_px=0.5, model="demo", fps=12.5)
    assert TextRenderer.label(regions, 0) == "0.03 mm2"
    TextRenderer().annotate(canvas, regions, ctx)
    assert canvas[170:200, 300:400].any() and not canvas[250, 350].any()  # label above it
    c2 = np.zeros_like(canvas)
    ArrowRenderer(length_px=100).annotate(c2, regions, ctx)
    assert c2[190:210, 290:310].any()  # the tip is at the corner facing the centre (300,200)
    assert c2[120:140, 220:240].any()  # the tail is 100 px away, towards the centre
    c3 = np.zeros_like(canvas)
    ScaleBarRenderer(length_um=100).annotate(c3, regions, ctx)
    row = c3[400 - 24]
    lit = np.flatnonzero(row.any(axis=1))
    assert lit.max() - lit.min() + 1 == pytest.approx(200, abs=1)  # 100 um at 0.5 um/px
    c4 = np.zeros_like(canvas)
    ScaleBarRenderer().annotate(c4, regions, RenderContext())  # no pixel size: no bar
    assert not c4.any()
    hud = HudRenderer()
    assert hud.lines(ctx) == ["demo | 20x | 12.5 fps"]
    hud.annotate(c4, regions, ctx)
    assert c4[:40, :250].any() and not c4[100:].any()


def test_contour_width_follows_the_objective():
    r = ContourRenderer(width_px={"4x": 2, "40x": 6, "default": 3})
    assert (r.width_for("4x"), r.width_for("40x"), r.width_for("10x"), r.width_for(None)) == (
        2,
        6,
        3,
        3,
    )
    widths = []
    for objective in ("4x", "40x"):
        canvas = np.zeros((100, 100, 3), np.uint8)
        r.annotate(canvas, square(20, 20, 80, 80), RenderContext(objective=objective))
        widths.append(int((canvas[:, 50, 1] > 127).sum()))
    assert widths[1] > widths[0]


def test_bad_composer_inputs_raise_overlay_errors():
    with pytest.raises(OverlayError, match="homography"):
        ARComposer((100, 100), homography=np.zeros((3, 3)))
    with pytest.raises(OverlayError, match="display size"):
        ARComposer((0, 100))
    with pytest.raises(OverlayError, match="canvas"):
        PreviewComposer().compose(np.zeros((10, 10), np.uint8), Regions())
