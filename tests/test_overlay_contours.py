"""Heatmap -> contours: where the outline lands, hysteresis, area limit, anti-flicker."""

from __future__ import annotations

import numpy as np
import pytest
from lucida.overlay.contours import ContourExtractor, ContourParams
from lucida.overlay.errors import OverlayError

# 16 frame px per heatmap cell, heatmap cell (0, 0) centred at frame px (8, 8) + an offset.
AFFINE = np.array([[16.0, 0.0, 8.0 + 100.0], [0.0, 16.0, 8.0 + 50.0]])
CELL = 16.0


def disc(h, w, cx, cy, r, inside=1.0, outside=0.0, edge=1.0):
    """Probabilities of a disc centred at cell (cx, cy) with radius r cells and a linear
    edge `edge` cells wide, crossing the midpoint of inside/outside at exactly r."""
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - cx, yy - cy)
    t = np.clip(0.5 + (r - d) / edge, 0.0, 1.0)
    return (outside + (inside - outside) * t).astype(np.float32)


def crisp(**kw) -> ContourParams:
    """No blur, no hysteresis, no anti-flicker: contours follow the raw heatmap."""
    base = dict(blur_sigma_px=0.0, threshold_low=None, flicker_margin=0.0, min_area_um2=0.0)
    base.update(kw)
    return ContourParams(**base)


def test_disc_contour_lands_on_the_true_boundary_in_frame_px():
    cx, cy, r = 20.3, 14.6, 7.0
    probs = disc(30, 40, cx, cy, r)
    regions = ContourExtractor(ContourParams(flicker_margin=0.0, threshold_low=None)).extract(
        probs, AFFINE, um_per_px=0.5
    )
    assert len(regions) == 1
    pts = regions.contours[0]
    assert pts.dtype == np.float32 and pts.shape[1] == 2 and len(pts) >= 16
    centre = AFFINE[:, :2] @ [cx, cy] + AFFINE[:, 2]
    dist = np.hypot(pts[:, 0] - centre[0], pts[:, 1] - centre[1])
    assert np.abs(dist - r * CELL).max() < CELL  # within one heatmap cell everywhere
    assert np.abs(dist - r * CELL).mean() < 0.25 * CELL
    true_um2 = np.pi * (r * CELL) ** 2 * 0.25
    assert regions.areas_um2[0] == pytest.approx(true_um2, rel=0.1)
    assert regions.areas_px2[0] == pytest.approx(true_um2 / 0.25, rel=0.1)


def test_hysteresis_keeps_weak_attached_region_and_drops_isolated_weak_one():
    probs = np.zeros((30, 60), np.float32)
    probs[10:20, 5:15] = 0.9  # strong core
    probs[13:17, 15:30] = 0.45  # weak tail attached to it, reaching x = 29
    probs[10:20, 45:55] = 0.45  # weak, isolated
    params = crisp(threshold=0.5, threshold_low=0.4)
    regions = ContourExtractor(params).extract(probs, AFFINE)
    assert len(regions) == 1
    xs_cells = (regions.contours[0][:, 0] - AFFINE[0, 2]) / CELL
    assert xs_cells.max() > 28  # the tail is part of the region
    assert xs_cells.max() < 31  # and the isolated weak block is not
    no_hysteresis = ContourExtractor(crisp(threshold=0.5)).extract(probs, AFFINE)
    assert ((no_hysteresis.contours[0][:, 0] - AFFINE[0, 2]) / CELL).max() < 16


def test_min_area_in_um2_drops_small_blobs_and_scales_with_pixel_size():
    probs = disc(30, 60, 12, 15, 6.0) + disc(30, 60, 45, 15, 1.5)
    probs = np.clip(probs, 0, 1)
    # at 1 um/px: big disc ~ pi * 96^2 = 29000 um2, small ~ pi * 24^2 = 1800 um2
    ex = ContourExtractor(crisp(min_area_um2=5000.0))
    at_1um = ex.extract(probs, AFFINE, um_per_px=1.0)
    assert len(at_1um) == 1
    assert at_1um.areas_um2[0] > 20000
    at_2um = ex.extract(probs, AFFINE, um_per_px=2.0)  # 4x the um2: both pass
    assert len(at_2um) == 2
    assert at_2um.areas_um2[0] > at_2um.areas_um2[1]  # largest first
    at_quarter = ex.extract(probs, AFFINE, um_per_px=0.25)  # 1/16 the um2: none pass
    assert len(at_quarter) == 0
    unknown = ex.extract(probs, AFFINE, um_per_px=None)  # no pixel size: no um2 limit
    assert len(unknown) == 2 and unknown.areas_um2 is None


def test_anti_flicker_keeps_a_hovering_cell_steady_until_a_real_change():
    blob = disc(20, 20, 10, 10, 4.0)
    frames = [blob * v for v in (0.56, 0.46, 0.55, 0.44, 0.57, 0.45)]
    steady = ContourExtractor(crisp(flicker_margin=96 / 255))
    counts = [len(steady.extract(f, AFFINE)) for f in frames]
    assert counts == [1] * len(frames)
    naive = ContourExtractor(crisp(flicker_margin=0.0))
    assert [len(naive.extract(f, AFFINE)) for f in frames] == [1, 0, 1, 0, 1, 0]
    # A large change passes at once.
    assert len(steady.extract(blob * 0.05, AFFINE)) == 0


def test_reset_clears_the_anti_flicker_state():
    blob = disc(20, 20, 10, 10, 4.0)
    ex = ContourExtractor(crisp(flicker_margin=0.3))
    assert len(ex.extract(blob * 0.6, AFFINE)) == 1
    assert len(ex.extract(blob * 0.4, AFFINE)) == 1  # held by the dead band
    ex.reset()
    assert len(ex.extract(blob * 0.4, AFFINE)) == 0


def test_hole_is_reported_and_subtracted_from_the_area():
    ring = disc(40, 40, 20, 20, 12.0) - disc(40, 40, 20, 20, 5.0)
    regions = ContourExtractor(crisp()).extract(np.clip(ring, 0, 1), AFFINE, um_per_px=1.0)
    assert len(regions) == 1 and len(regions.holes[0]) == 1
    expected = np.pi * ((12 * CELL) ** 2 - (5 * CELL) ** 2)
    assert regions.areas_px2[0] == pytest.approx(expected, rel=0.1)
    mask = regions.rasterize(800, 800)
    centre = (AFFINE[:, :2] @ [20, 20] + AFFINE[:, 2]).astype(int)
    assert not mask[centre[1], centre[0]]  # the hole is left out
    assert mask[centre[1], centre[0] + int(8 * CELL)]


@pytest.mark.parametrize(
    "kw",
    [
        {"threshold": 0.0},
        {"threshold": 0.5, "threshold_low": 0.7},
        {"upscale": 0},
        {"blur_sigma_px": -1.0},
        {"flicker_margin": 1.5},
    ],
)
def test_bad_parameters_raise_one_readable_error(kw):
    with pytest.raises(OverlayError, match="contour"):
        ContourParams(**kw)


def test_from_mapping_rejects_unknown_keys_and_bad_inputs_are_named():
    assert ContourParams.from_mapping({"threshold": 0.6}).threshold == 0.6
    with pytest.raises(OverlayError, match="tresh"):
        ContourParams.from_mapping({"tresh": 0.6})
    ex = ContourExtractor()
    with pytest.raises(OverlayError, match="heatmap"):
        ex.extract(np.zeros((2, 3, 4), np.float32), AFFINE)
    with pytest.raises(OverlayError, match="affine"):
        ex.extract(np.zeros((4, 4), np.float32), np.eye(2))
    with pytest.raises(OverlayError, match="NaN"):
        ex.extract(np.full((4, 4), np.nan, np.float32), AFFINE)


def test_a_heatmap_that_shows_no_change_reuses_its_regions():
    """Noise inside the anti-flicker dead band changes nothing shown: the regions of the last
    extraction come back without contour work; a real change is traced again; reset forgets."""
    yy, xx = np.mgrid[0:34, 0:60]
    blob = np.exp(-((xx - 30.0) ** 2 + (yy - 17.0) ** 2) / 60.0).astype(np.float32)
    affine = np.array([[32.0, 0, 15.5], [0, 32.0, 15.5]])
    ex = ContourExtractor(ContourParams(min_area_um2=0))
    first = ex.extract(blob, affine, 1.0)
    noisy = np.clip(blob + np.float32(0.05), 0, 1)  # well inside the 96/255 dead band
    assert ex.extract(noisy, affine, 1.0) is first and ex.reused == 1
    moved = np.roll(blob, 12, axis=1)
    again = ex.extract(moved, affine, 1.0)
    assert again is not first and again.contours[0][:, 0].mean() > first.contours[0][:, 0].mean()
    ex.reset()
    assert ex.extract(moved, affine, 1.0) is not again
