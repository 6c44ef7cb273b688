"""Display sinks: where a composed canvas goes (window, framebuffer, video, PNG, MJPEG).

Every sink takes HxWx3 uint8 RGB canvases and converts to its own format. `show` may keep
a reference to the canvas (PNG snapshots, MJPEG): do not draw into a canvas after showing
it (the composers return a new array each call). Use `make_sink("fb:/dev/fb0")` or
`make_sinks([...])` to build sinks from short strings.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
from lucida.calibration.atomic import atomic_write_bytes

from .errors import OverlayError
from .render import check_canvas

log = logging.getLogger(__name__)


class Sink:
    """One display output: `open()`, then `show(canvas_rgb)` per frame, then `close()`.

    last_latency_ms: capture -> shown time of the last frame that carried t_capture_ns
    (monotonic clock), None otherwise. frames: frames shown so far.
    """

    name = "sink"
    # False while nobody looks at this output (a stream without viewers): the pipeline then
    # neither composes nor sends its frames, and calls `idle()` instead
    watched = True

    def __init__(self) -> None:
        self.frames = 0
        self.last_latency_ms: float | None = None

    def idle(self) -> None:
        """A frame was not sent because nobody watched (see `watched`)."""

    def open(self) -> None:
        """Acquire the output (window, device, file, socket)."""

    def show(self, canvas_rgb: np.ndarray, t_capture_ns: int | None = None) -> None:
        """Display one HxWx3 uint8 RGB canvas."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the output; safe to call twice."""

    def _shown(self, t_capture_ns: int | None) -> None:
        self.frames += 1
        if t_capture_ns is not None:
            self.last_latency_ms = (time.monotonic_ns() - int(t_capture_ns)) / 1e6

    def __enter__(self) -> Sink:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class WindowSink(Sink):
    """A (full-screen) OpenCV highgui window; pumps events with waitKey(1) on every show.

    Keys pressed in the window are kept: `last_key` (the latest code, or None) and
    `pop_keys()` (all since the last call), e.g. for nudging a manual calibration.
    """

    def __init__(self, title: str = "lucida", fullscreen: bool = True) -> None:
        super().__init__()
        self.title = title
        self.fullscreen = fullscreen
        self.name = f"window:{title}"
        self.last_key: int | None = None
        self._keys: list[int] = []
        self._open = False
        self._size: tuple[int, int] | None = None

    def open(self) -> None:
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise OverlayError(
                "window sink: no display (DISPLAY is not set); expected an X server, "
                "e.g. run under Xvfb or use the fb: sink"
            )
        flags = cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL
        cv2.namedWindow(self.title, flags)
        self._size = None
        self._open = True

    def _place(self, size: tuple[int, int]) -> None:
        # Without a window manager (a bare X server on the device) the full-screen request
        # is not honoured, so also put the window at the origin at the canvas's size: the AR
        # canvas has the display's resolution.
        if self.fullscreen:
            cv2.moveWindow(self.title, 0, 0)
            cv2.resizeWindow(self.title, *size)
            cv2.setWindowProperty(self.title, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
        self._size = size

    def show(self, canvas_rgb: np.ndarray, t_capture_ns: int | None = None) -> None:
        if not self._open:
            self.open()
        canvas = check_canvas(canvas_rgb)
        size = (canvas.shape[1], canvas.shape[0])
        if size != self._size:
            self._place(size)
        cv2.imshow(self.title, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        self.poll()
        self._shown(t_capture_ns)

    def poll(self, ms: int = 1) -> int | None:
        """Pump window events for `ms` milliseconds; returns the key pressed, if any."""
        key = cv2.waitKey(max(1, int(ms)))
        if key == -1:
            return None
        self.last_key = key
        self._keys.append(key)
        return key

    def pop_keys(self) -> list[int]:
        """Key codes pressed since the last call, oldest first."""
        keys, self._keys = self._keys, []
        return keys

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:  # pragma: no cover - window already gone
                pass


def _read_sysfs(directory: Path, name: str) -> str | None:
    try:
        return (directory / name).read_text().strip()
    except OSError:
        return None


class FramebufferSink(Sink):
    """A Linux framebuffer (/dev/fbN), laid out as sysfs describes it.

    Reads `virtual_size` ("W,H"), `bits_per_pixel` and `stride` (bytes per line) from
    sysfs_dir (default /sys/class/graphics/fbN); when `modes` is present ("U:1920x1080p-60")
    its first mode is the visible size (virtual_size may be taller for double buffering).
    Pixel formats: 16 bpp RGB565; 24 bpp B,G,R bytes; 32 bpp B,G,R,X bytes (XRGB8888
    little-endian). rgb_order="rgb" swaps red and blue for panels that use R,G,B byte order.
    Canvases of another size are resized to the framebuffer's.
    """

    def __init__(
        self,
        path: str | os.PathLike = "/dev/fb0",
        sysfs_dir: str | os.PathLike | None = None,
        rgb_order: str = "bgr",
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.sysfs_dir = (
            Path(sysfs_dir) if sysfs_dir else Path("/sys/class/graphics") / self.path.name
        )
        if rgb_order not in ("bgr", "rgb"):
            raise OverlayError(f"framebuffer rgb_order {rgb_order!r}: expected 'bgr' or 'rgb'")
        self.rgb_order = rgb_order
        self.name = f"fb:{self.path}"
        self.size: tuple[int, int] | None = None
        self.bits_per_pixel = 0
        self.stride = 0
        self._fd: int | None = None
        self._buf: np.ndarray | None = None

    def open(self) -> None:
        d = self.sysfs_dir
        vsize, bpp = _read_sysfs(d, "virtual_size"), _read_sysfs(d, "bits_per_pixel")
        if vsize is None or bpp is None:
            raise OverlayError(
                f"framebuffer {self.path}: no virtual_size/bits_per_pixel in {d}; "
                "expected a Linux fbdev sysfs folder"
            )
        try:
            w, h = (int(v) for v in vsize.split(","))
            self.bits_per_pixel = int(bpp)
            modes = _read_sysfs(d, "modes")
            if modes:
                mw, mh = modes.splitlines()[0].split(":")[-1].split("p")[0].split("i")[0].split("x")
                w, h = min(w, int(mw)), min(h, int(mh))
        except ValueError:
            raise OverlayError(
                f"framebuffer {self.path}: unreadable sysfs values in {d} "
                f"(virtual_size={vsize!r}, bits_per_pixel={bpp!r})"
            ) from None
        if self.bits_per_pixel not in (16, 24, 32):
            raise OverlayError(
                f"framebuffer {self.path}: {self.bits_per_pixel} bits per pixel; "
                "expected 16 (RGB565), 24 or 32 (XRGB8888)"
            )
        row = w * self.bits_per_pixel // 8
        stride = _read_sysfs(d, "stride")
        self.stride = int(stride) if stride and stride.isdigit() and int(stride) > 0 else row
        if self.stride < row:
            raise OverlayError(
                f"framebuffer {self.path}: stride {self.stride} B < {row} B per line of {w} px"
            )
        self.size = (w, h)
        fd = os.open(self.path, os.O_RDWR)
        st = os.fstat(fd)
        if os.path.isfile(self.path) and st.st_size < self.stride * h:
            os.close(fd)
            raise OverlayError(
                f"framebuffer {self.path}: file is {st.st_size} B; expected at least "
                f"{self.stride * h} B ({h} lines of {self.stride} B)"
            )
        self._fd = fd
        self._buf = np.zeros((h, self.stride), np.uint8)

    def encode(self, canvas_rgb: np.ndarray) -> np.ndarray:
        """The framebuffer bytes for a canvas: H x stride uint8 (padding bytes zero)."""
        if self.size is None or self._buf is None:
            raise OverlayError(f"framebuffer {self.path}: not open")
        canvas = check_canvas(canvas_rgb)
        w, h = self.size
        if (canvas.shape[1], canvas.shape[0]) != (w, h):
            canvas = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)
        swap = self.rgb_order == "rgb"
        if self.bits_per_pixel == 16:
            code = cv2.COLOR_BGR2BGR565 if swap else cv2.COLOR_RGB2BGR565
        elif self.bits_per_pixel == 24:
            code = None if swap else cv2.COLOR_RGB2BGR
        else:
            code = cv2.COLOR_RGB2RGBA if swap else cv2.COLOR_RGB2BGRA
        data = canvas if code is None else cv2.cvtColor(canvas, code)
        row = w * self.bits_per_pixel // 8
        self._buf[:, :row] = data.reshape(h, row)
        return self._buf

    def show(self, canvas_rgb: np.ndarray, t_capture_ns: int | None = None) -> None:
        if self._fd is None:
            self.open()
        buf = self.encode(canvas_rgb)
        os.pwrite(self._fd, memoryview(buf).cast("B"), 0)
        self._shown(t_capture_ns)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "MJPG"}


class VideoSink(Sink):
    """A video file via cv2.VideoWriter (.mp4/.mov: mp4v, .avi/.mkv: MJPG), fps frames per s.

    The writer opens on the first frame (its size fixes the video size; later frames of
    another size are resized).
    """

    def __init__(
        self, path: str | os.PathLike, fps: float = 30.0, fourcc: str | None = None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if fourcc is None and ext not in _FOURCC:
            raise OverlayError(
                f"video sink {self.path}: unknown extension {ext!r}; expected one of "
                f"{', '.join(sorted(_FOURCC))}"
            )
        if not fps > 0:
            raise OverlayError(f"video sink fps {fps!r}: expected a positive number")
        self.fourcc = fourcc or _FOURCC[ext]
        self.fps = float(fps)
        self.name = f"video:{self.path}"
        self.size: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None

    def open(self) -> None:
        if not self.path.parent.is_dir():
            raise OverlayError(f"video sink {self.path}: folder {self.path.parent} does not exist")

    def show(self, canvas_rgb: np.ndarray, t_capture_ns: int | None = None) -> None:
        canvas = check_canvas(canvas_rgb)
        if self._writer is None:
            self.open()
            self.size = (canvas.shape[1], canvas.shape[0])
            writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self.size
            )
            if not writer.isOpened():
                raise OverlayError(
                    f"video sink {self.path}: OpenCV cannot write {self.fourcc} video here"
                )
            self._writer = writer
        if (canvas.shape[1], canvas.shape[0]) != self.size:
            canvas = cv2.resize(canvas, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        self._shown(t_capture_ns)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def write_png(path: Path, canvas_rgb: np.ndarray, level: int = 1) -> Path:
    """Write an RGB canvas as PNG atomically (temp file, fsync, rename).

    level: zlib compression 0..9 (1 is fast; 9 is smallest).
    """
    bgr = cv2.cvtColor(check_canvas(canvas_rgb), cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, int(level)])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise OverlayError(f"png {path}: encoding failed")
    atomic_write_bytes(path, data.tobytes())
    return path


class PngSink(Sink):
    """PNG snapshots in a folder: every `every_n`-th frame (0 = never), and on `snapshot()`."""

    def __init__(
        self, directory: str | os.PathLike, every_n: int = 0, prefix: str = "lucida"
    ) -> None:
        super().__init__()
        if int(every_n) < 0:
            raise OverlayError(f"png sink every_n {every_n!r}: expected an integer >= 0")
        self.directory = Path(directory)
        self.every_n = int(every_n)
        self.prefix = prefix
        self.name = f"png:{self.directory}"
        self._latest: np.ndarray | None = None
        self._snapshots = 0

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def show(self, canvas_rgb: np.ndarray, t_capture_ns: int | None = None) -> None:
        self._latest = check_canvas(canvas_rgb)
        self._shown(t_capture_ns)
        if self.every_n and self.frames % self.every_n == 0:
            self.open()
            write_png(self.directory / f"{self.prefix}-{self.frames:06d}.png", self._latest)

    def snapshot(self, path: str | os.PathLike | None = None) -> Path:
        """Write the latest canvas now; returns the file's path."""
        if self._latest is None:
            raise OverlayError(f"png sink {self.directory}: no frame shown yet to snapshot")
        self._snapshots += 1
        if path is None:
            self.open()
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = self.directory / f"{self.prefix}-snapshot-{stamp}-{self._snapshots:03d}.png"
        return write_png(Path(path), self._latest)


class JpegStream(Sink):
    """The newest canvas and its JPEG, encoded at most once per shown frame for every viewer.

    `show()` only keeps the canvas (no encoding when nobody watches); `wait_jpeg(after_seq)`
    returns (seq, JPEG bytes) of the first frame newer than after_seq, encoding it on the first
    request and handing the same bytes to every later viewer. `max_width` (px) downscales first.
    `encodes` counts JPEG encodings, `seq` the frames shown.
    """

    name = "jpeg"

    def __init__(self, quality: int = 80, max_width: int | None = None) -> None:
        super().__init__()
        self.quality, self.max_width = int(quality), max_width
        self.encodes = 0
        self._cond = threading.Condition()
        self._latest: np.ndarray | None = None
        self._seq = 0
        self._closed = False
        self._jpeg: tuple[int, bytes] | None = None
        self._enc_lock = threading.Lock()
        self._wanted_ns = 0  # monotonic time a viewer last asked (want, wait_jpeg)

    WATCH_S = 2.0  # a viewer keeps the frames coming this long after its last request

    def want(self) -> None:
        """A viewer asks for frames: `watched` stays True for WATCH_S from now."""
        self._wanted_ns = time.monotonic_ns()

    @property
    def watched(self) -> bool:
        """A viewer asked within WATCH_S (the pipeline composes this stream's frames)."""
        return time.monotonic_ns() - self._wanted_ns <= self.WATCH_S * 1e9

    def idle(self) -> None:
        """Frames are skipped while nobody watches: forget the last one, so a new viewer
        waits for a fresh frame instead of getting an old field."""
        with self._cond:
            self._latest = None

    @property
    def canvas(self) -> np.ndarray | None:
        """The newest HxWx3 RGB canvas shown, or None before the first."""
        return self._latest

    @property
    def seq(self) -> int:
        return self._seq

    def open(self) -> None:
        with self._cond:
            self._closed = False

    def show(self, canvas_rgb: np.ndarray, t_capture_ns: int | None = None) -> None:
        canvas = check_canvas(canvas_rgb)
        with self._cond:
            self._latest = canvas
            self._seq += 1
            self._cond.notify_all()
        self._shown(t_capture_ns)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_jpeg(self, after_seq: int, timeout: float) -> tuple[int, bytes] | None:
        """(seq, JPEG) of the first frame newer than after_seq; None on timeout or close.
        Counts as a viewer's request (`want`)."""
        self.want()
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._closed or (self._latest is not None and self._seq != after_seq),
                timeout=timeout,
            )
            if not ok or self._closed:
                return None
            seq, canvas = self._seq, self._latest
        with self._enc_lock:
            if self._jpeg is None or self._jpeg[0] < seq:
                self._jpeg = (seq, self._encode(canvas))
            return self._jpeg

    def _encode(self, canvas: np.ndarray) -> bytes:
        h, w = canvas.shape[:2]
        if self.max_width and w > self.max_width:
            size = (self.max_width, round(h * self.max_width / w))
            canvas = cv2.resize(canvas, size, interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise OverlayError("JPEG encoding failed")
        self.encodes += 1
        return data.tobytes()


class MjpegSink(Sink):
    """Motion JPEG over HTTP (multipart/x-mixed-replace) from a background thread.

    GET /stream.mjpg streams the latest canvas to each client, GET /snapshot.jpg returns
    one JPEG, GET / a page showing the stream. Latest-frame semantics: a slow client skips
    frames; JPEG encoding happens only while a client asks (once per frame, shared).
    port=0 picks a free port; `url` is the stream's address once open.
    """

    BOUNDARY = "lucidaframe"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, quality: int = 80) -> None:
        super().__init__()
        self.host, self.port = host, int(port)
        self.quality = int(quality)
        self.name = f"mjpeg:{host}:{port}"
        self.clients = 0
        self.frames_jpeg = JpegStream(quality=quality)
        self._clients_lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def watched(self) -> bool:
        """A client streams or asked for a snapshot within JpegStream.WATCH_S."""
        return self.clients > 0 or self.frames_jpeg.watched

    def idle(self) -> None:
        self.frames_jpeg.idle()

    @property
    def url(self) -> str:
        """http://host:port/stream.mjpg"""
        return f"http://{self.host}:{self.port}/stream.mjpg"

    def open(self) -> None:
        if self._server is not None:
            return
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # route to logging, not stderr
                log.debug("mjpeg %s: " + fmt, self.address_string(), *args)

            def do_GET(self):  # noqa: N802 - http.server naming
                route = self.path.split("?")[0]
                if route == "/stream.mjpg":
                    sink._stream(self)
                elif route == "/snapshot.jpg":
                    jpeg = sink.frames_jpeg.wait_jpeg(-1, timeout=2.0)
                    if jpeg is None:
                        self.send_error(503, "no frame yet")
                        return
                    self._send(200, "image/jpeg", jpeg[1])
                elif route == "/":
                    page = (
                        b'<html><body style="margin:0;background:#000">'
                        b'<img src="/stream.mjpg" style="width:100%"></body></html>'
                    )
                    self._send(200, "text/html", page)
                else:
                    self.send_error(404)

            def _send(self, code, ctype, body):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            raise OverlayError(
                f"mjpeg sink {self.host}:{self.port}: cannot listen ({exc})"
            ) from None
        server.daemon_threads = True
        self._stop.clear()
        self.frames_jpeg.open()
        self._server = server
        self.port = server.server_address[1]
        self.name = f"mjpeg:{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="mjpeg-sink",
            daemon=True,
        )
        self._thread.start()
        log.info("mjpeg sink serving %s", self.url)

    def show(self, canvas_rgb: np.ndarray, t_capture_ns: int | None = None) -> None:
        if self._server is None:
            self.open()
        self.frames_jpeg.show(canvas_rgb)
        self._shown(t_capture_ns)

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={self.BOUNDARY}")
        handler.send_header("Cache-Control", "no-cache, private")
        handler.send_header("Pragma", "no-cache")
        handler.end_headers()
        with self._clients_lock:
            self.clients += 1
        seq = -1
        try:
            while not self._stop.is_set():
                jpeg = self.frames_jpeg.wait_jpeg(seq, timeout=0.5)
                if jpeg is None:
                    continue
                seq, data = jpeg
                head = (
                    f"--{self.BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n"
                ).encode()
                handler.wfile.write(head + data + b"\r\n")
                handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        finally:
            with self._clients_lock:
                self.clients -= 1

    def close(self) -> None:
        if self._server is None:
            return
        self._stop.set()
        self.frames_jpeg.close()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


class MultiSink(Sink):
    """Several sinks at once. A failing sink does not stop the others from getting the
    frame; the first error is raised after all were tried."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        super().__init__()
        self.sinks = list(sinks)
        self.name = "+".join(s.name for s in self.sinks) or "none"

    def open(self) -> None:
        opened: list[Sink] = []
        try:
            for s in self.sinks:
                s.open()
                opened.append(s)
        except BaseException:
            for s in opened:
                s.close()
            raise

    def show(self, canvas_rgb: np.ndarray, t_capture_ns: int | None = None) -> None:
        first: BaseException | None = None
        for s in self.sinks:
            try:
                s.show(canvas_rgb, t_capture_ns)
            except Exception as exc:  # noqa: BLE001 - re-raised below
                log.warning("sink %s failed: %s", s.name, exc)
                first = first or exc
        self._shown(t_capture_ns)
        if first is not None:
            raise first

    def close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except Exception as exc:  # noqa: BLE001 - closing the rest matters more
                log.warning("sink %s failed to close: %s", s.name, exc)


SINK_SPECS = "window[:TITLE], fb[:PATH], video:PATH, png:DIR, mjpeg[:[HOST:]PORT]"


def make_sink(spec: str, *, fps: float = 30.0, every_n: int = 0, fullscreen: bool = True) -> Sink:
    """A sink from a short string: "window", "fb:/dev/fb0", "video:out.mp4", "png:DIR",
    "mjpeg:127.0.0.1:8080" (mjpeg alone: 127.0.0.1:8080)."""
    kind, _, arg = str(spec).strip().partition(":")
    kind = kind.lower()
    if kind == "window":
        return WindowSink(arg or "lucida", fullscreen=fullscreen)
    if kind == "fb":
        return FramebufferSink(arg or "/dev/fb0")
    if kind == "video" and arg:
        return VideoSink(arg, fps=fps)
    if kind == "png" and arg:
        return PngSink(arg, every_n=every_n)
    if kind == "mjpeg":
        host, _, port = arg.rpartition(":")
        try:
            return MjpegSink(host or "127.0.0.1", int(port) if port else 8080)
        except ValueError:
            pass
    raise OverlayError(f"sink spec {spec!r}: expected one of {SINK_SPECS}")


def make_sinks(specs: Iterable[str], **kwargs) -> MultiSink:
    """A MultiSink of make_sink(spec) for each spec."""
    return MultiSink([make_sink(s, **kwargs) for s in specs])
