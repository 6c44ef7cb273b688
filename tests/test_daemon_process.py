"""The daemon as systemd runs it: a process with sd_notify, SIGHUP reload, SIGTERM, kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import daemon_config, replay_frames
from test_daemon import call as _call


class Proc:
    """Enough of a Daemon for test_daemon.call: the HTTP URL."""

    def __init__(self, url):
        self.http = type("H", (), {"url": url})


@pytest.fixture()
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    yield s, path
    s.close()


def _messages(sock, until, timeout=30.0):
    got, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if any(until in m for m in got):
            return got
    raise AssertionError(f"no {until!r} from the daemon; got {got}")


def _config(tmp_path, tiny_bundle, **extra) -> Path:
    frames = replay_frames(tmp_path / "frames", 1)
    source = {"type": "replay", "path": str(frames), "fps": 20, "width": 128, "height": 96}
    cfg = daemon_config(tmp_path, tiny_bundle, source, "t0k", **extra)
    path = tmp_path / "lucida.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _events(tmp_path):
    return [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]


def _start(config, notify_path):
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    return subprocess.Popen(
        [sys.executable, "-m", "lucida.tools.cli", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _url(tmp_path):
    for e in reversed(_events(tmp_path)):
        if e["event"] == "daemon_ready":
            return e["url"]
    raise AssertionError("daemon never said where it listens")


@pytest.mark.timeout(120)
def test_ready_reload_and_clean_stop(tmp_path, tiny_bundle, notify_socket):
    sock, path = notify_socket
    config = _config(tmp_path, tiny_bundle)
    proc = _start(config, path)
    try:
        _messages(sock, "READY=1")
        d = Proc(_url(tmp_path))
        assert _call(d, "GET", "/status")[1]["model"] == "tiny"
        # a broken config on SIGHUP: reported, and the daemon keeps running the old one
        good = config.read_text()
        config.write_text(good.replace("type: replay", "type: camera"))
        proc.send_signal(signal.SIGHUP)
        _messages(sock, "READY=1")
        errors = [
            e for e in _events(tmp_path) if e["event"] == "error" and e.get("where") == "reload"
        ]
        assert errors and "source.type" in errors[-1]["message"]
        assert _call(d, "GET", "/status")[0] == 200
        # a good one is applied
        config.write_text(good.replace("fps: 20", "fps: 10"))
        proc.send_signal(signal.SIGHUP)
        _messages(sock, "READY=1")
        assert any(e["event"] == "reload" for e in _events(tmp_path))
        # settings survive a restart
        assert _call(d, "POST", "/overlay", {"threshold": 0.35}, token="t0k")[0] == 200
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _messages(sock, "STOPPING=1")
        assert proc.wait(10) == 0
        assert time.monotonic() - t < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = _start(config, path)
    try:
        _messages(sock, "READY=1")
        assert _call(Proc(_url(tmp_path)), "GET", "/status")[0] == 200
        threshold = [e for e in _events(tmp_path) if e["event"] == "threshold"]
        assert threshold and threshold[-1]["threshold"] == 0.35
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("serial:\n  protocol: telepathy\n")
    r = subprocess.run(
        [sys.executable, "-m", "lucida.tools.cli", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"lucida run: error: {bad}: key 'serial.protocol': Input should be 'olympus' or 'simple'"
    ]


WRITER = textwrap.dedent("""
    import sys
    from lucida.calibration.atomic import atomic_write_text
    a, b = "A" * 200_000 + "\\n", "B" * 300_000 + "\\n"
    i = 0
    while True:
        atomic_write_text(sys.argv[1], a if i % 2 else b)
        i += 1
""")


def test_kill_9_during_a_write_leaves_a_whole_file(tmp_path):
    target = tmp_path / "settings.json"
    target.write_text("A" * 200_000 + "\n")
    rng = np.random.default_rng(0)
    for _ in range(8):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
        time.sleep(0.3 + rng.random() * 0.3)
        p.send_signal(signal.SIGKILL)
        p.wait()
        text = target.read_text()
        assert text in ("A" * 200_000 + "\n", "B" * 300_000 + "\n")
