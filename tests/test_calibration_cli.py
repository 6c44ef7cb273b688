"""`lucida calibrate ...` end to end, and every bad input with its exit code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lucida.calibration import Profile, make_pattern, render_pattern, save_pattern
from lucida.calibration.imageio import write_image
from lucida.tools.cli import main


def _pattern(tmp_path, size=(1280, 720)):
    spec = make_pattern(size)
    png, _ = save_pattern(spec, tmp_path / "pattern.png")
    return spec, png


def test_pattern_simulate_register_and_save_profile(tmp_path, capsys):
    assert (
        main(["calibrate", "pattern", "--display", "1280x720", "--out", str(tmp_path / "p.png")])
        == 0
    )
    assert (tmp_path / "p.json").exists()
    photo = tmp_path / "photo.png"
    assert (
        main(
            [
                "calibrate",
                "simulate",
                "--pattern",
                str(tmp_path / "p.png"),
                "--out",
                str(photo),
                "--seed",
                "2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    prof = tmp_path / "scope"
    rc = main(
        [
            "calibrate",
            "display",
            "--pattern",
            str(tmp_path / "p.png"),
            "--captured",
            str(photo),
            "--objective",
            "10x",
            "--profile",
            str(prof),
            "--json",
            "--overlay",
            str(tmp_path / "reg.png"),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert np.asarray(out["homography"]).shape == (3, 3)
    assert out["rms_px"] < 3 and out["inliers"] >= 8 and len(out["points"]) == out["n_points"]
    truth = json.loads(photo.with_suffix(".truth.json").read_text())
    from lucida.calibration import corner_error

    err = corner_error(
        np.asarray(out["homography"]),
        np.asarray(truth["homography"]),
        np.asarray(truth["eval_camera_px"]),
    )
    assert err.max() < 1.5
    loaded = Profile.load(prof)
    assert loaded.section("10x").registration.method == "auto"
    assert loaded.section("10x").display.width == 1280
    assert (tmp_path / "reg.png").exists()


def _run(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_photo_without_pattern_exits_3(tmp_path, capsys):
    _, png = _pattern(tmp_path)
    from lucida.tools.calibrate.simulate import fallback_tissue

    photo = tmp_path / "tissue.png"
    write_image(photo, fallback_tissue(np.random.default_rng(0), (640, 480)))
    rc, err = _run(
        ["calibrate", "display", "--pattern", str(png), "--captured", str(photo)], capsys
    )
    assert rc == 3
    assert "pattern was not found" in err and err.count("\n") == 0


def test_glimpse_of_pattern_exits_4(tmp_path, capsys):
    spec, png = _pattern(tmp_path)
    img = render_pattern(spec)
    x0, y0, s = spec.origin[0], spec.origin[1], spec.square_px
    crop = np.zeros_like(img)
    crop[y0 : y0 + 2 * s, x0 : x0 + 3 * s] = img[y0 : y0 + 2 * s, x0 : x0 + 3 * s]
    write_image(tmp_path / "c.png", crop)
    rc, err = _run(
        ["calibrate", "display", "--pattern", str(png), "--captured", str(tmp_path / "c.png")],
        capsys,
    )
    assert rc == 4 and "need at least" in err


def test_degenerate_homography_exits_5(tmp_path, capsys):
    from lucida.tools.calibrate.simulate import project_pattern

    spec, png = _pattern(tmp_path)
    g = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.0008, 0, 1.0]])
    light = project_pattern(render_pattern(spec), np.linalg.inv(g), (1280, 720)) * 200 + 30
    write_image(tmp_path / "d.png", np.clip(light, 0, 255).astype(np.uint8))
    rc, err = _run(
        ["calibrate", "display", "--pattern", str(png), "--captured", str(tmp_path / "d.png")],
        capsys,
    )
    assert rc == 5 and "horizon" in err


@pytest.mark.parametrize("content", [None, b"this is not a PNG"])
def test_unreadable_or_missing_image_exits_6(tmp_path, capsys, content):
    _, png = _pattern(tmp_path)
    photo = tmp_path / "photo.png"
    if content is not None:
        photo.write_bytes(content)
    rc, err = _run(
        ["calibrate", "display", "--pattern", str(png), "--captured", str(photo)], capsys
    )
    assert rc == 6 and "photo.png" in err
    rc, err = _run(["calibrate", "pixel-size", "--image", str(photo), "--spacing-um", "10"], capsys)
    assert rc == 6


def test_unknown_objective_exits_7_and_names_known_ones(tmp_path, capsys):
    p = Profile(microscope="arm-1")
    p.update_section("10x", um_per_px=0.65)
    p.update_section("20x", um_per_px=0.325)
    p.save(tmp_path / "profile.json")
    rc, err = _run(["calibrate", "show", "--profile", str(tmp_path), "--objective", "63x"], capsys)
    assert rc == 7
    assert "'63x'" in err and "10x, 20x" in err
    assert (
        main(["calibrate", "show", "--profile", str(tmp_path), "--objective", "20x", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["um_per_px"] == 0.325


def test_invalid_profile_exits_8(tmp_path, capsys):
    (tmp_path / "profile.json").write_text(
        json.dumps(
            {"schema_version": 1, "microscope": "x", "objectives": {"10x": {"um_per_px": -1}}}
        )
    )
    rc, err = _run(["calibrate", "show", "--profile", str(tmp_path)], capsys)
    assert rc == 8 and "um_per_px" in err
    (tmp_path / "profile.json").write_text("{not json")
    rc, err = _run(["calibrate", "show", "--profile", str(tmp_path)], capsys)
    assert rc == 8 and "cannot be parsed" in err


def test_blank_micrometer_is_refused_exit_10(tmp_path, capsys):
    write_image(tmp_path / "m.png", np.full((240, 320, 3), 200, np.uint8))
    rc, err = _run(
        ["calibrate", "pixel-size", "--image", str(tmp_path / "m.png"), "--spacing-um", "10"],
        capsys,
    )
    assert rc == 10 and "blank" in err  # a refusal has its own code (issue 16)


def test_profile_without_objective_is_bad_input(tmp_path, capsys):
    from lucida.tools.calibrate.simulate import micrometer_image

    write_image(tmp_path / "m.png", micrometer_image(1, size=(480, 360)).image)
    rc, err = _run(
        [
            "calibrate",
            "pixel-size",
            "--image",
            str(tmp_path / "m.png"),
            "--spacing-um",
            "10",
            "--profile",
            str(tmp_path / "p"),
        ],
        capsys,
    )
    assert rc == 2 and "--objective" in err
    assert not (tmp_path / "p").exists()
