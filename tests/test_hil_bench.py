"""`lucida hil`: scenarios validated, verdicts honest, and a broken build caught.

The end-to-end runs start the real daemon as a subprocess (the emulated device). Most use
tests/hil_shims.py "oracle", whose heatmap is the virtual microscope's truth, so that the bench,
not a model's skill, is what passes or fails; the broken builds are that same build with one
defect each: a bundle whose contour threshold is wrong, a daemon that never clears the
overlay, a daemon whose golden check always says yes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import run_cli
from lucida.models import write_bundle
from lucida.models.bundle import update_manifest
from lucida.models.registry import SHIPPED_DIR
from lucida.tools.hil.metrics import Tally, clearing, region_mask, window_fps
from lucida.tools.hil.report import junit_xml
from lucida.tools.hil.scenario import SHIPPED, ScenarioError, load_scenario, parse_scenario

TESTS = Path(__file__).resolve().parent


def hil(*args, timeout=400) -> subprocess.CompletedProcess:
    return run_cli("hil", *args, timeout=timeout)  # stops the bench and its daemon on failure


def shim(mode: str) -> str:
    return f"{sys.executable} {TESTS / 'hil_shims.py'} {mode}"


def steps_by_name(report_dir: Path) -> dict:
    report = json.loads((report_dir / "report.json").read_text())
    return {s["name"]: s for s in report["steps"]}


@pytest.fixture(scope="session")
def fake_lymph(tiny_bundle, tmp_path_factory):
    """lymph-s and lymph-m stand-ins (the tiny model, task lymph, 10x and 20x): the emulated
    device runs them through the oracle shim."""
    folder = tmp_path_factory.mktemp("fake-lymph")
    m = tiny_bundle.manifest.model_dump(mode="json", exclude_none=True)
    files = {n: tiny_bundle.path / n for n in m["files"]}
    for name in ("lymph-s", "lymph-m"):
        write_bundle(folder / name, dict(m, name=name, task="lymph"), files)
    return folder


# -- scenarios ------------------------------------------------------------------------------------
def test_shipped_scenarios_are_valid():
    names = {p.stem for p in SHIPPED.glob("*.yaml")}
    assert {"smoke", "qualify", "qualify-lite"} <= names
    q, lite = load_scenario("qualify"), load_scenario("qualify-lite")
    assert [s.kind for s in q.steps] == [s.kind for s in lite.steps]  # the same steps, shorter
    faults = {s.params.fault.kind for s in q.steps if s.kind == "fault"}
    assert faults == {
        "source_stall",
        "source_unplug",
        "serial_unplug",
        "serial_garbage",
        "edgetpu_unavailable",
        "corrupt_deploy",
        "sigkill",
    }
    assert next(s for s in q.steps if s.kind == "soak").params.seconds == 600


@pytest.mark.parametrize(
    "steps, message",
    [
        ([{"helth": {}}], "step 1: unknown key 'helth'"),
        ([{"wait": {"seconds": 1}, "expect": {}}], "step 1: expected exactly one of"),
        ([{"expect": {"iou": 0.5}}], "step 1 (expect): unknown key 'iou'"),
        ([{"expect": {"iou_min": 1.5}}], "step 1 (expect): key 'iou_min'"),
        ([{"fault": {"kind": "meteor"}}], "step 1 (fault): key 'kind'"),
        ([{"fault": {"kind": "source_stall", "secs": 2}}], "step 1 (fault): unknown key 'secs'"),
        ([{"objective": {"to": "63x"}}], "objective 63x is not on the nosepiece"),
        (
            [{"measure": {"windows": 3}}],
            "key 'windows': Input should be greater than or equal to 5",
        ),
        ([{"wait": {"seconds": 1}}, {"wait": {"seconds": 1}, "name": "01-wait"}], "used twice"),
    ],
)
def test_bad_scenarios_are_named_precisely(steps, message):
    with pytest.raises(ScenarioError) as err:
        parse_scenario({"name": "x", "steps": steps}, "x.yaml")
    assert message in str(err.value) and str(err.value).startswith("x.yaml: ")


def test_bad_scenario_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - soak: {seconds: -1}\n")
    r = hil(bad, "--check")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"lucida hil: error: {bad}: step 1 (soak): key 'seconds': Input should be greater than 0"
    ]


def test_an_unreachable_device_fails_the_run(tmp_path):
    r = hil(
        "smoke",
        "--dut",
        "remote",
        "--url",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "--report",
        tmp_path,
    )
    assert r.returncode == 1
    steps = list(steps_by_name(tmp_path).values())
    assert steps[0]["verdict"] == "error" and "cannot reach the daemon" in steps[0]["message"]
    assert {s["verdict"] for s in steps[1:]} == {"skipped"}


# -- what the bench computes ----------------------------------------------------------------------
def _ov(t_cap, t_disp, model="m"):
    return {"kind": "overlay", "t_capture_ns": t_cap, "t_display_ns": t_disp, "model": model}


def _blank(t, reason="x"):
    return {"kind": "blank", "t_display_ns": t, "reason": reason}


def test_clearing_measures_from_the_trigger_on_the_device_clock():
    ms = 1_000_000
    # shown at the trigger (t=100 ms); one stale overlay drawn 30 ms after it, then a blank
    recs = [_ov(0, 10 * ms), _ov(90 * ms, 95 * ms), _ov(95 * ms, 130 * ms), _blank(160 * ms)]
    c = clearing(recs, 100 * ms)
    assert c["showing_at_trigger"] and c["cleared_after_ms"] == 60.0
    assert c["stale_before_clear"] == 1 and c["stale_after_clear"] == 0
    # a daemon that never clears: the old overlay stays until a fresh one, much later
    late = clearing([_ov(90 * ms, 95 * ms), _ov(900 * ms, 910 * ms)], 100 * ms)
    assert late["cleared_after_ms"] == 810.0
    # "blank" mode (camera frozen, objective unknown): a fresh overlay is not a clear
    assert (
        clearing([_ov(90 * ms, 95 * ms), _ov(900 * ms, 910 * ms)], 100 * ms, "blank")[
            "cleared_after_ms"
        ]
        is None
    )
    # a stale overlay after the blank is a violation
    bad = clearing([_ov(90 * ms, 95 * ms), _blank(120 * ms), _ov(80 * ms, 150 * ms)], 100 * ms)
    assert bad["stale_after_clear"] == 1
    # "model" mode: what counts is which model drew it
    sw = clearing(
        [_ov(90 * ms, 95 * ms, "old"), _ov(90 * ms, 110 * ms, "new")], 100 * ms, "model", "new"
    )
    assert sw["cleared_after_ms"] == 10.0 and sw["cleared_by"] == "new overlay"


def test_window_fps_counts_overlays_per_device_second():
    recs = [_ov(0, int(t * 1e9)) for t in np.arange(0, 5, 0.1)] + [_blank(int(2.05e9))]
    assert window_fps(recs, 0, 1.0, 5) == [10.0] * 5


def test_iou_and_fov_detection_against_the_truth():
    truth = np.zeros((50, 100), bool)
    truth[10:30, 20:60] = True  # 20 x 40 px of tumour
    square = [[20, 10], [59, 10], [59, 29], [20, 29]]
    rec = {
        "regions": [{"outer": square, "holes": []}],
        "frame_size": [200, 100],
        "objective": "10x",
    }
    # regions are in frame px (200x100); the truth mask is half size
    half = {**rec, "regions": [{"outer": [[2 * x, 2 * y] for x, y in square], "holes": []}]}
    assert region_mask(half["regions"], (200, 100), (100, 50)).sum() == pytest.approx(800, rel=0.1)
    t = Tally()
    t.add(half, truth)
    t.add({**rec, "regions": []}, np.zeros((50, 100), bool))  # true negative
    t.add({**rec, "regions": []}, truth)  # missed tumour
    s = t.summary()
    assert 0.45 < s["iou"] < 0.55  # pooled: 800 / (800 + 800)
    assert s["fov_tp_fp_tn_fn"] == [1, 0, 1, 1] and s["fov_accuracy"] == pytest.approx(2 / 3, 0.01)
    assert json.loads(json.dumps(s)) == s  # plain numbers, as they go into report.json


def test_junit_has_one_testcase_per_step_and_skips_are_not_passes():
    steps = [
        {
            "name": n,
            "kind": "wait",
            "verdict": v,
            "message": m,
            "duration_s": 1.0,
            "checks": [],
            "metrics": {},
        }
        for n, v, m in (
            ("a", "passed", "ok"),
            ("b", "skipped", "remote: no stage"),
            ("c", "failed", "x: 3"),
        )
    ]
    report = {
        "scenario": "t",
        "started": "now",
        "duration_s": 3.0,
        "counts": {"passed": 1, "failed": 1, "skipped": 1, "error": 0},
        "device": {"kind": "emulated"},
        "steps": steps,
    }
    suite = ET.fromstring(junit_xml(report)).find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert (
        suite.get("tests") == "3" and suite.get("skipped") == "1" and suite.get("failures") == "1"
    )
    assert cases["a"].find("failure") is None and cases["a"].find("skipped") is None
    assert cases["b"].find("skipped").get("message") == "remote: no stage"
    assert cases["c"].find("failure").get("message") == "x: 3"


# -- end to end on the emulated device ---------------------------------------------------------------
@pytest.mark.timeout(600)
def test_qualify_lite_passes_on_a_good_build(fake_lymph, tmp_path):
    out = tmp_path / "report"
    r = hil(
        "qualify-lite", "--bundle-dir", fake_lymph, "--daemon-cmd", shim("oracle"), "--report", out
    )
    assert r.returncode == 0, r.stdout + r.stderr
    steps = steps_by_name(out)
    assert all(s["verdict"] == "passed" for s in steps.values()), r.stdout
    assert steps["contours-10x"]["metrics"]["iou"] > 0.8
    assert steps["26-fault-sigkill"]["metrics"]["ready_after_s"] > 1.0  # RestartSec=1
    for name in (
        "report.html",
        "junit.xml",
        "latency_hist.png",
        "fps.png",
        "memory.png",
        "iou.png",
    ):
        assert (out / name).stat().st_size > 500, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "ai_edge_litert" in html
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == str(len(steps)) and suite.get("failures") == "0"


@pytest.fixture()
def wrong_threshold(fake_lymph, tmp_path):
    """The same bundles, but lymph-m draws its contours at probability 0.99."""
    folder = tmp_path / "bundles"
    shutil.copytree(fake_lymph, folder)
    contours = json.loads((folder / "lymph-m" / "manifest.json").read_text()).get("contours", {})
    update_manifest(folder / "lymph-m", contours={**contours, "threshold": 0.99})
    return folder


@pytest.mark.timeout(300)
def test_qualify_catches_a_bundle_with_a_wrong_threshold(wrong_threshold, tmp_path):
    out = tmp_path / "report"
    r = hil(
        "qualify-lite",
        "--bundle-dir",
        wrong_threshold,
        "--daemon-cmd",
        shim("oracle"),
        "--report",
        out,
        "--fail-fast",
    )
    assert r.returncode == 1
    failed = {n: s for n, s in steps_by_name(out).items() if s["verdict"] == "failed"}
    assert list(failed) == ["contours-10x"], r.stdout
    assert "contour IoU (pooled): 0.0" in failed["contours-10x"]["message"]
    assert "FAILED" in r.stdout and "contours-10x" in r.stdout
    steps = list(steps_by_name(out).values())
    later = steps[[s["name"] for s in steps].index("contours-10x") + 1 :]
    assert later and all(s["verdict"] == "skipped" for s in later)  # never counted as passed
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "1" and int(suite.get("skipped")) == len(later)


@pytest.mark.timeout(300)
def test_qualify_catches_a_daemon_that_never_clears_the_overlay(fake_lymph, tmp_path):
    """The clearing steps of qualify-lite (model switches, turret, frozen camera) all fail."""
    scenario = tmp_path / "clearing.yaml"
    lite = yaml.safe_load((SHIPPED / "qualify-lite.yaml").read_text())
    keep = lite["steps"][:4]  # health, stage, deploy lymph-s, deploy lymph-m
    assert [next(iter(s)) for s in keep] == ["health", "stage", "deploy", "deploy"]
    keep += [{"wait": {"seconds": 1}}, {"objective": {"to": "20x", "cleared_within_ms": 400}}]
    keep += [{"fault": {"kind": "source_stall", "seconds": 1.5, "cleared_within_ms": 800}}]
    scenario.write_text(yaml.safe_dump({**lite, "steps": keep}))
    out = tmp_path / "report"
    r = hil(
        scenario, "--bundle-dir", fake_lymph, "--daemon-cmd", shim("never_clear"), "--report", out
    )
    assert r.returncode == 1
    steps = steps_by_name(out)
    failed = [n for n, s in steps.items() if s["verdict"] == "failed"]
    assert failed == [
        "03-deploy-lymph-s",
        "04-deploy-lymph-m",
        "06-objective-20x",
        "07-fault-source_stall",
    ], r.stdout
    assert "model switch blanked the display" in steps["03-deploy-lymph-s"]["message"]
    for name in ("06-objective-20x", "07-fault-source_stall"):
        assert "overlay cleared within (ms, device clock)" in steps[name]["message"]
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "4"


@pytest.mark.timeout(300)
def test_qualify_catches_a_daemon_that_deploys_a_bundle_failing_its_golden_check(
    fake_lymph, tmp_path
):
    out = tmp_path / "report"
    r = hil(
        "qualify-lite",
        "--bundle-dir",
        fake_lymph,
        "--daemon-cmd",
        shim("health_lies"),
        "--report",
        out,
        "--fail-fast",
    )
    assert r.returncode == 1
    steps = steps_by_name(out)
    failed = {n: s for n, s in steps.items() if s["verdict"] == "failed"}
    assert list(failed) == ["05-fault-corrupt_deploy"], r.stdout
    msg = failed["05-fault-corrupt_deploy"]["message"]
    assert "bad_golden bundle refused: HTTP 200" in msg and "same deployed bundle" in msg
    assert "truncated bundle refused" not in msg  # the other corruptions are still refused


@pytest.mark.timeout(300)
@pytest.mark.skipif(
    not (SHIPPED_DIR / "lymph-s" / "manifest.json").exists(), reason="shipped bundles not built"
)
def test_smoke_passes_on_the_shipped_models(tmp_path):
    r = hil("smoke", "--dut", "emulated", "--report", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "smoke PASSED: 12 passed, 0 failed, 0 skipped" in r.stdout


# -- a remote device ------------------------------------------------------------------------------
@pytest.fixture()
def replay_device(tiny_bundle, tmp_path):
    """A daemon with a replayed 'slide' (two frames) and their truth masks, in this process."""
    from lucida.runtime.config import parse_config
    from lucida.runtime.daemon import Daemon

    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(frames / f"f{i}.png"), rng.integers(0, 256, (96, 128, 3), np.uint8))
        mask = np.zeros((96, 128), np.uint8)
        mask[20:70, 30 + 40 * i : 80 + 40 * i] = 255
        cv2.imwrite(str(masks / f"f{i}.png"), mask)
    cfg = parse_config(
        {
            "source": {
                "type": "replay",
                "path": str(frames),
                "fps": 10,
                "width": 128,
                "height": 96,
            },
            "models": {
                "task": "test",
                "dirs": [str(tiny_bundle.path.parent)],
                "num_threads": 1,
                "overrides": {"test": {"default": {"bundle": "tiny"}}},
            },
            "display": {"width": 128, "height": 96},
            "http": {"port": 0, "token": "tok"},
            "state_dir": str(tmp_path / "state"),
        }
    )
    d = Daemon(cfg)
    d.start()
    yield d, masks
    d.stop()


REMOTE = {
    "name": "remote",
    "steps": [
        {"health": {}},
        {"stage": {"where": ["tumour"]}},
        {"expect": {"seconds": 1.5, "iou_min": 0.0, "fov_accuracy_min": 0.0}},
        {"measure": {"windows": 5, "window_s": 0.4}},
        {"fault": {"kind": "source_stall", "cleared_within_ms": 500}},
        {"fault": {"kind": "serial_garbage"}},
        {"fault": {"kind": "corrupt_deploy", "how": ["tampered"]}},
        {"fault": {"kind": "sigkill"}},
    ],
}


@pytest.mark.timeout(120)
def test_remote_device_skips_what_it_cannot_do_and_scores_replay_truth(replay_device, tmp_path):
    d, masks = replay_device
    scenario = tmp_path / "remote.yaml"
    REMOTE["steps"][6]["fault"]["bundle"] = str(d.config.models.dirs[0] + "/tiny")
    scenario.write_text(yaml.safe_dump(REMOTE))
    out = tmp_path / "report"
    args = ["--dut", "remote", "--url", d.http.url, "--token", "tok", "--report", out]
    r = hil(scenario, *args, "--truth", masks)
    assert r.returncode == 0, r.stdout + r.stderr
    steps = steps_by_name(out)
    verdicts = {n: s["verdict"] for n, s in steps.items()}
    assert verdicts == {
        "01-health": "passed",
        "02-stage": "skipped",
        "03-expect": "passed",
        "04-measure": "passed",
        "05-fault-source_stall": "skipped",
        "06-fault-serial_garbage": "skipped",
        "07-fault-corrupt_deploy": "passed",
        "08-fault-sigkill": "skipped",
    }
    assert steps["03-expect"]["metrics"]["frames_scored"] > 0  # masks matched by file name
    assert "remote device" in steps["08-fault-sigkill"]["message"]
    # without masks, accuracy is not judged (skipped), and not passed either
    r = hil(scenario, *args)
    expect = steps_by_name(out)["03-expect"]
    skipped = [c for c in expect["checks"] if c["ok"] is None]
    assert {c["name"] for c in skipped} == {"contour IoU", "FoV detection accuracy"}
    assert "no ground truth" in skipped[0]["note"]
