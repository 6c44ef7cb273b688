"""The daemon with the virtual microscope and an emulated nosepiece on a real pty: turning the
nosepiece switches the model (and calibration) within 2 frame intervals, blank in between."""

from __future__ import annotations

import time

import pytest
from lucida.models import write_bundle
from lucida.runtime.config import parse_config
from lucida.runtime.daemon import Daemon
from lucida.runtime.virtual.nosepiece import EmulatedNosepiece
from lucida.runtime.virtual.scope import TURRET
from test_daemon import wait_for
from test_pipeline import MemorySink

FPS = 15.0
POLL_S = 0.02


@pytest.fixture()
def per_objective_bundles(tiny_bundle, tmp_path):
    m = tiny_bundle.manifest.model_dump(mode="json")
    files = {n: (tiny_bundle.path / n).read_bytes() for n in m["files"]}
    folder = tmp_path / "bundles"
    for obj in ("10x", "20x", "40x"):
        write_bundle(folder / f"tiny-{obj}", dict(m, name=f"tiny-{obj}", objectives=[obj]), files)
    return folder


UM_PER_PX = {"10x": 1.02, "20x": 0.51, "40x": 0.254}  # "measured": differ from nominal


@pytest.fixture()
def profile_dir(tmp_path):
    """A calibration profile with a section per objective (pixel size, a shifted homography)."""
    from lucida.calibration.profile import Profile

    p = Profile(microscope="bench-1")
    for i, (obj, um) in enumerate(UM_PER_PX.items()):
        p.update_section(obj, um_per_px=um, homography=[[1, 0, 3 * i], [0, 1, 0], [0, 0, 1]])
    folder = tmp_path / "profile"
    folder.mkdir()
    p.save(folder / "profile.json")
    return folder


@pytest.mark.timeout(120)
def test_nosepiece_turns_switch_model_and_blank_between(
    per_objective_bundles, profile_dir, tmp_path
):
    holder = {}
    nosepiece = EmulatedNosepiece(
        positions={i + 1: o for i, o in enumerate(TURRET)},
        position_source=lambda: holder["scope"].turret_position() if "scope" in holder else 3,
    )
    nosepiece.start()
    cfg = parse_config(
        {
            "source": {
                "type": "virtual",
                "seed": 1001,
                "fps": FPS,
                "width": 320,
                "height": 180,
                "objective": "10x",
            },
            "models": {"task": "test", "dirs": [str(per_objective_bundles)], "num_threads": 1},
            "display": {"width": 320, "height": 180},
            "calibration": {"profile": str(profile_dir)},
            "serial": {
                "port": nosepiece.port,
                "protocol": "olympus",
                "poll_interval_s": POLL_S,
                "positions": {i + 1: o for i, o in enumerate(TURRET)},
            },
            "http": {"port": 0, "token": "t"},
            "state_dir": str(tmp_path / "state"),
            "log": {"events": str(tmp_path / "events.jsonl")},
        }
    )
    d = Daemon(cfg)
    scope = holder["scope"] = d.pipeline.source
    sink = MemorySink()
    d.pipeline.ar_sinks.append(sink)
    d.start()
    try:
        assert wait_for(lambda: d.status()["model"] == "tiny-10x", timeout=20)
        for obj in ("20x", "40x", "10x"):
            t_turn = time.monotonic_ns()
            scope.set_objective(obj)
            assert wait_for(lambda: scope.turret_position() is not None, timeout=5)
            t_arrived = time.monotonic()
            frames_at_arrival = d.pipeline.stats.counts["frames_in"]
            assert wait_for(lambda o=obj: d.status()["model"] == f"tiny-{o}", timeout=5)
            # Counted in camera frames, not ms: a loaded CI machine slows the virtual camera too.
            frames_taken = d.pipeline.stats.counts["frames_in"] - frames_at_arrival
            assert frames_taken <= 2 + 1, (obj, frames_taken)  # 2 intervals + one serial poll
            assert d.status()["objective"] == obj
            assert d.pipeline._optics.um_per_px == UM_PER_PX[obj], [
                e for e in d.events.recent if "calib" in str(e)
            ]
            assert d.pipeline.ar.homography[0, 2] == 3 * list(UM_PER_PX).index(obj)
            # the display went blank, and no frame captured between positions was ever drawn
            shown = sink.after(t_turn)
            assert any(not s[1] for s in shown)
            between = (t_turn + 2 * POLL_S * 1e9, t_arrived * 1e9)
            assert not [s for s in shown if s[1] and between[0] <= s[2] <= between[1]]
        events = [e["event"] for e in d.events.recent]
        assert events.count("objective") >= 4
    finally:
        d.stop()
        nosepiece.close()


@pytest.mark.timeout(120)
def test_manual_registration_over_http_is_saved_to_the_profile(
    per_objective_bundles, profile_dir, tmp_path
):
    import json

    from test_daemon import call

    cfg = parse_config(
        {
            "source": {"type": "virtual", "seed": 1001, "fps": FPS, "width": 320, "height": 180},
            "models": {"task": "test", "dirs": [str(per_objective_bundles)], "num_threads": 1},
            "display": {"width": 320, "height": 180},
            "calibration": {"profile": str(profile_dir)},
            "http": {"port": 0, "token": "t"},
            "state_dir": str(tmp_path / "state"),
        }
    )
    d = Daemon(cfg)
    sink = MemorySink()
    d.pipeline.ar_sinks.append(sink)
    d.start()
    try:
        assert wait_for(lambda: d.status()["objective"] == "10x", timeout=20)
        t = time.monotonic_ns()
        code, state = call(d, "POST", "/calibration/manual", {"action": "right"}, token="t")
        assert code == 200 and state["adjustment"]["dx_px"] == 5.0
        assert wait_for(lambda: any(s[1] for s in sink.after(t)))  # circles and cross shown
        code, state = call(d, "POST", "/calibration/manual", {"dx_px": 7, "save": True}, token="t")
        assert code == 200 and state["saved"]
        saved = json.loads((profile_dir / "profile.json").read_text())
        assert saved["objectives"]["10x"]["homography"][0][2] == pytest.approx(7.0)
        assert d.pipeline.ar.homography[0, 2] == pytest.approx(7.0)
        assert call(d, "POST", "/calibration/manual", {"action": "sideways"}, token="t")[0] == 400
    finally:
        d.stop()


class KeySink(MemorySink):
    """A window-like sink whose user presses keys."""

    def __init__(self, keys):
        super().__init__()
        self.keys = list(keys)

    def pop_keys(self):
        keys, self.keys = self.keys, []
        return keys


@pytest.mark.timeout(120)
def test_manual_registration_from_the_window_keyboard(per_objective_bundles, profile_dir, tmp_path):
    import json

    cfg = parse_config(
        {
            "source": {"type": "virtual", "seed": 1001, "fps": FPS, "width": 320, "height": 180},
            "models": {"task": "test", "dirs": [str(per_objective_bundles)], "num_threads": 1},
            "display": {"width": 320, "height": 180},
            "calibration": {"profile": str(profile_dir)},
            "http": {"port": 0, "token": "t"},
            "state_dir": str(tmp_path / "state"),
        }
    )
    d = Daemon(cfg)
    right = 65363  # X11 keysym of the right arrow, as cv2.waitKeyEx reports it
    sink = KeySink([ord("m"), right, right])
    d.pipeline.ar_sinks.append(sink)
    d.start()
    try:
        assert wait_for(lambda: d.status()["objective"] == "10x", timeout=20)
        d._window_keys()
        assert d.manual is not None and d.manual.adjustment.dx_px == 10.0
        sink.keys = [13]  # Enter saves
        d._window_keys()
        saved = json.loads((profile_dir / "profile.json").read_text())
        assert saved["objectives"]["10x"]["homography"][0][2] == pytest.approx(10.0)
        assert d.manual is None and d.pipeline.ar_override is None
    finally:
        d.stop()
