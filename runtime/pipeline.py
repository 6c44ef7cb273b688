"""The real-time loop: capture -> infer -> render, three threads with latest-frame hand-off.

A slow stage never queues work: each stage takes the newest item from the one before, and an
item replaced before it was taken is counted as a drop. Safety rule (DESIGN.md): the display
never shows an overlay for a field of view it was not computed on. It is blanked at once when
the stage moves (measured from the image on the capture thread, runtime/motion.py, or reported
by the source), the turret moves or the model changes, when no frame has arrived for
`stall_timeout_ms` (a stalled or unplugged camera), and when the overlay's frame is older than
the age limit (a slow or hung inference, runtime/safety.py). Every frame carries the display
generation of its capture: a result from before a blank is never drawn after it.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import cv2
import numpy as np
from lucida.overlay.classes import ClassContours
from lucida.overlay.compose import ARComposer, PreviewComposer
from lucida.overlay.contours import ContourParams
from lucida.overlay.regions import Regions

from .engine import ModelInput
from .frame import Frame, Heatmap
from .guard import FieldGuard
from .models import ActiveModel, ModelSelector
from .motion import MotionGate
from .retry import Backoff
from .safety import InferenceWatchdog, Safety
from .slots import LatestSlot
from .sources import FrameSource, SourceError
from .stats import percentiles_ms

log = logging.getLogger(__name__)
# motion compensation moves an overlay by less than this (camera px) not at all: a still field's
# measured displacement is noise, and an unmoved overlay is not redrawn (ARComposer reuses it)
MIN_SHIFT_PX = 0.25
# the motion gate measures on the frame resampled for the model when it is at least this wide
# (its grey copy then keeps MotionEstimator's 240 px at 2x decimation or more); else on the frame
MOTION_MIN_WIDTH = 480


def nominal_um_per_px(objective: str | None, um_at_1x: float = 10.0) -> float | None:
    """Camera pixel size from the nominal magnification ("10x" -> 1.0 um/px): a fallback only."""
    try:
        return um_at_1x / float(objective[:-1]) if objective else None
    except ValueError:
        return None


def single_threaded_opencv() -> None:
    """OpenCV single-threaded, as the pipeline runs it (and the benches, to measure that): the
    stages already run in parallel and the output decoder spreads large outputs over its own
    threads. OpenCV's pool beside them adds wake-ups and spinning (bench pipeline: "other" CPU
    ms per frame) and, called from two decoder threads at once, made a 21-class 513x513 softmax
    decode 1.9x slower (2.85 against 1.53 ms, one-off probe)."""
    cv2.setNumThreads(1)


def _chain(first, second):
    """RGB -> RGB: `first` then `second` (either may be None; None when both are)."""
    if first is None or second is None:
        return first or second
    return lambda img: second(first(img))


@dataclass(frozen=True)
class Optics:
    """What calibration says for one objective.

    um_per_px: camera pixel size (um); homography: 3x3 camera px -> display px (None: identity
    scaled to the display); correct: flat-field / white balance on the RGB frame before inference.
    """

    um_per_px: float | None = None
    homography: np.ndarray | None = None
    correct: Callable[[np.ndarray], np.ndarray] | None = None

    def um_for(self, frame: Frame) -> float | None:
        """The frame's pixel size (um): calibration's, else what the source says."""
        return self.um_per_px or frame.meta.get("um_per_px")


@dataclass(frozen=True)
class Prepared:
    """A frame made ready for one model under one calibration (Pipeline._resize, then
    _preprocess); cost_ns: (wall, thread CPU) ns spent on it so far."""

    active: ActiveModel
    optics: Optics
    input: ModelInput
    cost_ns: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Result:
    """What the render stage gets: an overlay to draw, or an order to blank the display."""

    frame: Frame | None
    heatmap: Heatmap | None = None
    regions: Regions | None = None
    model: str | None = None
    generation: int = 0
    clear_reason: str | None = None
    timings_ns: dict = field(default_factory=dict)


class Stats:
    """Counters and recent timings (ns) of the loop; `snapshot()` is what /status and bench show."""

    STAGES = ("capture_wait", "preprocess", "infer", "contours", "render", "sinks", "latency")
    # CPU time (time.thread_time_ns) per stage run, outside the model's invoke: what a faster
    # accelerator cannot take away. infer_host: tensor copies, dequantization, stitching.
    CPU_STAGES = ("capture", "motion", "preprocess", "infer_host", "contours", "render", "sinks")

    def __init__(self, window: int = 2000):
        self.t0_ns = time.monotonic_ns()
        self.counts = dict.fromkeys(
            ("frames_in", "processed", "displayed", "cleared", "reopens", "source_errors"), 0
        )
        self.timings = {k: deque(maxlen=window) for k in self.STAGES}
        self.cpu = {k: deque(maxlen=window) for k in self.CPU_STAGES}
        self.events = {k: deque(maxlen=window) for k in ("in", "processed", "displayed")}
        self.lock = threading.Lock()

    def count(self, key: str, t_ns: int | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            ev = {"frames_in": "in", "processed": "processed", "displayed": "displayed"}.get(key)
            if ev:
                self.events[ev].append(t_ns or time.monotonic_ns())

    def time(self, stage: str, ns: int) -> None:
        with self.lock:
            self.timings[stage].append(ns)

    def cpu_time(self, stage: str, ns: int) -> None:
        with self.lock:
            self.cpu[stage].append(ns)

    def clear_window(self) -> None:
        """Forget recent timings (a bench's warm-up); counters keep counting."""
        with self.lock:
            for d in (*self.timings.values(), *self.cpu.values()):
                d.clear()

    def cpu_ms_per_frame(self) -> dict:
        """Mean CPU ms per run of each stage (recent window) and their sum, "total"."""
        with self.lock:
            means = {k: float(np.mean(v)) / 1e6 if v else 0.0 for k, v in self.cpu.items()}
        return {
            **{k: round(v, 4) for k, v in means.items()},
            "total": round(sum(means.values()), 4),
        }

    def fps(self, ev: str, window_s: float = 5.0) -> float:
        """Events per second over the last `window_s` (read from the newest back: cheap per frame)."""
        edge = time.monotonic_ns() - window_s * 1e9
        with self.lock:
            times = self.events[ev]
            n = 0
            for t in reversed(times):
                if t < edge:
                    break
                n += 1
            if n < 2:
                return 0.0
            span = times[-1] - times[-n]
        return (n - 1) / (span / 1e9) if span else 0.0

    def snapshot(self, drops: dict | None = None) -> dict:
        with self.lock:
            timings = {k: np.array(v) for k, v in self.timings.items()}
            counts = dict(self.counts)
        out = {
            **counts,
            "fps_in": round(self.fps("in"), 2),
            "fps_processed": round(self.fps("processed"), 2),
            "fps_displayed": round(self.fps("displayed"), 2),
            **(drops or {}),
        }
        for stage, arr in timings.items():
            out.update(percentiles_ms(arr, f"{stage}_ms"))
        out["cpu_ms_per_frame"] = self.cpu_ms_per_frame()
        return out


def moving_banner(image: np.ndarray) -> np.ndarray:
    """A copy of the camera frame (RGB uint8) with a "stage moving" banner along its top."""
    import cv2

    out = image.copy()
    h = max(14, image.shape[0] // 18)
    out[:h] = out[:h] // 3
    cv2.putText(
        out,
        "stage moving",
        (h // 3, int(h * 0.75)),
        cv2.FONT_HERSHEY_SIMPLEX,
        h / 30,
        (255, 200, 0),
        max(1, h // 15),
        cv2.LINE_AA,
    )
    return out


class Pipeline:
    """Source -> (correct) -> engine -> contours -> AR display and preview sinks.

    models: which engine runs at which objective. optics_for: calibration per objective.
    ar_sinks get the black AR canvas (display resolution); preview_sinks the camera frame
    with the overlay blended in. stall_timeout_ms: no frame for this long blanks the display.
    on_display(kind, t_ns, ...): told of every display update ("overlay", "blank") and every
    "clear_request", with device-clock times (runtime.results.ResultLog is one).
    safety: motion blanking, overlay age limit, inference watchdog (runtime/safety.py);
    motion: the image-based motion gate (default: one built from `safety`).
    """

    def __init__(
        self,
        source: FrameSource,
        models: ModelSelector,
        ar: ARComposer | None = None,
        ar_sinks: Sequence = (),
        preview: PreviewComposer | None = None,
        preview_sinks: Sequence = (),
        optics_for: Callable[[str | None], Optics] | None = None,
        stall_timeout_ms: float = 200.0,
        display_interval_ms: float = 1000 / 30,
        on_event: Callable[..., None] | None = None,
        on_result: Callable[[Result], None] | None = None,
        on_display: Callable[..., None] | None = None,
        safety: Safety | None = None,
        motion: MotionGate | None = None,
    ):
        self.source, self.models = source, models
        self.ar, self.ar_sinks = ar, list(ar_sinks)
        self.preview, self.preview_sinks = preview, list(preview_sinks)
        self.optics_for = optics_for or (lambda obj: Optics(um_per_px=nominal_um_per_px(obj)))
        self.stall_timeout_ns = int(stall_timeout_ms * 1e6)
        self.display_interval_s = display_interval_ms / 1000
        self.on_event = on_event or (lambda kind, **kw: None)
        self.on_result = on_result
        self.on_display = on_display
        self.stats = Stats()
        self.captured: LatestSlot[tuple[Frame, Prepared | None]] = LatestSlot()
        self.results: LatestSlot[Result] = LatestSlot()
        self.overlay_enabled = True
        self.objective_override: str | None = None  # from the serial nosepiece, when there is one
        self.turret_moving = False
        self.threshold_override: float | None = None
        self.classes_off: set[str] = set()  # class names the operator switched off
        self.ar_override: np.ndarray | None = None  # a calibration target shown instead
        self._generation = 0
        self._objective: str | None = "unset"
        self._active: ActiveModel | None = None
        self._optics = Optics()
        self._extractor: ClassContours | None = None
        self._last_capture_ns = 0
        self._source_ok = False
        self._showing_overlay = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.RLock()
        self.last_result: Result | None = None
        self.safety = safety = safety or Safety()
        self.motion = motion or MotionGate(
            safety.blank_speed_um_s or 100.0, settle_frames=safety.settle_frames
        )
        self.guard = FieldGuard(safety.focus_drop, safety.saturated_share)
        self.watchdog = InferenceWatchdog(safety.slow_factor, safety.rebuild_after_ms)
        self.max_age_ns = safety.max_age_ns(self.display_interval_s, None)
        self.blank_reason: str | None = "starting"
        self._limits_ns = 0
        self._infer_p99_ms: float | None = None
        self._in_motion = False
        self._shown_track_ns = 0
        self._gate_shape: tuple | None = None  # the image the motion gate measured last

    # -- control (any thread) --------------------------------------------------------------------
    def start(self) -> Pipeline:
        single_threaded_opencv()
        for s in self.ar_sinks + self.preview_sinks:
            s.open()
        for name, fn in (
            ("capture", self._capture_loop),
            ("infer", self._infer_loop),
            ("render", self._render_loop),
            ("watchdog", self._watchdog_loop),
        ):
            t = threading.Thread(target=fn, name=f"lucida-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.on_event("start", source=self.source.name)
        return self

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        try:
            self.source.close()
        except Exception as exc:  # a dying camera must not block shutdown
            log.warning("closing %s: %s", self.source.name, exc)
        for s in self.ar_sinks + self.preview_sinks:
            s.close()
        self.on_event("stop")

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads) and not self._stop.is_set()

    def clear(self, reason: str) -> None:
        """Blank the display now and drop anything computed before this call."""
        with self._lock:
            self._generation += 1
            if self._extractor is not None:
                self._extractor.reset()
            gen = self._generation
        if self.on_display is not None:
            self.on_display("clear_request", time.monotonic_ns(), reason=reason)
        self.results.put(Result(frame=None, generation=gen, clear_reason=reason))

    def set_objective(self, objective: str | None) -> None:
        """The nosepiece reports an objective ("20x"), or None while between positions."""
        if objective is None:
            self.set_turret_moving(True)
            return
        self.turret_moving = False
        if objective != self.objective_override:
            self.objective_override = objective
            self.clear(f"objective {objective}")

    def set_turret_moving(self, moving: bool) -> None:
        self.turret_moving = moving
        if moving:
            self.clear("turret moving")

    def set_overlay(self, enabled: bool) -> None:
        self.overlay_enabled = enabled
        self.on_event("overlay", enabled=enabled)
        if not enabled:
            self.clear("overlay off")

    def swap_model(self, active: ActiveModel) -> None:
        """Use a new engine from the next frame; the display is blanked in between."""
        with self._lock:
            self._active = active
            self._extractor = self._extractor_for(active)
        self.clear(f"model {active.name}")
        self.on_event("model_switch", model=active.name, objective=self._objective)

    def reload_model(self) -> ActiveModel | None:
        """Re-resolve the model for the current objective (after a deploy or rollback); blanks."""
        with self._lock:
            objective = self._objective if self._objective != "unset" else None
        active = self.models.for_objective(objective)
        with self._lock:
            self._active = active
            self._extractor = self._extractor_for(active)
        self.clear(f"model {active.name if active else 'none'}")
        self.on_event("model_switch", model=active.name if active else None, objective=objective)
        return active

    def refresh_optics(self) -> None:
        """Reload the current objective's calibration (after it was saved); blanks once."""
        with self._lock:
            self._optics = self.optics_for(self._objective if self._objective != "unset" else None)
            if self.ar is not None and self._optics.homography is not None:
                self.ar.set_homography(self._optics.homography)
        self.clear("calibration")

    def set_ar_override(self, canvas: np.ndarray | None) -> None:
        """Show `canvas` on the AR display instead of the overlay (manual registration), or
        go back to the overlay with None."""
        self.ar_override = canvas
        self.clear("calibration target" if canvas is not None else "calibration done")

    def _extractor_for(self, active: ActiveModel | None) -> ClassContours | None:
        """Contour extraction with the model's parameters and the operator's threshold, if set."""
        if active is None:
            return None
        params = active.contours.to_dict()
        if self.threshold_override is not None:
            t = self.threshold_override
            params["threshold"] = t
            if params.get("threshold_low") is not None:
                params["threshold_low"] = min(params["threshold_low"], t)
        return ClassContours(ContourParams.from_mapping(params))

    @property
    def threshold(self) -> float | None:
        """The contour threshold in use (probability units)."""
        ex = self._extractor
        return ex.params.threshold if ex is not None else self.threshold_override

    def set_threshold(self, threshold: float) -> None:
        """Operator's contour threshold (0 < t <= 1), kept across model switches."""
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold {threshold!r}: expected 0 < threshold <= 1")
        with self._lock:
            self.threshold_override = float(threshold)
            self._extractor = self._extractor_for(self._active)
        self.on_event("threshold", threshold=threshold)

    def classes(self) -> list[dict]:
        """The running model's drawable classes: [{"index", "name", "color", "on"}]."""
        with self._lock:
            active = self._active
        styles = active.class_styles(self.classes_off) if active else None
        return [
            {"index": c.index, "name": c.name, "color": list(c.color), "on": c.on}
            for c in styles or ()
        ]

    def set_class(self, name: str | int, on: bool | None = None) -> dict:
        """Switch one class of the running model on, off (on=False) or over (on=None), by name or
        index; kept by name across model switches and restarts. Returns {name: on}."""
        with self._lock:
            active = self._active
        styles = (active.class_styles(self.classes_off) if active else None) or ()
        want = str(name).strip().lower()
        match = [c for c in styles if want in (c.name.lower(), str(c.index))]
        if not match:
            known = ", ".join(c.name for c in styles) or "none (the model has one class)"
            raise ValueError(f"class {name!r}: not a class of the running model; classes: {known}")
        c = match[0]
        on = (not c.on) if on is None else bool(on)
        with self._lock:
            if on:
                self.classes_off.discard(c.name)
            else:
                self.classes_off.add(c.name)
        self.on_event("class", name=c.name, on=on)
        return {c.name: on}

    def status(self) -> dict:
        with self._lock:
            active, objective = self._active, self._objective
        info = active.engine.info if active else None
        return {
            "model": active.name if active else None,
            "objective": objective if objective != "unset" else None,
            "overlay": self.overlay_enabled,
            "source": self.source.name,
            "source_ok": self._source_ok,
            "backend": f"{info.backend} {info.backend_version}" if info else None,
            "delegate": info.delegate if info else None,
            "fallback_reason": info.fallback_reason if info else None,
            **self._safety_status(),
            "classes": self.classes(),
            # several Edge TPUs (runtime.devices): per-device state, invokes, errors, p50/p99
            "devices": getattr(active.engine, "device_stats", lambda: None)() if active else None,
            **self.stats.snapshot(
                {"drops_capture": self.captured.drops, "drops_result": self.results.drops}
            ),
        }

    # -- stages (their own threads) --------------------------------------------------------------
    def _capture_loop(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while not self._stop.is_set():
            if not self._source_ok:
                try:
                    self.source.open()
                    self._source_ok = True
                    backoff.reset()
                    self.on_event("source_open", source=self.source.name)
                except (SourceError, OSError) as exc:
                    self.stats.count("source_errors")
                    self.on_event("error", where="source", message=str(exc))
                    backoff.wait(self._stop)
                    continue
            t0, c0 = time.monotonic_ns(), time.thread_time_ns()
            try:
                frame = self.source.read(timeout_s=0.1)
            except SourceError as exc:
                self._source_ok = False
                self.stats.count("reopens")
                self.on_event("error", where="source", message=str(exc))
                self.clear("camera lost")
                try:
                    self.source.close()
                except Exception:
                    pass
                continue
            if frame is None:
                continue
            self.stats.time("capture_wait", time.monotonic_ns() - t0)
            self._last_capture_ns = frame.t_capture_ns
            self.stats.count("frames_in", frame.t_capture_ns)
            c1 = time.thread_time_ns()
            self.stats.cpu_time("capture", c1 - c0)
            resized = self._resize(frame)
            c2 = time.thread_time_ns()
            settled = self._gate(frame, resized and resized.input.image)
            self.stats.cpu_time("motion", time.thread_time_ns() - c2)  # motion, focus, exposure
            with self._lock:
                gen = self._generation
            prepared = None
            if resized is not None and settled is True and not self.turret_moving:
                prepared = self._preprocess(resized)
            elif resized is not None:  # resampled for the gate, not inferred (moving, settling)
                self._count_preprocess(resized.cost_ns)
            self.captured.put((frame, prepared, gen, settled))

    def _switch(self, objective: str | None) -> None:
        active = self.models.for_objective(objective)
        with self._lock:
            self._objective = objective
            self._active = active
            self._optics = self.optics_for(objective)
            if self.ar is not None and self._optics.homography is not None:
                self.ar.set_homography(self._optics.homography)
            self._extractor = self._extractor_for(active)
        self.motion.reset()
        self.guard.reset()
        self.clear(f"objective {objective}")
        self.on_event("objective", objective=objective, model=active.name if active else None)

    def _infer_loop(self, epoch: int = 0) -> None:
        while not self._stop.is_set() and epoch == self.watchdog.epoch:
            item = self.captured.take(timeout_s=0.1)
            if item is None:
                continue
            try:
                self._process(*item)
            except Exception as exc:  # one bad frame must not stop the loop
                log.exception("inference failed")
                self.on_event("error", where="inference", message=str(exc))
                self.clear("inference error")

    def _resize(self, frame: Frame) -> Prepared | None:
        """On the capture thread: the frame resampled to the pixel size of the model running
        now, the first step of preprocessing; the motion gate measures on it too, moving or not,
        so that what it measures keeps its size across a move. None when no model runs now for
        this frame's objective (or the overlay is off)."""
        with self._lock:
            active, optics, objective = self._active, self._optics, self._objective
        if (
            active is None
            or not self.overlay_enabled
            or (self.objective_override or frame.objective) != objective
        ):
            return None
        t0, c0 = time.monotonic_ns(), time.thread_time_ns()
        x = active.engine.resize(frame.image, optics.um_for(frame))
        cost = (time.monotonic_ns() - t0, time.thread_time_ns() - c0)
        return Prepared(active, optics, x, cost)

    def _preprocess(self, resized: Prepared) -> Prepared:
        """Flat-field and the model's colour normalization on the resized frame (a quarter of
        the pixels at 10x on a 2 um/px model; the display keeps the camera's), padding, and each
        tile's input tensor (the inference thread only copies them in). Counted as one
        preprocessing, resize included."""
        t0, c0 = time.monotonic_ns(), time.thread_time_ns()
        active, optics = resized.active, resized.optics
        engine = active.engine
        x = engine.input_tensors(
            engine.finish(resized.input, _chain(optics.correct, active.normalize))
        )
        wall, cpu = resized.cost_ns
        cost = (wall + time.monotonic_ns() - t0, cpu + time.thread_time_ns() - c0)
        self._count_preprocess(cost)
        return Prepared(active, optics, x, cost)

    def _count_preprocess(self, cost_ns: tuple[int, int]) -> None:
        self.stats.time("preprocess", cost_ns[0])
        self.stats.cpu_time("preprocess", cost_ns[1])

    def model_input(self, frame: Frame, active: ActiveModel, optics: Optics) -> ModelInput:
        """The frame as `active`'s model takes it with `optics`: resampled, corrected, padded
        (for a snapshot of what the model saw)."""
        correct = _chain(optics.correct, active.normalize)
        return active.engine.resample(frame.image, optics.um_for(frame), correct)

    def _process(
        self, frame: Frame, prepared: Prepared | None = None, gen: int = 0, settled=True
    ) -> None:
        """Infer one frame (stamped with the display generation `gen` at capture); `settled`:
        True, or why the frame must not be inferred ("stage moving", "settling", ...)."""
        objective = self.objective_override or frame.objective
        if objective != self._objective:
            self._switch(objective)
        with self._lock:
            active, optics = self._active, self._optics
        if frame.moving or self.turret_moving:
            self.clear("stage moving")
            # the preview keeps showing the camera (no overlay, a banner) instead of freezing
            self.results.put(Result(frame=frame, generation=gen, clear_reason="stage moving"))
            return
        if settled is not True:
            self.results.put(Result(frame=frame, generation=gen, clear_reason=settled))
            return
        if active is None or not self.overlay_enabled:
            self.results.put(Result(frame=frame, generation=gen, clear_reason="no overlay"))
            return
        if prepared is None or prepared.active is not active or prepared.optics is not optics:
            resized = self._resize(frame)  # the model changed meanwhile
            prepared = None if resized is None else self._preprocess(resized)
            if prepared is None:
                self.results.put(Result(frame=frame, generation=gen, clear_reason="no overlay"))
                return
        engine = active.engine
        epoch = self.watchdog.begin()
        t1, c1, k1 = time.monotonic_ns(), time.thread_time_ns(), engine.host_cpu_offset_ns()
        heatmap = engine.infer_input(prepared.input)
        t2 = time.monotonic_ns()
        if not self.watchdog.end(epoch):  # this engine was given up on while it hung
            return
        self.stats.cpu_time(
            "infer_host", time.thread_time_ns() - c1 + engine.host_cpu_offset_ns() - k1
        )
        timings = {"infer": t2 - t1}
        self.stats.time("infer", t2 - t1)
        self.stats.count("processed")
        result = Result(frame, heatmap, None, active.name, gen, timings_ns=timings)
        if self.on_result is not None:
            self.on_result(result)
        self.results.put(result)

    def _render_loop(self) -> None:
        while not self._stop.is_set():
            res = self.results.take(timeout_s=self.display_interval_s)
            now = time.monotonic_ns()
            stalled = self.camera_stalled(now)
            last = self.last_result if self._showing_overlay else None
            if res is None:
                if stalled and self._showing_overlay:
                    self._blank("camera stalled")
                elif last is not None and self._too_old(last, now):
                    self._blank("overlay too old")
                elif (
                    last is not None and last.generation == self._generation and self._track_moved()
                ):
                    self._show(last, again=True)  # follow the field (motion compensation)
                continue
            with self._lock:
                current = self._generation
            if (
                res.clear_reason
                or res.generation != current
                or stalled
                or self.ar_override is not None
                or self._too_old(res, now)
            ):
                reason = res.clear_reason or (
                    "camera stalled"
                    if stalled
                    else "overlay too old"
                    if self._too_old(res, now)
                    else "stale result"
                )
                self._blank(reason, res.frame)
                continue
            self._show(res)

    def _blank(self, reason: str, frame: Frame | None = None) -> None:
        t0 = time.monotonic_ns()
        if self.ar is not None:
            override = self.ar_override
            blank = self.ar.blank() if override is None else override
            for s in self.ar_sinks:
                s.show(blank, None)
        watching = self._watching_previews()
        if frame is not None and watching:
            image = moving_banner(frame.image) if reason == "stage moving" else frame.image
            for s in watching:
                s.show(image, frame.t_capture_ns)
        if self._showing_overlay:
            self.stats.count("cleared")
            self.on_event("overlay_cleared", reason=reason)
        self._showing_overlay = False
        self.blank_reason = reason
        t1 = time.monotonic_ns()
        self.stats.time("render", t1 - t0)
        if self.on_display is not None:
            self.on_display("blank", t1, frame=frame, reason=reason)

    def _show(self, res: Result, again: bool = False) -> None:
        """Contours of the result's heatmap, drawn in AR and preview mode, sent to the sinks.
        again: the same result redrawn on the AR display only, shifted to where the field is."""
        frame, hm = res.frame, res.heatmap
        with self._lock:
            optics, objective, extractor = self._optics, self._objective, self._extractor
            active = self._active
        um = optics.um_for(frame)
        styles = active.class_styles(self.classes_off) if active is not None else None
        t0, c0 = time.monotonic_ns(), time.thread_time_ns()  # render stage: contours, drawing
        if res.regions is None:  # a redraw (motion compensation) keeps the regions it had
            regions = extractor.extract(
                hm.probs,
                hm.affine,
                um,
                classes=hm.classes,
                class_ids=hm.class_ids or tuple(c.index for c in styles or ())[:1],
                enabled=None if styles is None else [c.index for c in styles if c.on],
            )
            res = replace(res, regions=regions)
        self.stats.time("contours", time.monotonic_ns() - t0)
        c_contours = time.thread_time_ns()
        self.stats.cpu_time("contours", c_contours - c0)
        fps = self.stats.fps("processed")
        canvases = []
        shift = self._shift_for(frame, t0)
        if self.ar is not None:
            regions, affine = res.regions, hm.affine
            if shift is not None and math.hypot(*shift) >= MIN_SHIFT_PX:
                regions = regions.warped(np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]]))
                affine = affine + np.array([[0, 0, shift[0]], [0, 0, shift[1]]])
            canvases.append(
                (
                    self.ar_sinks,
                    self.ar.compose(
                        regions,
                        heatmap=hm.probs,
                        heatmap_affine=affine,
                        objective=objective,
                        um_per_px=um,
                        model=res.model,
                        fps=fps,
                        classes=styles,
                    ),
                )
            )
        watching = [] if again else self._watching_previews()
        if self.preview is not None and watching:
            canvases.append(
                (
                    watching,
                    self.preview.compose(
                        frame.image,
                        res.regions,
                        hm.probs,
                        heatmap_affine=hm.affine,
                        objective=objective,
                        um_per_px=um,
                        model=res.model,
                        fps=fps,
                        classes=styles,
                    ),
                )
            )
        t1, c1 = time.monotonic_ns(), time.thread_time_ns()
        with self._lock:  # a clear (motion onset, switch) came while drawing: its blank is next
            if res.generation != self._generation:
                return
        for sinks, canvas in canvases:
            for s in sinks:
                s.show(canvas, frame.t_capture_ns)
        t2 = time.monotonic_ns()
        self.stats.cpu_time("render", c1 - c_contours)
        self.stats.cpu_time("sinks", time.thread_time_ns() - c1)
        self.stats.time("render", t1 - t0)
        self.stats.time("sinks", t2 - t1)
        self.stats.time("latency", t2 - frame.t_capture_ns)
        self.stats.count("displayed", t2)
        self._showing_overlay = True
        self.blank_reason = None
        self.last_result = res
        if self.on_display is not None:
            self.on_display(
                "overlay", t2, result=res, objective=objective, shift_px=shift, redraw=again
            )

    def _watching_previews(self) -> list:
        """The preview sinks someone looks at now; the others are told they were skipped (a
        live stream without viewers costs no preview composition, no copy of the frame)."""
        watching = []
        for s in self.preview_sinks:
            if getattr(s, "watched", True):
                watching.append(s)
            elif hasattr(s, "idle"):
                s.idle()
        return watching

    # -- safety: motion, overlay age, watchdog -----------------------------------------------
    def _gate(self, frame: Frame, resized: np.ndarray | None = None):
        """On the capture thread: measure the field's motion; blank at a motion onset. Returns
        True when this frame may be inferred, else the reason it may not. resized: the frame at
        the model's pixel size, measured instead of the frame when at least MOTION_MIN_WIDTH px
        wide (it is in cache; the camera frame is then read from memory once)."""
        if not self.source.motion_from_image:  # a slideshow of stills (replay): no motion
            return "stage moving" if frame.moving else True
        now = time.monotonic_ns()
        if now - self._limits_ns > 1e9:
            self._update_limits(frame)
            self._limits_ns = now
        um = (
            self._optics.um_per_px
            or frame.meta.get("um_per_px")
            or nominal_um_per_px(self.objective_override or frame.objective)
        )
        image = frame.image
        if resized is not None and MOTION_MIN_WIDTH <= resized.shape[1] < image.shape[1]:
            image = resized
        px_scale = frame.image.shape[1] / image.shape[1]  # camera px per px measured
        if image.shape != self._gate_shape:  # another model's size, or the frame itself: focus
            self._gate_shape = image.shape  # and displacements of the last image do not compare
            self.guard.reset()
            self.motion.reset()
        st = self.motion.update(image, frame.t_capture_ns, um, px_scale)
        if st.moving or frame.moving:
            if not self._in_motion:
                self._in_motion = True
                self.guard.reset()  # a new field: its focus is not comparable with the last one
                self.on_event("motion", speed_um_s=round(st.speed_um_s, 1), seq=frame.seq)
                self.clear("stage moving")
            return "stage moving"
        self._in_motion = False
        if not st.settled:
            return "settling"
        return self.guard.check(image, self.motion.estimator.last_small) or True

    def _update_limits(self, frame: Frame) -> None:
        """Once a second: the blanking speed and the overlay age limit from measured latency."""
        with self.stats.lock:
            infer_ns = list(self.stats.timings["infer"])[-200:]
        p99 = self._infer_p99_ms = percentiles_ms(infer_ns, "x")["x_p99"] or None
        self.max_age_ns = self.safety.max_age_ns(self.display_interval_s, p99)
        if self.safety.blank_speed_um_s is None:
            from .motion import blank_speed_um_s

            um = self._optics.um_per_px or frame.meta.get("um_per_px") or 1.0
            cam_per_disp = self.ar.camera_px_per_display_px() if self.ar is not None else 1.0
            latency_s = (p99 or 100.0) / 1e3 + self.display_interval_s
            self.motion.blank_speed_um_s = blank_speed_um_s(
                self.safety.blank_display_px, cam_per_disp, um, latency_s
            )

    def _shift_for(self, frame: Frame, now_ns: int) -> tuple[float, float] | None:
        """Camera px to move an overlay computed on `frame` so it lies on the field while it is
        shown: from now until the next camera frame redraws it, so aimed half an interval on."""
        if not self.safety.compensate:
            return None
        lead_ns = int(self.display_interval_s * 5e8)
        return self.motion.shift_since(frame.t_capture_ns, now_ns + lead_ns)

    def _too_old(self, res: Result, now_ns: int) -> bool:
        """The overlay's frame is older than the age limit."""
        return res.frame is not None and now_ns - res.frame.t_capture_ns > self.max_age_ns

    def _track_moved(self) -> bool:
        """Redraw the overlay where the field is now (compensation on): a newer frame came, or
        the field was moving at the last one (a late frame: carried on at its velocity)."""
        last = self.motion.last
        if not self.safety.compensate or last is None:
            return False
        t = self._last_capture_ns
        moved = t != self._shown_track_ns or last.speed_um_s > 0
        self._shown_track_ns = t
        return moved

    def _watchdog_loop(self) -> None:
        """Report a slow inference; rebuild the engine when one hangs (see runtime/safety.py)."""
        while not self._stop.wait(0.05):
            action = self.watchdog.check(self._infer_p99_ms)
            if action == "slow":
                self.on_event("inference_slow", running_ms=round(self.watchdog.running_ms()))
            elif action == "rebuild":
                self._rebuild_engine()

    def _rebuild_engine(self) -> None:
        """A hung inference: blank, build a new engine, start a new inference thread."""
        self.clear("inference hung")
        with self._lock:
            active = self._active
        self.on_event("inference_hung", model=active.name if active else None)
        if active is not None:
            try:
                engine = self.models.rebuild(active.engine)
            except Exception as exc:
                self.on_event("error", where="engine rebuild", message=str(exc))
            else:
                new = ActiveModel(engine, active.contours, active.normalize)
                with self._lock:
                    if self._active is active:
                        self._active = new
                self.on_event(
                    "engine_rebuilt",
                    model=new.name,
                    delegate=engine.info.delegate,
                    fallback_reason=engine.info.fallback_reason,
                )
        t = threading.Thread(
            target=self._infer_loop, args=(self.watchdog.epoch,), name="lucida-infer", daemon=True
        )
        t.start()
        self._threads.append(t)

    def camera_stalled(self, now_ns: int | None = None) -> bool:
        """No camera, or no frame for longer than stall_timeout_ms (the display is blank)."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        last = self._last_capture_ns
        return not self._source_ok or bool(last and now_ns - last > self.stall_timeout_ns)

    def _safety_status(self) -> dict:
        st = self.motion.last
        return {
            "blank_reason": self.blank_reason,
            "camera_stalled": self.camera_stalled(),
            "motion_speed_um_s": None if st is None else round(min(st.speed_um_s, 1e9), 1),
            "motion_confidence": None if st is None else round(st.confidence, 3),
            "blank_speed_um_s": round(self.motion.blank_speed_um_s, 1),
            "focus": round(self.guard.last_focus, 2),
            "saturated_share": round(self.guard.last_saturated, 4),
            "max_overlay_age_ms": round(self.max_age_ns / 1e6, 1),
            "inference_running_ms": round(self.watchdog.running_ms(), 1),
            "engine_rebuilds": self.watchdog.rebuilds,
            "inference_slow_reports": self.watchdog.slow_reports,
        }

    # -- blocking run with signals (the demo and the daemon's main thread) --------------------
    def run(self, frames: int | None = None, seconds: float | None = None) -> dict:
        """Start, run until `frames` processed, `seconds` elapsed or SIGINT/SIGTERM; stop; stats."""
        stop = threading.Event()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, lambda *_: stop.set())
        self.start()
        t_end = time.monotonic() + seconds if seconds else None
        try:
            while not stop.is_set():
                if frames and self.stats.counts["processed"] >= frames:
                    break
                if t_end and time.monotonic() >= t_end:
                    break
                stop.wait(0.05)
        finally:
            status = self.status()
            self.stop()
            for sig, h in handlers.items():
                signal.signal(sig, h)
        return status
