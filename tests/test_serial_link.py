"""The serial objective link, through real pseudo-terminals with an emulated nosepiece."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lucida.runtime.serial_link import (
    Ack,
    Event,
    LineFramer,
    ObjectiveName,
    ObjectivePosition,
    Overlay,
    OverlayToggle,
    SerialLink,
    SerialLinkError,
    Snap,
    Threshold,
    TurretMoving,
    find_port,
    normalize_objective,
    parse_olympus,
    parse_positions,
    parse_simple,
)
from lucida.runtime.virtual.nosepiece import EmulatedNosepiece
from serial.tools.list_ports_common import ListPortInfo

POSITIONS = {1: "4x", 2: "10x", 3: "20x", 4: "40x"}
FAST = dict(poll_interval_s=0.02, max_failed_reads=3, backoff_s=(0.02, 0.1))
# For exact-sequence tests: a starved emulator thread on a busy machine must not read as a loss.
STEADY = dict(poll_interval_s=0.03, max_failed_reads=30, backoff_s=(0.02, 0.1))


class Recorder:
    """Collects what the link reports, and waits for it."""

    def __init__(self):
        self.objectives: list = []
        self.commands: list = []
        self._cond = threading.Condition()

    def on_objective(self, objective):
        with self._cond:
            self.objectives.append(objective)
            self._cond.notify_all()

    def on_command(self, event):
        with self._cond:
            self.commands.append(event)
            self._cond.notify_all()

    def wait(self, predicate, timeout_s: float = 5.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self), timeout_s)
        assert ok, f"timed out; objectives={self.objectives} commands={self.commands}"


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def emu():
    with EmulatedNosepiece(POSITIONS) as nosepiece:
        yield nosepiece


def olympus_link(emu, rec, **kw):
    args = dict(STEADY, **kw)
    return SerialLink(
        emu.port, "olympus", POSITIONS, rec.on_objective, rec.on_command, **args
    ).start()


# -- through a pty ------------------------------------------------------------------------


def test_objective_follows_three_moves_blank_between(emu):
    rec = Recorder()
    link = olympus_link(emu, rec)
    try:
        rec.wait(lambda r: r.objectives == ["4x"])
        for pos, name in ((3, "20x"), (4, "40x"), (2, "10x")):
            emu.move_to(pos, duration_s=0.1)
            rec.wait(lambda r, name=name: r.objectives[-1] == name)
        assert rec.objectives == ["4x", None, "20x", None, "40x", None, "10x"]
        st_ = link.status()
        assert st_["connected"] and st_["objective"] == "10x" and st_["position"] == 2
        assert st_["lines_garbage"] == 0 and st_["reconnects"] == 0
        assert emu.received[0] == "1OB?"  # it polls with the Olympus query
    finally:
        link.stop()
    assert not link.running


def test_replies_in_pieces_and_garbage_do_not_break_it(emu):
    emu.split_writes = True  # every reply arrives in two reads
    rec = Recorder()
    link = olympus_link(emu, rec)
    try:
        rec.wait(lambda r: r.objectives == ["4x"])
        emu.send_garbage(b"\x00\xff\xfe\x80 junk 1OB 9?? \r\n" + bytes(range(256)) + b"\n")
        emu.send_garbage(b"A" * 3000 + b"\r\n")  # an over-long line
        emu.send_garbage(b"1OB")  # a partial line: spoils the next reply, not the link
        emu.move_to(3, duration_s=0.05)
        rec.wait(lambda r: r.objectives[-1] == "20x")
        emu.send_garbage(b"\x00\x00")  # line noise just before a reply is skipped
        emu.move_to(4, duration_s=0)
        rec.wait(lambda r: r.objectives[-1] == "40x")
        st_ = link.status()
        assert st_["lines_garbage"] >= 3 and st_["running"] and st_["callback_errors"] == 0
    finally:
        link.stop()


def test_silent_port_reconnects_then_resumes(emu):
    rec = Recorder()
    link = olympus_link(emu, rec, **FAST)
    try:
        rec.wait(lambda r: r.objectives[-1:] == ["4x"])
        emu.silent = True
        wait_for(lambda: link.status()["reconnects"] >= 2)
        assert rec.objectives[-1] is None  # the objective is unknown: the display blanks
        assert link.running
        emu.move_to(2, duration_s=0)  # turned while we were not listening
        emu.silent = False
        rec.wait(lambda r: r.objectives[-1] == "10x")
        assert link.status()["failed_reads"] >= 6
    finally:
        link.stop()


def test_unplug_replug_reports_objective_again(emu):
    rec = Recorder()
    link = olympus_link(emu, rec, **FAST)
    try:
        rec.wait(lambda r: r.objectives[-1:] == ["4x"])
        emu.unplug()
        rec.wait(lambda r: r.objectives[-1] is None)
        wait_for(lambda: link.status()["open_failures"] >= 2)  # the port is gone: retries
        assert link.running and not link.status()["connected"]
        emu.replug()  # a new pty behind the same path
        rec.wait(lambda r: r.objectives[-1] == "4x")
        assert link.status()["reconnects"] >= 1
    finally:
        link.stop()


def test_unknown_position_reports_none(emu):
    rec = Recorder()
    link = SerialLink(emu.port, "olympus", {1: "4x"}, rec.on_objective, **STEADY).start()
    try:
        rec.wait(lambda r: r.objectives == ["4x"])
        emu.move_to(3, duration_s=0)
        rec.wait(lambda r: r.objectives[-1:] == [None])
        wait_for(lambda: link.status()["position"] == 3)
        assert link.status()["objective"] is None
    finally:
        link.stop()


def test_simple_protocol_lines_become_events():
    rec = Recorder()
    with EmulatedNosepiece(POSITIONS, protocol="simple") as pedal:
        link = SerialLink(
            pedal.port, "simple", POSITIONS, rec.on_objective, rec.on_command, **STEADY
        ).start()
        try:
            wait_for(lambda: link.status()["connected"])  # input is flushed on open
            pedal.send_line("OBJ 20X")
            pedal.send_line("overlay off")
            pedal.send_garbage(b"\xff\x00 BANANA\r\n")
            pedal.send_line("SNAP")
            pedal.send_line("THRESHOLD 0.35")
            pedal.send_line("POS 4")
            rec.wait(lambda r: len(r.commands) == 3 and r.objectives[-1:] == ["40x"])
            assert rec.objectives == ["20x", "40x"]
            assert rec.commands == [Overlay(False), Snap(), Threshold(0.35)]
            assert link.status()["lines_garbage"] == 1
            st_ = link.status()
            assert st_["reconnects"] == 0  # silence is normal for a pedal
        finally:
            link.stop()


def test_callback_errors_do_not_kill_the_link(emu):
    seen = []

    def bad(objective):
        seen.append(objective)
        raise RuntimeError("pipeline bug")

    link = SerialLink(emu.port, "olympus", POSITIONS, bad, **STEADY).start()
    try:
        wait_for(lambda: seen == ["4x"])
        emu.move_to(3, duration_s=0)
        wait_for(lambda: seen[-1:] == ["20x"])
        assert link.running and link.status()["callback_errors"] == 2
    finally:
        link.stop()


def test_auto_port_without_adapters_keeps_trying(monkeypatch):
    import lucida.runtime.serial_link as sl

    monkeypatch.setattr(sl.serial.tools.list_ports, "comports", lambda: [])
    rec = Recorder()
    link = SerialLink("auto", "olympus", POSITIONS, rec.on_objective, **FAST).start()
    try:
        wait_for(lambda: link.status()["open_failures"] >= 2)
        st_ = link.status()
        assert st_["port"] == "auto" and not st_["connected"] and link.running
        assert "no USB serial port" in st_["last_error"]
        assert rec.objectives == [None]
    finally:
        link.stop()
    assert not link.running


def _port(device, vid=None, pid=None, description="n/a"):
    p = ListPortInfo(device, skip_link_detection=True)
    p.vid, p.pid, p.description = vid, pid, description
    return p


def test_find_port_prefers_usb_serial_adapters():
    acm = _port("/dev/ttyACM0", vid=0x2341, pid=0x0043, description="Arduino Uno")
    ftdi = _port("/dev/ttyUSB1", vid=0x0403, pid=0x6001, description="FT232R USB UART")
    ch340 = _port("/dev/ttyUSB0", vid=0x1A86, pid=0x7523, description="USB Serial")
    named = _port("/dev/ttyS9", description="Prolific USB-to-Serial Comm Port")
    onboard = _port("/dev/ttyS0")
    assert find_port([onboard, acm, ftdi, ch340]) == "/dev/ttyUSB0"  # known VIDs, by name
    assert find_port([onboard, acm, named]) == "/dev/ttyS9"
    assert find_port([onboard, acm]) == "/dev/ttyACM0"
    assert find_port([onboard]) is None
    assert find_port([]) is None


def test_bad_settings_are_refused_with_one_message():
    with pytest.raises(SerialLinkError, match="protocol 'modbus'"):
        SerialLink("/dev/null", "modbus", POSITIONS, None)
    with pytest.raises(SerialLinkError, match="position 'a'"):
        SerialLink("/dev/null", "olympus", {"a": "4x"}, None)
    with pytest.raises(SerialLinkError, match="position 2"):
        SerialLink("/dev/null", "olympus", {2: "ten"}, None)
    with pytest.raises(SerialLinkError, match="poll_interval_s"):
        SerialLink("/dev/null", "olympus", POSITIONS, None, poll_interval_s=0)
    assert parse_positions({"1": "4X", 2: 10}) == {1: "4x", 2: "10x"}


# -- parsers and framer -------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, event",
    [
        (b"1OB 3\r\n", ObjectivePosition(3)),
        ("1OB 1", ObjectivePosition(1)),
        (b"1OBM 4", ObjectivePosition(4)),
        (b"1OBM X", TurretMoving()),
        (b"  1OB 12 ", ObjectivePosition(12)),
        (b"1LOG +", Ack("LOG", True)),
        (b"1OB !,E01", Ack("OB", False, "E01")),
        (b"1OB 0", None),
        (b"1OB 3x", None),
        (b"1OB", None),
        (b"1OB 3\x00", None),
        (b"\xff\xfe", None),
        (b"", None),
        (b"1OB " + b"9" * 400, None),
    ],
)
def test_parse_olympus(line, event):
    assert parse_olympus(line) == event


@pytest.mark.parametrize(
    "line, event",
    [
        ("OBJ 20x", ObjectiveName("20x")),
        (b"obj 40X\r\n", ObjectiveName("40x")),
        ("OBJ 2.50", ObjectiveName("2.5x")),
        ("OBJ MOVING", TurretMoving()),
        ("POS 2", ObjectivePosition(2)),
        ("OVERLAY OFF", Overlay(False)),
        ("overlay on", Overlay(True)),
        ("OVERLAY TOGGLE", OverlayToggle()),
        ("SNAP", Snap()),
        ("THRESHOLD 0.5", Threshold(0.5)),
        ("THRESHOLD 1.5", None),
        ("THRESHOLD nan", None),
        ("OBJ twenty", None),
        ("OBJ 0x", None),
        ("SNAP now", None),
        ("# comment", None),
        ("OVERLAY MAYBE", None),
        (b"OBJ 20\xd7", None),
    ],
)
def test_parse_simple(line, event):
    assert parse_simple(line) == event


def test_normalize_objective():
    assert [normalize_objective(x) for x in ("20X", " 10 x", "4", 40, "0.5x", "60.0")] == [
        "20x",
        "10x",
        "4x",
        "40x",
        "0.5x",
        "60x",
    ]
    for bad in ("", "x", "0", "20xx", "-4x", True, None):
        with pytest.raises(ValueError):
            normalize_objective(bad)


def test_framer_partial_lines_and_terminators():
    f = LineFramer(max_line=16)
    assert f.feed(b"1OB") == []
    assert f.feed(b" 3\r") == [b"1OB 3"]
    assert f.feed(b"\n1OBM X\n\n\r\n1OB 2\r\n") == [b"1OBM X", b"1OB 2"]
    assert f.feed(b"\x00\xff 1OB 4\r\n") == [b"1OB 4"]  # leading noise skipped
    assert f.feed(b"1OB 4\x001\r\n1OB 1\n") == [b"1OB 1"]  # noise inside spoils that line
    assert f.feed(b"X" * 40 + b"\n1OB 3\n") == [b"1OB 3"]  # over-long dropped
    assert (f.noisy, f.overlong) == (1, 1)


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_fuzz_parsers_never_raise(line):
    for parse in (parse_olympus, parse_simple):
        event = parse(line)
        assert event is None or isinstance(event, Event)


def _chunks(data: bytes, cuts: list) -> list:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(0, 10_000), max_size=20))
def test_fuzz_framer_bounded_and_chunking_invariant(data, cuts):
    whole = LineFramer(max_line=64)
    expected = whole.feed(data)
    pieces = LineFramer(max_line=64)
    got = [line for chunk in _chunks(data, cuts) for line in pieces.feed(chunk)]
    assert got == expected
    assert all(0 < len(line) <= 64 for line in got)
    assert all(b"\r" not in line and b"\n" not in line for line in got)
    assert len(pieces._buf) <= 64


@SETTINGS
@given(
    st.binary(max_size=300),
    st.binary(max_size=300),
    st.sampled_from([b"\r\n", b"\n", b"\r"]),
    st.integers(1, 9),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_fuzz_valid_line_in_noise_is_found(before, after, eol, pos, cuts):
    stream = before + eol + f"1OB {pos}".encode() + b"\r\n" + after
    framer = LineFramer()
    events = [parse_olympus(x) for c in _chunks(stream, cuts) for x in framer.feed(c)]
    assert ObjectivePosition(pos) in events
    simple = before + b"\n" + b"\x00\xff" + b"OVERLAY OFF" + eol + after
    framer = LineFramer()
    events = [parse_simple(x) for c in _chunks(simple, cuts) for x in framer.feed(c)]
    assert Overlay(False) in events


class FakeScope:
    """The turret part of a VirtualMicroscope: positions 1..3; None while turning."""

    turret = ("4x", "10x", "20x")

    def __init__(self):
        self.position, self.moves = 1, []

    def turret_position(self):
        return self.position

    def set_turret_position(self, position):
        self.moves.append(position)
        self.position = None  # the test finishes the move


def test_nosepiece_follows_a_scope_turret():
    scope, rec = FakeScope(), Recorder()
    with EmulatedNosepiece.for_scope(scope) as emu:
        link = SerialLink(emu.port, "olympus", emu.positions, rec.on_objective, **STEADY).start()
        try:
            rec.wait(lambda r: r.objectives == ["4x"])
            emu.move_to(3)  # goes to the scope, which starts turning
            rec.wait(lambda r: r.objectives == ["4x", None])
            scope.position = 3
            rec.wait(lambda r: r.objectives == ["4x", None, "20x"])
            assert scope.moves == [3]
        finally:
            link.stop()


def test_simple_protocol_keeps_objective_over_an_unplug():
    rec = Recorder()
    with EmulatedNosepiece(POSITIONS, protocol="simple") as pedal:
        link = SerialLink(
            pedal.port, "simple", POSITIONS, rec.on_objective, rec.on_command, **FAST
        ).start()
        try:
            wait_for(lambda: link.status()["connected"])
            pedal.send_line("OBJ 10x")
            rec.wait(lambda r: r.objectives == ["10x"])
            pedal.unplug()
            wait_for(lambda: link.status()["reconnects"] >= 1)
            pedal.replug()
            wait_for(lambda: link.status()["connected"])
            pedal.send_line("SNAP")
            rec.wait(lambda r: r.commands == [Snap()])
            assert rec.objectives == ["10x"] and link.status()["objective"] == "10x"
        finally:
            link.stop()
