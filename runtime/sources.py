"""Frame sources: one small interface (open -> read -> close) over cameras, files and replays.

`read(timeout_s)` returns the next Frame, None when no frame came in time (a stall), and raises
SourceError when the source is gone (unplugged); the pipeline reopens it with back-off.
Every frame is stamped with time.monotonic_ns() when it was captured (or decoded).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np

from .camera_controls import (
    CONTROLS,
    PICAMERA2_HAS,
    apply_opencv,
    check_controls,
    picamera2_controls,
    read_opencv,
    read_picamera2,
)
from .frame import Frame

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class SourceError(RuntimeError):
    """The source is unusable right now (disconnected, unreadable); it may come back."""


class FrameSource(ABC):
    """A camera or anything that yields camera-like frames."""

    name: str = "source"
    objective: str | None = None  # what the source knows of the objective (None: unknown)
    # False only for slideshows of unrelated stills (image replay): there consecutive frames are
    # different fields by design, so the pipeline does not measure stage motion between them
    motion_from_image: bool = True

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire the device or file; may raise SourceError."""

    @abstractmethod
    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """The next frame, None on a timeout, SourceError when the source is gone."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device or file."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Drop frames captured before now (after a stage or illumination change)."""

    controls_applied: dict | None = (
        None  # what set_controls last read back (runtime.camera_controls)
    )

    def set_controls(self, controls: dict) -> dict:
        """Apply camera controls (runtime.camera_controls names and units); returns per control
        what was asked, whether the camera took it and the value read back."""
        raise SourceError(f"{self.name}: this source has no camera controls")

    def camera_controls(self) -> dict:
        """{control: value now (None: unknown)} for the controls this source has; {} for none
        (the operator page shows only these)."""
        return {}


class _Pacer:
    """Sleeps so that successive calls are at most `fps` per second (fps <= 0: no pacing)."""

    def __init__(self, fps: float):
        self.period_ns = int(1e9 / fps) if fps and fps > 0 else 0
        self.next_ns = 0

    def wait(self) -> None:
        if not self.period_ns:
            return
        now = time.monotonic_ns()
        if self.next_ns > now:
            time.sleep((self.next_ns - now) / 1e9)
            now = self.next_ns
        self.next_ns = max(self.next_ns + self.period_ns, now)


class ReplaySource(FrameSource):
    """Images (a folder, or arrays in memory) replayed at `fps`, looping when `loop`.

    Frames carry meta "replay_index" (position in the list) and, from a folder, "replay_file"
    (the image's file name: the HIL bench matches it with a ground-truth mask of that name).
    Each image is its own field (a slideshow): no motion is measured between them."""

    motion_from_image = False

    def __init__(
        self,
        images: str | os.PathLike | list[np.ndarray],
        fps: float = 30.0,
        loop: bool = True,
        objective: str | None = None,
    ):
        self.images_spec, self.fps, self.loop = images, fps, loop
        self.objective = objective
        self.name = f"replay:{images}" if not isinstance(images, list) else "replay:memory"
        self._frames: list[np.ndarray] = []
        self._names: list[str] = []
        self._seq = itertools.count()

    def open(self) -> None:
        if isinstance(self.images_spec, list):
            self._frames = [np.ascontiguousarray(a, dtype=np.uint8) for a in self.images_spec]
        else:
            folder = Path(self.images_spec)
            paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not paths:
                raise SourceError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) to replay")
            self._frames = []
            self._names = [p.name for p in paths]
            for p in paths:
                bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise SourceError(f"{p}: not a readable image")
                self._frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if not self._frames:
            raise SourceError("replay source has no images")
        idx = range(len(self._frames))
        self._iter = itertools.cycle(idx) if self.loop else iter(idx)
        self._pacer = _Pacer(self.fps)

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        try:
            i = next(self._iter)
        except StopIteration:
            raise SourceError(f"{self.name}: end of replay") from None
        self._pacer.wait()
        meta = {"replay_index": i}
        if self._names:
            meta["replay_file"] = self._names[i]
        return Frame(
            self._frames[i], time.monotonic_ns(), next(self._seq), self.objective, meta=meta
        )


class OpenCVSource(FrameSource):
    """cv2.VideoCapture: a V4L2/UVC device index, a video file, an RTSP URL or a GStreamer pipeline.

    Frames are grabbed on a background thread so `read` always returns the newest one (a camera
    driver's buffer never serves a frame older than the request).
    """

    def __init__(self, spec: str | int, size: tuple[int, int] | None = None, fps: float = 0.0):
        self.spec = int(spec) if isinstance(spec, str) and spec.isdigit() else spec
        self.size, self.fps = size, fps
        self.name = f"opencv:{spec}"
        self._cap = None
        self._latest: Frame | None = None
        self._error: str | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._seq = itertools.count()
        self.controls: dict = {}

    def set_controls(self, controls: dict) -> dict:
        """VideoCapture properties (V4L2 through OpenCV), applied now when open and again at
        every (re)open; returns what was read back."""
        self.controls = {**self.controls, **check_controls(controls)}
        cap = self._cap
        if cap is None:
            return {n: {"asked": v, "accepted": None, "read": None} for n, v in controls.items()}
        self.controls_applied = {**(self.controls_applied or {}), **apply_opencv(cap, controls)}
        return self.controls_applied

    def camera_controls(self) -> dict:
        """A camera device (an index or /dev/video*) has them; a file, URL or pipeline has not."""
        spec = self.spec
        if not (isinstance(spec, int) or str(spec).startswith("/dev/video")):
            return {}
        cap = self._cap
        if cap is None:
            return {n: self.controls.get(n) for n in CONTROLS}
        return read_opencv(cap)

    def open(self) -> None:
        api = cv2.CAP_GSTREAMER if isinstance(self.spec, str) and "!" in self.spec else cv2.CAP_ANY
        cap = cv2.VideoCapture(self.spec, api)
        if not cap.isOpened():
            raise SourceError(f"{self.name}: cannot open (no such device, file or stream)")
        if self.size:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        if self.controls:
            self.controls_applied = apply_opencv(cap, self.controls)
        self._cap, self._error, self._latest = cap, None, None
        self._stop.clear()
        self._pacer = _Pacer(self.fps)
        self._thread = threading.Thread(target=self._grab, name=self.name, daemon=True)
        self._thread.start()

    def _grab(self) -> None:
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            t = time.monotonic_ns()
            with self._cond:
                if not ok or bgr is None:
                    self._error = f"{self.name}: stream ended or device disconnected"
                    self._cond.notify_all()
                    return
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                self._latest = Frame(rgb, t, next(self._seq), objective=self.objective)
                self._cond.notify_all()
            self._pacer.wait()

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        with self._cond:
            if self._latest is None and self._error is None:
                self._cond.wait(timeout_s)
            frame, self._latest = self._latest, None
            if frame is None and self._error:
                raise SourceError(self._error)
            return frame

    def flush(self) -> None:
        with self._cond:
            self._latest = None

    def close(self) -> None:
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)  # never release the capture under a read() in flight
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class PiCameraSource(FrameSource):
    """Raspberry Pi camera via picamera2 (optional extra `picamera`, imported lazily).

    Uses the low-resolution stream for inference (`lores_size`), RGB888.
    """

    def __init__(self, size: tuple[int, int] = (1920, 1080), lores_size=(960, 540)):
        self.size, self.lores_size = size, lores_size
        self.name = "picamera2"
        self._cam = None
        self._seq = itertools.count()

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(
                "picamera2 is not installed: `pip install camera-lucida[picamera]` on Raspberry Pi OS "
                "(needs the system libcamera packages)"
            ) from None
        cam = Picamera2()
        cfg = cam.create_video_configuration(
            main={"size": self.size, "format": "RGB888"},
            lores={"size": self.lores_size, "format": "YUV420"},
        )
        cam.configure(cfg)
        cam.start()
        self._cam = cam

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        try:
            # picamera2's "RGB888" is BGR byte order in memory
            bgr = self._cam.capture_array("main")
        except Exception as exc:
            raise SourceError(f"picamera2: capture failed: {exc}") from None
        return Frame(bgr[..., ::-1].copy(), time.monotonic_ns(), next(self._seq), self.objective)

    def set_controls(self, controls: dict) -> dict:
        """libcamera controls; applied values read back from the next frame's metadata."""
        lib, refused = picamera2_controls(controls)
        if self._cam is None:
            raise SourceError("picamera2: not open")
        self._cam.set_controls(lib)
        read = read_picamera2(self._cam.capture_metadata())
        self.controls_applied = {
            n: {"asked": v, "accepted": n not in refused, "read": read.get(n)}
            for n, v in controls.items()
        }
        return self.controls_applied

    def camera_controls(self) -> dict:
        """exposure, gain, auto exposure and frame rate (libcamera takes no colour temperature);
        the values last read back."""
        read = self.controls_applied or {}
        return {n: (read.get(n) or {}).get("read") for n in PICAMERA2_HAS}

    def flush(self) -> None:
        """Wait for a frame that started exposing after now, so none older than the request is used."""
        if self._cam is not None:
            self._cam.capture_request(flush=True).release()

    def close(self) -> None:
        if self._cam is not None:
            self._cam.stop()
            self._cam.close()
            self._cam = None


def make_source(spec: str, **kw) -> FrameSource:
    """A source from a short string.

    "virtual[:SEED]"  the virtual microscope     "replay:DIR"  images in DIR at kw fps
    "cv:0" / "cv:file.mp4" / "cv:rtsp://..."      "picamera"    Raspberry Pi camera
    """
    kind, _, rest = spec.partition(":")
    if kind == "virtual":
        from .virtual.scope import VirtualMicroscope

        return VirtualMicroscope(seed=int(rest) if rest else 0, **kw)
    if kind == "replay":
        return ReplaySource(rest, **kw)
    if kind in ("cv", "opencv", "v4l2"):
        return OpenCVSource(rest, **kw)
    if kind == "picamera":
        return PiCameraSource(**kw)
    raise ValueError(
        f"source {spec!r}: expected virtual[:SEED], replay:DIR, cv:DEVICE|FILE|URL or picamera"
    )
