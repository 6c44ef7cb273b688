"""`lucida run`: the pipeline as a long-running service with a serial nosepiece and an HTTP API.

Signals: SIGTERM/SIGINT stop cleanly, SIGHUP reloads the config: the new one is fully checked
first (runtime.preflight: paths, devices, bundles in a sandbox, calibration), and if it still
fails to start the old one is built and started again; either way the event log says why.
Under systemd (Type=notify) it reports READY, WATCHDOG and STOPPING. Files it creates are
private (umask 077: 0600 files, 0700 folders); untrusted bundles are golden-checked in a child
process (runtime.sandbox) before they are loaded here.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import platform
import secrets
import signal
import threading
import time
from pathlib import Path

import numpy as np
from lucida.models import Bundle, Registry, load_bundle
from lucida.models.registry import SHIPPED_DIR
from lucida.overlay.compose import ARComposer, PreviewComposer
from lucida.overlay.render import (
    ContourRenderer,
    HudRenderer,
    LegendRenderer,
    ScaleBarRenderer,
)
from lucida.overlay.sinks import JpegStream, make_sink

from .audit import AuditTrail
from .config import ConfigError, DaemonConfig, load_config
from .devices import build_engine
from .events import EventLog, bounded
from .http_guard import is_loopback
from .models import ActiveModel, ModelSelector
from .netlimits import RateLimitedLog
from .pipeline import Optics, Pipeline, nominal_um_per_px
from .results import ResultLog
from .safety import Safety
from .snapshots import SnapshotStore
from .sources import FrameSource, OpenCVSource, PiCameraSource, ReplaySource, SourceError
from .stats import percentiles_ms
from .store import BundleStore
from .systemd import sd_notify, watchdog_interval_s

log = logging.getLogger(__name__)

LIVE_WIDTH = 960  # px: the /live view is downscaled to keep JPEG encoding cheap
AUDIT_FILE = "audit.jsonl"  # under state_dir/audit/, rotated by size (runtime.audit)


def build_source(cfg) -> FrameSource:
    """The configured camera; frames carry `objective` until a nosepiece says otherwise."""
    if cfg.type == "virtual":
        from .virtual.camera import CameraConfig
        from .virtual.scope import VirtualMicroscope

        camera = CameraConfig(resolution=(cfg.width, cfg.height), fps=cfg.fps)
        path = None
        if cfg.stage == "tour":
            from .virtual.stage import TourPath
            from .virtual.tissue import SyntheticSlide

            path = TourPath(SyntheticSlide(cfg.seed), cfg.seed, duration_s=3600.0)
        return VirtualMicroscope(
            seed=cfg.seed,
            camera=camera,
            objective=cfg.objective,
            path=path,
            report_motion=cfg.report_motion,
            subpixel=not cfg.report_motion,
        )
    if cfg.type == "replay":
        source = ReplaySource(cfg.path, fps=cfg.fps)
    elif cfg.type == "opencv":
        source = OpenCVSource(cfg.device, size=(cfg.width, cfg.height))
    else:
        source = PiCameraSource(size=(cfg.width, cfg.height))
    source.objective = cfg.objective
    return source


def temperatures_c() -> dict:
    """Readable thermal zones (CPU, SoC; the Edge TPU's own where the driver exposes it), in C."""
    out = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")) + sorted(
        glob.glob("/sys/class/apex/apex_*")
    ):
        try:
            name = (
                Path(zone, "type").read_text().strip()
                if Path(zone, "type").exists()
                else Path(zone).name
            )
            out[name] = int(Path(zone, "temp").read_text()) / 1000
        except (OSError, ValueError):
            continue
    return out


def rss_mb() -> float | None:
    """Resident memory of this process (MiB), from /proc; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def versions() -> dict:
    """camera-lucida, Python and NumPy versions (the device's identity in HIL reports)."""
    from importlib import metadata

    try:
        lucida = metadata.version("camera-lucida")
    except metadata.PackageNotFoundError:
        lucida = "unknown"
    return {"lucida": lucida, "python": platform.python_version(), "numpy": np.__version__}


def _same_but_token(a: DaemonConfig, b: DaemonConfig) -> bool:
    """Two configs that differ at most in the token (nothing to rebuild on reload)."""
    skip = {"http": {"token", "token_file"}}
    return a.model_dump(exclude=skip) == b.model_dump(exclude=skip)


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        config_path: str | Path | None = None,
        verified: set | None = None,
    ):
        os.umask(0o077)  # patient images, tokens, logs: private from creation
        self.config, self.config_path = config, config_path
        if config.log.events:  # the folder --check would create; a start creates it too
            Path(config.log.events).parent.mkdir(parents=True, exist_ok=True)
        self.events = EventLog(config.log.events)
        self.store = BundleStore(config.state_dir)
        if self.store.swept:
            self.events("incoming_swept", files=self.store.swept)
        self.http_errors = RateLimitedLog(log)
        # (path, sha256) of bundles that passed the sandbox (`lucida run`: in its preflight)
        self._verified: set = set() if verified is None else verified
        self._snap_seq = itertools.count()
        self.token = config.token() or self._generated_token()
        self.live = JpegStream(quality=80, max_width=LIVE_WIDTH)  # /live: one encode per frame
        self.live_ar = JpegStream(quality=80, max_width=LIVE_WIDTH)  # /live?view=ar: the eyepiece
        self.results = ResultLog()
        self.audit = AuditTrail(Path(config.state_dir, "audit", AUDIT_FILE), self._audit_context)
        self.snapshots = SnapshotStore(Path(config.state_dir, "snapshots"))
        self.shown: dict | None = None  # the last display update: the overlay a snapshot keeps
        self.started_ns = time.monotonic_ns()
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self.http = None
        self.serial = None
        self.manual = None
        self.manual_objective = None
        self.on_ready = None  # called with the daemon once it serves (lucida run: the human lines)
        self._build()

    # -- assembly ---------------------------------------------------------------------------------
    def _generated_token(self) -> str:
        path = Path(self.config.state_dir, "token")
        if not path.exists():
            from lucida.calibration.atomic import atomic_write_text

            atomic_write_text(path, secrets.token_urlsafe(24) + "\n", mode=0o600)
        self.events("token", generated=str(path))
        return path.read_text().strip()

    def _build(self) -> None:
        cfg = self.config
        registry = Registry(
            search_dirs=[*cfg.models.dirs, SHIPPED_DIR], config=cfg.models.overrides
        )
        self.models = ModelSelector(
            registry=registry,
            task=cfg.models.task,
            device=cfg.models.device,
            num_threads=cfg.models.num_threads,
            preload=cfg.models.preload,
        )
        active = self.store.active()
        if active is not None:
            self.models.pin(active)
        self.profile = self._load_profile()
        w, h = cfg.display.width, cfg.display.height
        circle = cfg.display.eyepiece
        if circle is True:
            circle = (w / 2, h / 2, min(w, h) / 2)
        elif circle is False:
            circle = None
        ar = ARComposer(
            (w, h),
            homography=self._default_homography(),
            eyepiece_circle=circle,
            renderers=[ContourRenderer(), ScaleBarRenderer(), HudRenderer()],
        )
        preview = PreviewComposer(
            [ContourRenderer(), ScaleBarRenderer(), HudRenderer(), LegendRenderer()]
        )
        self.pipeline = Pipeline(
            build_source(cfg.source),
            self.models,
            ar=ar,
            ar_sinks=[*(make_sink(s) for s in cfg.sinks.ar), self.live_ar],
            preview=preview,
            preview_sinks=[*(make_sink(s) for s in cfg.sinks.preview), self.live],
            optics_for=self._optics_for,
            display_interval_ms=1000 / cfg.source.fps,
            stall_timeout_ms=cfg.source.stall_timeout_ms,
            on_event=self._pipeline_event,
            on_result=self._sample_timings,
            on_display=self._on_display,
            safety=Safety(
                **cfg.safety.model_dump(), max_overlay_age_ms=cfg.display.max_overlay_age_ms
            ),
        )
        self._frames_seen = 0
        if cfg.serial.port:
            from .serial_link import SerialLink

            self.serial = SerialLink(
                cfg.serial.port,
                protocol=cfg.serial.protocol,
                positions=cfg.serial.positions,
                on_objective=self.pipeline.set_objective,
                on_command=self._serial_command,
                poll_interval_s=cfg.serial.poll_interval_s,
                login=cfg.serial.login,
                notify=cfg.serial.notify,
            )
        else:
            self.serial = None

    def _on_display(
        self, kind: str, t_ns: int, shift_px=None, redraw: bool = False, **what
    ) -> None:
        """The render stage's hook: the in-memory record for /results, and the audit trail.
        A redraw (motion compensation following the field) is not a new record."""
        if redraw:
            return
        self.results(kind, t_ns, shift_px=shift_px, **what)
        self.audit(kind, t_ns, **what)
        if kind in ("overlay", "blank"):
            self.shown = {"kind": kind, "t_ns": t_ns, **what}  # one reference swap, no copy

    def _audit_context(self) -> dict:
        """Model file, threshold and calibration revision of what is shown now (cheap reads)."""
        active = self.pipeline._active
        return {
            "model_sha256": active.engine.info.model_sha256 if active else None,
            "threshold": self.pipeline.threshold,
            "classes": [c["name"] for c in self.pipeline.classes() if c["on"]] or None,
            "calibration_revision": self.profile.profile.revision if self.profile else None,
        }

    def _default_homography(self):
        """Camera px -> display px when uncalibrated: scale the camera frame onto the display."""
        src, d = self.config.source, self.config.display
        s = min(d.width / src.width, d.height / src.height)
        return np.array(
            [
                [s, 0, (d.width - s * src.width) / 2],
                [0, s, (d.height - s * src.height) / 2],
                [0, 0, 1],
            ]
        )

    def _load_profile(self):
        """The microscope's calibration profile (CalibrationStore), or None when not configured."""
        path = self.config.calibration.profile
        if not path:
            return None
        from lucida.calibration.store import CalibrationStore

        store = CalibrationStore.open(path)
        self.events(
            "calibration", profile=str(store.path), objectives=sorted(store.profile.objectives)
        )
        return store

    def _optics_for(self, objective: str | None) -> Optics:
        """Calibration of this objective: homography, um/px, flat-field; nominal where absent."""
        nominal = Optics(
            um_per_px=nominal_um_per_px(objective), homography=self._default_homography()
        )
        if self.profile is None or objective is None:
            return nominal
        try:
            cal = self.profile.get(objective)
        except KeyError as exc:  # UnknownObjectiveError: no section for this objective
            self.events("error", where="calibration", message=str(exc).strip("'\""))
            return nominal
        self.events(
            "calibration_section",
            objective=objective,
            um_per_px=cal.um_per_px,
            registered=cal.homography is not None,
        )
        return Optics(
            um_per_px=cal.um_per_px or nominal.um_per_px,
            homography=cal.homography if cal.homography is not None else nominal.homography,
            correct=cal.correct if cal.corrector is not None else None,
        )

    # -- manual display registration (ARM-style circles and cross) ------------------------------
    def manual_registration(self, command: dict) -> dict:
        """Start, nudge, save or stop manual registration for the current objective.

        While it runs the AR display shows the target's circles and cross instead of the
        overlay. {"action": "left"} / {"dx_px": 3} / {"delta": {...}} nudge; {"save": true}
        writes the homography into the profile's section (atomically); {"stop": true} ends.
        """
        from lucida.calibration.manual import ManualRegistration

        objective = self.pipeline.status()["objective"]
        if self.manual is None or self.manual_objective != objective:
            src, d = self.config.source, self.config.display
            self.manual = ManualRegistration(
                (src.width, src.height),
                (d.width, d.height),
                base=self.pipeline.ar.homography if self.pipeline.ar is not None else None,
                eyepiece_circle=self.pipeline.ar.eyepiece_circle if self.pipeline.ar else None,
            )
            self.manual_objective = objective
        body = {k: v for k, v in command.items() if k not in ("save", "stop")}
        state = self.manual.apply(body) if body else self.manual.state()
        self.pipeline.set_ar_override(self.manual.render())
        if command.get("save"):
            if self.profile is None:
                raise ValueError("no calibration profile configured (calibration.profile)")
            if objective is None:
                raise ValueError("objective unknown: turn the nosepiece to an objective first")
            profile = self.profile.profile
            profile.update_section(objective, homography=self.manual.homography().tolist())
            profile.save(self.profile.path)
            self.profile = self._load_profile()
            self.pipeline.refresh_optics()
            self.events("calibration_saved", objective=objective, method="manual")
            state["saved"] = str(self.profile.path)
        if command.get("stop") or command.get("save"):
            self.manual = None
            self.pipeline.set_ar_override(None)
        return state

    def _sample_timings(self, result) -> None:
        n = self.config.log.timings_every
        self._frames_seen += 1
        if n and self._frames_seen % n == 0:
            self.events(
                "timings",
                seq=result.frame.seq,
                model=result.model,
                **{f"{k}_ms": round(v / 1e6, 3) for k, v in result.timings_ns.items()},
            )

    def _serial_command(self, event) -> None:
        """A foot pedal or simple-protocol line: overlay on/off/toggle, snapshot, threshold,
        a class on/off/toggle."""
        from .serial_link import ClassSwitch, Overlay, OverlayToggle, Snap, Threshold

        if isinstance(event, Overlay):
            self.pipeline.set_overlay(event.on)
        elif isinstance(event, OverlayToggle):
            self.pipeline.set_overlay(not self.pipeline.overlay_enabled)
        elif isinstance(event, Snap):
            try:
                self.snapshot()
            except ValueError as exc:  # nothing shown: the pedal press is logged, not fatal
                self.events("error", where="snapshot", message=str(exc))
        elif isinstance(event, Threshold):
            self.pipeline.set_threshold(event.value)
        elif isinstance(event, ClassSwitch):
            try:
                self.pipeline.set_class(event.name, event.on)
            except ValueError as exc:  # a pedal naming a class this model does not have
                self.events("error", where="serial", message=str(exc))
                return
        if isinstance(event, (Overlay, OverlayToggle, Threshold, ClassSwitch)):
            self.save_settings()

    # -- operator settings that survive a restart ----------------------------------------------
    @property
    def settings_file(self) -> Path:
        return Path(self.config.state_dir, "settings.json")

    def save_settings(self) -> None:
        """Overlay on/off, threshold and the classes switched off, written atomically (a crash
        keeps the previous file)."""
        from lucida.calibration.atomic import atomic_write_text

        p = self.pipeline
        data = {
            "overlay": p.overlay_enabled,
            "threshold": p.threshold_override,
            "classes_off": sorted(p.classes_off),
            # the operator's task, kept while the config names the same models.task
            "task": self.models.task,
            "config_task": self.config.models.task,
        }
        atomic_write_text(self.settings_file, json.dumps(data, indent=2) + "\n")

    def _restore_settings(self) -> None:
        try:
            data = json.loads(self.settings_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.events("error", where="settings", message=f"{self.settings_file}: {exc}")
            return
        if data.get("threshold") is not None:
            self.pipeline.set_threshold(float(data["threshold"]))
        if data.get("overlay") is False:
            self.pipeline.set_overlay(False)
        off = data.get("classes_off")
        if isinstance(off, list) and all(isinstance(n, str) for n in off):
            self.pipeline.classes_off = set(off)
        task = data.get("task")
        if (
            isinstance(task, str)
            and data.get("config_task") == self.config.models.task
            and task != self.models.task
            and task in self.models.tasks()
        ):
            self.models.set_task(task)

    def _window_keys(self) -> None:
        """Keys pressed in a window sink: "m" starts manual registration; then arrows, +/-,
        [/] nudge (see calibration.manual), Enter saves into the profile, Esc cancels."""
        for sink in self.pipeline.ar_sinks:
            for key in getattr(sink, "pop_keys", list)():
                try:
                    if self.manual is None:
                        if key in (ord("m"), ord("M")):
                            self.manual_registration({})
                        continue
                    action = self.manual.handle_key(key)
                    if action == "save":
                        self.manual_registration({"save": True})
                    elif action == "cancel":
                        self.manual_registration({"stop": True})
                    elif action is not None:
                        self.pipeline.set_ar_override(self.manual.render())
                except ValueError as exc:
                    self.events("error", where="manual registration", message=str(exc))

    # -- lifecycle --------------------------------------------------------------------------------
    def objectives(self) -> set[str]:
        """Objectives this microscope is configured with (POST /objective accepts only these)."""
        from .preflight import objectives

        return objectives(self.config)

    def _to_preload(self) -> set[str]:
        """Objectives whose models load at start: the nosepiece's (with a serial link) and the
        start one; the rest load when first chosen."""
        objectives = set(self.config.serial.positions.values()) if self.serial else set()
        return objectives | {self.config.source.objective}

    def _exposed_warning(self) -> None:
        bind = self.config.http.bind
        if not is_loopback(bind):
            msg = (
                f"HTTP API bound to {bind}: reachable from the network, not only this machine; "
                "patient images are served to anyone with the token (use bind: 127.0.0.1 and an "
                "SSH tunnel unless the network is trusted)"
            )
            log.warning(msg)
            self.events("warning", where="http.bind", message=msg)

    def start(self) -> None:
        from .preflight import check_config

        check_config(
            self.config, str(self.config_path or "config"), verified=self._verified
        )  # raises PreflightError (a ConfigError): nothing started
        self._exposed_warning()
        loaded = self.models.preload(self._to_preload())
        m = self.models  # placement: each bundle's own devices (models.preload), or why not
        self.events("models_loaded", models=loaded, placement=m.placement, note=m.placement_note)
        self._restore_settings()
        self.pipeline.start()
        if self.serial is not None:
            self.serial.start()
        if self.http is None:
            from .api import HttpServer

            self.http = HttpServer(self, self.config.http.bind, self.config.http.port).start()
        self.events("daemon_ready", url=self.http.url, pid=os.getpid())
        if self.on_ready is not None:
            self.on_ready(self)
        sd_notify("READY=1\nSTATUS=running")

    def stop(self) -> None:
        sd_notify("STOPPING=1")
        if self.serial is not None:
            self.serial.stop()
        self.pipeline.stop()
        self.models.close()  # several Edge TPUs: their threads and delegates
        if self.http is not None:
            self.http.stop()
            self.http = None
        self.events("daemon_stop")
        self.events.close()
        self.audit.close()

    def reload(self) -> bool:
        """Re-read the config file and switch to it only when it is up; else keep the old one.

        The new config is checked in full first (preflight, with http.bind/port, state_dir
        and log.events refused when changed: they need a restart). If building or starting it
        still fails, the old config is built and started again. A new token applies at once.
        """
        from .preflight import check_config

        sd_notify("RELOADING=1")
        try:
            new = load_config(self.config_path)
            check_config(new, str(self.config_path), running=self.config, verified=self._verified)
            for key in ("state_dir",):
                if getattr(new, key) != getattr(self.config, key):
                    raise ConfigError(f"key '{key}': cannot change while running: restart")
            if new.log.events != self.config.log.events:
                raise ConfigError("key 'log.events': cannot change while running: restart")
            token = new.token() or self._generated_token()
        except ConfigError as exc:
            self.events("error", where="reload", message=str(exc))
            self.events("reload_refused", config=str(self.config_path), reason=str(exc))
            sd_notify("READY=1")
            return False
        if _same_but_token(new, self.config):  # nothing to rebuild: the display never pauses
            changed = token != self.token
            self.config, self.token = new, token
            self.events(
                "reload", config=str(self.config_path), token_changed=changed, rebuilt=False
            )
            sd_notify("READY=1")
            return True
        old = (self.config, self.models, self.profile, self.pipeline, self.serial)
        try:  # build the new one beside the running one, its models loaded, then swap
            self.config = new
            self._build()
            self.models.preload(self._to_preload())
        except (ValueError, OSError, RuntimeError) as exc:
            if self.models is not old[1]:
                self.models.close()
            self.config, self.models, self.profile, self.pipeline, self.serial = old
            return self._reload_failed(f"failed to build ({bounded(exc, 500)})")
        built = (self.pipeline, self.serial)
        self.pipeline, self.serial = old[3], old[4]
        self._stop_pipeline()
        old[1].close()  # several Edge TPUs: their threads and delegates
        self.pipeline, self.serial = built
        try:
            self._restore_settings()
            self.pipeline.start()
            if self.serial is not None:
                self.serial.start()
        except (ValueError, OSError, RuntimeError) as exc:
            self._stop_pipeline()
            self.models.close()
            self.config = old[0]
            self._build()
            self._restore_settings()
            self.pipeline.start()
            if self.serial is not None:
                self.serial.start()
            return self._reload_failed(
                f"failed to start ({bounded(exc, 500)}); the previous config runs again"
            )
        changed = token != self.token
        self.token = token
        self.events("reload", config=str(self.config_path), token_changed=changed, rebuilt=True)
        sd_notify("READY=1")
        return True

    def _reload_failed(self, reason: str) -> bool:
        self.events("error", where="reload", message=f"new config {reason}")
        self.events("reload_refused", config=str(self.config_path), reason=reason)
        sd_notify("READY=1")
        return False

    def _stop_pipeline(self) -> None:
        if self.serial is not None:
            self.serial.stop()
        self.pipeline.stop()

    def run_forever(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        reload_requested = threading.Event()
        signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
        self.start()
        watchdog = watchdog_interval_s()
        last_processed, last_progress = -1, time.monotonic()
        try:
            while not self._stop.wait(0.05 if self.manual else min(0.5, watchdog or 0.5)):
                self._window_keys()
                if reload_requested.is_set():
                    reload_requested.clear()
                    self.reload()
                if watchdog:
                    n = self.pipeline.stats.counts["processed"]
                    if n != last_processed or not self.pipeline.status()["source_ok"]:
                        last_processed, last_progress = n, time.monotonic()
                    if self.pipeline.running and time.monotonic() - last_progress < 4 * watchdog:
                        sd_notify("WATCHDOG=1")
        finally:
            self.stop()
        return 0

    # -- what the API calls -----------------------------------------------------------------------
    def status(self) -> dict:
        st = self.pipeline.status()
        active = self.pipeline._active
        st.update(
            uptime_s=round((time.monotonic_ns() - self.started_ns) / 1e9, 1),
            host=platform.node(),
            machine=platform.machine(),
            model_sha256=active.engine.info.model_sha256 if active else None,
            deployed=self.store.state(),
            serial=self.serial.status() if self.serial is not None else None,
            temperatures_c=temperatures_c(),
            rss_mb=rss_mb(),
            disk={**self.store.disk(), **self.audit.disk(), **self.snapshots.usage()},
            display=self.display_state(),
            threshold=self.pipeline.threshold,
            versions=versions(),
            pid=os.getpid(),
            http_exposed=not is_loopback(self.config.http.bind),
            http_refused=dict(getattr(self.http, "refused", {}) or {}),
            http_limits={
                "max_connections": getattr(self.http, "cap", None),
                "header_timeout_s": self.config.http.header_timeout_s,
                "idle_timeout_s": self.config.http.idle_timeout_s,  # also bodies, unread writes
            },
            camera=self.pipeline.source.controls_applied,
            camera_controls=self.pipeline.source.camera_controls(),
            task=self.models.task,
        )
        return st

    def inventory(self) -> dict:
        """GET /models: the bundles held, the one each objective would use, what runs now."""
        from .inventory import inventory

        st = self.pipeline.status()
        running = {k: st.get(k) for k in ("model", "objective", "delegate", "backend")}
        active = self.pipeline._active
        running["sha256"] = active.engine.info.model_sha256 if active else None
        return inventory(self.models, self.store, self.objectives(), running)

    def health(self) -> dict:
        """The golden check of the running bundle, on a fresh engine on the configured device."""
        active: ActiveModel | None = self.pipeline._active
        if active is None:
            return {"ok": False, "error": "no model is running"}
        bundle = active.engine.bundle
        engine = build_engine(
            bundle, device=self.config.models.device, num_threads=self.config.models.num_threads
        )
        try:
            result = engine.health_check(raise_on_fail=False)
        finally:
            engine.close()
        self.events("health", model=bundle.name, **result)
        return {
            **result,
            "model": bundle.name,
            "sha256": engine.info.model_sha256,
            "delegate": engine.info.delegate,
        }

    def _pipeline_event(self, kind: str, **fields) -> None:
        """The pipeline's events go to the event log; an objective change also sets that
        objective's camera controls (source.controls)."""
        self.events(kind, **fields)
        if kind == "objective":
            controls = self.config.source.controls
            wanted = {**controls.get("default", {}), **controls.get(fields.get("objective"), {})}
            if wanted:
                try:
                    self.camera(wanted)
                except (ValueError, OSError, RuntimeError) as exc:
                    self.events("error", where="camera controls", message=str(exc))

    def set_task(self, task: str) -> dict:
        """Switch what the models find (POST /task): every objective resolves its bundle for
        `task` from now on; the display blanks until the new model's first overlay, as after
        an objective change. Kept in settings.json (a restart keeps it)."""
        if task == self.models.task and task in self.models.tasks():
            active = self.pipeline._active
            return {"task": task, "model": active.name if active else None}
        with self._swap_lock:
            self.models.set_task(task)  # ValueError naming the tasks this device has
            active = self.pipeline.reload_model()
        self.save_settings()
        self.events("task", task=task, model=active.name if active else None)
        return {"task": task, "model": active.name if active else None}

    def camera(self, controls: dict) -> dict:
        """Set camera controls now (POST /camera): per control asked, accepted, read back."""
        from .camera_controls import ControlError

        try:
            applied = self.pipeline.source.set_controls(controls)
        except SourceError as exc:
            raise ControlError(str(exc)) from None
        self.events("camera_controls", applied=applied)
        return {"camera": applied}

    def virtual(self, body: dict) -> dict:
        """Drive the virtual microscope (emulated benches only): stall, unplug, replug,
        objective, tour, hold (keep the stage where it is), hand (move the stage as a hand does:
        a seeded TourPath of `seconds`, then still; `t0_ns` is its time 0 on the device clock),
        focus (turn the focus knob to `defocus_um` um from best focus).
        Returns the device-clock time it happened (t_ns)."""
        from .virtual.scope import VirtualMicroscope

        scope = self.pipeline.source
        if not isinstance(scope, VirtualMicroscope):
            raise ValueError(
                f"POST /virtual drives the virtual microscope only; this daemon's source is "
                f"{scope.name}"
            )
        action = body.get("action")
        out: dict = {"ok": True, "action": action}
        if action == "stall":
            seconds = float(body.get("seconds", 1.0))
            if not 0 < seconds <= 600:
                raise ValueError("'seconds' must be 0 < s <= 600")
            scope.stall(seconds)
        elif action == "unplug":
            scope.unplug()
        elif action == "replug":
            scope.replug()
        elif action == "objective":
            scope.set_objective(str(body.get("objective")))
        elif action == "tour":
            out["points"] = self._tour(scope, body)
        elif action == "focus":  # the focus knob: defocus_um from best focus
            scope.set_focus(float(body.get("defocus_um", 0.0)))
        elif action == "hold":
            from .virtual.stage import StagePath

            scope.set_path(StagePath.still(*scope.position))
        elif action == "hand":
            from .virtual.stage import TourPath

            seconds = float(body.get("seconds", 20.0))
            if not 0 < seconds <= 600:
                raise ValueError("'seconds' must be 0 < s <= 600")
            path = TourPath(scope.slide, int(body.get("seed", 0)), duration_s=seconds)
            out["t0_ns"] = time.monotonic_ns()
            scope.set_path(path)
            out["start_um"] = [round(float(v), 3) for v in path.xy[0]]
        else:
            raise ValueError(
                f"'action' {action!r}: expected stall, unplug, replug, objective, tour, hold, "
                "hand or focus"
            )
        out["t_ns"] = time.monotonic_ns()
        self.events("virtual", **{k: v for k, v in body.items() if k != "action"}, action=action)
        return out

    @staticmethod
    def _tour(scope, body: dict) -> list:
        """Jump the stage between random points ('tumour', 'normal', 'boundary', 'tissue'),
        `dwell_s` at each, looping; one point: stay there."""
        from .virtual.stage import StagePath, Waypoint

        where = body.get("where", ["tumour"])
        where = [where] if isinstance(where, str) else list(where)
        dwell = float(body.get("dwell_s", 3.0))
        if not where or not 0 < dwell <= 3600:
            raise ValueError("'where' must name points and 'dwell_s' be 0 < s <= 3600")
        rng = np.random.default_rng([int(body.get("seed", 0)), 7919])
        pts = [scope.slide.random_point(rng, str(w)) for w in where]
        scope.set_path(StagePath([Waypoint(x, y, None, dwell) for x, y in pts], loop=True))
        return [[round(x, 1), round(y, 1)] for x, y in pts]

    def snapshot(self, case_id: str | None = None, comment: str | None = None) -> dict:
        """Save what the eyepiece shows now with its provenance (see runtime.snapshots)."""
        from .snapshots import capture

        images, metadata = capture(self, case_id, comment)
        out = self.snapshots.save(images, metadata)  # a unique id; files 0600 (umask)
        out["preview"] = str(self.snapshots.folder / out["id"] / "preview.jpg")
        self.events("snapshot", id=out["id"], case_id=metadata["case_id"], bytes=out["bytes"])
        return out

    def display_state(self) -> dict:
        """What the eyepiece shows now: {"showing": "overlay" | "nothing", "reason", "since_ms"}."""
        shown = self.shown
        if shown is None:
            return {"showing": "nothing", "reason": "starting", "since_ms": None}
        since = round((time.monotonic_ns() - shown["t_ns"]) / 1e6)
        if shown["kind"] == "overlay":
            return {"showing": "overlay", "reason": None, "since_ms": since}
        reason = shown.get("reason")
        if reason != "camera lost" and self.pipeline.camera_stalled():  # e.g. blanked as
            # "overlay too old" first, then no frame came for stall_timeout_ms
            reason = "camera stalled"
        return {"showing": "nothing", "reason": reason, "since_ms": since}

    def software(self) -> dict:
        """Versions of what computed an overlay: lucida, Python, NumPy, the interpreter."""
        active = self.pipeline._active
        backend = (
            f"{active.engine.info.backend} {active.engine.info.backend_version}" if active else None
        )
        return {**versions(), "interpreter": backend}

    def _activate(self, bundle: Bundle) -> dict:
        """Golden-check in a child process, then load and health-check here, then swap in
        between two frames; on failure nothing changes."""
        from .preflight import sandbox_check

        with self._swap_lock:
            sandbox_check(bundle, self.config, verified=self._verified)  # SandboxError: refused
            engine = build_engine(
                bundle, device=self.config.models.device, num_threads=self.config.models.num_threads
            )
            health = engine.health_check()  # raises HealthCheckError: the running model stays
            self.models.pin(bundle, engine)
            self.store.set_active(bundle)
            self.pipeline.reload_model()
        self.save_settings()  # the bundle's task is the one chosen now
        self.events("model_activated", model=bundle.name, sha256=bundle.sha256())
        return {
            "ok": True,
            "model": bundle.name,
            "sha256": bundle.sha256(),
            "health": health,
            "delegate": engine.info.delegate,
            "deployed": self.store.state(),
        }

    def deploy(self, archive: Path) -> dict:
        from lucida.models.archive import ArchiveLimits

        a = self.config.models.archive
        max_bytes = int(min(a.max_unpacked_mb, self.config.http.max_upload_mb * 4) * 1024 * 1024)
        limits = ArchiveLimits(
            max_members=a.max_members,
            max_total_bytes=max_bytes,
            max_name_bytes=a.max_name_bytes,
            max_ext_header_bytes=a.max_ext_header_kb * 1024,
        )
        bundle = self.store.install(archive, max_bytes=max_bytes, limits=limits)
        try:
            out = self._activate(bundle)
        except BaseException:
            self.store.discard(bundle)
            raise
        removed = self.store.collect(self.config.models.keep_bundles)
        if removed:
            self.events("bundles_collected", removed=removed)
        return out

    def activate(self, key: str) -> dict:
        try:
            bundle = self.store.get(key)
        except ValueError:
            bundle = self.models.registry.get(key)
        return self._activate(bundle)

    def rollback(self) -> dict:
        prev = self.store.previous()
        if prev is None:
            raise ValueError("nothing to roll back to: no previous bundle on this device")
        return self._activate(prev)

    def benchmark(self, key: str | None, runs: int = 50, min_seconds: float = 1.0) -> dict:
        """Latency of one invoke of a bundle on this device (first inference discarded)."""
        if key:
            try:
                bundle = self.store.get(key)
            except ValueError:
                bundle = (
                    self.models.registry.get(key) if not Path(key).exists() else load_bundle(key)
                )
        else:
            active: ActiveModel | None = self.pipeline._active
            if active is None:
                raise ValueError("no model is running; name a bundle to benchmark")
            bundle = active.engine.bundle
        engine = build_engine(
            bundle, device=self.config.models.device, num_threads=self.config.models.num_threads
        )
        m = bundle.manifest
        tile = np.random.default_rng(0).integers(
            0, 256, (m.input.height, m.input.width, 3), np.uint8
        )
        engine.infer_tile(tile)
        t_warm = time.monotonic() + 0.5
        while time.monotonic() < t_warm:
            engine.infer_tile(tile)
        times, t_end = [], time.monotonic() + min_seconds
        while len(times) < runs or time.monotonic() < t_end:
            t0 = time.perf_counter_ns()
            engine.infer_tile(tile)
            times.append(time.perf_counter_ns() - t0)
        engine.close()
        info = engine.info
        return {
            "bundle": bundle.name,
            "sha256": info.model_sha256,
            "runs": len(times),
            **percentiles_ms(times, "ms"),
            "backend": info.backend,
            "backend_version": info.backend_version,
            "delegate": info.delegate,
            "host": platform.node(),
            "machine": platform.machine(),
        }
