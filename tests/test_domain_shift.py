"""Domain shift on the virtual microscope: held-out stain protocols and camera casts, and
`lucida eval --shift` with the bundle's colour normalization on and off."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lucida.runtime.virtual.camera import CAMERA_SHIFTS, CameraConfig
from lucida.runtime.virtual.stain import STAIN_SHIFTS, Stain, shifted_stain


def test_stain_shifts_lie_beyond_the_training_range():
    s = Stain.random(np.random.default_rng(0))
    assert shifted_stain(s, "faded").h_scale < 0.6  # training strengths are >= 0.6 / 0.55
    assert shifted_stain(s, "over").e_scale == pytest.approx(2 * s.e_scale)
    r = shifted_stain(s, "ratio")
    assert r.h_scale / r.e_scale == pytest.approx(4.5 * s.h_scale / s.e_scale)
    hue = shifted_stain(s, "hue")
    turn = np.degrees(np.arccos(np.clip(np.dot(hue.h_od, s.h_od), -1, 1)))
    assert turn > 15  # training vectors vary by ~6 deg (noise sd 0.07 per component)
    with pytest.raises(ValueError, match="unknown stain shift"):
        shifted_stain(s, "purple")
    assert set(STAIN_SHIFTS) == {"hue", "faded", "over", "ratio"}
    for gains in CAMERA_SHIFTS.values():
        CameraConfig(colour_gains=gains)  # valid settings


def test_shifted_frames_change_colour_not_truth():
    from lucida.tools.demo.evaluate import fov_frames

    base = next(fov_frames([1001], "20x", 1))
    faded = next(fov_frames([1001], "20x", 1, stain_shift="faded"))
    warm = next(
        fov_frames([1001], "20x", 1, camera=CameraConfig(colour_gains=CAMERA_SHIFTS["warm"]))
    )
    assert np.array_equal(base.meta["truth_mask"], faded.meta["truth_mask"])
    assert faded.image.mean() > base.image.mean() + 5  # paler
    b, w = base.image.reshape(-1, 3).mean(0), warm.image.reshape(-1, 3).mean(0)
    assert w[2] < 0.75 * b[2]  # blue cut by the warm cast


def test_shift_needs_a_colour_target(capsys):
    from lucida.tools.cli import main

    code = main(["eval", "lymph-s", "--shift", "stain", "--slides", "1001", "--fovs", "1"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "--fit-color-target" in err


def test_shift_reports_fov_auc_with_normalization_on_and_off():
    from lucida.models.registry import shipped_bundle
    from lucida.tools.demo.shift import evaluate_shift

    bundle = shipped_bundle("lymph-m")
    if bundle.manifest.color_norm.method == "none":
        pytest.skip("lymph-m has no colour target in this checkout")
    res = evaluate_shift(bundle, ["20x"], ["camera"], [1001], per_slide=4)
    assert list(res) == ["none", "camera:warm", "camera:cool", "camera:green"]
    for per in res.values():
        v = per["20x"]
        assert set(v) == {"fov_auc_norm_off", "fov_auc_norm_on"}
        assert all(x is None or 0.0 <= x <= 1.0 for x in v.values())
    json.dumps(res)
