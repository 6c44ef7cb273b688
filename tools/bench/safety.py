"""`lucida bench safety`: does the overlay ever outlive its field of view? Five figures, one run.

The virtual microscope runs as a real camera (report_motion off, sub-pixel stage, lamp flicker,
focus drift) on seeded hand-like tours (TourPath: stops, drifts, slow and fast pans with
acceleration, vibrations), 1080p, through the real pipeline; the bench keeps what the display
was told (on_display) and what the motion gate decided per frame, and compares them with the
virtual stage's ground truth:

- blank_within_1_interval: share of motion onsets (the hand's pan speed crossing the blanking
  speed) after which the display was blank one camera interval later (bar >= 0.99);
- false_blank_share: share of frames taken while the stage stood still (vibration only, >= 1 s
  after it stopped) that the motion gate refused (bar <= 0.005);
- stale_px_p95: every 10 ms during slow pans and drifts, the distance (display px) between
  where the overlay on screen was drawn and where the tissue it was computed on is at that
  instant (the true stage displacement since the overlay's frame, minus the shift applied);
  one run with compensation on, one off, same tour (bar: on <= 3 px and <= half of off);
- motion_ms_p50: cost of the motion estimate per 1080p frame (bar <= 1.0 ms);
- hung_infer_blank_ms: from an interpreter that stops answering (a backend whose invoke blocks
  until the engine is rebuilt) to a blank display (bar <= max_overlay_age_ms + one interval).
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np
from lucida.overlay.compose import ARComposer
from lucida.runtime.backends import Backend, select_backend
from lucida.runtime.engine import Engine
from lucida.runtime.models import ModelSelector, pipeline_threads
from lucida.runtime.motion import MotionEstimator, MotionGate, blank_speed_um_s
from lucida.runtime.pipeline import Optics, Pipeline
from lucida.runtime.safety import Safety
from lucida.runtime.stats import percentiles, percentiles_ms

from .pipeline import NullSink

SIZE = (1920, 1080)
OBJECTIVE = "10x"
UM_PER_PX = 1.0  # the virtual microscope's camera at 10x


class RecordingGate(MotionGate):
    """The pipeline's motion gate, keeping (capture ns, moving, settled) of every frame."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.decisions: list[tuple] = []  # (capture ns, moving, settled, um/s, confidence)

    def update(self, rgb, t_ns, um_per_px, px_scale=1.0):
        st = super().update(rgb, t_ns, um_per_px, px_scale)
        self.decisions.append((t_ns, st.moving, st.settled, st.speed_um_s, st.confidence))
        return st


class HangingBackend:
    """An interpreter backend whose interpreters can be told to stop answering: after `hang()`,
    invoke() on every interpreter made before it blocks until `release()`; interpreters made
    afterwards (an engine rebuilt by the watchdog) answer again. A wedged device, reopened."""

    def __init__(self, real: Backend):
        self.real = real
        self.generation = 0
        self.hung_below = 0  # interpreters of generations below this block in invoke()
        self.released = threading.Event()
        self.blocked_at = 0  # when the first invoke blocked after the last hang() (ns)
        outer = self

        class Interpreter:
            def __init__(self, *a, **kw):
                self._it = real.Interpreter(*a, **kw)
                self._gen = outer.generation

            def invoke(self):
                if self._gen < outer.hung_below:
                    outer.blocked_at = outer.blocked_at or time.monotonic_ns()
                    outer.released.wait(120.0)
                return self._it.invoke()

            def __getattr__(self, name):
                return getattr(self._it, name)

        self.backend = Backend(
            f"hanging-{real.name}", real.version, Interpreter, real.load_delegate
        )

    def hang(self) -> int:
        """From now on every existing interpreter blocks in invoke(); returns the time (ns)."""
        self.generation += 1
        self.hung_below = self.generation
        self.blocked_at = 0
        return time.monotonic_ns()

    def release(self) -> None:
        self.released.set()


@dataclass
class Run:
    """What one pipeline run left behind."""

    scope: object
    path: object
    display: list  # (t_ns, kind, frame capture ns or None, shift px or None, regions non-empty)
    gate: RecordingGate
    status: dict
    blank_speed: float
    interval_s: float


def _scope(seed: int, seconds: float, fps: float, path=None, blank: float = 40.0):
    from lucida.runtime.virtual.camera import CameraConfig
    from lucida.runtime.virtual.scope import VirtualMicroscope
    from lucida.runtime.virtual.stage import TourPath
    from lucida.runtime.virtual.tissue import SyntheticSlide

    slide = SyntheticSlide(seed)
    path = path or TourPath(
        slide, seed, duration_s=seconds + 10, slow_um_s=(0.25 * blank, 0.9 * blank)
    )
    cam = CameraConfig(resolution=SIZE, fps=fps, flicker=0.03)
    scope = VirtualMicroscope(
        slide, seed=seed, path=path, camera=cam, report_motion=False, subpixel=True
    )
    return scope, path


def _pipeline(scope, models, safety, gate, display, fps):
    def on_display(kind, t_ns, result=None, frame=None, shift_px=None, **_):
        if kind == "overlay":
            drawn = result.regions is not None and not result.regions.empty
            display.append((t_ns, "overlay", result.frame.t_capture_ns, shift_px, drawn))
        elif kind == "blank":
            display.append((t_ns, "blank", None, None, False))

    return Pipeline(
        scope,
        models,
        ar=ARComposer(SIZE, eyepiece_circle=(SIZE[0] / 2, SIZE[1] / 2, SIZE[1] / 2)),
        ar_sinks=[NullSink()],
        optics_for=lambda _o: Optics(um_per_px=UM_PER_PX),
        display_interval_ms=1000 / fps,
        on_display=on_display,
        safety=safety,
        motion=gate,
    )


def _tour(models, seed, seconds, fps, blank_speed, compensate) -> Run:
    scope, path = _scope(seed, seconds, fps, blank=blank_speed)
    safety = Safety(blank_speed_um_s=blank_speed, compensate=compensate)
    gate = RecordingGate(blank_speed, settle_frames=safety.settle_frames)
    display: list = []
    pipe = _pipeline(scope, models, safety, gate, display, fps)
    pipe.start()
    time.sleep(seconds)
    status = pipe.status()
    pipe.stop()
    return Run(scope, path, display, gate, status, blank_speed, 1 / fps)


def _state_at(display, t_ns):
    """The display record in force at t_ns (None before the first)."""
    i = bisect_right([d[0] for d in display], t_ns) - 1
    return display[i] if i >= 0 else None


def _onsets(run: Run, t_from_s: float, t_to_s: float) -> list[float]:
    """Tour times (s) at which the hand's pan speed rises through the blanking speed."""
    pan = run.path.pan_speed_um_s()
    above = pan > run.blank_speed
    idx = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    t = idx * run.path.dt_s
    return [float(x) for x in t if t_from_s <= x <= t_to_s]


def _measure(run: Run) -> dict:
    scope, path, disp = run.scope, run.path, run.display
    t_open = scope._t_open_ns
    if not disp:
        return {
            "onsets": 0,
            "onsets_blank": 0,
            "onsets_blank_strict": 0,
            "drawn": 0,
            "drawn_moving": 0,
            "onsets_strict": 0,
            "frame_gaps_ms": [],
            "still_frames": 0,
            "still_refused": 0,
            "err": [],
        }
    t_first = disp[0][0]
    t_last = disp[-1][0]
    to_ns = lambda s: t_open + int(s * 1e9)  # noqa: E731
    to_s = lambda ns: (ns - t_open) / 1e9  # noqa: E731
    interval_ns = int(run.interval_s * 1e9)
    times = [d[0] for d in disp]
    # 1. onsets: the first frame whose field moved faster than the blanking speed since the
    # frame before (true stage); the display must be blank one interval after its capture.
    # strict: one interval after the instant the hand's pan speed crossed the blanking speed
    captures = [d[0] for d in run.gate.decisions]
    pos = [scope.stage_at(t) for t in captures]
    fast = [False] + [
        math.hypot(b.x_um - a.x_um, b.y_um - a.y_um) / ((tb - ta) / 1e9) > run.blank_speed
        for a, b, ta, tb in zip(pos, pos[1:], captures, captures[1:])
    ]
    t_lo, t_hi = t_first + int(1e9), t_last - 3 * interval_ns
    onset_frames = [
        t for k, t in enumerate(captures) if fast[k] and not fast[k - 1] and t_lo <= t <= t_hi
    ]
    ok = 0
    for t in onset_frames:
        i = bisect_right(times, t + interval_ns) - 1
        ok += i >= 0 and disp[i][1] == "blank"
    # the rule itself: overlays drawn from a frame whose field was moving faster than the
    # blanking speed (true stage, since the frame before it)
    fast_at = dict(zip(captures, fast))
    drawn_moving = sum(1 for d in disp if d[1] == "overlay" and d[4] and fast_at.get(d[2]))
    drawn = sum(1 for d in disp if d[1] == "overlay" and d[4])
    onsets = _onsets(run, to_s(t_lo), to_s(t_hi))
    strict = 0
    for t in onsets:
        i = bisect_right(times, to_ns(t) + interval_ns) - 1
        strict += i >= 0 and disp[i][1] == "blank"
    # 2. still frames refused
    pan = path.pan_speed_um_s()
    win = int(1.0 / path.dt_s)
    moving_recent = np.convolve(pan > 0, np.ones(win), "full")[: len(pan)] > 0
    still_n = refused = 0
    for t_ns, moving, settled, *_ in run.gate.decisions:
        k = int(to_s(t_ns) / path.dt_s)
        if t_ns < t_lo or not 0 <= k < len(pan) or moving_recent[k]:  # t_lo: 1 s warm-up
            continue
        still_n += 1
        refused += moving or not settled
    # 3. stale px during slow pans (steady: below the blanking speed for the last second)
    slow = (pan > 0) & (pan < run.blank_speed)
    fast_recent = np.convolve(pan >= run.blank_speed, np.ones(win), "full")[: len(pan)] > 0
    err = []
    for tau in np.arange(to_s(t_first) + 1.0, to_s(t_last), 0.01):
        k = int(tau / path.dt_s)
        if not (slow[k] and not fast_recent[k]):
            continue
        rec = disp[bisect_right(times, to_ns(tau)) - 1]
        if rec[1] != "overlay" or not rec[4]:
            continue
        now, then = path.state(tau), scope.stage_at(rec[2])
        true = (-(now.x_um - then.x_um) / UM_PER_PX, -(now.y_um - then.y_um) / UM_PER_PX)
        applied = rec[3] or (0.0, 0.0)
        err.append(math.hypot(true[0] - applied[0], true[1] - applied[1]))
    gaps = np.diff(captures) / 1e6 if len(captures) > 1 else np.array([])
    return {
        "onsets": len(onset_frames),
        "onsets_blank": ok,
        "drawn": drawn,
        "drawn_moving": drawn_moving,
        "onsets_strict": len(onsets),
        "onsets_blank_strict": strict,
        "frame_gaps_ms": gaps.tolist(),
        "still_frames": still_n,
        "still_refused": refused,
        "err": err,
    }


def _motion_cost(n: int = 60, seed: int = 7) -> dict:
    """Per-frame cost (ms) of the motion estimate on 1080p frames of a tour."""
    scope, _ = _scope(seed, 20.0, 15.0)
    scope.realtime = False
    scope.open()
    frames = [scope.read() for _ in range(n)]
    scope.close()
    est = MotionEstimator()
    est.update(frames[0].image, 0)
    ns = []
    for i, f in enumerate(frames[1:], 1):
        t0 = time.perf_counter_ns()
        est.update(f.image, int(i * 1e9 / 15))
        ns.append(time.perf_counter_ns() - t0)
    return percentiles_ms(ns, "motion_ms")


def _hung(models, engine_factory, hb: HangingBackend, fps: float, times: int = 3) -> dict:
    """Hang the interpreter `times` times over a still tumour field; time to blank, to recover."""
    from lucida.runtime.virtual.stage import StagePath
    from lucida.runtime.virtual.tissue import SyntheticSlide

    slide = SyntheticSlide(11)
    x, y = slide.random_point(np.random.default_rng(11), "tumour")
    scope, _ = _scope(11, 10.0, fps, path=StagePath.still(x, y))
    display: list = []
    safety = Safety(rebuild_after_ms=1500.0)
    pipe = _pipeline(scope, models, safety, MotionGate(1e9), display, fps)
    pipe.start()
    blanks, recovers, limits = [], [], []
    t_ok = 0  # overlays must come from frames taken after this (the last rebuild)
    try:
        for i in range(times):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not (
                display and display[-1][1] == "overlay" and display[-1][2] > t_ok
            ):
                time.sleep(0.01)
            time.sleep(1.0)  # a second of normal overlays (and measured latency)
            limits.append(pipe.max_age_ns / 1e6)
            t_hang = hb.hang()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and pipe.watchdog.rebuilds <= i:
                time.sleep(0.01)
            t_ok = time.monotonic_ns()
            # the model stops answering when the first invoke blocks (one in flight may finish)
            t_stop = hb.blocked_at or t_hang
            after = [d for d in display if d[0] >= t_hang]
            blank = next((d for d in after if d[1] == "blank"), None)
            if blank:
                blanks.append(max(0.0, (blank[0] - t_stop) / 1e6))
            while time.monotonic() < deadline and not (
                display[-1][1] == "overlay" and display[-1][2] > t_ok
            ):
                time.sleep(0.01)
            if display[-1][1] == "overlay" and display[-1][2] > t_ok:
                recovers.append((display[-1][0] - t_stop) / 1e6)
        status = pipe.status()
    finally:
        hb.release()
        pipe.stop()
    return {
        "hangs": times,
        "blanks": blanks,
        "recovered": recovers,
        "max_age_ms": max(limits) if limits else None,
        "rebuilds": status.get("engine_rebuilds"),
    }


def bench_safety(bundle, seconds: float = 20.0, seeds=(1, 2), fps: float = 15.0, threads=None):
    """The five figures and their bars (see the module docstring) as one dict."""
    threads = threads or pipeline_threads()
    hb = HangingBackend(select_backend())
    models = ModelSelector(bundle=bundle, num_threads=threads)
    engine = Engine(bundle, backend=hb.backend, num_threads=threads)
    models.pin(bundle, engine)
    # The blanking speed as the daemon derives it: 4 display px over one inference latency.
    frame = np.random.default_rng(0).integers(0, 256, (SIZE[1], SIZE[0], 3), np.uint8)
    infer_ns = []
    for i in range(8):
        t0 = time.perf_counter_ns()
        engine.infer(frame, um_per_px=UM_PER_PX)
        if i >= 2:  # the first inferences after a load are discarded
            infer_ns.append(time.perf_counter_ns() - t0)
    p99 = percentiles_ms(infer_ns, "x")["x_p99"]
    blank = round(blank_speed_um_s(Safety().blank_display_px, 1.0, UM_PER_PX, p99 / 1e3 + 1 / fps))
    tours = {True: [], False: []}
    for seed in seeds:
        for comp in (True, False):
            tours[comp].append(_measure(_tour(models, seed, seconds, fps, blank, comp)))
    all_runs = tours[True] + tours[False]
    onsets = sum(r["onsets"] for r in all_runs)
    onsets_ok = sum(r["onsets_blank"] for r in all_runs)
    still = sum(r["still_frames"] for r in all_runs)
    refused = sum(r["still_refused"] for r in all_runs)
    err_on = np.concatenate([r["err"] for r in tours[True]] + [[]])
    err_off = np.concatenate([r["err"] for r in tours[False]] + [[]])
    on95 = float(np.percentile(err_on, 95)) if err_on.size else None
    off95 = float(np.percentile(err_off, 95)) if err_off.size else None
    motion = _motion_cost()
    hung = _hung(models, None, hb, fps)
    interval_ms = 1000 / fps
    hung_max = max(hung["blanks"]) if hung["blanks"] else None
    hung_bar = (hung["max_age_ms"] or 0) + interval_ms
    out = {
        "bench": "safety",
        "bundle": bundle.name,
        "frame": f"{SIZE[0]}x{SIZE[1]}",
        "fps": fps,
        "seeds": list(seeds),
        "seconds_per_tour": seconds,
        "blank_speed_um_s": blank,
        "infer_ms_p99": round(p99, 2),
        "blank_within_1_interval": round(onsets_ok / onsets, 4) if onsets else None,
        "motion_onsets": onsets,
        "blank_within_1_interval_of_onset": round(
            sum(r["onsets_blank_strict"] for r in all_runs)
            / max(1, sum(r["onsets_strict"] for r in all_runs)),
            4,
        ),
        **percentiles(
            np.concatenate([r["frame_gaps_ms"] for r in all_runs] + [[]]), "camera_interval_ms_"
        ),
        "overlays_from_moving_frames": sum(r["drawn_moving"] for r in all_runs),
        "overlays_drawn": sum(r["drawn"] for r in all_runs),
        "false_blank_share": round(refused / still, 5) if still else None,
        "still_frames": still,
        "stale_px_p95_on": None if on95 is None else round(on95, 2),
        "stale_px_p95_off": None if off95 is None else round(off95, 2),
        "stale_samples": int(err_on.size),
        **percentiles(err_on, "stale_px_on_"),
        **motion,
        "hung_infer_blank_ms": None if hung_max is None else round(hung_max, 1),
        "hung_infer_blank_ms_all": [round(b, 1) for b in hung["blanks"]],
        "hung_recovered_ms": [round(b, 1) for b in hung["recovered"]],
        "hung_hangs": hung["hangs"],
        "engine_rebuilds": hung["rebuilds"],
        "max_overlay_age_ms": hung["max_age_ms"],
    }
    # a camera that cannot keep its rate stretches every timing figure: say so next to them
    out["camera_keeps_rate"] = bool(
        out.get("camera_interval_ms_p50", math.inf) <= 1.2 * interval_ms
    )
    out["bars"] = {
        "blank_within_1_interval>=0.99": bool(onsets and onsets_ok / onsets >= 0.99),
        "false_blank_share<=0.005": bool(still and refused / still <= 0.005),
        "stale_px_p95_on<=3_and_half_of_off": bool(
            on95 is not None and off95 is not None and on95 <= 3 and on95 <= off95 / 2
        ),
        "motion_ms_p50<=1.0": bool(motion["motion_ms_p50"] <= 1.0),
        "hung_infer_blank_ms<=max_age+interval": bool(
            hung_max is not None and len(hung["blanks"]) == hung["hangs"] and hung_max <= hung_bar
        ),
    }
    return out
