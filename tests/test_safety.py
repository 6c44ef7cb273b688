"""The overlay never outlives its field of view, with any camera: motion measured from the image,
the overlay age limit, the inference watchdog, motion compensation, the focus/exposure guard.
Observed on what the display sinks received."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest
import test_pipeline
from lucida.overlay.compose import ARComposer
from lucida.runtime.config import ConfigError, parse_config
from lucida.runtime.engine import Engine
from lucida.runtime.guard import FieldGuard
from lucida.runtime.models import ModelSelector
from lucida.runtime.motion import MotionEstimator, MotionGate, blank_speed_um_s
from lucida.runtime.pipeline import Optics, Pipeline
from lucida.runtime.safety import Safety
from lucida.runtime.sources import OpenCVSource
from lucida.runtime.virtual.camera import CameraConfig
from lucida.runtime.virtual.scope import VirtualMicroscope
from lucida.runtime.virtual.stage import StagePath, TourPath, Waypoint
from lucida.runtime.virtual.tissue import SyntheticSlide
from lucida.tools.bench.safety import HangingBackend
from test_pipeline import ControlledSource, MemorySink, _wait

eager_bundle = test_pipeline.eager_bundle  # the tiny bundle drawing any tissue (a fixture)

RES = (320, 240)
FPS = 20.0
INTERVAL_NS = int(1e9 / FPS)


@pytest.fixture(scope="module")
def slide():
    return SyntheticSlide(4, (4000.0, 3000.0))


def _texture(seed=0, size=(240, 320)):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*size, 3), np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 2.0)


# -- the motion estimate ---------------------------------------------------------------------------
def test_motion_estimate_measures_a_shift_and_refuses_unrelated_frames():
    big = _texture(size=(1080 + 64, 1920 + 64))
    a, b = big[:1080, :1920], big[8:1088, 24:1944]  # content moves 24 px left, 8 px up
    est = MotionEstimator()
    assert est.update(a, 0) is None
    m = est.update(b, 50_000_000)
    assert m.dx_px == pytest.approx(-24, abs=0.5) and m.dy_px == pytest.approx(-8, abs=0.5)
    assert m.confidence > 0.3 and m.speed_px_s == pytest.approx(math.hypot(24, 8) / 0.05, rel=0.05)
    same = est.update(b, 100_000_000)
    assert abs(same.dx_px) < 0.1 and abs(same.dy_px) < 0.1
    other = est.update(_texture(seed=9, size=(1080, 1920)), 150_000_000)
    assert other.confidence < 0.3 or math.hypot(other.dx_px, other.dy_px) > 1  # never "still"


@pytest.mark.parametrize("dx, dy", [(3.4, -1.3), (5.9, 2.6), (-12.25, 0.5), (0.5, 0.0)])
def test_sub_pixel_displacements_are_not_pulled_to_whole_grey_pixels(dx, dy):
    """A 1080p texture moved by fractions of the grey copy's px (8 camera px): measured within
    0.25 camera px (cv2.phaseCorrelate's centroid read 3.4 as 2.5 on real H&E)."""
    big = _texture(seed=3, size=(1200, 2100))
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    a = big[40:1120, 60:1980]
    b = cv2.warpAffine(big, shift, (2100, 1200), flags=cv2.INTER_CUBIC)[40:1120, 60:1980]
    est = MotionEstimator()
    est.update(a, 0)
    m = est.update(b, 33_000_000)
    assert m.dx_px == pytest.approx(dx, abs=0.25) and m.dy_px == pytest.approx(dy, abs=0.25)
    assert m.confidence > 0.5


def test_a_still_field_with_sensor_noise_reads_still():
    """Frames of one field, each with its own 3 DN noise: the displacement stays under the
    gate's noise floor for its confidence, so the gate reads the stage as still and settles."""
    field = _texture(seed=4, size=(1080, 1920)).astype(np.float32)
    rng = np.random.default_rng(1)
    gate = MotionGate(blank_speed_um_s=20.0)
    for i in range(5):
        noisy = np.clip(field + rng.normal(0, 3.0, field.shape), 0, 255).astype(np.uint8)
        st = gate.update(noisy, i * 33_000_000, 0.5)
    assert st.speed_um_s == 0.0 and st.settled and not st.moving
    x, y = st.position_px
    assert abs(x) < MotionGate.noise_px(st.confidence) and abs(y) < MotionGate.noise_px(
        st.confidence
    )


def test_blanking_speed_follows_pixel_size_and_latency():
    # 4 display px, display px = camera px, 1 um/px, 100 ms latency -> 40 um/s
    assert blank_speed_um_s(4, 1.0, 1.0, 0.1) == pytest.approx(40.0)
    assert blank_speed_um_s(4, 1.0, 0.25, 0.1) == pytest.approx(10.0)  # 40x: slower


# -- a real OpenCV VideoCapture on a video file of the virtual microscope, no motion flag ---------
@pytest.fixture(scope="module")
def pan_video(slide, tmp_path_factory):
    """MJPG video, 320x240 @ 20 fps: still 1.5 s, a 600 um/s pan for 1 s, still 2 s (10x)."""
    x, y = slide.random_point(np.random.default_rng(2), "tumour")
    path = StagePath([Waypoint(x, y, None, 1.5), Waypoint(x + 600, y + 60, 603.0, 2.0)])
    scope = VirtualMicroscope(
        slide,
        path=path,
        camera=CameraConfig(resolution=RES, fps=FPS, flicker=0.03),
        realtime=False,
        report_motion=False,
        subpixel=True,
        tile_px=256,
    )
    out = tmp_path_factory.mktemp("video") / "pan.avi"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), FPS, RES)
    scope.open()
    moving = []
    for _ in range(int(4.5 * FPS)):
        f = scope.read()
        assert not f.moving  # a camera like any other: nothing tells the pipeline
        moving.append(f.meta["velocity_um_s"] != (0.0, 0.0))
        writer.write(cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
    writer.release()
    return out, moving


class RecordingSource(OpenCVSource):
    """The OpenCV source, remembering when each video frame (seq = frame index) was read."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read_at: dict[int, int] = {}

    def read(self, timeout_s=1.0):
        f = super().read(timeout_s)
        if f is not None:
            self.read_at[f.seq] = f.t_capture_ns
        return f


def test_video_pan_blanks_within_an_interval_and_returns_only_after_settling(
    pan_video, eager_bundle
):
    path, moving = pan_video
    first_pan, last_pan = moving.index(True), len(moving) - 1 - moving[::-1].index(True)
    src = RecordingSource(str(path), fps=FPS)
    sink, drawn_from, onsets = MemorySink(), [], []
    pipe = Pipeline(
        src,
        ModelSelector(bundle=eager_bundle, num_threads=1),
        ar=ARComposer(RES),
        ar_sinks=[sink],
        optics_for=lambda _o: Optics(um_per_px=1.0),
        display_interval_ms=1000 / FPS,
        stall_timeout_ms=1000,
        safety=Safety(blank_speed_um_s=100.0),
        on_event=lambda kind, **kw: onsets.append(kw["seq"]) if kind == "motion" else None,
        on_display=lambda kind, t, result=None, **kw: (
            drawn_from.append((t, result.frame.seq)) if kind == "overlay" else None
        ),
    )
    pipe.start()
    try:
        assert _wait(lambda: max(src.read_at, default=0) >= len(moving) - 2, timeout=15)
    finally:
        pipe.stop()
    # the stage leaves at frame first_pan: frame first_pan + 1 is the first to show it
    seen = min(s for s in src.read_at if s > first_pan)
    t_seen = src.read_at[seen]
    before = [s for s in drawn_from if s[1] < first_pan]
    assert before, "no overlay before the pan"
    # measured on the very frame that first shows the motion; the display's next update blanks
    assert onsets and onsets[0] == seen
    blank_at = sink.first_blank_after(t_seen)
    assert blank_at is not None and not any(s[1] for s in sink.after(t_seen) if s[0] < blank_at)
    # nothing computed on a frame taken before the stage stopped is drawn after the pan began
    after = [s for s in drawn_from if s[0] >= t_seen]
    assert after, "the overlay never came back after the pan"
    assert all(seq > last_pan for _, seq in after), after
    assert len([s for s in sink.after(t_seen) if s[1]]) == len(after)  # nothing else drawn


# -- compensation -----------------------------------------------------------------------------
def test_slow_pan_overlay_follows_the_tissue(slide, eager_bundle):
    x, y = slide.random_point(np.random.default_rng(5), "tumour")
    speed = 30.0  # um/s at 10x: 1.5 camera px per frame
    path = StagePath([Waypoint(x, y, None, 0.5), Waypoint(x + 300, y + 100, speed)])
    scope = VirtualMicroscope(
        slide,
        path=path,
        camera=CameraConfig(resolution=RES, fps=FPS),
        report_motion=False,
        subpixel=True,
        tile_px=256,
    )
    shown = []
    pipe = Pipeline(
        scope,
        ModelSelector(bundle=eager_bundle, num_threads=1),
        ar=ARComposer(RES),
        ar_sinks=[MemorySink()],
        optics_for=lambda _o: Optics(um_per_px=1.0),
        display_interval_ms=1000 / FPS,
        safety=Safety(blank_speed_um_s=200.0),
        on_display=lambda kind, t, result=None, shift_px=None, **kw: (
            shown.append((t, result.frame.t_capture_ns, shift_px)) if kind == "overlay" else None
        ),
    )
    pipe.start()
    time.sleep(3.0)
    pipe.stop()
    lead = INTERVAL_NS // 2
    err, uncorrected = [], []
    for t, t_frame, shift in shown:
        now, then = scope.stage_at(t + lead), scope.stage_at(t_frame)
        if now.speed_um_s == 0:
            continue
        true = (then.x_um - now.x_um, then.y_um - now.y_um)  # content moves against the stage
        err.append(math.hypot(true[0] - shift[0], true[1] - shift[1]))
        uncorrected.append(math.hypot(*true))
    assert len(err) >= 10
    assert np.median(err) <= 1.0 and np.median(err) <= np.median(uncorrected) / 2


# -- overlay age limit and the watchdog --------------------------------------------------------
@pytest.fixture(scope="module")
def still_video(slide, tmp_path_factory):
    """MJPG video, 320x240 @ 20 fps, 12 s of a still stage over tumour (10x), no motion flag."""
    x, y = slide.random_point(np.random.default_rng(3), "tumour")
    scope = VirtualMicroscope(
        slide,
        path=StagePath([Waypoint(x, y, None, 60.0)]),
        camera=CameraConfig(resolution=RES, fps=FPS),
        realtime=False,
        report_motion=False,
        tile_px=256,
    )
    out = tmp_path_factory.mktemp("video") / "still.avi"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), FPS, RES)
    scope.open()
    for _ in range(int(12 * FPS)):
        writer.write(cv2.cvtColor(scope.read().image, cv2.COLOR_RGB2BGR))
    writer.release()
    return out


@pytest.mark.parametrize("camera", ["controlled", "video"])
def test_hung_inference_blanks_within_the_age_limit_and_the_engine_is_rebuilt(
    eager_bundle, camera, request
):
    from lucida.runtime.backends import select_backend

    if camera == "video":  # a real cv2.VideoCapture on a file: no motion flag, nothing special
        source, size = OpenCVSource(str(request.getfixturevalue("still_video")), fps=FPS), RES
    else:
        source, size = ControlledSource(), (128, 96)
    hb = HangingBackend(select_backend())
    models = ModelSelector(bundle=eager_bundle, num_threads=1)
    models.pin(eager_bundle, Engine(eager_bundle, backend=hb.backend, num_threads=1))
    events, sink = [], MemorySink()
    pipe = Pipeline(
        source,
        models,
        ar=ARComposer(size),
        ar_sinks=[sink],
        display_interval_ms=1000 / FPS,
        safety=Safety(max_overlay_age_ms=150, slow_factor=2, rebuild_after_ms=700),
        on_event=lambda kind, **kw: events.append((time.monotonic_ns(), kind, kw)),
    )
    pipe.start()
    try:
        t0 = time.monotonic_ns()
        assert _wait(lambda: any(s[1] for s in sink.after(t0)))
        t_first = next(s[0] for s in sink.after(t0) if s[1])
        time.sleep(0.6)
        # a still field (camera noise, JPEG) never blanks the display while inference answers
        assert sink.first_blank_after(t_first) is None
        t_hang = hb.hang()
        assert _wait(lambda: sink.first_blank_after(t_hang) is not None)
        blank_at = sink.first_blank_after(t_hang)
        assert blank_at - t_hang <= 150e6 + INTERVAL_NS
        assert pipe.status()["blank_reason"] == "overlay too old"
        assert _wait(lambda: pipe.status()["engine_rebuilds"] == 1, timeout=3)
        assert _wait(lambda: any(s[1] for s in sink.after(blank_at + 500_000_000)), timeout=5)
    finally:
        hb.release()
        pipe.stop()
    kinds = [e[1] for e in events]
    assert "inference_slow" in kinds and "inference_hung" in kinds and "engine_rebuilt" in kinds
    cleared = [e for e in events if e[1] == "overlay_cleared" and e[0] >= t_hang]
    assert cleared and cleared[0][2]["reason"] == "overlay too old"


def test_age_limit_defaults_to_two_intervals_plus_p99():
    assert Safety().max_age_ns(0.05, 40.0) == int(140e6)
    assert Safety(max_overlay_age_ms=90).max_age_ns(0.05, 40.0) == int(90e6)


# -- focus and exposure guard -----------------------------------------------------------------
def test_guard_refuses_a_blurred_or_clipped_field():
    guard = FieldGuard()
    sharp = _texture(3)
    for _ in range(6):
        assert guard.check(sharp) is None
    assert guard.check(cv2.GaussianBlur(sharp, (0, 0), 8)) == "out of focus"
    assert guard.check(np.full_like(sharp, 255)) == "overexposed"
    assert guard.check(sharp) is None


# -- the virtual microscope's hand-like tours and the config keys ---------------------------------
def test_tour_moves_like_a_hand(slide):
    tour = TourPath(slide, 3, duration_s=60)
    assert TourPath(slide, 3, duration_s=60).state(12.3) == tour.state(12.3)
    kinds = {k for _, _, k in tour.segments}
    assert {"still", "fast"} <= kinds
    pan = tour.pan_speed_um_s()
    accel = np.abs(np.diff(pan)) / tour.dt_s
    assert pan.max() > 300 and accel.max() <= 3000 * 1.01  # finite acceleration, no jumps
    still = [(a, b) for a, b, k in tour.segments if k == "still"]
    a, b = still[0]
    s0, s1 = tour.state(a + 0.1), tour.state(b - 0.1)
    assert 0 < math.hypot(s1.x_um - s0.x_um, s1.y_um - s0.y_um) < 1.0  # vibration only


def test_config_safety_keys_are_validated():
    c = parse_config(
        {
            "source": {"report_motion": False, "stage": "tour"},
            "display": {"max_overlay_age_ms": 200},
            "safety": {"blank_speed_um_s": 50, "compensate": False},
        }
    )
    assert c.safety.blank_speed_um_s == 50 and not c.source.report_motion
    with pytest.raises(ConfigError, match="safety.settle_frames"):
        parse_config({"safety": {"settle_frames": 0}})
    with pytest.raises(ConfigError, match="unknown key 'safety.blank'"):
        parse_config({"safety": {"blank": 1}})


def test_motion_gate_settles_only_after_frames_agree():
    gate = MotionGate(100.0, settle_frames=2)
    a = _texture(1)
    states = [gate.update(a, i * INTERVAL_NS, 1.0) for i in range(4)]
    assert [s.settled for s in states] == [False, False, True, True]
    moved = np.roll(a, 20, axis=1)  # 20 px in 50 ms at 1 um/px = 400 um/s
    st = gate.update(moved, 4 * INTERVAL_NS, 1.0)
    assert st.moving and st.onset and not st.settled
    assert not gate.update(moved, 5 * INTERVAL_NS, 1.0).settled
    assert gate.update(moved, 6 * INTERVAL_NS, 1.0).settled
