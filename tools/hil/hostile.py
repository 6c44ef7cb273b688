"""The hostile step: a red team's catalogue run against a device, each attack judged alone.

For every attack: was it refused (4xx, or closed), did the daemon survive (same process,
answering, the same model serving), the longest gap between display updates while it ran
(ms, device clock, from GET /results), and the memory peak above the baseline taken just
before it (MiB; emulated: the daemon's VmRSS sampled every 20 ms, remote: /status rss_mb).
At the end nothing may be left in the device's incoming/ folder.

Attacks: uploads (crash_model, header_bomb_gnu, header_bomb_pax, member_flood, zip_bomb,
traversal, truncated, tampered, bad_golden, oversized, empty), requests (malformed,
private_without_token, dns_rebinding), connections (connection_flood, slow_clients: headers
trickled; stalled_clients: a body stopping mid-way on every JSON POST endpoint and an upload,
/live viewers that never read), and on
an emulated device reload_bad_configs and kill9_mid_deploy.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

from .client import DeviceError
from .runner import Bench, Checks

UPLOADS = (
    "crash_model",
    "header_bomb_gnu",
    "header_bomb_pax",
    "member_flood",
    "zip_bomb",
    "traversal",
    "truncated",
    "tampered",
    "bad_golden",
    "oversized",
    "empty",
)
REQUESTS = ("malformed", "private_without_token", "dns_rebinding")
CONNECTIONS = ("connection_flood", "slow_clients", "stalled_clients")
STALL_POSTS = (  # POST endpoints that read a body (JSON, or the bundle upload)
    "/overlay",
    "/objective",
    "/snapshot",
    "/camera",
    "/calibration/manual",
    "/benchmark",
    "/virtual",
    "/login",
    "/models",
)
PROCESS = ("reload_bad_configs", "kill9_mid_deploy")
ATTACKS = UPLOADS + REQUESTS + CONNECTIONS + PROCESS


class RssSampler:
    """Peak resident memory of the daemon (MiB) while a block runs."""

    def __init__(self, b: Bench, interval_s: float = 0.02):
        self.b, self.interval_s = b, interval_s
        proc = getattr(b.dut, "proc", None)
        self.pid = proc.pid if proc is not None else None
        self.peak = 0.0
        self._stop = threading.Event()

    def read(self) -> float | None:
        if self.pid is not None:
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
            except (OSError, ValueError):
                return None
        try:
            return self.b.dut.client.status().get("rss_mb")
        except OSError:
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s if self.pid else 0.2):
            v = self.read()
            if v is not None:
                self.peak = max(self.peak, v)

    def __enter__(self):
        self.baseline = self.read() or 0.0
        self.peak = self.baseline
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(2)
        v = self.read()
        if v is not None:
            self.peak = max(self.peak, v)


def display_gap_ms(records, t0: int, t1: int) -> float | None:
    """Longest time without a display update (overlay or blank) in [t0, t1] (device ns)."""
    times = sorted(
        r["t_display_ns"]
        for r in records
        if r["kind"] in ("overlay", "blank") and r.get("t_display_ns") is not None
    )
    inside = [t for t in times if t0 <= t <= t1]
    before = [t for t in times if t < t0]
    after = [t for t in times if t > t1]
    edges = [before[-1] if before else t0, *inside, after[0] if after else t1]
    if len(edges) < 2:
        return None
    return round(max(b - a for a, b in zip(edges, edges[1:])) / 1e6, 1)


# -- uploads ----------------------------------------------------------------------------------
def _upload_bytes(b: Bench, kind: str, tmp: Path) -> bytes | None:
    from . import crafted
    from .steps import _archive, _corrupt

    src = b.last_bundle or _running_bundle(b)
    if kind == "crash_model":
        bundle, where, msg = crafted.crashing_bundle(src, tmp / "crash")
        b._hostile_notes["crash_model"] = f"{where}: {msg}"
        return _archive(bundle.path, tmp)
    if kind in ("header_bomb_gnu", "header_bomb_pax"):
        return crafted.header_bomb(tmp / f"{kind}.tar.gz", kind.rsplit("_", 1)[1]).read_bytes()
    if kind == "member_flood":
        return crafted.member_flood(tmp / "flood.tar.gz").read_bytes()
    if kind == "zip_bomb":
        return crafted.zip_bomb(tmp / "zip.tar.gz", 512).read_bytes()
    if kind == "traversal":
        return crafted.traversal(tmp / "traversal.tar.gz").read_bytes()
    if kind in ("truncated", "tampered", "bad_golden"):
        return _corrupt(kind, src, tmp)
    if kind == "empty":
        return b""
    return None  # oversized: streamed


def _running_bundle(b: Bench) -> Path:
    from .steps import resolve_bundle

    st = b.status()
    active = (st.get("deployed") or {}).get("active")
    if active and Path(active).exists():
        return Path(active)
    return resolve_bundle(b, st.get("model") or "lymph-s")


def _stream(b: Bench, nbytes: int) -> tuple[int, str]:
    """POST /models with a chunked body of nbytes (no Content-Length)."""
    cl = b.dut.client

    def body():
        block = os.urandom(1 << 20)
        for _ in range(nbytes >> 20):
            yield block

    conn = http.client.HTTPConnection(cl._host, cl._port, timeout=60)
    try:
        conn.request(
            "POST",
            "/models",
            body=body(),
            headers={"Authorization": f"Bearer {cl.token}", "Content-Type": "application/gzip"},
            encode_chunked=True,
        )
        r = conn.getresponse()
        return r.status, r.read(2000).decode(errors="replace")
    except OSError as exc:  # the daemon may hang up mid-body after its 413
        return 413 if "reset" in str(exc).lower() or "pipe" in str(exc).lower() else 0, str(exc)
    finally:
        conn.close()


def upload(b: Bench, kind: str, tmp: Path) -> tuple[bool, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    if kind == "oversized":
        status, msg = _stream(b, 80 << 20)
    else:
        data = _upload_bytes(b, kind, tmp)
        status, answer = b.dut.client.request("POST", "/models", data, timeout_s=180)
        msg = answer.get("error", answer) if isinstance(answer, dict) else answer
    msg = str(msg)[:300]
    refused = 400 <= status < 500 or status == 507
    if kind == "crash_model":
        refused = refused and "crashed" in msg
    return refused, f"HTTP {status}: {msg}"


# -- requests ---------------------------------------------------------------------------------
MALFORMED = [
    ("POST", "/objective", {"objective": "-10x"}),
    ("POST", "/objective", {"objective": "banana"}),
    ("POST", "/objective", {"objective": None}),
    ("POST", "/objective", {"objective": {"a": 1}}),
    ("POST", "/objective", {"objective": 10}),
    ("POST", "/objective", {"objective": "63x"}),
    ("POST", "/objective", {}),
    ("POST", "/task", {"task": "no-such-task"}),
    ("POST", "/task", {"task": None}),
    ("POST", "/task", {"task": ""}),
    ("POST", "/task", {"task": "x" * 1000}),
    ("POST", "/task", {}),
    ("POST", "/camera", {"exposure_ms": -1}),
    ("POST", "/camera", {"brightness": 5}),
    ("POST", "/camera", b'{"gain": NaN}'),
    ("POST", "/overlay", b'{"threshold": NaN}'),
    ("POST", "/overlay", b'{"threshold": Infinity}'),
    ("POST", "/overlay", {"threshold": -1}),
    ("POST", "/overlay", {"threshold": "0.5"}),
    ("POST", "/overlay", {"enabled": "yes"}),
    ("POST", "/overlay", {"enabled": True, "extra": 1}),
    ("POST", "/overlay", b"not json"),
    ("POST", "/overlay", b"[1, 2]"),
    ("POST", "/overlay", b"[" * 100000 + b"]" * 100000),
    ("POST", "/overlay", b'{"a": "' + b"x" * 200000 + b'"}'),
    ("POST", "/overlay", b"\xff\xfe\x00garbage"),
    ("POST", "/calibration/manual", b'{"dx_px": NaN}'),
    ("POST", "/calibration/manual", {"scale": 0}),
    ("POST", "/calibration/manual", {"action": "banana"}),
    ("POST", "/calibration/manual", {"delta": {"scale": "x"}}),
    ("POST", "/calibration/manual", {"dx_px": 1e308}),
    ("POST", "/benchmark", {"runs": 0}),
    ("POST", "/benchmark", {"runs": "many"}),
    ("POST", "/benchmark", {"runs": 1e9}),
    ("POST", "/benchmark", {"bundle": 5}),
    ("POST", "/virtual", {"action": "explode"}),
    ("POST", "/virtual", b'{"action": "stall", "seconds": NaN}'),
    ("POST", "/virtual", {"action": "stall", "seconds": 1e9}),
    ("POST", "/models/..%2F..%2Fetc/activate", {}),
    ("POST", "/models/no-such-bundle/activate", {}),
    ("POST", "/login", {"token": None}),
    ("GET", "/results?since=abc", None),
    ("GET", "/results?limit=-1", None),
    ("GET", "/events?limit=abc", None),
    ("GET", "/events?before=-5", None),
]


def _raw(b: Bench, method: str, path: str, body, headers=None) -> int:
    cl = b.dut.client
    h = {"Authorization": f"Bearer {cl.token}", **(headers or {})}
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    if body is not None:
        h["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(cl._host, cl._port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        r.read(65536)  # never to the end: an open /live would stream forever
        return r.status
    finally:
        conn.close()


def malformed(b: Bench) -> tuple[bool, str]:
    before = b.status()
    bad = []
    for method, path, body in MALFORMED:
        status = _raw(b, method, path, body)
        if not 400 <= status < 500:
            bad.append(f"{method} {path} {str(body)[:40]} -> {status}")
    status = _raw(b, "GET", "/events", None, {"Authorization": b"Bearer \xff\xfe\xfd"})
    if status != 403:
        bad.append(f"non-UTF-8 bearer token -> {status}")
    after = b.status()
    for key in ("objective", "overlay", "model"):
        if after.get(key) != before.get(key):
            bad.append(f"{key} changed: {before.get(key)} -> {after.get(key)}")
    n = len(MALFORMED) + 1
    return not bad, (f"{n} malformed requests, all 4xx" if not bad else "; ".join(bad[:5]))


def private_without_token(b: Bench) -> tuple[bool, str]:
    cl = b.dut.client
    got = {}
    for path in ("/live", "/results?truth=1", "/events", "/snapshots"):
        conn = http.client.HTTPConnection(cl._host, cl._port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            got[path] = r.status
        finally:
            conn.close()
    ok = all(s == 401 for s in got.values())
    return ok, ", ".join(f"{p} {s}" for p, s in got.items())


def dns_rebinding(b: Bench) -> tuple[bool, str]:
    port = b.dut.client._port
    got = {}
    for host in (f"evil.example:{port}", "attacker.test", f"127.0.0.1.nip.io:{port}"):
        for path in ("/live", "/status", "/results"):
            got[f"{host}{path}"] = _raw(b, "GET", path, None, {"Host": host})
    ok = all(s == 421 for s in got.values())
    return ok, f"{len(got)} requests with foreign Host headers: " + ", ".join(
        sorted({str(s) for s in got.values()})
    )


# -- connections ------------------------------------------------------------------------------
def connection_flood(b: Bench, n: int = 300, hold_s: float = 2.0) -> tuple[bool, str]:
    cl = b.dut.client
    socks = []
    try:
        for _ in range(n):
            try:
                socks.append(socket.create_connection((cl._host, cl._port), timeout=2))
            except OSError:
                break
        time.sleep(hold_s)
    finally:
        for s in socks:
            s.close()
    t0 = time.monotonic()
    st: dict = {}
    while not st and time.monotonic() - t0 < 10:  # the daemon sees the hang-ups a moment later
        try:
            st = b.status()
        except DeviceError:
            time.sleep(0.1)
    ok = bool(st.get("pid"))
    return ok, (
        f"{len(socks)} idle connections held {hold_s:g} s; API answered "
        f"{time.monotonic() - t0:.2f} s after; refused by the cap: {st.get('http_refused')}"
    )


def slow_clients(b: Bench, n: int = 20) -> tuple[bool, str]:
    cl = b.dut.client
    limit = (b.status().get("http_limits") or {}).get("header_timeout_s", 10.0)
    socks = []
    for _ in range(n):
        s = socket.create_connection((cl._host, cl._port), timeout=2)
        s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        s.setblocking(False)
        socks.append(s)
    t0 = time.monotonic()
    closed_at: dict[int, float] = {}
    while time.monotonic() - t0 < limit + 5 and len(closed_at) < n:
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                s.send(b"a")  # one byte at a time: never a complete header
                if s.recv(1) == b"":
                    closed_at[i] = time.monotonic() - t0
            except BlockingIOError:
                pass
            except OSError:
                closed_at[i] = time.monotonic() - t0
        st_ok = bool(b.status().get("pid"))  # the API answers meanwhile
        if not st_ok:
            break
        time.sleep(0.5)
    for s in socks:
        s.close()
    worst = max(closed_at.values()) if closed_at else None
    ok = len(closed_at) == n
    return ok, (
        f"{len(closed_at)}/{n} slow clients closed by the daemon, last after "
        f"{worst if worst is None else round(worst, 1)} s (header timeout {limit:g} s)"
    )


def stalled_clients(b: Bench, viewers: int = 2) -> tuple[bool, str]:
    """A body that stops mid-way on every endpoint of STALL_POSTS (each must be answered 408
    and closed) and /live viewers that never read (each closed once its writes are held):
    all within the device's idle timeout plus a margin, the API answering meanwhile."""
    cl = b.dut.client
    st0 = b.status()
    idle = (st0.get("http_limits") or {}).get("idle_timeout_s", 30.0)
    held0 = (st0.get("http_refused") or {}).get("write_timeout", 0)
    head = f"Host: {cl._host}:{cl._port}\r\nAuthorization: Bearer {cl.token or ''}\r\n"
    bodies: dict[str, socket.socket] = {}
    live = []
    try:
        for path in STALL_POSTS:
            s = socket.create_connection((cl._host, cl._port), timeout=5)
            s.sendall(
                f"POST {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                'Content-Length: 4000\r\n\r\n{"enabled": tr'.encode()
            )
            s.setblocking(False)
            bodies[path] = s
        for _ in range(viewers):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, unread
            s.settimeout(5)
            s.connect((cl._host, cl._port))
            s.sendall(f"GET /live HTTP/1.1\r\n{head}\r\n".encode())
            live.append(s)
        t0 = time.monotonic()
        answers: dict[str, bytes] = {path: b"" for path in bodies}
        closed: dict[str, float] = {}
        held = 0
        while time.monotonic() - t0 < 2 * idle + 15:
            for path, s in bodies.items():
                if path in closed:
                    continue
                try:
                    data = s.recv(65536)
                    answers[path] += data
                    if not data:
                        closed[path] = time.monotonic() - t0
                except BlockingIOError:
                    pass
                except OSError:
                    closed[path] = time.monotonic() - t0
            st = b.status()  # the API answers meanwhile (DeviceError otherwise)
            held = (st.get("http_refused") or {}).get("write_timeout", 0) - held0
            if len(closed) == len(bodies) and held >= viewers:
                break
            time.sleep(0.5)
    finally:
        for s in [*bodies.values(), *live]:
            s.close()
    status = {p: (a.split(b" ", 2)[1:2] or [b"-"])[0].decode() for p, a in answers.items()}
    not_408 = {p: c for p, c in status.items() if c != "408" or p not in closed}
    ok = not not_408 and held >= viewers
    worst = max(closed.values()) if closed else None
    return ok, (
        f"{len(bodies) - len(not_408)}/{len(bodies)} stalled bodies answered 408 and closed, "
        f"{min(held, viewers)}/{viewers} unread /live viewers closed, last after "
        f"{worst if worst is None else round(worst, 1)} s (idle timeout {idle:g} s)"
        + (f"; not refused: {not_408}" if not_408 else "")
    )


# -- process (emulated) -------------------------------------------------------------------------
BAD_CONFIGS = {
    "bad_sink": lambda c: c.update(sinks={"ar": ["nonsense:1"]}),
    "missing_profile": lambda c: c.update(calibration={"profile": "/nonexistent/scope.yaml"}),
    "bad_serial_position": lambda c: c["serial"].update(positions={"1": "banana"}),
    "inf_timeout": lambda c: c["source"].update(stall_timeout_ms=float("inf")),
    "unknown_task": lambda c: c["models"].update(task="no-such-task"),
    "missing_model_dir": lambda c: c["models"].update(dirs=["/nonexistent/models"]),
    "port_change": lambda c: c["http"].update(port=1),
    "huge_display": lambda c: c.update(display={"width": 100000, "height": 100000}),
}


def _events_since(path: Path, offset: int) -> list[dict]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        out = []
        for line in fh.read().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def reload_bad_configs(b: Bench) -> tuple[bool, str]:
    import yaml

    dut = b.dut
    cfg_path, events = dut.workdir / "lucida.yaml", dut.workdir / "events.jsonl"
    good = cfg_path.read_text()
    pid, model = dut.proc.pid, b.status().get("model")
    bad = []
    try:
        for kind, mutate in BAD_CONFIGS.items():
            cfg = yaml.safe_load(good)
            mutate(cfg)
            cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            offset = events.stat().st_size
            os.kill(pid, signal.SIGHUP)
            end, verdict = time.monotonic() + 60, None
            dut._drain_notify()  # RELOADING=1 / READY=1, as systemd reads them
            while verdict is None and time.monotonic() < end:
                time.sleep(0.2)
                for e in _events_since(events, offset):
                    if e.get("event") in ("reload_refused", "reload"):
                        verdict = e["event"]
                dut._drain_notify()
            st = b.status()
            if verdict != "reload_refused" or not dut.alive or st.get("model") != model:
                bad.append(f"{kind}: {verdict}, alive {dut.alive}, model {st.get('model')}")
    finally:
        cfg_path.write_text(good)
        offset = events.stat().st_size
        os.kill(pid, signal.SIGHUP)  # the good one again: a reload that works
        end = time.monotonic() + 60
        while time.monotonic() < end and not any(
            e.get("event") == "reload" for e in _events_since(events, offset)
        ):
            time.sleep(0.2)
    ok = not bad and dut.alive and dut.proc.pid == pid
    return ok, (f"{len(BAD_CONFIGS)} failing configs refused on SIGHUP" if ok else "; ".join(bad))


def kill9_mid_deploy(b: Bench, tmp: Path) -> tuple[bool, str]:
    from .steps import _archive, resolve_bundle

    before = b.status()
    target = resolve_bundle(b, "lymph-m" if before.get("model") != "lymph-m" else "lymph-s")
    data = _archive(target, tmp)

    def send():
        try:
            b.dut.client.request("POST", "/models", data, timeout_s=60)
        except DeviceError:
            pass  # killed mid-request: expected

    t = threading.Thread(target=send, daemon=True)
    t.start()
    time.sleep(0.6)  # mid-deploy: unpacking or golden-checking in the sandbox
    b.dut.kill()
    t.join(5)
    b.dut.launch()
    b.restarted()
    st = b.wait_status(lambda s: s.get("model"), 30)
    active = (st.get("deployed") or {}).get("active") or ""
    old_active = (before.get("deployed") or {}).get("active") or ""
    whole = active == old_active or Path(active).name.startswith(target.name)
    incoming = (st.get("disk") or {}).get("incoming_files")
    ok = whole and st.get("model") is not None and incoming == 0
    return ok, f"after kill -9: model {st.get('model')}, active {Path(active).name or None}, " + (
        f"incoming files {incoming}"
    )


# -- the step ---------------------------------------------------------------------------------
def run(b: Bench, p, c: Checks) -> None:
    b._hostile_notes = {}
    attacks = list(p.attacks or ATTACKS)
    results = {}
    b.await_overlay()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in attacks:
            if name in PROCESS and "process" not in b.dut.capabilities:
                c.skip(f"{name}", "the bench does not restart or reconfigure a real device")
                continue
            before = b.status()
            pid = before.get("pid")
            t0 = b.device_now()
            with RssSampler(b) as mem:
                try:
                    if name in UPLOADS:
                        refused, detail = upload(b, name, tmp / name)
                    elif name == "kill9_mid_deploy":
                        refused, detail = kill9_mid_deploy(b, tmp)
                    elif name == "reload_bad_configs":
                        refused, detail = reload_bad_configs(b)
                    else:
                        refused, detail = globals()[name](b)
                except (DeviceError, OSError, ValueError, RuntimeError) as exc:
                    refused, detail = False, f"{type(exc).__name__}: {exc}"
            t1 = b.device_now()
            b.settle(0.3)
            st = b.wait_status(lambda s: s.get("model"), 10)
            restarted = name == "kill9_mid_deploy"
            survived = restarted or (st.get("pid") == pid and bool(st.get("source_ok")))
            same_model = restarted or st.get("model_sha256") == before.get("model_sha256")
            gap = None if restarted else display_gap_ms(b.recorder.snapshot(), t0, t1)
            peak = round(mem.peak - mem.baseline, 1)
            results[name] = {
                "refused": refused,
                "survived": survived,
                "same_model": same_model,
                "max_display_gap_ms": gap,
                "memory_peak_mb_above_baseline": peak,
                "detail": detail,
            }
            c.check(f"{name}: refused", refused, detail[:160])
            c.check(f"{name}: daemon survived, old model serving", survived and same_model)
            if gap is not None:
                c.at_most(f"{name}: max display gap (ms)", gap, p.max_display_gap_ms)
            if name in UPLOADS:
                c.at_most(f"{name}: memory peak above baseline (MiB)", peak, p.upload_memory_mb_max)
    st = b.status()
    incoming = (st.get("disk") or {}).get("incoming_files")
    c.check("nothing left in incoming/", incoming == 0, incoming, 0)
    c.metrics.update(attacks=results, notes=b._hostile_notes, disk=st.get("disk"))
