"""The real-time loop, observed the way a pathologist would: on what the display sinks received."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from lucida.models import write_bundle
from lucida.overlay.compose import ARComposer
from lucida.runtime.frame import Frame
from lucida.runtime.models import ModelSelector
from lucida.runtime.pipeline import Pipeline
from lucida.runtime.sources import FrameSource, SourceError

FPS = 20.0
INTERVAL_NS = int(1e9 / FPS)


class MemorySink:
    """Records what a display would show: (time shown ns, anything drawn?, frame capture ns)."""

    name = "memory"

    def __init__(self):
        self.shown: list[tuple[int, bool, int | None]] = []
        self.lock = threading.Lock()

    def open(self):
        pass

    def show(self, canvas, t_capture_ns=None):
        with self.lock:
            self.shown.append((time.monotonic_ns(), bool(canvas.any()), t_capture_ns))

    def close(self):
        pass

    def after(self, t_ns):
        with self.lock:
            return [s for s in self.shown if s[0] >= t_ns]

    def first_blank_after(self, t_ns):
        return next((s[0] for s in self.after(t_ns) if not s[1]), None)


class ControlledSource(FrameSource):
    """Random 128x96 frames at FPS; can stall (no frames) or be unplugged (SourceError)."""

    name = "controlled"

    def __init__(self):
        self.stalled = threading.Event()
        self.unplugged = threading.Event()
        self.opens = 0
        self.seq = 0
        self.rng = np.random.default_rng(0)
        self.image = self.rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)

    def open(self):
        if self.unplugged.is_set():
            raise SourceError("controlled: no device")
        self.opens += 1

    def read(self, timeout_s=1.0):
        time.sleep(1 / FPS)
        if self.unplugged.is_set():
            raise SourceError("controlled: unplugged")
        if self.stalled.is_set():
            return None
        self.seq += 1
        return Frame(self.image, time.monotonic_ns(), self.seq, objective="10x")


@pytest.fixture()
def eager_bundle(tiny_bundle, tmp_path):
    """The tiny bundle with contours that outline any tissue: the overlay is never empty."""
    m = tiny_bundle.manifest.model_dump(mode="json")
    m["contours"] = {
        "threshold": 0.02,
        "threshold_low": 0.02,
        "min_area_um2": 0.0,
        "blur_sigma_px": 0.0,
        "flicker_margin": 0.0,
    }
    files = {n: (tiny_bundle.path / n).read_bytes() for n in m["files"]}
    return write_bundle(tmp_path / "eager", m, files)


@pytest.fixture()
def loop(eager_bundle):
    sink = MemorySink()
    src = ControlledSource()
    p = Pipeline(
        src,
        ModelSelector(bundle=eager_bundle, num_threads=1),
        ar=ARComposer((128, 96)),
        ar_sinks=[sink],
        stall_timeout_ms=150,
        display_interval_ms=1000 / FPS,
    )
    p.start()
    yield p, src, sink
    p.stop()


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def _overlay_visible(sink):
    return _wait(lambda: any(s[1] for s in sink.after(time.monotonic_ns() - 200_000_000)))


def test_overlay_is_drawn_and_timed(loop):
    p, _, sink = loop
    assert _overlay_visible(sink)
    assert _wait(lambda: p.stats.counts["displayed"] >= 10)
    st = p.status()
    assert st["model"] == "tiny" and st["objective"] == "10x"
    assert 0 < st["latency_ms_p50"] <= st["latency_ms_p99"]
    assert st["infer_ms_p50"] > 0 and st["fps_in"] > 0


def test_stalled_camera_blanks_display_within_one_frame_interval(loop):
    p, src, sink = loop
    assert _overlay_visible(sink)
    src.stalled.set()
    t_stall = time.monotonic_ns()
    assert _wait(lambda: sink.first_blank_after(t_stall) is not None)
    last_capture = p._last_capture_ns
    blank_at = sink.first_blank_after(t_stall)
    assert blank_at - last_capture <= p.stall_timeout_ns + INTERVAL_NS
    # and it stays blank while stalled
    time.sleep(0.3)
    assert not any(s[1] for s in sink.after(blank_at))


def test_turret_move_blanks_display_within_one_frame_interval(loop):
    p, _, sink = loop
    assert _overlay_visible(sink)
    t = time.monotonic_ns()
    p.set_objective(None)  # the nosepiece reports "between positions"
    assert _wait(lambda: sink.first_blank_after(t) is not None)
    assert sink.first_blank_after(t) - t <= INTERVAL_NS
    time.sleep(0.2)
    assert not any(s[1] for s in sink.after(sink.first_blank_after(t)))


def test_model_switch_blanks_before_the_new_model_draws(loop, eager_bundle):
    p, _, sink = loop
    assert _overlay_visible(sink)
    t = time.monotonic_ns()
    active = p.models.replace(eager_bundle)
    t_swap = time.monotonic_ns()
    p.swap_model(active)
    assert _wait(lambda: sink.first_blank_after(t_swap) is not None)
    assert sink.first_blank_after(t_swap) - t_swap <= INTERVAL_NS
    # nothing drawn after the swap comes from a frame captured before it
    assert _wait(lambda: len([s for s in sink.after(t_swap) if s[1]]) >= 3)
    drawn = [s for s in sink.after(t_swap) if s[1]]
    assert drawn and all(s[2] >= t for s in drawn)


def test_unplugged_camera_is_reopened_and_the_loop_recovers(loop):
    p, src, sink = loop
    assert _overlay_visible(sink)
    src.unplugged.set()
    t = time.monotonic_ns()
    assert _wait(lambda: sink.first_blank_after(t) is not None)
    time.sleep(0.3)
    src.unplugged.clear()
    assert _wait(lambda: src.opens >= 2)
    t2 = time.monotonic_ns()
    assert _wait(lambda: any(s[1] for s in sink.after(t2)))
    assert p.status()["reopens"] >= 1


def test_stage_motion_blanks_and_latest_frame_wins(eager_bundle):
    """A slow model drops stale frames instead of queueing them; moving frames are never drawn."""

    class Moving(ControlledSource):
        def read(self, timeout_s=1.0):
            f = super().read(timeout_s)
            return Frame(f.image, f.t_capture_ns, f.seq, "10x", moving=True) if f else None

    sink = MemorySink()
    p = Pipeline(
        Moving(),
        ModelSelector(bundle=eager_bundle, num_threads=1),
        ar=ARComposer((128, 96)),
        ar_sinks=[sink],
    )
    p.start()
    try:
        time.sleep(0.5)
    finally:
        p.stop()
    assert sink.shown and not any(s[1] for s in sink.shown)
