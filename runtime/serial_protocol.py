"""Microscope serial protocols: events, line framing and the two line parsers.

Pure functions, no I/O: `LineFramer` turns a byte stream (read in arbitrary pieces) into lines,
`parse_olympus` and `parse_simple` turn one line into an `Event` or None. Garbage never raises.

Olympus BX motorised nosepiece (as used by Google's ARM), 19200 baud 8E2, CRLF:
    host `1OB?`  -> `1OB n`   objective position n (1-based)
    unsolicited     `1OBM X`  turret moving, between positions
                    `1OBM n`  turret arrived at position n
    `1LOG +`, `1OB +`         acknowledgements; `1OB !,E01` an error reply
Simple line protocol (other microscopes, foot pedals; case-insensitive):
    `OBJ 20x` | `OBJ 20` | `OBJ MOVING` | `POS 3` | `OVERLAY ON|OFF|TOGGLE` | `SNAP` |
    `THRESHOLD 0.4` (probability in [0, 1]) | `CLASS GP4 ON|OFF|TOGGLE` (a class of the
    running model by name or index; TOGGLE when the state is left out); `# ...` is a comment.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

__all__ = [
    "Ack",
    "ClassSwitch",
    "Event",
    "LineFramer",
    "ObjectiveName",
    "ObjectivePosition",
    "Overlay",
    "OverlayToggle",
    "ProtocolError",
    "Snap",
    "Threshold",
    "TurretMoving",
    "normalize_objective",
    "parse_olympus",
    "parse_simple",
    "PARSERS",
]


class ProtocolError(ValueError):
    """A bad objective name or protocol setting (configuration, not line noise)."""


@dataclass(frozen=True)
class Event:
    """Base class of everything a microscope or a pedal can tell the daemon."""


@dataclass(frozen=True)
class ObjectivePosition(Event):
    """The nosepiece sits at position `position` (1-based); the position map names it."""

    position: int


@dataclass(frozen=True)
class TurretMoving(Event):
    """The nosepiece is between positions: no objective is in the light path."""


@dataclass(frozen=True)
class ObjectiveName(Event):
    """The microscope names its objective directly, normalised like "20x"."""

    name: str


@dataclass(frozen=True)
class Overlay(Event):
    """Show (True) or hide (False) the overlay."""

    on: bool


@dataclass(frozen=True)
class OverlayToggle(Event):
    """Flip the overlay (a foot pedal with one button)."""


@dataclass(frozen=True)
class Snap(Event):
    """Save the current frame and overlay."""


@dataclass(frozen=True)
class Threshold(Event):
    """Set the contour probability threshold, in [0, 1]."""

    value: float


@dataclass(frozen=True)
class ClassSwitch(Event):
    """Switch one class of the running model on (True), off (False) or over (None)."""

    name: str
    on: Optional[bool] = None


@dataclass(frozen=True)
class Ack(Event):
    """A controller's reply to a command: `1LOG +` (ok) or `1OB !,E01` (not ok)."""

    command: str
    ok: bool
    detail: str = ""


Line = Union[bytes, bytearray, str]

_MAX_PARSE = 256  # chars; longer input is garbage by definition

_OBJECTIVE = re.compile(r"(\d{1,3}(?:\.\d{1,2})?)\s*[xX]?")


def normalize_objective(name: object) -> str:
    """ "20X", "20", " 20 x" -> "20x"; "2.50" -> "2.5x". Raises ProtocolError otherwise."""
    ok_type = isinstance(name, (str, int, float)) and not isinstance(name, bool)
    m = _OBJECTIVE.fullmatch(str(name).strip()) if ok_type else None
    if not m:
        raise ProtocolError(f"objective {name!r}: expected a magnification like '20x'")
    num = m.group(1)
    if "." in num:
        num = num.rstrip("0").rstrip(".")
    num = num.lstrip("0") or "0"
    if num.startswith("."):
        num = "0" + num
    if float(num) <= 0:
        raise ProtocolError(f"objective {name!r}: magnification must be > 0")
    return num + "x"


def _text(line: Line) -> Optional[str]:
    """Printable ASCII text of one line, stripped; None for anything else."""
    if isinstance(line, (bytes, bytearray)):
        if len(line) > _MAX_PARSE:
            return None
        try:
            line = bytes(line).decode("ascii")
        except UnicodeDecodeError:
            return None
    elif not isinstance(line, str) or len(line) > _MAX_PARSE:
        return None
    text = line.strip()
    if not text or not all(" " <= c <= "~" or c == "\t" for c in text):
        return None
    return text


_OLY_POSITION = re.compile(r"1OB(M?)\s+([1-9]\d?|X)", re.IGNORECASE)
_OLY_ACK = re.compile(r"1([A-Z]{1,8}\??)\s*(\+|!)\s*,?\s*(.{0,32})", re.IGNORECASE)


def parse_olympus(line: Line) -> Optional[Event]:
    """One Olympus BX reply line -> ObjectivePosition / TurretMoving / Ack, or None (garbage)."""
    text = _text(line)
    if text is None:
        return None
    m = _OLY_POSITION.fullmatch(text)
    if m:
        value = m.group(2)
        return TurretMoving() if value in ("X", "x") else ObjectivePosition(int(value))
    m = _OLY_ACK.fullmatch(text)
    if m:
        return Ack(command=m.group(1).upper(), ok=m.group(2) == "+", detail=m.group(3).strip())
    return None


_ON = {"ON": True, "1": True, "TRUE": True, "OFF": False, "0": False, "FALSE": False}
_MOVING = {"MOVING", "NONE", "-", "X"}


def parse_simple(line: Line) -> Optional[Event]:
    """One simple-protocol line -> Event, or None (garbage, comment, unknown command)."""
    text = _text(line)
    if text is None or text.startswith("#"):
        return None
    words = text.split()
    cmd, args = words[0].upper(), words[1:]
    if cmd == "SNAP" and not args:
        return Snap()
    if len(args) == 0:
        return None
    arg = " ".join(args)
    if cmd == "OBJ":
        if arg.upper() in _MOVING:
            return TurretMoving()
        try:
            return ObjectiveName(normalize_objective(arg))
        except ProtocolError:
            return None
    if cmd == "POS" and re.fullmatch(r"[1-9]\d?", arg):
        return ObjectivePosition(int(arg))
    if cmd == "OVERLAY":
        if arg.upper() == "TOGGLE":
            return OverlayToggle()
        on = _ON.get(arg.upper())
        return None if on is None else Overlay(on)
    if cmd == "CLASS":
        state = args[-1].upper() if len(args) > 1 else "TOGGLE"
        if state != "TOGGLE" and state not in _ON:
            return ClassSwitch(arg) if len(args) else None
        name = " ".join(args[:-1]) if len(args) > 1 else arg
        return ClassSwitch(name, None if state == "TOGGLE" else _ON[state])
    if cmd in ("THRESHOLD", "THR") and re.fullmatch(r"\d{0,3}(?:\.\d{0,6})?", arg):
        try:
            value = float(arg)
        except ValueError:
            return None
        if math.isfinite(value) and 0.0 <= value <= 1.0:
            return Threshold(value)
    return None


PARSERS: dict = {"olympus": parse_olympus, "simple": parse_simple}
Parser = Callable[[Line], Optional[Event]]


_EOL = re.compile(rb"[\r\n]")
_NOISE = bytes(b for b in range(256) if not (0x20 <= b <= 0x7E or b == 0x09))
_LEADING = _NOISE + b" \t"
_HAS_NOISE = re.compile(b"[" + re.escape(_NOISE) + b"]")


class LineFramer:
    """Bytes read in arbitrary pieces -> complete lines (bytes, no terminator).

    CR, LF and CRLF end a line; blank lines are skipped. Line noise (NUL, 0xFF, any byte
    that is not printable ASCII or tab) at the start of a line is skipped; noise inside a
    line spoils the whole line (dropped, counted in `noisy`) so a corrupted line can never
    be read as a shorter valid one. Lines longer than `max_line` bytes are dropped (counted
    in `overlong`); the buffer never holds more than `max_line` bytes.
    """

    def __init__(self, max_line: int = 256):
        if max_line < 1:
            raise ProtocolError(f"max_line {max_line}: expected >= 1 byte")
        self.max_line = max_line
        self.noisy = 0
        self.overlong = 0
        self._buf = bytearray()
        self._dropping = False

    @property
    def dropped(self) -> int:
        return self.noisy + self.overlong

    def reset(self) -> None:
        """Forget a partial line (after a reconnect)."""
        self._buf.clear()
        self._dropping = False

    def feed(self, data: bytes) -> List[bytes]:
        """Add bytes; return the lines they complete, in order."""
        *complete, tail = _EOL.split(bytes(data))
        lines: List[bytes] = []
        for seg in complete:
            if self._dropping:
                self._dropping = False
                continue
            self._append(seg)
            if self._dropping:  # the line just turned bad: it ends here
                self._dropping = False
                continue
            line = bytes(self._buf)
            self._buf.clear()
            if line.strip():
                lines.append(line)
        if not self._dropping:
            self._append(tail)
        return lines

    def _append(self, piece: bytes) -> None:
        if not self._buf:
            piece = piece.lstrip(_LEADING)
        if not piece:
            return
        if _HAS_NOISE.search(piece):
            self.noisy += 1
        elif len(self._buf) + len(piece) > self.max_line:
            self.overlong += 1
        else:
            self._buf += piece
            return
        self._buf.clear()
        self._dropping = True
