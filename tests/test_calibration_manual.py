"""Manual (ARM-style) registration: nudge circles onto the target, save a homography."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lucida.calibration import CalibrationError, ManualRegistration, Profile, apply_homography
from lucida.tools.cli import main


def test_nominal_start_centres_the_camera_on_the_display():
    m = ManualRegistration((1920, 1080), (1280, 720))
    centre = apply_homography(m.homography(), [[959.5, 539.5]])[0]
    assert np.allclose(centre, [639.5, 359.5])


def test_keys_move_scale_and_rotate_the_overlay():
    m = ManualRegistration((1280, 720), (1280, 720))
    p0 = apply_homography(m.homography(), [[639.5, 359.5], [1000, 359.5]])
    for key in (65363, 65363, "W"):  # right arrow twice (5 px each), fine up (0.5 px)
        m.handle_key(key)
    p1 = apply_homography(m.homography(), [[639.5, 359.5]])[0]
    assert np.allclose(p1 - p0[0], [10.0, -0.5])
    m.handle_key("0")
    m.handle_key("+")
    p2 = apply_homography(m.homography(), [[1000, 359.5]])[0]
    assert p2[0] - 639.5 == pytest.approx((1000 - 639.5) * 1.01)
    m.handle_key("0")
    for _ in range(90):
        m.handle_key("]")  # 90 x 1 deg clockwise on screen (y down)
    p3 = apply_homography(m.homography(), [[1000, 359.5]])[0]
    assert np.allclose(p3, [639.5, 359.5 + (1000 - 639.5)], atol=1e-6)
    assert m.handle_key(13) == "save" and m.handle_key(27) == "cancel" and m.handle_key(-1) is None


def test_http_api_commands():
    m = ManualRegistration((1280, 720), (1280, 720))
    st = m.apply({"action": "left", "fine": True})
    assert st["adjustment"]["dx_px"] == -0.5
    st = m.apply({"dx_px": 3, "dy_px": -2, "scale": 1.02, "rotation_deg": 0.5})
    assert st["adjustment"] == {"dx_px": 3.0, "dy_px": -2.0, "scale": 1.02, "rotation_deg": 0.5}
    st = m.apply({"delta": {"dx_px": 1, "scale": 1.01}})
    assert st["adjustment"]["dx_px"] == 4.0 and st["adjustment"]["scale"] == pytest.approx(1.0302)
    assert np.asarray(st["homography"]).shape == (3, 3)
    with pytest.raises(CalibrationError, match="unknown"):
        m.apply({"zoom": 2})
    with pytest.raises(CalibrationError, match="unknown manual registration action"):
        m.apply({"action": "jump"})


def test_render_draws_the_circles_where_the_homography_puts_the_target():
    m = ManualRegistration((640, 480), (800, 600), target=(320.0, 240.0, [100.0]))
    m.apply({"dx_px": 40})
    img = m.render(thickness=1)
    c = apply_homography(m.homography(), [[320.0, 240.0]])[0]
    r = 100.0 * m.homography()[0, 0]
    ys, xs = np.nonzero(img[..., 1] > 128)
    d = np.hypot(xs - c[0], ys - c[1])
    on_ring = np.abs(d - r) < 2
    on_cross = (np.abs(xs - c[0]) < 2) | (np.abs(ys - c[1]) < 2)
    text = ys > 600 - 30
    assert (on_ring | on_cross | text).mean() > 0.97
    assert on_ring.sum() > 500


def test_manual_cli_saves_the_same_homography_format(tmp_path, capsys):
    rc = main(
        [
            "calibrate",
            "manual",
            "--display",
            "1280x720",
            "--camera",
            "1920x1080",
            "--keys",
            "dd+\r",
            "--objective",
            "10x",
            "--profile",
            str(tmp_path),
            "--json",
            "--render",
            str(tmp_path / "r.png"),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["adjustment"]["dx_px"] == 10.0 and out["outcome"] == "save"
    sec = Profile.load(tmp_path).section("10x")
    assert sec.registration.method == "manual"
    assert np.allclose(sec.homography_array(), out["homography"])
    assert (tmp_path / "r.png").exists()
    rc = main(["calibrate", "manual", "--display", "1280x720", "--keys", "a\x1b"])
    assert rc == 1
