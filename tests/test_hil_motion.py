"""`lucida hil motion`: the virtual microscope as a real camera (it never says "moving"), the
stage moved as a hand does, and the device judged from its own display records.

A good build (the real pipeline, oracle heatmaps) passes; a build that ignores the image's
motion (blanks only when the source says the stage moves, as before issue 13) fails exactly
the blanking checks; a remote device skips the step.
"""

from __future__ import annotations

import pytest
from lucida.tools.hil.dut import RemoteDut
from lucida.tools.hil.motion import hand
from lucida.tools.hil.runner import Bench, Checks, Skip
from lucida.tools.hil.scenario import HandStep, load_scenario
from test_hil_bench import hil, shim, steps_by_name

BLANKING = (
    "blank within 1 camera interval(s) of each onset",
    "no overlay from a frame taken while the field moved faster",
)


def _checks(step: dict) -> dict:
    return {c["name"]: c for c in step["checks"]}


@pytest.mark.timeout(180)
def test_motion_scenario_passes_when_the_device_sees_motion_in_the_image(tmp_path):
    out = tmp_path / "report"
    r = hil("motion", "--daemon-cmd", shim("oracle"), "--report", out)
    assert r.returncode == 0, r.stdout + r.stderr
    step = steps_by_name(out)["hand-pans"]
    m = step["metrics"]
    assert m["report_motion"] is False  # no frame said "moving": all of it came from the image
    assert m["onsets"] >= 2 and m["onsets_not_blank"] == []
    assert m["overlays"] > 20 and m["overlays_from_moving_frames"] == 0
    assert m["overlay_back_after_s"] and m["overlay_not_back"] == []
    assert m["shift_covers_median"] >= 0.5
    checks = _checks(step)
    assert all(checks[n]["ok"] for n in BLANKING)
    assert checks["bench and device follow the same path"]["ok"]


@pytest.mark.timeout(180)
def test_motion_scenario_fails_a_daemon_blind_to_image_motion(tmp_path):
    out = tmp_path / "report"
    r = hil("motion", "--daemon-cmd", shim("motion_blind"), "--report", out)
    assert r.returncode == 1, r.stdout + r.stderr
    steps = steps_by_name(out)
    assert [n for n, s in steps.items() if s["verdict"] == "failed"] == ["hand-pans"], r.stdout
    step = steps["hand-pans"]
    checks = _checks(step)
    assert not any(checks[n]["ok"] for n in BLANKING), step["message"]
    assert step["metrics"]["overlays_from_moving_frames"] > 0
    assert len(step["metrics"]["onsets_not_blank"]) == step["metrics"]["onsets"] > 0
    assert "FAILED" in r.stdout and "hand-pans" in r.stdout


def test_a_remote_device_skips_the_hand_step():
    scenario = load_scenario("motion")
    bench = Bench(scenario, RemoteDut("http://127.0.0.1:9", None))
    with pytest.raises(Skip, match="remote device: the stage of a real microscope"):
        hand(bench, HandStep(), Checks())
