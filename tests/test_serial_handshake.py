"""The Olympus nosepiece handshake (log in, unsolicited reports) and port probing, through real
pseudo-terminals against the emulated controller."""

from __future__ import annotations

from lucida.runtime.config import parse_config
from lucida.runtime.serial_link import SerialLink, find_port
from lucida.runtime.virtual.nosepiece import EmulatedNosepiece
from serial.tools.list_ports_common import ListPortInfo
from test_serial_link import POSITIONS, Recorder, wait_for

FTDI = 0x0403


def _info(device: str) -> ListPortInfo:
    p = ListPortInfo(device, skip_link_detection=True)
    p.vid, p.pid, p.description = FTDI, 0x6001, "FT232R USB UART"
    return p


def test_login_and_notify_make_a_strict_controller_report_moves_unasked():
    with EmulatedNosepiece(POSITIONS, position=2, require_login=True) as emu:
        rec = Recorder()
        # polls every 5 s: a move seen within 2 s can only come from an unsolicited report
        link = SerialLink(
            emu.port, positions=POSITIONS, on_objective=rec.on_objective,
            poll_interval_s=5.0, login=True, notify=True, backoff_s=(0.05, 0.2),
        )  # fmt: skip
        with link:
            rec.wait(lambda r: r.objectives[-1:] == ["10x"])
            assert emu.received[:3] == ["1LOG IN", "1SNDOB ON", "1OB?"]
            assert emu.logged_in and emu.notify
            emu.move_to(3, 0.05)
            rec.wait(lambda r: r.objectives[-1:] == ["20x"], timeout_s=2.0)
            assert None in rec.objectives  # "1OBM X" while it turned: the display blanks


def test_a_strict_controller_refuses_a_host_that_does_not_log_in():
    with EmulatedNosepiece(POSITIONS, position=2, require_login=True) as emu:
        rec = Recorder()
        link = SerialLink(
            emu.port, positions=POSITIONS, on_objective=rec.on_objective,
            poll_interval_s=0.05, max_failed_reads=3, backoff_s=(0.05, 0.2),
        )  # fmt: skip
        with link:
            wait_for(lambda: emu.received.count("1OB?") >= 3)
            assert "10x" not in rec.objectives and not emu.logged_in


def test_auto_port_probes_and_skips_an_adapter_that_is_not_the_nosepiece():
    with EmulatedNosepiece(POSITIONS) as pedal, EmulatedNosepiece(POSITIONS, position=3) as emu:
        pedal.silent = True  # a foot pedal's adapter: reads, never answers 1OB?
        ports = sorted([_info(pedal.port), _info(emu.port)], key=lambda p: p.device)
        if ports[0].device != pedal.port:  # the silent one must come first by name
            ports.reverse()
            pedal, emu = emu, pedal
            emu.silent, pedal.silent = False, True
        assert find_port(ports) == pedal.port  # by name alone, the wrong adapter
        rec = Recorder()
        link = SerialLink(
            "auto", positions=POSITIONS, on_objective=rec.on_objective, ports=ports,
            poll_interval_s=0.05, backoff_s=(0.05, 0.2),
        )  # fmt: skip
        with link:
            rec.wait(lambda r: bool(r.objectives) and r.objectives[-1] is not None)
            assert link.status()["device"] == emu.port
        assert "1OB?" in pedal.received  # it was asked, and passed over


def test_serial_login_and_notify_config_keys():
    c = parse_config({"serial": {"port": "auto", "login": True, "notify": True}})
    assert c.serial.login and c.serial.notify
