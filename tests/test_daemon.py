"""The daemon on loopback: HTTP API, token, deploy with rollback, malformed uploads, hot swap."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import daemon_config, replay_frames, rewrite_manifest
from lucida.models import pack_bundle, write_bundle
from lucida.runtime.config import parse_config
from lucida.runtime.daemon import Daemon
from test_pipeline import MemorySink

FPS = 20.0
TOKEN = "s3cret-token"


@pytest.fixture()
def daemon(tiny_bundle, tmp_path):
    frames = replay_frames(tmp_path / "frames", 4)
    source = {"type": "replay", "path": str(frames), "fps": FPS, "width": 128, "height": 96}
    http = {"port": 0, "token": TOKEN, "max_upload_mb": 2}
    cfg = parse_config(daemon_config(tmp_path, tiny_bundle, source, TOKEN, http=http))
    d = Daemon(cfg)
    sink = MemorySink()
    d.pipeline.ar_sinks.append(sink)
    d.pipeline.set_objective("10x")
    d.start()
    d.sink = sink
    yield d
    d.stop()


def call(d, method, path, body=None, token=TOKEN, headers=None):
    host, port = d.http.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    ctype = r.getheader("Content-Type", "")
    return r.status, (json.loads(data) if "json" in ctype else data.decode(errors="replace"))


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def max_gap_ms(sink, since_ns):
    t = [s[0] for s in sink.after(since_ns)]
    return max(np.diff(t) / 1e6) if len(t) > 1 else float("inf")


def test_status_metrics_and_page(daemon):
    assert wait_for(lambda: daemon.pipeline.stats.counts["processed"] > 3)
    code, st = call(daemon, "GET", "/status")
    assert code == 200 and st["model"] == "tiny" and st["objective"] == "10x"
    assert st["backend"].startswith("ai_edge_litert") and st["delegate"] == "cpu"
    code, text = call(daemon, "GET", "/metrics")
    assert code == 200 and "lucida_fps_processed" in text and "lucida_model_info{" in text
    code, page = call(daemon, "GET", "/")
    assert code == 200 and '<img id="live"' in page


def test_state_changes_need_the_right_token(daemon):
    assert call(daemon, "POST", "/overlay", {"enabled": False}, token=None)[0] == 401
    assert call(daemon, "POST", "/overlay", {"enabled": False}, token="nope")[0] == 403
    assert daemon.pipeline.overlay_enabled
    code, body = call(daemon, "POST", "/overlay", {"enabled": False, "threshold": 0.3})
    assert code == 200 and body == {"overlay": False, "threshold": 0.3}
    code, body = call(daemon, "POST", "/overlay", {"threshold": 7})
    assert code == 400 and "threshold" in body["error"]


def _tgz(members: dict[str, bytes | tuple]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):  # (type, linkname)
                info.type, info.linkname = data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _bundle_members(folder: Path, prefix="b/") -> dict:
    return {prefix + p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _broken_bundle(tiny_bundle, tmp_path, name, **changes) -> bytes:
    d = tmp_path / name
    shutil.copytree(tiny_bundle.path, d)
    rewrite_manifest(d, **changes)
    return pack_bundle(d, tmp_path / f"{name}.tar.gz").read_bytes()


def malformed_uploads(tiny_bundle, tmp_path) -> dict:
    good = _bundle_members(tiny_bundle.path)
    manifest = json.loads(good["b/manifest.json"])
    wrong_golden = tmp_path / "wrong-golden"
    m = tiny_bundle.manifest.model_dump(mode="json")
    files = {n: (tiny_bundle.path / n).read_bytes() for n in m["files"]}
    files["golden_output.npy"] = (1 - np.load(tiny_bundle.path / "golden_output.npy")).astype(
        np.float32
    )
    write_bundle(wrong_golden, m, files)
    two = dict(good)
    two["c/manifest.json"] = good["b/manifest.json"]
    no_model = {k: v for k, v in good.items() if not k.endswith("cpu.tflite")}
    bad_tflite = dict(good)
    bad_tflite["b/cpu.tflite"] = good["b/cpu.tflite"][:500]
    return {
        "truncated archive": pack_bundle(tiny_bundle.path, tmp_path / "t.tar.gz").read_bytes()[
            :700
        ],
        "wrong hash": _tgz({**good, "b/cpu.tflite": good["b/cpu.tflite"][:-4] + b"\0\0\0\0"}),
        "path traversal": _tgz({**good, "../../evil.txt": b"x"}),
        "absolute path": _tgz({**good, "/tmp/evil.txt": b"x"}),
        "symlink escape": _tgz({**good, "b/link": (tarfile.SYMTYPE, "/etc/passwd")}),
        "hardlink": _tgz({**good, "b/hard": (tarfile.LNKTYPE, "/etc/passwd")}),
        "device file": _tgz({**good, "b/dev": (tarfile.CHRTYPE, "")}),
        "not a bundle": _tgz({"readme.txt": b"hello"}),
        "not gzip": b"this is plain text, not a .tar.gz" * 20,
        "empty": b"",
        "two manifests": _tgz(two),
        "missing model": _tgz(no_model),
        "manifest not json": _tgz({**good, "b/manifest.json": b"{oops"}),
        "manifest unknown key": _tgz(
            {**good, "b/manifest.json": json.dumps({**manifest, "x": 1}).encode()}
        ),
        "manifest lies about shape": _broken_bundle(tiny_bundle, tmp_path, "lies", input__width=32),
        "truncated model": _tgz(bad_tflite),
        "fails golden check": pack_bundle(wrong_golden, tmp_path / "wg.tar.gz").read_bytes(),
        "huge": b"\0" * (3 * 1024 * 1024),
    }


def test_malformed_uploads_are_refused_while_frames_keep_coming(daemon, tiny_bundle, tmp_path):
    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    t0 = time.monotonic_ns()
    cases = malformed_uploads(tiny_bundle, tmp_path)
    results = {name: call(daemon, "POST", "/models", body) for name, body in cases.items()}
    good = pack_bundle(tiny_bundle.path, tmp_path / "g.tar.gz").read_bytes()
    results["no token"] = call(daemon, "POST", "/models", good, token=None)
    results["wrong token"] = call(daemon, "POST", "/models", good, token="guess")
    assert len(results) == 20
    for name, (code, body) in results.items():
        assert 400 <= code < 500, (name, code, body)
        assert isinstance(body, dict) and body.get("error"), (name, body)
    assert results["huge"][0] == 413, results["huge"]
    assert results["fails golden check"][0] == 422, results["fails golden check"]
    assert "sha256" in results["wrong hash"][1]["error"]
    assert "unsafe path" in results["path traversal"][1]["error"]
    code, st = call(daemon, "GET", "/status")
    assert st["model"] == "tiny" and st["deployed"] == {}
    assert max_gap_ms(daemon.sink, t0) <= 2 * 1000 / FPS + 20
    assert not list(Path(daemon.config.state_dir, "incoming").glob("*.tar.gz"))
    assert not list(Path("/tmp").glob("evil.txt"))


@pytest.mark.alone  # display gap <= 120 ms over a hot swap: a TensorFlow test process beside it
# on 2 cores made 173 ms (fresh-clone CI, 2026-11-30; 209 ms once in session 4); alone it passes
def test_deploy_hot_swap_and_rollback(daemon, tiny_bundle, tmp_path):
    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    v2 = tmp_path / "v2"
    m = tiny_bundle.manifest.model_dump(mode="json")
    files = {n: (tiny_bundle.path / n).read_bytes() for n in m["files"]}
    write_bundle(v2, dict(m, name="tiny-v2", version="0.2.0"), files)
    t0 = time.monotonic_ns()
    code, body = call(
        daemon, "POST", "/models", pack_bundle(v2, tmp_path / "v2.tar.gz").read_bytes()
    )
    assert code == 200 and body["model"] == "tiny-v2" and body["health"]["ok"]
    assert wait_for(lambda: call(daemon, "GET", "/status")[1]["model"] == "tiny-v2")
    time.sleep(0.3)
    assert max_gap_ms(daemon.sink, t0) <= 2 * 1000 / FPS + 20
    code, body = call(daemon, "POST", "/models/tiny/activate")
    assert code == 200 and body["model"] == "tiny"
    code, body = call(daemon, "POST", "/models/rollback")
    assert code == 200 and body["model"] == "tiny-v2"
    state = json.loads(Path(daemon.config.state_dir, "deployed.json").read_text())
    assert Path(state["active"]).name.startswith("tiny-v2-")


def test_events_are_json_lines(daemon):
    call(daemon, "POST", "/overlay", {"enabled": False})
    daemon.events.close = lambda: None
    lines = Path(daemon.config.log.events).read_text().splitlines()
    kinds = [json.loads(line)["event"] for line in lines]
    assert "daemon_ready" in kinds and "overlay" in kinds


def _read_live_frames(d, n: int, out: list) -> None:
    """Read n JPEG parts from GET /live, appending their bytes to out."""
    host, port = d.http.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/live", headers={"Authorization": f"Bearer {TOKEN}"})
    r = conn.getresponse()
    while len(out) < n:
        line = r.fp.readline()
        if line.lower().startswith(b"content-length:"):
            size = int(line.split(b":")[1])
            r.fp.readline()
            out.append(r.fp.read(size))
    conn.close()


def test_live_view_encodes_each_frame_once_whatever_the_number_of_viewers(daemon):
    import threading

    def watch(viewers: int, frames: int) -> tuple[float, list]:
        # a viewer's request starts the preview (it is not composed while nobody watches)
        wait_for(lambda: daemon.live.want() or daemon.live.canvas is not None)
        seq0, enc0 = daemon.live.seq, daemon.live.encodes
        got = [[] for _ in range(viewers)]
        threads = [
            threading.Thread(target=_read_live_frames, args=(daemon, frames, g)) for g in got
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        shown = daemon.live.seq - seq0 + 1  # the frame shown just before the window counts too
        return (daemon.live.encodes - enc0) / shown, got

    one, _ = watch(1, 30)
    three, got = watch(3, 30)
    assert all(len(g) == 30 and g[0].startswith(b"\xff\xd8") for g in got)
    # JPEG encodes per displayed frame: at most one, and 3 viewers cost what 1 costs (+10 %).
    assert 0.5 < one <= 1.0 and three <= 1.0
    assert three <= one * 1.1
