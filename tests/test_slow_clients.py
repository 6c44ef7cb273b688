"""Slow and stalled clients on the daemon's HTTP API (issue #20, item 7): headers trickled (on a
fresh and on a kept-alive connection), a body that stalls mid-way on every POST endpoint, a body
trickled past its deadline, and /live viewers that never read. Each is closed by the daemon
(runtime/netlimits.py timeouts: 1 s here), never held forever, and the display keeps running.

No wall-time assertions: a client waits (up to a generous bound) for the daemon to act.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from conftest import daemon_config, replay_frames
from lucida.runtime.config import parse_config
from lucida.runtime.daemon import Daemon
from test_daemon import FPS, TOKEN, call, wait_for
from test_pipeline import MemorySink

PATIENCE_S = 40  # how long a client waits for the daemon to act before the test fails


@pytest.fixture()
def daemon(tiny_bundle, tmp_path):
    frames = replay_frames(tmp_path / "frames", 4)
    source = {"type": "replay", "path": str(frames), "fps": FPS, "width": 128, "height": 96}
    http = {"port": 0, "token": TOKEN, "header_timeout_s": 1.0, "idle_timeout_s": 1.0}
    d = Daemon(parse_config(daemon_config(tmp_path, tiny_bundle, source, TOKEN, http=http)))
    d.sink = MemorySink()
    d.pipeline.ar_sinks.append(d.sink)
    d.pipeline.set_objective("10x")
    d.start()
    try:
        assert wait_for(lambda: d.pipeline.stats.counts["displayed"] > 3)
        yield d
    finally:
        d.stop()


def _connect(d, rcvbuf: int | None = None) -> socket.socket:
    host, port = d.http.url.removeprefix("http://").split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
    s.settimeout(5)
    s.connect((host, int(port)))
    return s


def _closed(s: socket.socket) -> bool:
    """True once the daemon has closed (or reset) this connection; reads what is pending."""
    s.setblocking(False)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (BlockingIOError, TimeoutError):
        return False
    except OSError:
        return True


def _trickle_until_closed(s: socket.socket, data: bytes, step_s: float = 0.2) -> bool:
    """Send `data` one byte per `step_s` (repeating its last byte) until the daemon hangs up."""
    s.setblocking(False)
    end, i = time.monotonic() + PATIENCE_S, 0
    while time.monotonic() < end:
        try:
            s.send(data[min(i, len(data) - 1) : min(i, len(data) - 1) + 1])
        except BlockingIOError:
            pass
        except OSError:
            return True
        i += 1
        if _closed(s):
            return True
        time.sleep(step_s)
    return False


def _response(s: socket.socket) -> tuple[int, dict, bytes]:
    """Status, headers and body of the one response on `s`, read until the daemon closes it."""
    s.settimeout(PATIENCE_S)
    raw = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    except ConnectionResetError:
        pass
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines and lines[0].startswith("HTTP/1.1 "), raw[:200]
    headers = dict(x.split(": ", 1) for x in lines[1:] if ": " in x)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _post_routes(d) -> list[str]:
    """Every POST path of the API (from its router), with a real name for /models/{name}/..."""
    from lucida.runtime.api import make_app

    app = make_app(d)
    paths = sorted(
        {
            r.resource.canonical
            for r in app.router.routes()
            if r.method == "POST" and r.resource is not None
        }
    )
    return [p.replace("{name}", "tiny") for p in paths]


def test_trickled_headers_are_closed_on_a_fresh_and_a_kept_alive_connection(daemon):
    n0 = daemon.pipeline.stats.counts["displayed"]
    s = _connect(daemon)
    try:
        assert _trickle_until_closed(s, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaa")
    finally:
        s.close()
    s = _connect(daemon)  # one complete request first, then the next one trickled
    try:
        s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert _trickle_until_closed(s, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
    finally:
        s.close()
    assert daemon.http.refused.get("header_timeout", 0) >= 1
    assert daemon.pipeline.stats.counts["displayed"] > n0  # the display kept running
    assert call(daemon, "GET", "/status")[0] == 200


def test_a_body_that_stalls_midway_is_closed_on_every_post_endpoint(daemon):
    routes = _post_routes(daemon)
    assert {"/overlay", "/objective", "/models", "/snapshot", "/login", "/camera"} <= set(routes)
    got = {}
    for path in routes:
        n0 = daemon.pipeline.stats.counts["displayed"]
        s = _connect(daemon)
        try:
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n".encode()
                + b'{"enabled": tr'  # ... and nothing more
            )
            status, headers, body = _response(s)  # returns once the daemon closed it
        finally:
            s.close()
        got[path] = status
        if status == 408:  # the endpoints that read the body say why, and hang up
            assert "stalled" in json.loads(body)["error"], (path, body)
            assert headers.get("connection", "").lower() == "close"
        assert wait_for(lambda n0=n0: daemon.pipeline.stats.counts["displayed"] > n0), path
    # the ones that ignore the body answered without it (then the daemon dropped the rest)
    ignore_body = {"/health", "/models/rollback", "/models/tiny/activate"}
    assert all(got[p] == 408 for p in routes if p not in ignore_body), got
    assert all(got[p] != 408 for p in ignore_body & set(routes)), got
    assert daemon.pipeline.running and call(daemon, "GET", "/status")[0] == 200
    stalls = [e for e in daemon.events.recent if "stalled" in str(e.get("message", ""))]
    assert len(stalls) >= len(routes) - len(ignore_body)


def test_a_trickled_body_is_refused_at_its_deadline(daemon):
    """One byte every 0.3 s never trips the 1 s idle timeout; the whole-body deadline does."""
    s = _connect(daemon)
    try:
        s.sendall(
            f"POST /overlay HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n".encode()
        )
        s.setblocking(False)
        raw, end = b"", time.monotonic() + PATIENCE_S
        while b"\r\n\r\n" not in raw and time.monotonic() < end:
            try:
                s.send(b" ")
                raw += s.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
            time.sleep(0.3)
    finally:
        s.close()
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    assert b"too slow" in raw
    assert daemon.pipeline.running and call(daemon, "GET", "/status")[0] == 200


def test_live_viewers_that_never_read_are_closed(daemon):
    n0 = daemon.pipeline.stats.counts["displayed"]
    socks = []
    try:
        for _ in range(2):
            s = _connect(daemon, rcvbuf=4096)
            s.sendall(
                f"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
            )
            socks.append(s)  # ... and never read
        refused = daemon.http.refused
        assert wait_for(lambda: refused.get("write_timeout", 0) >= len(socks), PATIENCE_S), refused
        for s in socks:  # the daemon hung up: reading now drains what was sent, then ends
            assert wait_for(lambda s=s: _closed(s), 10)
    finally:
        for s in socks:
            s.close()
    # a viewer that reads is served on, and the display never stopped
    s = _connect(daemon)
    try:
        s.sendall(
            f"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        got, end = b"", time.monotonic() + PATIENCE_S
        while got.count(b"--frame") < 5 and time.monotonic() < end:
            got += s.recv(65536)
    finally:
        s.close()
    assert got.count(b"--frame") >= 5
    assert daemon.pipeline.stats.counts["displayed"] > n0
    assert call(daemon, "GET", "/status")[0] == 200
