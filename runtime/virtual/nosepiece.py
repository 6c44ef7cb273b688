"""An emulated motorised nosepiece on a real pseudo-terminal (the turret's serial controller).

`EmulatedNosepiece` holds the master side of a pty and answers like an Olympus BX controller
(`1OB?` -> `1OB n`; `1OBM X` while moving, `1OBM n` on arrival) or pushes simple-protocol
lines (`OBJ 20x`, `SNAP`, ...). Its `.port` is a symlink in a temp folder that always points
at the current pty slave: give that to `SerialLink`; `unplug()` closes the pty and removes
the link (like pulling a USB adapter), `replug()` makes a new pty and points the link at it.
No pyserial here: only os/pty/tty/termios, so tests and the HIL bench can both use it.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import tempfile
import termios
import threading
import time
import tty
from typing import Callable, Dict, List, Mapping, Optional

from ..serial_protocol import LineFramer

log = logging.getLogger(__name__)

DEFAULT_POSITIONS = {1: "4x", 2: "10x", 3: "20x", 4: "40x"}


class NosepieceError(ValueError):
    """A bad emulator setting (protocol, position)."""


class EmulatedNosepiece:
    """A turret controller at the far end of a pty.

    positions: position -> objective name (used by the simple protocol's `OBJ` lines).
    protocol: "olympus" (answers polls, pushes `1OBM` on moves) or "simple" (pushes lines).
    position_source: optional callable giving the turret position (int) or None while moving,
    e.g. a VirtualMicroscope's `turret_position`; it then overrides `move_to`.
    on_move: called with the position when the host asks for a move (`1OB n`) or `move_to` is
    called while following a `position_source` (e.g. the scope's `set_turret_position`).
    split_writes: send each reply in two pieces a few ms apart (partial reads on the far end).
    require_login: like a BX controller out of the box, refuse every command (`!,E01`) until
    `1LOG IN`, and push no unsolicited `1OBM` reports until `1SNDOB ON`; a new session (replug)
    starts logged out.
    """

    def __init__(
        self,
        positions: Optional[Mapping[int, str]] = None,
        protocol: str = "olympus",
        position: int = 1,
        position_source: Optional[Callable[[], Optional[int]]] = None,
        split_writes: bool = False,
        tick_s: float = 0.01,
        on_move: Optional[Callable[[int], None]] = None,
        require_login: bool = False,
    ):
        if protocol not in ("olympus", "simple"):
            raise NosepieceError(f"nosepiece protocol {protocol!r}: expected olympus or simple")
        self.positions: Dict[int, str] = dict(positions or DEFAULT_POSITIONS)
        self.protocol = protocol
        self.position_source = position_source
        self.on_move = on_move
        self.split_writes = split_writes
        self.tick_s = tick_s
        self.silent = False  # read everything, send nothing (a controller that hangs)
        self.require_login = require_login
        self.logged_in = not require_login
        self.notify = not require_login  # unsolicited 1OBM position reports
        self.received: List[str] = []  # lines the host sent, printable ones, in order
        self.dropped_bytes = 0  # output lost because the far end did not read
        self._position: Optional[int] = position
        self._target: Optional[int] = None
        self._arrive_at = 0.0
        self._last_source: object = object()
        self._lock = threading.RLock()
        self._master: Optional[int] = None
        self._slave: Optional[int] = None
        self._framer = LineFramer()
        self._dir = tempfile.mkdtemp(prefix="lucida-nosepiece-")
        self.port = os.path.join(self._dir, "ttyNOSEPIECE")
        self.tty: Optional[str] = None  # the current pty slave path
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def for_scope(cls, scope, protocol: str = "olympus", **kw) -> EmulatedNosepiece:
        """The controller of a VirtualMicroscope's turret (anything with `turret`, a tuple of
        objective names by 1-based position, `turret_position()` and `set_turret_position(n)`)."""
        positions = {i + 1: name for i, name in enumerate(scope.turret)}
        return cls(
            positions,
            protocol,
            position_source=scope.turret_position,
            on_move=getattr(scope, "set_turret_position", None),
            **kw,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> EmulatedNosepiece:
        self.replug()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nosepiece", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        self.unplug()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EmulatedNosepiece:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def unplug(self) -> None:
        """Close the pty and remove `.port`: the host's reads and writes fail, reopen fails."""
        with self._lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._master = self._slave = None
            self.tty = None
            self._framer.reset()
            try:
                os.unlink(self.port)
            except FileNotFoundError:
                pass

    def replug(self) -> None:
        """A new pty (a new /dev/pts path) behind the same `.port` symlink."""
        with self._lock:
            self.unplug()
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no CR/LF translation: bytes pass as sent
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self.tty = os.ttyname(slave)
            self.logged_in = self.notify = not self.require_login  # a new session
            tmp = self.port + ".new"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink(self.tty, tmp)
            os.replace(tmp, self.port)

    # -- the turret --------------------------------------------------------------------------

    @property
    def position(self) -> Optional[int]:
        """Current position, None while moving."""
        if self.position_source is not None:
            return self.position_source()
        with self._lock:
            return self._position

    def move_to(self, position: int, duration_s: float = 0.1) -> None:
        """Start a move (returns at once): `1OBM X` now, `1OBM n` after `duration_s`."""
        position = int(position)
        if position < 1:
            raise NosepieceError(f"nosepiece position {position}: expected >= 1")
        if self.position_source is not None:
            if self.on_move is not None:
                self.on_move(position)
            return
        with self._lock:
            if duration_s <= 0:
                self._position, self._target = position, None
                self._announce(position)
                return
            self._position, self._target = None, position
            self._arrive_at = time.monotonic() + duration_s
            self._announce(None)

    def send_line(self, text: str) -> None:
        """Push one line (CRLF added), e.g. a foot pedal's `SNAP`."""
        self._write(text.encode("ascii", "replace") + b"\r\n")

    def send_garbage(self, data: bytes) -> None:
        """Push raw bytes as they are (noise, partial lines)."""
        self._write(bytes(data))

    def _announce(self, position: Optional[int]) -> None:
        if self.protocol == "olympus" and not self.notify:
            return
        if self.protocol == "olympus":
            self.send_line("1OBM X" if position is None else f"1OBM {position}")
        else:
            self.send_line("OBJ MOVING" if position is None else f"OBJ {self._name(position)}")

    def _name(self, position: int) -> str:
        return self.positions.get(position, f"{position}?")

    # -- the controller thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # a broken position_source must not stop the controller
                log.exception("nosepiece: position source failed")
                self._stop.wait(0.1)
            with self._lock:
                master = self._master
            if master is None:
                self._stop.wait(self.tick_s)
                continue
            try:
                ready, _, _ = select.select([master], [], [], self.tick_s)
            except (OSError, ValueError):  # unplugged under our feet
                continue
            if not ready:
                continue
            with self._lock:
                if self._master != master:
                    continue
                try:
                    data = os.read(master, 4096)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: nothing holds the slave; cannot happen while we do
                    data = b""
                for line in self._framer.feed(data):
                    self._on_line(line.decode("ascii").strip())

    def _tick(self) -> None:
        """Finish moves; follow `position_source`; keep our side of the line at 38400 baud."""
        with self._lock:
            self._unpin_termios()
            if self.position_source is not None:
                pos = self.position_source()
                if pos != self._last_source:
                    self._last_source = pos
                    self._announce(pos)
            elif self._target is not None and time.monotonic() >= self._arrive_at:
                self._position, self._target = self._target, None
                self._announce(self._position)

    def _unpin_termios(self) -> None:
        """A pty cannot keep PARENB (Linux clears it), and tcsetattr then fails with EINVAL
        when parity is the only change asked for: a second open with 8E2 on the same pty
        would be refused. Setting the speed back to 38400 after the host set its own keeps
        every (re)open a real change. A real UART has no such quirk; data flow ignores it."""
        if self._slave is None:
            return
        try:
            attrs = termios.tcgetattr(self._slave)
            if attrs[4] != termios.B38400 or attrs[5] != termios.B38400:
                attrs[4] = attrs[5] = termios.B38400
                termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        except (termios.error, OSError):
            pass

    def _on_line(self, text: str) -> None:
        self.received.append(text)
        if self.silent:
            return
        cmd = text.upper().replace(" ", "")
        if self.protocol == "olympus":
            if cmd.startswith("1LOG"):
                self.logged_in = cmd == "1LOGIN" or not self.require_login
                self.send_line("1LOG +")
            elif not self.logged_in:
                self.send_line(f"1{cmd[1:].rstrip('?')} !,E01")
            elif cmd in ("1SNDOBON", "1SNDOBOFF"):
                self.notify = cmd == "1SNDOBON"
                self.send_line("1SNDOB +")
            elif cmd == "1OB?":
                pos = self.position
                self.send_line("1OBM X" if pos is None else f"1OB {pos}")
            elif cmd.startswith("1OB") and cmd[3:].isdigit() and 0 < int(cmd[3:]) < 100:
                self.send_line("1OB +")
                try:
                    self.move_to(int(cmd[3:]), 0.1)
                except Exception as exc:  # e.g. the scope has no such position
                    log.warning("nosepiece: move to %s refused: %s", cmd[3:], exc)
            elif cmd.startswith("1") and len(cmd) > 1:
                self.send_line(f"1{cmd[1:].rstrip('?')} !,E01")
        elif cmd in ("OBJ?", "POS?"):
            pos = self.position
            if cmd == "POS?":
                self.send_line("OBJ MOVING" if pos is None else f"POS {pos}")
            else:
                self.send_line("OBJ MOVING" if pos is None else f"OBJ {self._name(pos)}")

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._master is None or self.silent:
                return
            pieces = (
                [data[: len(data) // 2], data[len(data) // 2 :]] if self.split_writes else [data]
            )
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(0.003)
                self._write_all(piece)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:  # the far end's input queue is full: a UART drops bytes
                self.dropped_bytes += len(view)
                return
            except OSError:
                return
            view = view[n:]
