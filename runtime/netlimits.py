"""Connection limits of the HTTP API and error logging that cannot flood stderr.

`capped_factory` wraps aiohttp's protocol factory: beyond `max_connections` open connections a
new one is answered `503` and closed at once (so the daemon never reaches its fd limit), a
connection that has not sent a complete request header within `header_timeout_s` is closed
(slow clients; later requests on a kept-alive connection are bounded by aiohttp's keep-alive
timeout, `http.idle_timeout_s`), and one whose client stops reading what it is sent (a /live
viewer that never reads, a response left unread) is closed once its writes have been held for
`write_timeout_s`. `body_chunks` reads a request body with an idle timeout per read and a
deadline for the whole body (a client trickling bytes), raising `SlowClient` (408). `RateLimitedLog` logs one line per kind per `interval_s` with a count of the
ones it held back, and never a traceback; it backs the event loop's exception handler and a
filter on aiohttp's and asyncio's loggers.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
import time

from .events import bounded

log = logging.getLogger("lucida.runtime.http")
FD_RESERVE = 64  # fds kept for the camera, sinks, bundles, logs when capping connections

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: 55\r\n\r\n"
    b'{"error": "too many connections: try again in a moment"}'
)
BUSY = BUSY.replace(b"Content-Length: 55", b"Content-Length: %d" % len(BUSY.split(b"\r\n\r\n")[1]))


def connection_cap(configured: int) -> int:
    """`configured`, lowered to fit under this process's open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(4, min(configured, soft - FD_RESERVE))


class RateLimitedLog:
    """One log line per kind per interval; the next one says how many were held back."""

    def __init__(self, logger: logging.Logger = log, interval_s: float = 10.0):
        self.logger, self.interval_s = logger, interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        self.lines = 0  # lines actually written (for tests and /status)

    def allow(self, kind: str) -> int | None:
        """None: hold this one back; else how many of this kind were held back before it."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -1e18) < self.interval_s:
                self._held[kind] = self._held.get(kind, 0) + 1
                return None
            self._last[kind] = now
            self.lines += 1
            return self._held.pop(kind, 0)

    def __call__(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        held = self.allow(kind)
        if held is None:
            return
        more = f" ({held} more like it in the last {self.interval_s:g} s)" if held else ""
        self.logger.log(level, "%s%s", bounded(message, 300), more)

    def loop_handler(self, loop, context: dict) -> None:
        """asyncio exception handler: one line, no traceback, rate-limited by exception type."""
        exc = context.get("exception")
        kind = type(exc).__name__ if exc is not None else "asyncio"
        text = context.get("message", "")
        if exc is not None:
            text = f"{text}: {kind}: {exc}"
        self(f"loop:{kind}", text)

    def filter(self) -> logging.Filter:
        """A logging.Filter that rate-limits records and drops their tracebacks."""
        outer = self

        class _Filter(logging.Filter):
            lucida = True

            def filter(self, record: logging.LogRecord) -> bool:
                exc = record.exc_info[1] if record.exc_info else None
                kind = f"{record.name}:{type(exc).__name__ if exc else record.msg}"
                held = outer.allow(kind)
                if held is None:
                    return False
                msg = record.getMessage()
                if exc is not None:
                    msg = f"{msg}: {type(exc).__name__}: {exc}"
                if held:
                    msg += f" ({held} more like it in the last {outer.interval_s:g} s)"
                record.msg, record.args = bounded(msg, 300), None
                record.exc_info, record.exc_text, record.stack_info = None, None, None
                return True

        return _Filter()


MIN_BODY_RATE = 64 * 1024  # bytes/s: a request body slower than this on average is refused


class SlowClient(OSError):
    """A request body that stalled or trickled past its deadline: answered 408, then closed."""

    status = 408


def body_deadline_s(max_bytes: int, idle_s: float) -> float:
    """Seconds a body of up to `max_bytes` may take: the idle timeout plus MIN_BODY_RATE."""
    return idle_s + max_bytes / MIN_BODY_RATE


async def body_chunks(content, idle_s: float, total_s: float):
    """Yield the chunks of a request body (aiohttp StreamReader `content`) until its end.

    Raises SlowClient when no data came for `idle_s` seconds, or the body is not complete
    `total_s` seconds after the first read; size caps are the caller's."""
    loop = asyncio.get_running_loop()
    end = loop.time() + total_s
    while True:
        left = end - loop.time()
        try:
            if left <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(content.readany(), min(idle_s, left))
        except TimeoutError:
            if loop.time() >= end - 1e-3:
                raise SlowClient(
                    f"request body too slow: not complete within {total_s:g} s"
                ) from None
            raise SlowClient(f"request body stalled: no data for {idle_s:g} s") from None
        if not chunk:
            return
        yield chunk


class _Busy(asyncio.Protocol):
    """Answers 503 and hangs up: a connection over the cap."""

    def connection_made(self, transport) -> None:
        try:
            transport.write(BUSY)
        finally:
            transport.close()

    def data_received(self, data) -> None:  # pragma: no cover - closed already
        pass


def capped_factory(
    server,
    max_connections: int,
    header_timeout_s: float,
    on_refuse=None,
    write_timeout_s: float | None = None,
):
    """A protocol factory for loop.create_server around aiohttp's `server` (web.Server).

    With `write_timeout_s`, connections are swept every second (or more often for short
    timeouts): one whose writes stayed paused (the client's receive window full: it does not
    read) at every sweep for `write_timeout_s` is aborted; its handler's next write fails."""
    loop = asyncio.get_event_loop()
    held: dict = {}  # handler -> loop time its writes were first seen paused

    def sweep(period: float) -> None:
        now = loop.time()
        conns = server._connections
        for handler, transport in list(conns.items()):
            if not handler.writing_paused:
                held.pop(handler, None)
            elif now - held.setdefault(handler, now) >= write_timeout_s:
                held.pop(handler, None)
                transport.abort()  # a client that does not read: its buffers go
                if on_refuse is not None:
                    on_refuse("write_timeout")
        for handler in [h for h in held if h not in conns]:
            del held[handler]
        loop.call_later(period, sweep, period)

    if write_timeout_s is not None:
        period = min(1.0, write_timeout_s / 4)
        loop.call_later(period, sweep, period)

    def close_if_silent(handler) -> None:
        transport = server._connections.get(handler)
        if transport is None:
            return
        if handler._request_count == 0 and not handler._request_in_progress:
            transport.abort()  # no complete header yet: a slow or silent client
            if on_refuse is not None:
                on_refuse("header_timeout")

    def factory():
        if len(server._connections) >= max_connections:
            if on_refuse is not None:
                on_refuse("connection_cap")
            return _Busy()
        handler = server()
        loop.call_later(header_timeout_s, close_if_silent, handler)
        return handler

    return factory
