"""The daemon's HTTP API (aiohttp), on its own thread and event loop.

GET: / (operator page), /status, /metrics (Prometheus), /models (bundles held, the model of
each objective); with the token (bearer, the page's cookie from POST /login, or a signed URL from
GET /live/url): /live (MJPEG of preview mode; ?view=ar: the eyepiece canvas),
/events?before=I&limit=N (paginated), /results?since=I&truth=1 (display records on the device
clock, see runtime.results), /snapshots and /snapshots/{id}[/{file}]. Every request's Host
header must name this daemon (see runtime.http_guard). POST (bearer token required, compared in
constant time): /snapshot, /overlay, /objective, /task (what the models find),
/calibration/manual (ARM-style circles and cross, nudged, saved into the profile),
/models (upload a bundle .tar.gz), /models/{name}/activate, /models/rollback, /benchmark,
/health (golden check of the running bundle), /virtual (drive a virtual microscope: HIL bench),
/camera (camera controls: exposure_ms, gain, auto_exposure, white_balance_k, fps; read back).
Every error is JSON {"error": "..."} (one line, bounded in size) with a 4xx status for client
input; the pipeline keeps running. Bodies are validated by runtime.requests before anything
changes; connections are capped and slow ones closed (runtime.netlimits).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import http_guard
from .events import bounded
from .netlimits import SlowClient, body_chunks, body_deadline_s, capped_factory, connection_cap
from .requests import (
    BenchmarkBody,
    LoginBody,
    ManualBody,
    ObjectiveBody,
    OverlayBody,
    RequestError,
    SnapshotBody,
    TaskBody,
    VirtualBody,
    parse,
)

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
JSON_BODY_MAX = 64 * 1024  # bytes of a JSON request body
ERROR_CHARS = 500  # longest error message sent back (chars)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": bounded(message, ERROR_CHARS)}, status=status)


class UploadRefused(OSError):
    """An upload refused before it is unpacked (size, disk space, one at a time)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class StatusCollector:
    """Prometheus metrics read from the daemon's status at scrape time."""

    def __init__(self, daemon):
        self.daemon = daemon

    def collect(self):
        st = self.daemon.pipeline.status()
        for key in (
            "frames_in",
            "processed",
            "displayed",
            "cleared",
            "reopens",
            "drops_capture",
            "drops_result",
        ):
            c = CounterMetricFamily(f"lucida_{key}", f"pipeline {key.replace('_', ' ')}")
            c.add_metric([], st.get(key, 0))
            yield c
        for key in ("fps_in", "fps_processed", "fps_displayed"):
            g = GaugeMetricFamily(f"lucida_{key}", f"frames per second ({key[4:]})")
            g.add_metric([], st[key])
            yield g
        audit = getattr(self.daemon, "audit", None)
        for key, value in (audit.disk() if audit is not None else {}).items():
            g = GaugeMetricFamily(f"lucida_{key}", f"{key.replace('_', ' ')} (audit trail, disk)")
            g.add_metric([], value)
            yield g
        lat = GaugeMetricFamily(
            "lucida_stage_ms", "stage time percentiles (ms)", labels=["stage", "quantile"]
        )
        for stage in ("latency", "infer", "contours", "render", "preprocess"):
            for q in ("50", "90", "99"):
                lat.add_metric([stage, f"0.{q}"], st.get(f"{stage}_ms_p{q}", 0.0))
        yield lat
        up = GaugeMetricFamily(
            "lucida_model_info", "model running now", labels=["model", "delegate"]
        )
        up.add_metric([str(st["model"]), str(st["delegate"])], 1.0)
        yield up
        disk = self.daemon.store.disk()
        for key, help_ in (
            ("free_mb", "free space on the state folder's file system (MiB)"),
            ("state_mb", "space used by the state folder (MiB)"),
            ("incoming_files", "files left in incoming/ (partial uploads)"),
        ):
            g = GaugeMetricFamily(f"lucida_disk_{key}", help_)
            g.add_metric([], float(disk[key]))
            yield g
        yield from _device_metrics(st.get("devices") or [])


def _device_metrics(devices: list[dict]):
    """Per Edge TPU (several devices, runtime.devices): invokes, errors, rebuilds, up, p50/p99."""
    fams = {
        k: CounterMetricFamily(f"lucida_device_{k}", f"Edge TPU {k}", labels=["device"])
        for k in ("invokes", "errors", "rebuilds")
    }
    up = GaugeMetricFamily(
        "lucida_device_up", "1 serving, 0 rebuilding or dropped", labels=["device"]
    )
    ms = GaugeMetricFamily(
        "lucida_device_invoke_ms", "invoke time percentiles (ms)", labels=["device", "quantile"]
    )
    for d in devices:
        for k, fam in fams.items():
            fam.add_metric([d["device"]], d[k])
        up.add_metric([d["device"]], 1.0 if d["state"] == "ok" else 0.0)
        for q in ("50", "90", "99"):
            ms.add_metric([d["device"], f"0.{q}"], d.get(f"invoke_ms_p{q}", 0.0))
    if devices:
        yield from (*fams.values(), up, ms)


def make_app(daemon) -> web.Application:
    registry = CollectorRegistry()
    registry.register(StatusCollector(daemon))
    max_upload = int(daemon.config.http.max_upload_mb * 1024 * 1024)

    http_cfg = daemon.config.http
    bind = http_cfg.bind
    hosts = http_guard.allowed_hosts(bind, http_cfg.allowed_hosts)
    uploads = asyncio.Semaphore(1)  # one bundle upload (body in flight) at a time
    errors = daemon.http_errors

    @web.middleware
    async def privacy(request, handler):
        """Host check (DNS rebinding), then the token for state changes and private data."""
        if not http_guard.host_ok(request.headers.get("Host"), hosts, bind):
            return _error(421, "Host header does not name this device (DNS rebinding?)")
        token = daemon.token  # read per request: a reload may change it
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            ok = http_guard.bearer_ok(request.headers.get("Authorization", ""), token)
            if request.path == "/login":
                ok = True  # the body carries the token
            if ok is None:
                return _error(401, "missing bearer token (Authorization: Bearer TOKEN)")
            if not ok:
                return _error(403, "wrong token")
        elif http_guard.private(request.path):
            header = request.headers.get("Authorization", "")
            ok = http_guard.bearer_ok(header, token)
            if ok is False and http_guard.malformed(header):
                return _error(403, "unreadable Authorization header (not printable ASCII)")
            if ok is False:  # a read: 401 as for no token, so a client asks for it (not 403)
                return _error(401, "wrong token")
            if not ok and request.cookies.get(http_guard.COOKIE):
                ok = http_guard.cookie_ok(request.cookies[http_guard.COOKIE], token)
            if not ok and "sig" in request.query:
                ok = http_guard.signature_ok(
                    token, request.path, request.query.get("exp", ""), request.query["sig"]
                )
            if not ok:
                return _error(
                    401,
                    "this holds patient images: give the token (Authorization: Bearer TOKEN, "
                    "the page's login, or a signed URL from GET /live/url)",
                )
        return await handler(request)

    @web.middleware
    async def errors_as_json(request, handler):
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (UploadRefused, SlowClient) as exc:
            daemon.events("error", where=request.path, message=str(exc))
            resp = _error(exc.status, str(exc))
            if exc.status == 408:  # answer, then hang up: the rest of the body is not waited for
                resp.force_close()
                await resp.prepare(request)
                await resp.write_eof()
                request.protocol.force_close()  # no lingering read of what the client holds
            return resp
        except (ValueError, OSError) as exc:  # bad input: one readable message
            daemon.events("error", where=request.path, message=str(exc))
            status = 422 if type(exc).__name__ in ("HealthCheckError", "SandboxError") else 400
            return _error(status, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: one line, rate-limited; never a traceback to clients
            errors(f"handler:{type(exc).__name__}", f"{request.path}: {type(exc).__name__}: {exc}")
            daemon.events("error", where=request.path, message=f"{type(exc).__name__}: {exc}")
            return _error(500, f"internal error ({type(exc).__name__}); see the event log")

    async def in_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def index(_request):
        return web.FileResponse(STATIC / "index.html")

    async def status(_request):
        return web.json_response(await in_thread(daemon.status))

    async def metrics(_request):
        body = await in_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    def query_int(request, key: str, default: int, lo: int, hi: int) -> int:
        raw = request.query.get(key, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise RequestError(f"'{key}' must be an integer, got {bounded(raw, 40)!r}") from None
        if not lo <= value <= hi:
            raise RequestError(f"'{key}' must be {lo}..{hi}, got {value}")
        return value

    async def results(request):
        since = query_int(request, "since", 0, 0, 2**62)
        limit = query_int(request, "limit", 1000, 1, 10000)
        truth = request.query.get("truth", "0") not in ("0", "", "false")
        return web.json_response(await in_thread(daemon.results.since, since, truth, limit))

    async def health(_request):
        return web.json_response(await in_thread(daemon.health))

    async def camera(request):
        return web.json_response(await in_thread(daemon.camera, await json_body(request)))

    async def virtual(request):
        body = parse(VirtualBody, await json_body(request))
        return web.json_response(
            await in_thread(daemon.virtual, body.model_dump(exclude_unset=True))
        )

    async def events(request):
        limit = query_int(request, "limit", query_int(request, "n", 50, 1, 500), 1, 500)
        before = (
            query_int(request, "before", 2**62, 0, 2**62) if "before" in request.query else None
        )
        return web.json_response(daemon.events.page(before, limit))

    async def live_url(request):
        ttl = query_int(request, "ttl_s", 60, 1, http_guard.SIGNED_URL_MAX_S)
        return web.json_response(
            {"url": http_guard.sign_path(daemon.token, "/live", ttl), "ttl_s": ttl}
        )

    async def login(request):
        body = parse(LoginBody, await json_body(request))
        if not http_guard.bearer_ok("Bearer " + body.token, daemon.token):
            return _error(403, "wrong token")
        resp = web.json_response({"ok": True})
        resp.set_cookie(
            http_guard.COOKIE,
            http_guard.session_value(daemon.token),
            httponly=True,
            samesite="Strict",
            max_age=12 * 3600,
        )
        return resp

    async def live(request):
        resp = web.StreamResponse(
            headers={
                "Content-Type": "multipart/x-mixed-replace; boundary=frame",
                "Cache-Control": "no-cache",
            }
        )
        stream = daemon.live_ar if request.query.get("view") == "ar" else daemon.live
        await resp.prepare(request)
        seq, interval = -1, 1 / max(1.0, daemon.config.source.fps)
        try:
            while True:
                stream.want()  # keeps the pipeline composing this stream while we watch
                if stream.seq == seq or stream.canvas is None:
                    await asyncio.sleep(interval / 2)
                    continue
                got = await in_thread(stream.wait_jpeg, seq, 0.0)  # shared by all viewers
                if got is None:
                    continue
                seq, jpeg = got
                await resp.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(len(jpeg)).encode()
                    + b"\r\n\r\n"
                    + jpeg
                    + b"\r\n"
                )
        except (
            ConnectionResetError,
            asyncio.CancelledError,
            RuntimeError,
        ):  # RuntimeError: shutdown
            pass
        return resp

    async def json_body(request) -> dict:
        if not request.can_read_body:
            return {}
        if (request.content_length or 0) > JSON_BODY_MAX:
            raise UploadRefused(413, f"JSON body over {JSON_BODY_MAX} bytes")
        raw = b""
        idle = http_cfg.idle_timeout_s
        async for chunk in body_chunks(request.content, idle, body_deadline_s(JSON_BODY_MAX, idle)):
            raw += chunk
            if len(raw) > JSON_BODY_MAX:
                break
        if len(raw) > JSON_BODY_MAX:
            raise UploadRefused(413, f"JSON body over {JSON_BODY_MAX} bytes")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            raise RequestError("request body is not JSON") from None
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object")
        return body

    async def snapshot(request):
        body = parse(SnapshotBody, await json_body(request))
        return web.json_response(await in_thread(daemon.snapshot, body.case_id, body.comment))

    async def snapshot_list(request):  # the token: checked by `privacy` (a private path)
        return web.json_response({"snapshots": await in_thread(daemon.snapshots.list)})

    async def snapshot_file(request):
        sid, name = request.match_info["sid"], request.match_info.get("name", "metadata.json")
        try:
            path = daemon.snapshots.file(sid, name)
        except ValueError as exc:
            return _error(404, str(exc))
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    async def overlay(request):
        body = parse(OverlayBody, await json_body(request))
        known = {k for c in daemon.pipeline.classes() for k in (c["name"].lower(), str(c["index"]))}
        for name in body.classes or {}:  # every name known before anything changes
            if name.strip().lower() not in known:
                daemon.pipeline.set_class(name)  # raises: names the classes this model has
        if body.enabled is not None:
            daemon.pipeline.set_overlay(body.enabled)
        if body.threshold is not None:
            daemon.pipeline.set_threshold(body.threshold)
        for name, on in (body.classes or {}).items():
            daemon.pipeline.set_class(name, None if on == "toggle" else on)
        await in_thread(daemon.save_settings)
        state = {"overlay": daemon.pipeline.overlay_enabled, "threshold": daemon.pipeline.threshold}
        classes = daemon.pipeline.classes()  # only a model with labelled or several classes
        return web.json_response({**state, "classes": classes} if classes else state)

    async def calibration_manual(request):
        body = parse(ManualBody, await json_body(request))
        return web.json_response(await in_thread(daemon.manual_registration, body.command()))

    async def objective(request):
        body = parse(ObjectiveBody, await json_body(request))
        known = daemon.objectives()
        if body.objective not in known:
            raise RequestError(
                f"objective {bounded(body.objective, 20)!r} is not configured on this "
                f"microscope; expected one of {', '.join(sorted(known))}"
            )
        daemon.pipeline.set_objective(body.objective)
        return web.json_response({"objective": body.objective})

    async def task(request):
        body = parse(TaskBody, await json_body(request))
        return web.json_response(await in_thread(daemon.set_task, body.task))

    async def models(_request):
        return web.json_response(await in_thread(daemon.inventory))

    async def upload(request):
        if request.content_length is not None and request.content_length > max_upload:
            return _error(
                413,
                f"bundle upload of {request.content_length} bytes exceeds the "
                f"{max_upload} byte limit",
            )
        if uploads.locked():
            raise UploadRefused(503, "another bundle upload is in progress: try again after it")
        async with uploads:
            free_mb = shutil.disk_usage(daemon.config.state_dir).free / 2**20
            need_mb = http_cfg.min_free_mb + 5 * max_upload / 2**20
            if free_mb < need_mb:
                raise UploadRefused(
                    507,
                    f"only {free_mb:.0f} MiB free on the state folder; uploads need "
                    f"{need_mb:.0f} MiB (http.min_free_mb + room to unpack)",
                )
            incoming = daemon.store.incoming
            fd, name = tempfile.mkstemp(dir=incoming, prefix="upload-", suffix=".tar.gz")
            path = Path(name)
            try:  # the partial file goes on every path out: error, 413, client gone, crash
                size = 0
                idle = http_cfg.idle_timeout_s
                chunks = body_chunks(request.content, idle, body_deadline_s(max_upload, idle))
                with os.fdopen(fd, "wb") as tmp:
                    async for chunk in chunks:
                        size += len(chunk)
                        if size > max_upload:
                            raise UploadRefused(
                                413, f"bundle upload exceeds the {max_upload} byte limit"
                            )
                        tmp.write(chunk)
                if size == 0:
                    raise ValueError("empty upload: send a bundle .tar.gz as the request body")
                return web.json_response(await in_thread(daemon.deploy, path))
            finally:
                path.unlink(missing_ok=True)

    async def activate(request):
        return web.json_response(await in_thread(daemon.activate, request.match_info["name"]))

    async def rollback(_request):
        return web.json_response(await in_thread(daemon.rollback))

    async def benchmark(request):
        body = parse(BenchmarkBody, await json_body(request))
        return web.json_response(await in_thread(daemon.benchmark, body.bundle, body.runs))

    app = web.Application(middlewares=[privacy, errors_as_json], client_max_size=JSON_BODY_MAX)
    app.add_routes(
        [
            web.get("/", index),
            web.get("/status", status),
            web.get("/metrics", metrics),
            web.get("/events", events),
            web.get("/live", live),
            web.get("/live/url", live_url),
            web.post("/login", login),
            web.get("/results", results),
            web.post("/health", health),
            web.post("/virtual", virtual),
            web.post("/camera", camera),
            web.post("/snapshot", snapshot),
            web.get("/snapshots", snapshot_list),
            web.get("/snapshots/{sid}", snapshot_file),
            web.get("/snapshots/{sid}/{name}", snapshot_file),
            web.post("/overlay", overlay),
            web.post("/objective", objective),
            web.post("/task", task),
            web.post("/calibration/manual", calibration_manual),
            web.get("/models", models),
            web.post("/models", upload),
            web.post("/models/rollback", rollback),
            web.post("/models/{name}/activate", activate),
            web.post("/benchmark", benchmark),
        ]
    )
    return app


class HttpServer:
    """Runs the aiohttp app on a background thread; `url` once started (port 0: any free port)."""

    def __init__(self, daemon, host: str, port: int):
        self.daemon, self.host, self.port = daemon, host, port
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self._serve, name="lucida-http", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise OSError(
                f"key 'http.bind'/'http.port': the HTTP API cannot listen on "
                f"{self.host}:{self.port}: {self._error}"
            )
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        cfg = self.daemon.config.http
        errors = self.daemon.http_errors
        self._loop.set_exception_handler(errors.loop_handler)
        for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "asyncio"):
            logger = logging.getLogger(name)
            if not any(getattr(f, "lucida", False) for f in logger.filters):
                logger.addFilter(errors.filter())
        self.cap = connection_cap(cfg.max_connections)
        self.refused: dict[str, int] = {}

        def refused(kind: str) -> None:
            self.refused[kind] = self.refused.get(kind, 0) + 1
            errors(f"refused:{kind}", f"HTTP connection refused: {kind} (cap {self.cap})")

        self._runner = web.AppRunner(
            make_app(self.daemon),
            access_log=None,
            keepalive_timeout=cfg.idle_timeout_s,
            # the unread rest of a body after the answer (a 408, a handler that ignores it)
            lingering_time=min(10.0, cfg.idle_timeout_s),
        )
        try:
            self._loop.run_until_complete(self._runner.setup())
            factory = capped_factory(
                self._runner.server,
                self.cap,
                cfg.header_timeout_s,
                on_refuse=refused,
                write_timeout_s=cfg.idle_timeout_s,
            )
            self._server = self._loop.run_until_complete(
                self._loop.create_server(factory, self.host, self.port, backlog=128)
            )
            port = self._server.sockets[0].getsockname()[1]
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.url = f"http://{host}:{port}"
        except BaseException as exc:  # port in use, bad address
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.run_until_complete(self._runner.cleanup())

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2)
