"""Flat-field and white balance on the virtual microscope's vignetted camera."""

from __future__ import annotations

import numpy as np
import pytest
from lucida.calibration import (
    FlatField,
    FrameCorrector,
    MeasurementError,
    from_patch,
    grey_world,
    nonuniformity,
)
from lucida.tools.calibrate.accuracy import _virtual_camera


@pytest.fixture(scope="module")
def blank_field():
    size = (960, 540)
    capture, dark, _ = _virtual_camera(size, 0.3, seed=1)
    scene = np.full((size[1], size[0], 3), 225, np.uint8)
    return [capture(scene) for _ in range(9)], [dark() for _ in range(3)]


def test_flat_field_flattens_a_vignetted_blank_field(blank_field):
    frames, _ = blank_field
    ff = FlatField.from_frames(frames[:-1])
    test = frames[-1]
    before = nonuniformity(test)
    after = nonuniformity(FrameCorrector(ff, ff.white_balance()).apply(test))
    assert before >= 0.20
    assert after <= 0.02


def test_white_balance_makes_the_blank_field_neutral(blank_field):
    frames, _ = blank_field
    ff = FlatField.from_frames(frames[:-1])
    mean_before = frames[-1].reshape(-1, 3).mean(0)
    assert mean_before.max() - mean_before.min() > 10  # the camera has a colour cast
    out = FrameCorrector(ff, ff.white_balance()).apply(frames[-1]).reshape(-1, 3).mean(0)
    assert out.max() - out.min() < 1.5


def test_dark_frames_are_subtracted(blank_field):
    frames, darks = blank_field
    ff = FlatField.from_frames(frames[:-1], darks)
    assert ff.dark is not None and 2 < float(ff.dark.mean()) < 8
    out = FrameCorrector(ff, ff.white_balance()).apply(frames[-1])
    assert nonuniformity(out) <= 0.02


def test_fixed_point_map_matches_the_float_map(blank_field):
    frames, _ = blank_field
    ff = FlatField.from_frames(frames[:-1])
    fast = FrameCorrector(ff, ff.white_balance()).apply(frames[-1]).astype(np.float64)
    exact = FrameCorrector(ff, ff.white_balance(), exact=True).apply(frames[-1]).astype(np.float64)
    assert np.abs(fast - exact).max() <= 3  # per pixel: the dither's rounding
    assert abs(fast.mean() - exact.mean()) < 0.3  # on average: exact


def test_flat_follows_a_new_frame_size(blank_field):
    frames, _ = blank_field
    ff = FlatField.from_frames(frames[:-1])
    half = frames[-1][::2, ::2].copy()
    out = FrameCorrector(ff, ff.white_balance()).apply(half)
    assert out.shape == half.shape and nonuniformity(out) <= 0.03


def test_bad_blank_frames_are_refused():
    with pytest.raises(MeasurementError, match="saturated"):
        FlatField.from_frames([np.full((64, 64, 3), 255, np.uint8)])
    with pytest.raises(MeasurementError, match="too dark"):
        FlatField.from_frames([np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(MeasurementError, match="differ in size"):
        FlatField.from_frames(
            [np.full((64, 64, 3), 99, np.uint8), np.full((32, 64, 3), 99, np.uint8)]
        )


def test_grey_world_and_reference_patch():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:] = (200, 180, 150)
    g = grey_world(img)
    assert np.allclose(np.array(g) * (200, 180, 150), np.mean((200, 180, 150)), rtol=1e-6)
    img[10:20, 10:20] = (120, 100, 80)
    p = from_patch(img, (10, 10, 10, 10))
    assert np.allclose(np.array(p) * (120, 100, 80), 100, rtol=1e-6)
    with pytest.raises(MeasurementError, match="not inside"):
        from_patch(img, (95, 95, 10, 10))
