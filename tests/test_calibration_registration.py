"""Automatic camera -> display registration on the virtual microscope: a known random
homography, tissue under the projected pattern, blur, noise, vignetting."""

from __future__ import annotations

import numpy as np
import pytest
from lucida.calibration import (
    DegenerateHomographyError,
    PatternNotFoundError,
    TooFewPointsError,
    corner_error,
    load_pattern,
    make_pattern,
    register_display,
    render_pattern,
    save_pattern,
)
from lucida.tools.calibrate.simulate import (
    GEOMETRIES,
    pattern_for,
    random_homography,
    registration_trial,
    simulate_capture,
)


@pytest.mark.parametrize(
    "seed", [3, 4, 5, 41]
)  # arm, hdmi1080, hdmi720 (seed % 3); 41: small, blurred pattern over dense nuclei
def test_registration_is_sub_pixel_over_tissue(seed):
    trial = registration_trial(seed)
    res = register_display(trial.captured, pattern_for(trial.geometry))
    err = corner_error(res.homography, trial.h_true, trial.eval_camera_px)
    assert err.mean() <= 0.5, (trial.geometry, err)
    assert err.max() <= 1.5, (trial.geometry, err)
    assert res.inliers >= 12 and res.rms_px < 3.0


def test_mirrored_optics_are_registered():
    display, camera, circle = GEOMETRIES["hdmi720"]
    rng = np.random.default_rng(11)
    h, pts, _ = random_homography(rng, display, camera, circle)
    flip = np.array([[-1.0, 0, display[0] - 1], [0, 1, 0], [0, 0, 1]])  # display seen mirrored
    h_m = flip @ h
    spec = make_pattern(display)
    img = simulate_capture(render_pattern(spec), h_m, camera, rng, circle, blur_sigma=1.0)
    res = register_display(img, spec)
    assert res.mirrored
    assert corner_error(res.homography, h_m, pts).max() <= 1.5


def test_pattern_sidecar_roundtrip(tmp_path):
    spec = make_pattern((1280, 720))
    png, side = save_pattern(spec, tmp_path / "p.png")
    assert png.exists() and side.exists()
    back = load_pattern(png)
    assert back == spec
    pts = back.corner_points()
    # corner k sits on the edge between squares: pixel centres at integers, edges at .5
    assert np.allclose(pts[0], np.array(spec.origin) + spec.square_px - 0.5)
    assert len(pts) == (spec.squares[0] - 1) * (spec.squares[1] - 1)


def test_photo_without_the_pattern_is_reported():
    rng = np.random.default_rng(0)
    from lucida.tools.calibrate.simulate import fallback_tissue

    with pytest.raises(PatternNotFoundError):
        register_display(fallback_tissue(rng, (640, 480)), make_pattern((1280, 720)))


def test_a_glimpse_of_the_pattern_is_too_few_points():
    spec = make_pattern((1280, 720))
    img = render_pattern(spec)
    x0, y0 = spec.origin
    s = spec.square_px
    crop = np.zeros_like(img)
    crop[y0 : y0 + 2 * s, x0 : x0 + 3 * s] = img[y0 : y0 + 2 * s, x0 : x0 + 3 * s]
    with pytest.raises(TooFewPointsError):
        register_display(crop, spec)


def test_a_view_with_the_horizon_in_the_frame_is_degenerate():
    """Strong perspective: the fitted map sends part of the camera frame to infinity,
    which no microscope's camera -> display map can do."""
    from lucida.tools.calibrate.simulate import project_pattern

    spec = make_pattern((1280, 720))
    g = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.0008, 0, 1.0]])  # display -> camera
    light = project_pattern(render_pattern(spec), np.linalg.inv(g), (1280, 720)) * 200 + 30
    with pytest.raises(DegenerateHomographyError, match="horizon"):
        register_display(np.clip(light, 0, 255).astype(np.uint8), spec)
