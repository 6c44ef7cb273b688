"""Calibration profiles: validation on load, per-objective sections, atomic writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from lucida.calibration import (
    CalibrationStore,
    FlatField,
    Profile,
    ProfileError,
    UnknownObjectiveError,
    nonuniformity,
)

H = [[1.5, 0.01, -100.0], [-0.02, 1.48, -50.0], [1e-6, -2e-6, 1.0]]


def _profile(tmp_path) -> Profile:
    p = Profile(microscope="arm-1", sensor_pixel_um=3.45)
    p.update_section(
        "10x", homography=H, um_per_px=0.65, um_per_px_uncertainty=0.001, magnification=10
    )
    p.update_section("20x", magnification=20)
    p.save(tmp_path / "profile.json")
    return p


def test_roundtrip_json_and_yaml(tmp_path):
    p = _profile(tmp_path)
    back = Profile.load(tmp_path)  # a folder finds its profile.json
    assert back == p and back.revision == 1
    assert np.allclose(back.section("10x").homography_array(), H)
    p.save(tmp_path / "scope.yaml")
    assert Profile.load(tmp_path / "scope.yaml").objectives == p.objectives


def test_unknown_objective_names_the_known_ones(tmp_path):
    p = _profile(tmp_path)
    with pytest.raises(UnknownObjectiveError) as exc:
        p.section("40x")
    msg = str(exc.value)
    assert "'40x'" in msg and "10x, 20x" in msg and "arm-1" in msg
    assert exc.value.exit_code == 7


def test_nominal_pixel_size_is_only_a_fallback(tmp_path):
    p = _profile(tmp_path)
    assert p.um_per_px("10x") == (0.65, "measured")
    assert p.um_per_px("20x") == (pytest.approx(3.45 / 20), "nominal")


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda d: d["objectives"]["10x"].update(colour="blue"), "colour"),
        (lambda d: d["objectives"]["10x"].update(homography=[[1, 0], [0, 1]]), "homography"),
        (lambda d: d["objectives"]["10x"].update(homography=[[0, 0, 0]] * 3), "singular"),
        (lambda d: d["objectives"]["10x"].update(white_balance=[1, -1, 1]), "white_balance"),
        (lambda d: d["objectives"]["10x"].update(flat="../../etc/passwd"), "flat"),
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d.pop("microscope"), "microscope"),
    ],
)
def test_invalid_profiles_are_refused_with_the_field_named(tmp_path, mutate, where):
    _profile(tmp_path)
    data = json.loads((tmp_path / "profile.json").read_text())
    mutate(data)
    (tmp_path / "profile.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=where) as exc:
        Profile.load(tmp_path)
    assert exc.value.exit_code == 8


def test_missing_flat_file_is_reported(tmp_path):
    p = _profile(tmp_path)
    name = p.store_array(
        tmp_path / "profile.json", "10x", "flat", np.full((8, 8, 3), 200, np.float32)
    )
    p.save(tmp_path / "profile.json")
    (tmp_path / name).unlink()
    with pytest.raises(ProfileError, match="flat file .* is missing"):
        Profile.load(tmp_path)


def test_store_switches_sections_with_the_objective(tmp_path):
    p = _profile(tmp_path)
    h, w = 90, 160
    y, x = np.mgrid[0:h, 0:w]
    vign = 1 - 0.3 * (((x - w / 2) / w) ** 2 + ((y - h / 2) / h) ** 2) * 2
    blank = np.clip(200 * vign[..., None] * (1.0, 0.9, 0.8), 0, 255).astype(np.uint8)
    ff = FlatField.from_frames([blank], smooth_px=0)
    p.store_array(tmp_path / "profile.json", "10x", "flat", ff.flat)
    p.update_section("10x", white_balance=ff.white_balance())
    p.save(tmp_path / "profile.json")
    store = CalibrationStore.open(tmp_path)
    ten = store.get("10x")
    assert store.get("10x") is ten  # cached
    assert nonuniformity(blank) > 0.2 and nonuniformity(ten.correct(blank)) < 0.02
    assert np.allclose(
        ten.to_display([[100, 50]]), [[1.5 * 100 + 0.5 - 100, -2 + 74 - 50]], atol=0.1
    )
    twenty = store.get("20x")
    assert twenty.homography is None and twenty.corrector is None
    assert twenty.um_per_px_source == "nominal" and twenty.correct(blank) is blank
    with pytest.raises(UnknownObjectiveError):
        store.get("100x")


def test_a_failed_write_leaves_the_old_profile(tmp_path, monkeypatch):
    _profile(tmp_path)
    before = (tmp_path / "profile.json").read_bytes()
    p = Profile.load(tmp_path)
    p.update_section("10x", um_per_px=0.7)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("lucida.calibration.atomic.os.replace", boom)
    with pytest.raises(OSError):
        p.save(tmp_path / "profile.json")
    assert (tmp_path / "profile.json").read_bytes() == before
    assert Profile.load(tmp_path).section("10x").um_per_px == 0.65
    assert [f.name for f in tmp_path.iterdir()] == ["profile.json"]  # temp file removed


def test_writer_killed_mid_write_leaves_the_old_profile_loadable(tmp_path):
    _profile(tmp_path)
    before = (tmp_path / "profile.json").read_bytes()
    script = textwrap.dedent(
        f"""
        import os, sys, time
        import lucida.calibration.atomic as atomic
        from lucida.calibration import Profile
        real_fsync = os.fsync
        def slow_fsync(fd):
            print("writing", flush=True)  # the temp file is written, not yet renamed
            time.sleep(60)
        atomic.os.fsync = slow_fsync
        p = Profile.load({str(tmp_path)!r})
        for i in range(200):
            p.update_section(f"obj{{i}}", um_per_px=1.0 + i)
        p.save({str(tmp_path / "profile.json")!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "profile.json").read_bytes() == before
    p = Profile.load(tmp_path)
    assert set(p.objectives) == {"10x", "20x"}
    leftovers = [f.name for f in tmp_path.iterdir() if f.name != "profile.json"]
    assert all(n.startswith(".profile.json.") and n.endswith(".tmp") for n in leftovers)
