"""The serial microscope link: a background thread that follows the objective turret.

`SerialLink` opens a serial port (pyserial), polls the Olympus BX nosepiece (`1OB?`) or
listens to a simple line protocol (other microscopes, foot pedals), and reports:
  - `on_objective("20x")` when the objective changes, `on_objective(None)` while the turret is
    between positions, at an unknown position, or the link is lost (olympus: the display must
    blank when the objective cannot be known);
  - `on_command(event)` for Overlay / OverlayToggle / Snap / Threshold / ClassSwitch lines.
Garbage, partial lines, a silent port and an unplugged adapter never end the thread: after
`max_failed_reads` consecutive unanswered polls or I/O errors it closes the port and reopens it
with back-off (the adapter may come back, under the same path or, with port="auto", another).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

import serial
import serial.tools.list_ports

try:
    import termios
except ImportError:  # not POSIX
    termios = None

from .retry import Backoff
from .serial_protocol import (
    PARSERS,
    Ack,
    ClassSwitch,
    Event,
    LineFramer,
    ObjectiveName,
    ObjectivePosition,
    Overlay,
    OverlayToggle,
    ProtocolError,
    Snap,
    Threshold,
    TurretMoving,
    normalize_objective,
    parse_olympus,
    parse_simple,
)

__all__ = [
    "Ack",
    "ClassSwitch",
    "Event",
    "LineFramer",
    "ObjectiveName",
    "ObjectivePosition",
    "Overlay",
    "OverlayToggle",
    "PROTOCOLS",
    "ProtocolError",
    "SerialLink",
    "SerialLinkError",
    "SerialSettings",
    "Snap",
    "Threshold",
    "TurretMoving",
    "find_port",
    "normalize_objective",
    "parse_olympus",
    "parse_positions",
    "parse_simple",
]

log = logging.getLogger(__name__)


class SerialLinkError(ProtocolError):
    """A bad serial link setting (protocol, position map, intervals)."""


@dataclass(frozen=True)
class SerialSettings:
    """Line settings and polling of one protocol. parity: "N", "E" or "O"."""

    baudrate: int
    bytesize: int
    parity: str
    stopbits: float
    poll: Optional[bytes]  # sent every poll interval; None: the device talks unprompted


PROTOCOLS: Dict[str, SerialSettings] = {
    "olympus": SerialSettings(19200, 8, "E", 2, b"1OB?\r\n"),
    "simple": SerialSettings(9600, 8, "N", 1, None),
}

# USB serial adapters (vendor id -> maker): what a microscope or pedal cable usually is.
USB_SERIAL_VIDS = {
    0x0403: "FTDI",
    0x067B: "Prolific",
    0x1A86: "WCH CH340",
    0x10C4: "Silicon Labs CP210x",
}
_USB_SERIAL_TEXT = re.compile(
    r"ftdi|prolific|ch34\d|cp210|pl2303|usb[ -]?(to[ -]?)?serial|usb[ -]?uart", re.I
)


def _port_score(p) -> int:
    """3: known USB serial adapter VID; 2: described as one; 1: any other USB port; 0: not USB."""
    if getattr(p, "vid", None) in USB_SERIAL_VIDS:
        return 3
    text = " ".join(
        str(getattr(p, k, "") or "") for k in ("description", "manufacturer", "product", "hwid")
    )
    if _USB_SERIAL_TEXT.search(text):
        return 2
    return 1 if getattr(p, "vid", None) is not None else 0


def find_port(
    ports: Optional[Iterable] = None, probe: Optional[Callable[[str], bool]] = None
) -> Optional[str]:
    """Best serial port for a microscope: a USB serial adapter (FTDI, Prolific, CH340, CP210x)
    first, then any USB serial port; None when there is none. `ports`: ListPortInfo-like objects
    (default: serial.tools.list_ports.comports()). probe: when given, the first candidate (best
    first) for which probe(device) is True: a pedal and a nosepiece on two adapters are told
    apart by asking."""
    candidates = list(serial.tools.list_ports.comports() if ports is None else ports)
    scored = sorted((-_port_score(p), str(p.device)) for p in candidates if _port_score(p) > 0)
    if probe is None:
        return scored[0][1] if scored else None
    return next((dev for _, dev in scored if probe(dev)), None)


def parse_positions(positions: Optional[Mapping]) -> Dict[int, str]:
    """{1: "4x", "2": "10X"} -> {1: "4x", 2: "10x"}; raises SerialLinkError on a bad entry."""
    out: Dict[int, str] = {}
    for key, name in (positions or {}).items():
        try:
            pos = int(key)
        except (TypeError, ValueError):
            pos = 0
        if isinstance(key, bool) or pos < 1 or str(key).strip() != str(pos):
            raise SerialLinkError(f"nosepiece position {key!r}: expected an integer >= 1")
        try:
            out[pos] = normalize_objective(name)
        except ProtocolError as exc:
            raise SerialLinkError(f"nosepiece position {pos}: {exc}") from None
    return out


_UNSET = object()
# pyserial lets termios.error (not an OSError) through when a driver refuses the line settings.
_OPEN_ERRORS = (serial.SerialException, OSError, ValueError) + (
    (termios.error,) if termios is not None else ()
)
_COMMANDS = (Overlay, OverlayToggle, Snap, Threshold, ClassSwitch)


class SerialLink:
    """Follow a microscope's objective (and pedal commands) over a serial port, in a thread.

    port: a device path, or "auto"/None for `find_port()` at each (re)open.
    positions: nosepiece position -> objective name, e.g. {1: "4x", 2: "10x", 3: "20x"}.
    poll_interval_s: olympus query period (s); a poll not answered before the next one is a
    failed read. max_failed_reads: consecutive failed reads / I/O errors before a reopen.
    backoff_s: (first, max) wait between reopen attempts (s), doubling.
    blank_on_disconnect: report None when the link is lost (default: True for olympus, whose
    position is polled; False for simple, whose lines are pushed and may be rare).
    baudrate/bytesize/parity/stopbits/poll_command override the protocol's defaults.
    """

    def __init__(
        self,
        port: Optional[str],
        protocol: str = "olympus",
        positions: Optional[Mapping] = None,
        on_objective: Optional[Callable[[Optional[str]], None]] = None,
        on_command: Optional[Callable[[Event], None]] = None,
        poll_interval_s: float = 0.2,
        max_failed_reads: int = 3,
        *,
        backoff_s: Tuple[float, float] = (0.2, 5.0),
        blank_on_disconnect: Optional[bool] = None,
        baudrate: Optional[int] = None,
        bytesize: Optional[int] = None,
        parity: Optional[str] = None,
        stopbits: Optional[float] = None,
        poll_command: Optional[str] = None,
        login: bool = False,
        notify: bool = False,
        probe: bool = True,
        ports: Optional[Iterable] = None,
        max_line: int = 256,
        exclusive: bool = True,
    ):
        if protocol not in PROTOCOLS:
            raise SerialLinkError(
                f"serial protocol {protocol!r}: expected one of {list(PROTOCOLS)}"
            )
        if not poll_interval_s > 0:
            raise SerialLinkError(f"poll_interval_s {poll_interval_s!r}: expected > 0 s")
        if not isinstance(max_failed_reads, int) or max_failed_reads < 1:
            raise SerialLinkError(f"max_failed_reads {max_failed_reads!r}: expected >= 1")
        if not (0 < backoff_s[0] <= backoff_s[1]):
            raise SerialLinkError(
                f"backoff_s {backoff_s!r}: expected (first, max), 0 < first <= max"
            )
        base = PROTOCOLS[protocol]
        parity = (parity or base.parity).upper()[:1]
        if parity not in ("N", "E", "O"):
            raise SerialLinkError(f"parity {parity!r}: expected N, E or O")
        poll = base.poll if poll_command is None else (poll_command.strip().encode() + b"\r\n")
        self.settings = SerialSettings(
            baudrate=int(baudrate or base.baudrate),
            bytesize=int(bytesize or base.bytesize),
            parity=parity,
            stopbits=float(stopbits or base.stopbits),
            poll=poll if poll and poll.strip() else None,
        )
        s = self.settings
        if s.baudrate <= 0 or s.bytesize not in (5, 6, 7, 8) or s.stopbits not in (1, 1.5, 2):
            raise SerialLinkError(
                f"serial settings {s.baudrate} {s.bytesize}{s.parity}{s.stopbits:g}: expected "
                "baud > 0, 5..8 data bits, 1, 1.5 or 2 stop bits"
            )
        self.port = None if port in (None, "", "auto") else str(port)
        self.protocol = protocol
        self.positions = parse_positions(positions)
        self.on_objective = on_objective
        self.on_command = on_command
        self.poll_interval_s = float(poll_interval_s)
        self.max_failed_reads = int(max_failed_reads)
        self.backoff_s = (float(backoff_s[0]), float(backoff_s[1]))
        self.blank_on_disconnect = (
            protocol == "olympus" if blank_on_disconnect is None else bool(blank_on_disconnect)
        )
        self.login = login
        self.notify = notify
        self.probe = probe and protocol == "olympus"
        self._ports = None if ports is None else list(ports)
        self.exclusive = exclusive
        self._parse = PARSERS[protocol]
        self._framer = LineFramer(max_line)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._ser: Optional[serial.Serial] = None
        self._device: Optional[str] = None
        self._reported = _UNSET  # last value given to on_objective
        self._position: Optional[int] = None
        self._counts = dict.fromkeys(
            (
                "lines_ok",
                "lines_garbage",
                "failed_reads",
                "reconnects",
                "open_failures",
                "callback_errors",
            ),
            0,
        )
        self._garbage_parsed = 0
        self._last_error: Optional[str] = None
        self._last_ok = 0.0
        self._down = False  # a loss was logged; stay quiet until a valid line comes

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> SerialLink:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="serial-link", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the thread and close the port (joins within `timeout_s`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._close()

    def __enter__(self) -> SerialLink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def objective(self) -> Optional[str]:
        """The objective last reported (None: unknown, moving, or nothing yet)."""
        value = self._reported
        return None if value is _UNSET else value

    def status(self) -> dict:
        """port, device, protocol, connected, objective, position, line and reconnect counts."""
        with self._lock:
            counts = dict(self._counts)
            counts["lines_garbage"] = self._garbage_parsed + self._framer.dropped
            return {
                "port": self.port or "auto",
                "device": self._device,
                "protocol": self.protocol,
                "running": self.running,
                "connected": self._ser is not None,
                "objective": self.objective,
                "position": self._position,
                **counts,
                "last_ok_age_s": (
                    round(time.monotonic() - self._last_ok, 3) if self._last_ok else None
                ),
                "last_error": self._last_error,
            }

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(*self.backoff_s)
        first = True
        while not self._stop.is_set():
            if not first and backoff.wait(self._stop):
                break
            first = False
            try:
                if not self._open():
                    continue
                if self._session():
                    backoff.reset()  # it answered: the next outage starts afresh
            except Exception as exc:  # a bug must not end the link; log it and start over
                log.exception("serial link: unexpected error")
                self._error(f"unexpected: {exc!r}")
            if self._ser is not None:
                self._close()
                if not self._stop.is_set():
                    with self._lock:
                        self._counts["reconnects"] += 1
                    self._lost()
        self._close()

    def _open(self) -> bool:
        device = self.port or find_port(self._ports, self._probe if self.probe else None)
        if device is None:
            self._open_failed("no USB serial port found (port='auto')")
            return False
        s = self.settings
        try:
            ser = serial.Serial(
                port=device,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                timeout=min(0.05, self.poll_interval_s / 2),
                write_timeout=min(0.25, max(self.poll_interval_s, 0.05)),
                exclusive=self.exclusive or None,
            )
        except _OPEN_ERRORS as exc:
            self._open_failed(f"open {device}: {exc}")
            return False
        self._framer.reset()
        with self._lock:
            self._ser, self._device = ser, device
        log.log(logging.DEBUG if self._down else logging.INFO,
                "serial link: opened %s (%s %d %d%s%g)", device, self.protocol, s.baudrate,
                s.bytesize, s.parity, s.stopbits)  # fmt: skip
        return True

    def _open_failed(self, message: str) -> None:
        with self._lock:
            self._counts["open_failures"] += 1
        self._warn_down(message)
        self._lost()

    def _session(self) -> bool:
        """Talk to an open port until it fails or stop(); True if any valid line came."""
        ser = self._ser
        poll = self.settings.poll
        got_any = False
        failed = 0
        answered = True
        next_poll = time.monotonic()
        if self.protocol == "olympus":
            for line in self._handshake():
                self._write(ser, line)
        while not self._stop.is_set():
            try:
                if poll is not None and time.monotonic() >= next_poll:
                    if not answered:
                        failed = self._failed(failed, "no reply to poll")
                        if failed >= self.max_failed_reads:
                            return got_any
                    next_poll = time.monotonic() + self.poll_interval_s
                    answered = False
                    self._write(ser, poll)
                data = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError) as exc:
                failed = self._failed(failed, f"I/O on {self._device}: {exc}")
                if failed >= self.max_failed_reads:
                    return got_any
                self._stop.wait(min(self.poll_interval_s, 0.2))
                continue
            if not data:
                continue
            for line in self._framer.feed(data):
                event = self._parse(line)
                if event is None:
                    with self._lock:
                        self._garbage_parsed += 1
                    continue
                answered, got_any, failed = True, True, 0
                if self._down:
                    self._down = False
                    log.info("serial link: %s answers again", self._device)
                with self._lock:
                    self._counts["lines_ok"] += 1
                    self._last_ok = time.monotonic()
                self._handle(event)
        return got_any

    def _handshake(self) -> list:
        """Olympus session start: log in (`1LOG IN` -> `1LOG +`), then ask for unsolicited
        position reports (`1SNDOB ON` -> `1SNDOB +`), as configured."""
        return [b"1LOG IN\r\n"] * self.login + [b"1SNDOB ON\r\n"] * self.notify

    def _probe(self, device: str, timeout_s: float = 0.5) -> bool:
        """Does an Olympus nosepiece answer `1OB?` on `device`? (port: auto)"""
        s = self.settings
        try:
            ser = serial.Serial(
                port=device, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity,
                stopbits=s.stopbits, timeout=0.05, write_timeout=0.25,
            )  # fmt: skip
        except _OPEN_ERRORS:
            return False
        framer = LineFramer()
        try:
            for line in [b"1LOG IN\r\n"] * self.login + [b"1OB?\r\n"]:
                ser.write(line)
            end = time.monotonic() + timeout_s
            while time.monotonic() < end:
                for line in framer.feed(ser.read(max(1, ser.in_waiting))):
                    if isinstance(parse_olympus(line), (ObjectivePosition, TurretMoving)):
                        log.info("serial link: %s answers 1OB?", device)
                        return True
        except (serial.SerialException, OSError):
            return False
        finally:
            ser.close()
        log.info("serial link: %s does not answer 1OB?: not the nosepiece", device)
        return False

    def _write(self, ser: serial.Serial, data: bytes) -> None:
        ser.write(data)

    def _failed(self, failed: int, message: str) -> int:
        with self._lock:
            self._counts["failed_reads"] += 1
        self._error(message)
        failed += 1
        if failed == self.max_failed_reads:
            self._warn_down(f"{message} ({failed} in a row); reopening")
        return failed

    def _warn_down(self, message: str) -> None:
        """Log the first loss as a warning, the retries that follow as debug."""
        log.log(logging.DEBUG if self._down else logging.WARNING, "serial link: %s", message)
        self._down = True
        self._error(message)

    def _error(self, message: str) -> None:
        with self._lock:
            self._last_error = message

    def _close(self) -> None:
        with self._lock:
            ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except Exception:  # an unplugged adapter may fail to close; it is gone anyway
                pass

    def _lost(self) -> None:
        """The link is down: report None if blank_on_disconnect (the objective is reported
        again once a position comes); else keep the last objective (a pedal that re-plugs)."""
        if self.blank_on_disconnect:
            self._position = None
            self._report(None)

    # -- events ------------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        if isinstance(event, ObjectivePosition):
            self._position = event.position
            name = self.positions.get(event.position)
            if name is None and self._reported is not None:
                log.warning(
                    "serial link: nosepiece position %d is not in the position map %s",
                    event.position,
                    self.positions,
                )
            self._report(name)
        elif isinstance(event, TurretMoving):
            self._position = None
            self._report(None)
        elif isinstance(event, ObjectiveName):
            self._position = None
            self._report(event.name)
        elif isinstance(event, Ack):
            if not event.ok:
                log.warning("serial link: controller refused %s (%s)", event.command, event.detail)
        elif isinstance(event, _COMMANDS):
            self._call(self.on_command, event)

    def _report(self, objective: Optional[str]) -> None:
        if objective == self._reported:
            return
        self._reported = objective
        self._call(self.on_objective, objective)

    def _call(self, fn: Optional[Callable], arg) -> None:
        if fn is None:
            return
        try:
            fn(arg)
        except Exception:
            with self._lock:
                self._counts["callback_errors"] += 1
            log.exception("serial link: callback %r failed on %r", fn, arg)
