"""Camera controls: the OpenCV property calls (asserted), the virtual microscope's camera, the
config per objective and POST /camera on a running daemon."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import daemon_config
from lucida.runtime import sources
from lucida.runtime.camera_controls import ControlError, check_controls, picamera2_controls
from lucida.runtime.config import ConfigError, parse_config
from lucida.runtime.daemon import Daemon
from lucida.runtime.sources import OpenCVSource
from lucida.runtime.virtual.camera import CameraConfig
from lucida.runtime.virtual.scope import VirtualMicroscope
from lucida.runtime.virtual.stage import StagePath
from test_daemon import TOKEN, call, wait_for

REAL_CAPTURE = cv2.VideoCapture


class RecordingCapture:
    """A real cv2.VideoCapture (wrapped: cv2's classes must not be subclassed in Python) that
    remembers every property it was asked to set."""

    calls: list = []

    def __init__(self, *args):
        self._cap = REAL_CAPTURE(*args)

    def set(self, prop, value):
        RecordingCapture.calls.append((prop, value))
        return self._cap.set(prop, value)

    def __getattr__(self, name):
        return getattr(self._cap, name)


@pytest.fixture()
def video(tmp_path):
    path = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (64, 48))
    for i in range(10):
        w.write(np.full((48, 64, 3), 20 * i, np.uint8))
    w.release()
    return path


def test_opencv_controls_are_property_calls_read_back(video, monkeypatch):
    monkeypatch.setattr(sources.cv2, "VideoCapture", RecordingCapture)
    RecordingCapture.calls = []
    src = OpenCVSource(str(video))
    src.set_controls({"exposure_ms": 5, "gain": 2.0, "white_balance_k": 4500, "fps": 20})
    src.open()
    try:
        calls = dict(RecordingCapture.calls)
        assert calls[cv2.CAP_PROP_AUTO_EXPOSURE] == 1.0  # V4L2 manual, before the exposure
        assert calls[cv2.CAP_PROP_EXPOSURE] == 50.0  # 5 ms in V4L2's 100 us steps
        assert calls[cv2.CAP_PROP_GAIN] == 2.0
        assert calls[cv2.CAP_PROP_AUTO_WB] == 0.0 and calls[cv2.CAP_PROP_WB_TEMPERATURE] == 4500
        applied = src.controls_applied
        assert applied["fps"]["read"] == pytest.approx(20.0)  # the file's rate, read back
        assert applied["gain"]["accepted"] is False  # a file has no gain: reported, not assumed
        RecordingCapture.calls = []
        again = src.set_controls({"gain": 3})  # at run time, on the open capture
        assert RecordingCapture.calls == [(cv2.CAP_PROP_GAIN, 3.0)] and again["gain"]["asked"] == 3
    finally:
        src.close()


def test_control_names_and_values_are_checked():
    with pytest.raises(ControlError, match="brightness"):
        check_controls({"brightness": 1})
    with pytest.raises(ControlError, match="gain"):
        check_controls({"gain": -1})
    lib, refused = picamera2_controls({"exposure_ms": 8, "fps": 25, "white_balance_k": 5000})
    assert lib == {"ExposureTime": 8000, "AeEnable": False, "FrameDurationLimits": (40000, 40000)}
    assert "white_balance_k" in refused
    with pytest.raises(ConfigError, match="source.controls"):
        parse_config({"source": {"controls": {"10x": {"exposure": 3}}}})


def test_virtual_camera_takes_exposure_and_gain():
    scope = VirtualMicroscope(
        seed=3, path=StagePath.still(2000, 2000), realtime=False,
        camera=CameraConfig(resolution=(96, 64), read_noise_dn=0, shot_noise=0),
    )  # fmt: skip
    scope.open()
    dark = scope.read().image.mean()
    applied = scope.set_controls({"exposure_ms": 5.0, "auto_exposure": False})
    assert applied["exposure_ms"] == {"asked": 5.0, "accepted": True, "read": 5.0}
    assert applied["auto_exposure"]["accepted"] is False  # not modelled: said so
    assert scope.read().image.mean() < dark * 0.7


def test_daemon_sets_controls_per_objective_and_over_http(tiny_bundle, tmp_path):
    source = {
        "type": "virtual", "fps": 10, "width": 128, "height": 96,
        "controls": {"default": {"gain": 1.5}, "10x": {"exposure_ms": 8}},
    }  # fmt: skip
    d = Daemon(parse_config(daemon_config(tmp_path, tiny_bundle, source, TOKEN)))
    d.start()
    try:
        assert wait_for(lambda: d.pipeline.source.controls_applied is not None)
        code, st = call(d, "GET", "/status")
        assert st["camera"]["exposure_ms"]["read"] == 8.0 and st["camera"]["gain"]["read"] == 1.5
        code, body = call(d, "POST", "/camera", {"exposure_ms": 12.5})
        assert code == 200 and body["camera"]["exposure_ms"]["read"] == 12.5
        code, body = call(d, "POST", "/camera", {"shutter": 1})
        assert code == 400 and "shutter" in body["error"]
    finally:
        d.stop()
