"""Snapshots with provenance: one folder per snapshot of what was shown, served with the token."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from lucida.runtime.snapshots import FILES, SnapshotStore
from test_daemon import TOKEN, call, daemon, wait_for  # noqa: F401  (fixture)


@pytest.mark.timeout(120)
def test_snapshot_keeps_frame_input_heatmap_canvas_and_metadata(daemon):  # noqa: F811
    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    body = {"case_id": "S26-0412 B2", "comment": "margin, check with IHC"}
    code, snap = call(daemon, "POST", "/snapshot", body)
    assert code == 200, snap
    folder = Path(daemon.config.state_dir, "snapshots", snap["id"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["case_id"] == "S26-0412 B2" and meta["comment"] == "margin, check with IHC"
    assert meta["model"]["name"] == "tiny" and len(meta["model"]["sha256"]) == 64
    assert meta["model"]["sha256"] == daemon.pipeline._active.engine.info.model_sha256
    assert meta["objective"] == "10x" and meta["threshold"] is not None
    assert meta["software"]["lucida"] and meta["camera"]["source"] == "replay"
    assert "revision" in meta["calibration"] and meta["time"].endswith("+00:00")
    frame = cv2.imread(str(folder / "frame.png"))
    assert frame.shape[:2] == (96, 128)  # the raw camera frame, full size
    probs = np.load(folder / "heatmap.npy")
    assert probs.dtype == np.float32 and list(probs.shape) == meta["heatmap"]["shape"]
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    eyepiece = cv2.imread(str(folder / "eyepiece.png"))
    assert eyepiece.shape[:2] == (daemon.config.display.height, daemon.config.display.width)
    assert cv2.imread(str(folder / "model_input.png")) is not None


@pytest.mark.timeout(120)
def test_snapshots_are_listed_and_served_only_with_the_token(daemon):  # noqa: F811
    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    code, snap = call(daemon, "POST", "/snapshot", {"case_id": "C1"})
    assert code == 200
    assert call(daemon, "GET", "/snapshots", token=None)[0] == 401
    assert call(daemon, "GET", f"/snapshots/{snap['id']}", token="wrong")[0] == 401
    code, listing = call(daemon, "GET", "/snapshots")
    assert code == 200 and listing["snapshots"][0]["id"] == snap["id"]
    assert listing["snapshots"][0]["case_id"] == "C1"
    code, meta = call(daemon, "GET", f"/snapshots/{snap['id']}")
    assert code == 200 and meta["id"] == snap["id"]
    code, png = call(daemon, "GET", f"/snapshots/{snap['id']}/eyepiece.png")
    assert code == 200
    assert call(daemon, "GET", f"/snapshots/{snap['id']}/..%2Fsettings.json")[0] == 404
    assert call(daemon, "GET", "/snapshots/20990101-000000-000000abcd")[0] == 404


@pytest.mark.timeout(120)
def test_no_snapshot_of_a_blank_display_and_bad_case_ids_refused(daemon):  # noqa: F811
    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    assert call(daemon, "POST", "/snapshot", {"case_id": "<script>"})[0] == 400
    call(daemon, "POST", "/overlay", {"enabled": False})
    assert wait_for(lambda: daemon.shown and daemon.shown["kind"] == "blank")
    code, err = call(daemon, "POST", "/snapshot", {})
    assert code == 400 and "nothing is shown now" in err["error"]


def test_store_removes_the_oldest_over_its_cap(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 160, 3), np.uint8)  # noise: PNG cannot shrink it
    images = dict(frame=img, model_input=img, eyepiece=img, preview=img, heatmap=rng.random((8, 8)))
    store = SnapshotStore(tmp_path, max_bytes=10**9)
    one = store.save(images, {"time": "t0"})["bytes"]
    store.max_bytes = int(one * 2.5)
    ids = [store.save(images, {"time": f"t{i}"})["id"] for i in range(1, 4)]
    left = [s["id"] for s in store.list()]
    assert len(left) == 2 and left == sorted(ids[-2:], reverse=True)
    assert store.usage()["snapshots_bytes"] <= store.max_bytes
