"""Devices under test: what the bench can do to each, and how.

`EmulatedDut` runs the real daemon as a subprocess (`python -m lucida.tools.cli run`, or a
`daemon_cmd` of your own: a patched build) on 127.0.0.1 with the virtual microscope as its
camera and an emulated Olympus nosepiece on a pty as its serial port; it is started, killed
and restarted the way systemd would (NOTIFY_SOCKET, READY=1). It runs in a session of its own
(a Ctrl-C meant for the bench is not its), and on Linux it is sent SIGTERM when the bench
process dies however it dies (PR_SET_PDEATHSIG): a killed bench never leaves a daemon behind.
The objective is turned by
moving the emulated nosepiece (the daemon follows the serial link) while POST /virtual turns
the virtual microscope's optics with it; truth comes from the virtual microscope's frames.

`RemoteDut` is a real device's daemon (URL + token). With `serial`, the bench owns a serial
port cabled to the device's (its `serial.protocol: simple`) and sends `OBJ 20x` lines on it;
without, the objective is set over HTTP. With `truth`, a folder of masks named like the
images the device replays gives the ground truth; without, only timing and health are judged.

`capabilities` says which steps a device can do; the others are reported as skipped.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from .client import DaemonClient, DeviceError
from .scenario import DutSpec

log = logging.getLogger(__name__)
TURRET_MOVE_S = 0.5  # the virtual microscope's turret_move_s: the nosepiece takes as long

# What a device can do: "virtual" (its camera is a virtual microscope: stall, unplug, stage,
# optics), "nosepiece" (an emulated turret the bench can unplug), "serial" (the bench can
# write to the device's serial line), "process" (kill and restart the daemon, change its env).


class Dut:
    kind = "dut"
    capabilities: frozenset = frozenset()

    def __init__(self):
        self.client: DaemonClient | None = None

    def start(self) -> None: ...

    def close(self) -> None: ...

    def set_objective(self, objective: str) -> str:
        """Turn to `objective`; returns how (for the report)."""
        self.client.call("POST", "/objective", {"objective": objective})
        return "HTTP POST /objective"

    def tour(self, body: dict) -> dict:
        """Move the stage (virtual microscope only; see POST /virtual "tour")."""
        return self.client.call("POST", "/virtual", {"action": "tour", **body})

    def resume_tour(self) -> None:
        """Go on touring after a hold (virtual microscope only)."""

    def truth_for(self, record: dict):
        """The ground-truth mask (HxW bool) for an overlay record, or None."""
        from .metrics import decode_truth

        return decode_truth(record)

    @property
    def has_truth(self) -> bool:
        return "virtual" in self.capabilities


def _die_with_parent():
    """A preexec_fn that has the child sent SIGTERM when this process dies (Linux), or None.

    Only from the main thread: the kernel sends the signal when the creating *thread* ends."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the bench died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


class EmulatedDut(Dut):
    kind = "emulated"
    capabilities = frozenset({"virtual", "nosepiece", "serial", "process"})

    def __init__(
        self,
        spec: DutSpec,
        workdir: str | os.PathLike,
        daemon_cmd: str | list[str] | None = None,
        model_dirs: list[str] | tuple = (),
        env: dict | None = None,
        ready_timeout_s: float = 120.0,
    ):
        super().__init__()
        self.spec, self.workdir = spec, Path(workdir)
        if isinstance(daemon_cmd, str):
            daemon_cmd = shlex.split(daemon_cmd)
        self.daemon_cmd = list(daemon_cmd or [sys.executable, "-m", "lucida.tools.cli", "run"])
        self.model_dirs = [str(Path(d).resolve()) for d in model_dirs]
        self.env = dict(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.token = secrets.token_urlsafe(16)
        self.proc: subprocess.Popen | None = None
        self.nosepiece = None
        self.starts = 0
        # The world outside the daemon, kept across its restarts: objective in place, stage.
        self.objective = spec.objective
        self._tour: dict | None = None
        self._sockdir = tempfile.mkdtemp(prefix="lucida-hil-")
        self._sock: socket.socket | None = None
        self._log = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        from lucida.runtime.virtual.nosepiece import EmulatedNosepiece

        if self.workdir.exists():  # a fresh device each run: no state from an earlier one
            import shutil

            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        pos = self.position_of(self.spec.objective)
        self._hold_pts0()
        self.nosepiece = EmulatedNosepiece(self.spec.positions, "olympus", position=pos).start()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(os.path.join(self._sockdir, "notify"))
        self._sock.settimeout(0.2)
        self.launch()

    def _hold_pts0(self) -> None:
        """Keep /dev/pts/0 away from the emulated nosepiece: on this sandbox a pty that gets
        index 0 cannot be locked by the daemon's exclusive open (EAGAIN, every retry), so the
        serial link never comes up and nothing is drawn. Held (unused) while the device runs."""
        self._pts0 = None
        master, slave = os.openpty()
        if os.ttyname(slave) == "/dev/pts/0":
            self._pts0 = (master, slave)
        else:
            os.close(master)
            os.close(slave)

    def config(self, **models) -> dict:
        s = self.spec
        m = s.models.model_dump()
        m["dirs"] = [*m["dirs"], *self.model_dirs]
        m.update(models)
        return {
            "source": {
                "type": "virtual",
                "seed": s.seed,
                "fps": s.fps,
                "stall_timeout_ms": s.stall_timeout_ms,
                "width": s.width,
                "height": s.height,
                "objective": self.objective,
                "report_motion": s.report_motion,
            },
            "models": m,
            "display": {"width": s.width, "height": s.height},
            "serial": {
                "port": self.nosepiece.port,
                "protocol": "olympus",
                "positions": dict(s.positions),
                "poll_interval_s": s.poll_interval_s,
            },
            "http": {"bind": "127.0.0.1", "port": 0, "token": self.token},
            "state_dir": str(self.workdir / "state"),
            "log": {"events": str(self.workdir / "events.jsonl"), "timings_every": 0},
        }

    def launch(self, env: dict | None = None, **models) -> None:
        """Start the daemon process and wait for READY=1 (as systemd's Type=notify does)."""
        path = self.workdir / "lucida.yaml"
        path.write_text(yaml.safe_dump(self.config(**models), sort_keys=False))
        full_env = {
            **os.environ,
            **self.env,
            **(env or {}),
            "NOTIFY_SOCKET": os.path.join(self._sockdir, "notify"),
        }
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self._drain_notify()
        self._log = open(self.workdir / "daemon.log", "ab")
        self._log.write(f"--- start {self.starts + 1}: {' '.join(self.daemon_cmd)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [*self.daemon_cmd, "--config", str(path)],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),  # noqa: PLW1509 - one prctl call, no Python locks
        )
        self.starts += 1
        self._wait_ready()
        url = self._url()
        if self.client is None:
            self.client = DaemonClient(url, self.token)
        else:
            self.client.set_url(url)
        if self._tour is not None:  # the stage stays where it was while the daemon restarts
            self.client.call("POST", "/virtual", {"action": "tour", **self._tour})

    def _drain_notify(self) -> None:
        while True:
            try:
                self._sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return

    def _wait_ready(self) -> None:
        end = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise DeviceError(
                    f"emulated daemon exited with {self.proc.returncode} before READY: "
                    f"{self.log_tail()}"
                )
            try:
                msg = self._sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            if "READY=1" in msg.split("\n"):
                return
        raise DeviceError(f"emulated daemon not READY within {self.ready_timeout_s:.0f} s")

    def _url(self) -> str:
        for line in reversed((self.workdir / "events.jsonl").read_text().splitlines()):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "daemon_ready" and e.get("pid") == self.proc.pid:
                return e["url"]
        raise DeviceError("emulated daemon said READY but logged no daemon_ready URL")

    def log_tail(self, n: int = 5) -> str:
        try:
            lines = (self.workdir / "daemon.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(x.strip() for x in lines[-n:])

    def kill(self) -> int:
        """SIGKILL the daemon; returns its exit status."""
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, env: dict | None = None, **models) -> None:
        self.stop()
        self.launch(env, **models)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.stop()
        if self.nosepiece is not None:
            self.nosepiece.close()
        if self._sock is not None:
            self._sock.close()
        for fd in getattr(self, "_pts0", None) or ():
            os.close(fd)
        self._pts0 = None
        import shutil

        shutil.rmtree(self._sockdir, ignore_errors=True)

    # -- actions -----------------------------------------------------------------------------
    def position_of(self, objective: str) -> int:
        for p, o in self.spec.positions.items():
            if o == objective:
                return int(p)
        raise DeviceError(f"objective {objective} is not on the emulated nosepiece")

    def tour(self, body: dict) -> dict:
        self._tour = dict(body)
        return super().tour(body)

    def resume_tour(self) -> None:
        if self._tour is not None:
            super().tour(self._tour)

    def set_objective(self, objective: str) -> str:
        self.client.call("POST", "/virtual", {"action": "objective", "objective": objective})
        self.nosepiece.move_to(self.position_of(objective), TURRET_MOVE_S)
        self.objective = objective
        return "emulated nosepiece (serial, olympus protocol)"

    def serial_write(self, data: bytes) -> None:
        self.nosepiece.send_garbage(data)


class RemoteDut(Dut):
    kind = "remote"

    def __init__(
        self,
        url: str,
        token: str | None,
        serial: str | None = None,
        truth: str | os.PathLike | None = None,
        baudrate: int = 9600,
    ):
        super().__init__()
        self.client = DaemonClient(url, token)
        self.serial_port, self.baudrate = serial, baudrate
        self.truth_dir = Path(truth) if truth else None
        if self.truth_dir is not None and not self.truth_dir.is_dir():
            raise DeviceError(f"--truth {truth}: not a folder of ground-truth masks")
        self.capabilities = frozenset({"serial"} if serial else set())
        self._masks: dict = {}

    def start(self) -> None:
        self.client.status()  # reachable, or DeviceError

    def _serial(self):
        import serial

        return serial.Serial(self.serial_port, self.baudrate, timeout=1, write_timeout=2)

    def set_objective(self, objective: str) -> str:
        if not self.serial_port:
            return super().set_objective(objective)
        with self._serial() as ser:
            ser.write(b"OBJ MOVING\r\n")
            ser.flush()
            time.sleep(TURRET_MOVE_S)
            ser.write(f"OBJ {objective}\r\n".encode())
            ser.flush()
        return f"serial {self.serial_port} (simple protocol)"

    def serial_write(self, data: bytes) -> None:
        with self._serial() as ser:
            ser.write(data)
            ser.flush()

    @property
    def has_truth(self) -> bool:
        return self.truth_dir is not None

    def truth_for(self, record: dict):
        """The mask named like the replayed image (any image extension), at frame size."""
        import cv2

        name = record.get("source_frame")
        if self.truth_dir is None or not name:
            return None
        if name not in self._masks:
            stem = Path(name).stem
            found = sorted(self.truth_dir.glob(f"{stem}.*"))
            m = cv2.imread(str(found[0]), cv2.IMREAD_GRAYSCALE) if found else None
            if m is not None:
                w = min(480, m.shape[1])
                m = cv2.resize(
                    m, (w, round(m.shape[0] * w / m.shape[1])), interpolation=cv2.INTER_AREA
                )
                m = m > 127
            self._masks[name] = m
        return self._masks[name]
