"""What the daemon exposes for the HIL bench: display records on the device clock (GET /results),
the golden check of the running bundle (POST /health), virtual-microscope faults (POST /virtual)."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from conftest import daemon_config
from lucida.runtime.config import parse_config
from lucida.runtime.daemon import Daemon
from lucida.runtime.sources import ReplaySource
from test_daemon import TOKEN, call, daemon, wait_for  # noqa: F401 (daemon is a fixture)

FPS = 15.0


@pytest.fixture()
def virtual_daemon(tiny_bundle, tmp_path):
    source = {"type": "virtual", "seed": 1001, "fps": FPS, "width": 320, "height": 180}
    cfg = parse_config(daemon_config(tmp_path, tiny_bundle, source, TOKEN))
    d = Daemon(cfg)
    d.start()
    yield d
    d.stop()


def _records(d, since=0, truth=False):
    status, body = call(d, "GET", f"/results?since={since}&truth={int(truth)}")
    assert status == 200, body
    return body


@pytest.mark.timeout(120)
def test_results_carry_device_timestamps_regions_and_truth(virtual_daemon):
    d = virtual_daemon
    status, tour = call(d, "POST", "/virtual", {"action": "tour", "where": "boundary", "seed": 3})
    assert status == 200 and len(tour["points"]) == 1

    def after_tour(body):  # overlays of frames taken at the boundary point
        return [
            r
            for r in body["records"]
            if r["kind"] == "overlay" and r["t_capture_ns"] > tour["t_ns"]
        ]

    assert wait_for(lambda: after_tour(_records(d)), 30)
    body = _records(d, truth=True)
    r = after_tour(body)[-1]
    assert r["t_capture_ns"] < r["t_display_ns"] <= body["now_ns"]
    assert r["frame_size"] == [320, 180] and r["model"] == "tiny" and r["objective"] == "10x"
    for region in r["regions"]:
        assert np.asarray(region["outer"]).shape[1] == 2
    png = base64.b64decode(r["truth"]["png"])
    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (180, 320)
    # at a tumour boundary both classes are in view, and the fraction agrees with the mask
    assert 0 < r["truth_fraction"] < 1
    assert abs((mask > 0).mean() - r["truth_fraction"]) < 0.01
    # without truth=1 the masks stay on the device; `since` pages on
    later = _records(d, since=body["next"])
    assert all("truth" not in x for x in later["records"])
    assert all(x["i"] >= body["next"] for x in later["records"])


@pytest.mark.timeout(120)
def test_stall_and_unplug_are_blanked_and_recorded(virtual_daemon):
    d = virtual_daemon
    call(d, "POST", "/virtual", {"action": "tour", "where": "tumour"})
    assert wait_for(lambda: [r["kind"] for r in _records(d)["records"][-1:]] == ["overlay"], 30)
    start = _records(d)["next"]
    status, stall = call(d, "POST", "/virtual", {"action": "stall", "seconds": 1.5})
    assert status == 200
    assert wait_for(
        lambda: any(
            r["kind"] == "blank" and r["reason"] == "camera stalled"
            for r in _records(d, start)["records"]
        ),
        10,
    )
    blank = next(r for r in _records(d, start)["records"] if r["kind"] == "blank")
    assert blank["t_display_ns"] > stall["t_ns"]
    # overlays come back after the stall, computed on frames captured after it
    assert wait_for(
        lambda: any(
            r["kind"] == "overlay" and r["t_capture_ns"] > stall["t_ns"]
            for r in _records(d, start)["records"]
        ),
        20,
    )
    start = _records(d)["next"]
    assert call(d, "POST", "/virtual", {"action": "unplug"})[0] == 200
    assert wait_for(
        lambda: any(
            r["kind"] == "clear_request" and r["reason"] == "camera lost"
            for r in _records(d, start)["records"]
        ),
        10,
    )
    assert wait_for(lambda: not d.status()["source_ok"], 5)
    assert call(d, "POST", "/virtual", {"action": "replug"})[0] == 200
    assert wait_for(lambda: d.status()["source_ok"], 15)


@pytest.mark.timeout(60)
def test_health_and_identity(virtual_daemon):
    d = virtual_daemon
    assert wait_for(lambda: d.status()["model"] == "tiny", 20)
    status, h = call(d, "POST", "/health")
    assert status == 200 and h["ok"] and h["model"] == "tiny" and h["delegate"] == "cpu"
    assert h["max_abs_error"] <= h["atol"]
    st = call(d, "GET", "/status")[1]
    assert st["rss_mb"] > 10 and st["versions"]["python"] and st["pid"] > 0
    assert call(d, "POST", "/health", token=None)[0] == 401


def test_virtual_actions_are_validated(virtual_daemon):
    d = virtual_daemon
    status, body = call(d, "POST", "/virtual", {"action": "explode"})
    assert status == 400 and "expected stall, unplug" in body["error"]
    status, body = call(d, "POST", "/virtual", {"action": "objective", "objective": "63x"})
    assert status == 400 and "63x" in body["error"]


def test_virtual_is_refused_on_a_real_camera(daemon):  # noqa: F811
    status, body = call(daemon, "POST", "/virtual", {"action": "stall", "seconds": 1})
    assert status == 400
    assert "virtual microscope only" in body["error"] and "replay" in body["error"]


def test_replay_frames_name_their_file(tmp_path):
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    src = ReplaySource(tmp_path, fps=0)
    src.open()
    names = [src.read().meta["replay_file"] for _ in range(3)]
    assert names == ["a.png", "b.png", "a.png"]
