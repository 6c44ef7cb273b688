"""Frame sources: files, folders and devices through OpenCV, with clear errors."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from lucida.runtime.sources import OpenCVSource, ReplaySource, SourceError, make_source


def _video(path, n=12, size=(160, 120)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    for i in range(n):
        img = np.full((size[1], size[0], 3), (0, 0, 20 * i), np.uint8)  # BGR: red ramps up
        w.write(img)
    w.release()
    return path


def test_video_file_frames_are_rgb_stamped_and_then_end(tmp_path):
    src = OpenCVSource(str(_video(tmp_path / "v.avi")), fps=200)
    src.open()
    frames = []
    try:
        while True:
            f = src.read(timeout_s=1.0)
            if f is not None:
                frames.append(f)
    except SourceError as exc:
        assert "stream ended" in str(exc)
    finally:
        src.close()
    assert frames, "no frame decoded"
    assert frames[-1].image[..., 0].mean() > frames[-1].image[..., 2].mean()  # red is channel 0
    stamps = [f.t_capture_ns for f in frames]
    assert stamps == sorted(stamps) and all(s <= time.monotonic_ns() for s in stamps)


def test_missing_device_is_a_source_error():
    with pytest.raises(SourceError, match="cannot open"):
        OpenCVSource("/nonexistent/video.mp4").open()


def test_replay_folder_loops_at_its_pace(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), i * 50, np.uint8))
    src = ReplaySource(tmp_path, fps=50)
    src.open()
    t0 = time.monotonic()
    frames = [src.read() for _ in range(6)]
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 50, 100, 0, 50, 100]
    assert [f.seq for f in frames] == list(range(6))
    assert time.monotonic() - t0 >= 4 / 50  # paced, not as fast as possible


def test_replay_errors_name_the_problem(tmp_path):
    with pytest.raises(SourceError, match="no images"):
        ReplaySource(tmp_path).open()
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(SourceError, match="x.png: not a readable image"):
        ReplaySource(tmp_path).open()
    once = ReplaySource([np.zeros((4, 4, 3), np.uint8)], fps=0, loop=False)
    once.open()
    once.read()
    with pytest.raises(SourceError, match="end of replay"):
        once.read()


def test_make_source_rejects_unknown_specs():
    with pytest.raises(ValueError, match="expected virtual"):
        make_source("webcam")
    assert isinstance(make_source("cv:0"), OpenCVSource)
