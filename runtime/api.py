"""The daemon's HTTP API (aiohttp), on its own thread and event loop.

GET: / (operator page), /status, /metrics (Prometheus), /live (MJPEG of preview mode; ?view=ar:
the eyepiece canvas), /events,
/models (bundles held, the model of each objective), /snapshots and /snapshots/{id}[/{file}]
(token required: they may hold patient images),
/results?since=I&truth=1 (display records on the device clock, see runtime.results).
POST (bearer token required, compared in constant time): /snapshot, /overlay, /objective,
/calibration/manual (ARM-style circles and cross, nudged, saved into the profile),
/models (upload a bundle .tar.gz), /models/{name}/activate, /models/rollback, /benchmark,
/health (golden check of the running bundle), /virtual (drive a virtual microscope: HIL bench),
/camera (camera controls: exposure_ms, gain, auto_exposure, white_balance_k, fps; read back).
Every error is JSON {"error": "..."} with a 4xx status; the pipeline keeps running.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import tempfile
import threading
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


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
    token = daemon.token
    registry = CollectorRegistry()
    registry.register(StatusCollector(daemon))
    max_upload = int(daemon.config.http.max_upload_mb * 1024 * 1024)

    @web.middleware
    async def auth(request, handler):
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            header = request.headers.get("Authorization", "")
            given = header[7:] if header.startswith("Bearer ") else ""
            if not given:
                return _error(401, "missing bearer token (Authorization: Bearer TOKEN)")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _error(403, "wrong token")
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (ValueError, OSError) as exc:  # bad input: one readable message
            daemon.events("error", where=request.path, message=str(exc))
            status = 422 if type(exc).__name__ == "HealthCheckError" else 400
            return _error(status, str(exc))

    async def in_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def index(_request):
        return web.FileResponse(STATIC / "index.html")

    async def status(_request):
        return web.json_response(await in_thread(daemon.status))

    async def metrics(_request):
        body = await in_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def results(request):
        try:
            since = int(request.query.get("since", "0"))
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            raise ValueError("'since' and 'limit' must be integers") from None
        truth = request.query.get("truth", "0") not in ("0", "", "false")
        return web.json_response(await in_thread(daemon.results.since, since, truth, limit))

    async def health(_request):
        return web.json_response(await in_thread(daemon.health))

    async def camera(request):
        return web.json_response(await in_thread(daemon.camera, await json_body(request)))

    async def virtual(request):
        return web.json_response(await in_thread(daemon.virtual, await json_body(request)))

    async def events(request):
        n = int(request.query.get("n", "50"))
        return web.json_response(daemon.events.recent[-n:])

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
        try:
            body = await request.json()
        except ValueError:
            raise ValueError("request body is not JSON") from None
        if not isinstance(body, dict):
            raise ValueError("request body must be a JSON object")
        return body

    def require_token(request) -> None:
        """GETs that may carry patient images (snapshots) need the bearer token too."""
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise web.HTTPUnauthorized(
                text='{"error": "snapshots need the bearer token"}', content_type="application/json"
            )

    async def snapshot(request):
        body = await json_body(request)
        for key in ("case_id", "comment"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ValueError(f"'{key}' must be a string")
        return web.json_response(
            await in_thread(daemon.snapshot, body.get("case_id"), body.get("comment"))
        )

    async def snapshot_list(request):
        require_token(request)
        return web.json_response({"snapshots": await in_thread(daemon.snapshots.list)})

    async def snapshot_file(request):
        require_token(request)
        sid, name = request.match_info["sid"], request.match_info.get("name", "metadata.json")
        try:
            path = daemon.snapshots.file(sid, name)
        except ValueError as exc:
            return _error(404, str(exc))
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    async def overlay(request):
        body = await json_body(request)
        if "enabled" in body:
            if not isinstance(body["enabled"], bool):
                raise ValueError("'enabled' must be true or false")
            daemon.pipeline.set_overlay(body["enabled"])
        if "threshold" in body:
            daemon.pipeline.set_threshold(float(body["threshold"]))
        classes = body.get("classes", {})
        if not isinstance(classes, dict) or not all(
            isinstance(v, bool) or v == "toggle" for v in classes.values()
        ):
            raise ValueError("'classes' must map class names to true, false or \"toggle\"")
        for name, on in classes.items():
            daemon.pipeline.set_class(name, None if on == "toggle" else on)
        await in_thread(daemon.save_settings)
        state = {"overlay": daemon.pipeline.overlay_enabled, "threshold": daemon.pipeline.threshold}
        classes = daemon.pipeline.classes()  # only a model with labelled or several classes
        return web.json_response({**state, "classes": classes} if classes else state)

    async def calibration_manual(request):
        return web.json_response(
            await in_thread(daemon.manual_registration, await json_body(request))
        )

    async def objective(request):
        body = await json_body(request)
        daemon.pipeline.set_objective(body.get("objective"))
        return web.json_response({"objective": body.get("objective")})

    async def models(_request):
        return web.json_response(await in_thread(daemon.inventory))

    async def upload(request):
        if request.content_length is not None and request.content_length > max_upload:
            return _error(
                413,
                f"bundle upload of {request.content_length} bytes exceeds the "
                f"{max_upload} byte limit",
            )
        incoming = Path(daemon.config.state_dir, "incoming")
        incoming.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=incoming, suffix=".tar.gz", delete=False) as tmp:
            path = Path(tmp.name)
            size = 0
            try:
                async for chunk in request.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > max_upload:
                        return _error(413, f"bundle upload exceeds the {max_upload} byte limit")
                    tmp.write(chunk)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        try:
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
        body = await json_body(request)
        runs = int(body.get("runs", 50))
        if not 1 <= runs <= 10000:
            raise ValueError("'runs' must be 1..10000")
        return web.json_response(await in_thread(daemon.benchmark, body.get("bundle"), runs))

    app = web.Application(middlewares=[auth], client_max_size=max_upload)
    app.add_routes(
        [
            web.get("/", index),
            web.get("/status", status),
            web.get("/metrics", metrics),
            web.get("/events", events),
            web.get("/live", live),
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
            raise OSError(f"HTTP API cannot listen on {self.host}:{self.port}: {self._error}")
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(make_app(self.daemon), access_log=None)
        try:
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self._loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]
            self.url = f"http://{self.host}:{port}"
        except BaseException as exc:  # port in use, bad address
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2)
