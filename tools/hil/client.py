"""Talking to a device's daemon: JSON over HTTP, its clock, and a recorder of what it displayed.

`DaemonClient` calls the API (bearer token on every request when it has one). `clock_offset()` estimates device
monotonic time minus host monotonic time from the quickest of a few round trips (the error is
at most half that round trip); bench actions are stamped with it, while every latency and fps
figure comes from the device's own timestamps. `Recorder` polls GET /results in the
background and keeps every record (slimmed), plus full records (regions, truth) on request.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlsplit


class DeviceError(OSError):
    """The device could not be reached or answered with an error (status, message)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class DaemonClient:
    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0):
        self.token, self.timeout_s = token, timeout_s
        self.url = ""
        self.set_url(url)

    def set_url(self, url: str) -> None:
        u = urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise DeviceError(f"device URL {url!r}: expected http://HOST:PORT")
        self.url, self._host, self._port = url.rstrip("/"), u.hostname, u.port or 80

    def request(
        self, method: str, path: str, body=None, timeout_s: float | None = None, headers=None
    ):
        """(status, parsed JSON or text); raises DeviceError when the device cannot be reached.

        body: a dict (sent as JSON), bytes (a bundle), or a file-like object (give its
        Content-Length in `headers`)."""
        headers = dict(headers or {})
        if method != "GET" or self.token:  # GET /results, /events carry patient data: token too
            headers["Authorization"] = f"Bearer {self.token or ''}"
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif isinstance(body, (bytes, bytearray)) or hasattr(body, "read"):
            headers.setdefault("Content-Type", "application/gzip")
        conn = http.client.HTTPConnection(
            self._host, self._port, timeout=timeout_s or self.timeout_s
        )
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as exc:
            raise DeviceError(f"{self.url}{path}: cannot reach the daemon ({exc})") from None
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "")
        if "json" in ctype:
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                pass
        return resp.status, raw.decode(errors="replace")

    def call(self, method: str, path: str, body=None, timeout_s: float | None = None):
        """The JSON answer; DeviceError with the device's message on a 4xx/5xx."""
        status, data = self.request(method, path, body, timeout_s)
        if status >= 400:
            msg = data.get("error", data) if isinstance(data, dict) else data
            raise DeviceError(f"{method} {path}: device answered {status}: {msg}", status)
        return data

    def status(self) -> dict:
        return self.call("GET", "/status")

    def clock_offset(self, tries: int = 5) -> tuple[int, int]:
        """(device - host monotonic ns, uncertainty ns) from the quickest round trip."""
        best = None
        for _ in range(tries):
            t0 = time.monotonic_ns()
            data = self.call("GET", "/results?since=999999999999&limit=1")
            t1 = time.monotonic_ns()
            if best is None or (t1 - t0) // 2 < best[1]:
                best = (data["now_ns"] - (t0 + t1) // 2, (t1 - t0) // 2)
        return best


SLIM_KEYS = (
    "i",
    "kind",
    "seq",
    "t_capture_ns",
    "t_display_ns",
    "t_ns",
    "objective",
    "model",
    "reason",
    "truth_fraction",
)


class Recorder:
    """Polls GET /results every `interval_s` on a thread; `records` holds every record seen
    (slim: no polygons or masks; `epoch` counts daemon restarts), `capture()` collects full
    ones (regions, truth masks) while its block runs."""

    def __init__(self, client: DaemonClient, interval_s: float = 0.2):
        self.client, self.interval_s = client, interval_s
        self.records: list[dict] = []
        self.dropped = 0
        self.errors = 0
        self.last_now_ns = 0
        self.epoch = 0
        self._since = 0
        self._captures: list[list] = []
        self._truth = 0
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one poll at a time: no record is taken twice
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Recorder:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hil-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def restarted(self) -> None:
        """The daemon restarted: its record numbers start again at 0."""
        with self._lock:
            self._since = 0
            self.epoch += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        with self._poll_lock:
            self._poll()

    def _poll(self) -> None:
        with self._lock:
            since, truth, epoch = self._since, self._truth > 0, self.epoch
        try:
            data = self.client.call(
                "GET", f"/results?since={since}&truth={int(truth)}", timeout_s=10
            )
        except OSError:
            with self._lock:
                self.errors += 1
            return
        with self._lock:
            if epoch != self.epoch:  # a restart happened while we asked
                return
            self.dropped += data.get("dropped", 0)
            self.last_now_ns = data["now_ns"]
            for r in data["records"]:
                slim = {k: r[k] for k in SLIM_KEYS if k in r}
                slim["n_regions"] = len(r.get("regions", ()))
                slim["epoch"] = epoch
                self.records.append(slim)
                for c in self._captures:
                    c.append(r)
            self._since = data["next"]

    @contextmanager
    def capture(self, truth: bool = True):
        """Collect full records (regions; truth masks when `truth`) while the block runs."""
        got: list[dict] = []
        with self._lock:
            self._captures.append(got)
            self._truth += truth
        try:
            yield got
        finally:
            with self._lock:
                self._captures.remove(got)
                self._truth -= truth

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.records)

    def wait_device_time(self, t_ns: int, timeout_s: float = 30.0) -> bool:
        """Wait until a poll has seen the device clock pass t_ns."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if self.last_now_ns >= t_ns:
                    return True
            time.sleep(self.interval_s / 2)
        return False

    def wait_for(self, pred, timeout_s: float) -> dict | None:
        """The first record (slim) matching pred seen within timeout_s, or None."""
        end = time.monotonic() + timeout_s
        seen = 0
        while True:
            recs = self.snapshot()
            for r in recs[seen:]:
                if pred(r):
                    return r
            seen = len(recs)
            if time.monotonic() >= end:
                return None
            time.sleep(self.interval_s / 2)
