"""`lucida run --check`: will this config start? Paths, devices, the token and the calibration.

Each check is one `Finding` (ok, a short subject, a detail that says what to do). Folders the
daemon writes to (state_dir, the event log's folder, a video sink's folder) are created when
`create` is true, as the daemon would need them; files a person must provide (the token file,
the calibration profile) and devices (camera, serial port, framebuffer) are only checked.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from .config import DaemonConfig

TOKEN_HINT = (
    "create it with `python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > {path} "
    "&& chmod 600 {path}`, or drop http.token_file to have one generated into state_dir/token"
)
PROFILE_HINT = (
    "calibrate first (`lucida calibrate pixel-size ... --profile {path} --microscope NAME`), "
    "or drop calibration.profile to run on nominal optics"
)


@dataclass(frozen=True)
class Finding:
    ok: bool
    subject: str  # e.g. "state_dir /var/lib/lucida"
    detail: str = ""  # what was found, or what to do

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.subject}" + (
            f": {self.detail}" if self.detail else ""
        )


def _folder(subject: str, folder: Path, create: bool) -> Finding:
    """A folder the daemon writes into: exists (or is created) and is writable."""
    made = False
    if not folder.exists() and create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            made = True
        except OSError as exc:
            return Finding(False, f"{subject} {folder}", f"cannot create it ({exc.strerror})")
    if not folder.is_dir():
        return Finding(False, f"{subject} {folder}", "missing (run --check to create it)")
    if not os.access(folder, os.W_OK | os.X_OK):
        return Finding(False, f"{subject} {folder}", "not writable by this user")
    return Finding(True, f"{subject} {folder}", "created" if made else "")


def _token(cfg: DaemonConfig) -> Finding:
    path = cfg.http.token_file
    if path:
        p = Path(path)
        if not p.is_file():
            return Finding(False, f"http.token_file {p}", "missing; " + TOKEN_HINT.format(path=p))
        try:
            text = p.read_text().strip()
        except OSError as exc:
            return Finding(False, f"http.token_file {p}", f"unreadable ({exc.strerror})")
        if not text:
            return Finding(False, f"http.token_file {p}", "empty; " + TOKEN_HINT.format(path=p))
        return Finding(True, f"http.token_file {p}")
    if cfg.http.token:
        return Finding(True, "http.token", "set in the config file (readable by its readers)")
    return Finding(True, "token", f"generated into {Path(cfg.state_dir, 'token')} at start")


def _profile(cfg: DaemonConfig) -> Finding | None:
    path = cfg.calibration.profile
    if not path:
        return None
    from lucida.calibration.store import CalibrationStore

    try:
        store = CalibrationStore.open(path)
    except (ValueError, OSError) as exc:
        return Finding(
            False, f"calibration.profile {path}", f"{exc}; " + PROFILE_HINT.format(path=path)
        )
    objectives = ", ".join(sorted(store.profile.objectives)) or "none yet"
    return Finding(True, f"calibration.profile {store.path}", f"objectives {objectives}")


def _source(cfg: DaemonConfig) -> Finding:
    s = cfg.source
    if s.type == "virtual":
        return Finding(True, "source virtual", f"synthetic slide {s.seed}")
    if s.type == "replay":
        p = Path(s.path or "")
        ok = p.is_dir() and any(p.iterdir())
        return Finding(ok, f"source replay {p}", "" if ok else "no such folder of images")
    if s.type == "picamera":
        from importlib.util import find_spec

        ok = find_spec("picamera2") is not None
        hint = "" if ok else "picamera2 is not importable: `sudo apt install python3-picamera2`"
        return Finding(
            ok, "source picamera", hint + (" (venv with --system-site-packages)" if hint else "")
        )
    dev = s.device
    if isinstance(dev, int) or str(dev).isdigit():
        node = Path(f"/dev/video{int(dev)}")
        ok = node.exists()
        seen = ", ".join(sorted(glob.glob("/dev/video*"))) or "none"
        return Finding(ok, f"source opencv {node}", "" if ok else f"no such camera (found: {seen})")
    if "://" in str(dev) or "!" in str(dev):  # URL or GStreamer pipeline: checked when opened
        return Finding(True, f"source opencv {dev}", "not checked before start")
    ok = Path(str(dev)).exists()
    return Finding(ok, f"source opencv {dev}", "" if ok else "no such file or device")


def _serial(cfg: DaemonConfig) -> Finding | None:
    port = cfg.serial.port
    if not port:
        return None
    if port == "auto":
        from serial.tools import list_ports

        found = [p.device for p in list_ports.comports() if p.vid is not None]
        detail = f"found {', '.join(found)}" if found else "no USB serial adapter plugged in now"
        return Finding(True, "serial auto", detail + " (the daemon keeps looking)")
    ok = Path(port).exists()
    return Finding(ok, f"serial {port}", "" if ok else "no such port (plug the adapter, or 'auto')")


def _sinks(cfg: DaemonConfig, create: bool) -> list[Finding]:
    out = []
    for spec in [*cfg.sinks.ar, *cfg.sinks.preview]:
        kind, _, arg = spec.partition(":")
        if kind == "fb":
            dev = Path(arg or "/dev/fb0")
            ok = dev.exists() and os.access(dev, os.W_OK)
            out.append(
                Finding(
                    ok,
                    f"sink {spec}",
                    "" if ok else "framebuffer missing or not writable (group video)",
                )
            )
        elif kind == "window":
            ok = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
            out.append(
                Finding(
                    ok,
                    f"sink {spec}",
                    "" if ok else "no $DISPLAY: use fb:/dev/fb0 on a Pi without a desktop",
                )
            )
        elif kind in ("video", "png") and arg:
            folder = Path(arg).parent if kind == "video" else Path(arg)
            out.append(_folder(f"sink {kind}", folder, create))
    return out


def _models(cfg: DaemonConfig) -> list[Finding]:
    from lucida.models.registry import SHIPPED_DIR, Registry

    out = []
    for d in cfg.models.dirs:
        ok = Path(d).is_dir()
        out.append(Finding(ok, f"models.dirs {d}", "" if ok else "no such folder"))
    try:
        reg = Registry(search_dirs=[*cfg.models.dirs, SHIPPED_DIR], config=cfg.models.overrides)
        found = {n: m for n, (_, m) in reg.manifests().items() if m.task == cfg.models.task}
    except (ValueError, OSError) as exc:
        return out + [Finding(False, "models", str(exc))]
    subject = f"models for task {cfg.models.task}"
    if not found:
        return out + [Finding(False, subject, "no bundle found (models.dirs, or deploy one)")]
    covered = {o for m in found.values() for o in m.objectives}
    wanted = {cfg.source.objective} | (
        set(cfg.serial.positions.values()) if cfg.serial.port else set()
    )
    dark = sorted(wanted - covered)
    detail = ", ".join(sorted(found)) + (
        f"; no model for {', '.join(dark)} (nothing is drawn there)" if dark else ""
    )
    return out + [Finding(True, subject, detail)]


def preflight(cfg: DaemonConfig, create: bool = True) -> list[Finding]:
    """Every check of `cfg`, in the order a new user would fix them."""
    found = [_folder("state_dir", Path(cfg.state_dir), create)]
    if cfg.log.events:
        found.append(_folder("log folder", Path(cfg.log.events).parent, create))
    found.append(_token(cfg))
    found += [f for f in (_profile(cfg), _source(cfg), _serial(cfg)) if f is not None]
    found += _sinks(cfg, create)
    found += _models(cfg)
    return found


def token_location(cfg: DaemonConfig) -> str:
    """Where the bearer token lives, in words for a person."""
    if cfg.http.token_file:
        return str(cfg.http.token_file)
    if cfg.http.token:
        return "the config file, http.token"
    return str(Path(cfg.state_dir, "token"))


def ready_lines(cfg: DaemonConfig, url: str) -> list[str]:
    """What `lucida run` prints once it serves: the live page, the token, the logs."""
    import socket

    host_url = url
    if cfg.http.bind in ("0.0.0.0", "::", ""):  # reachable from the network: name the machine
        host_url = url.replace(f"//{cfg.http.bind}:", f"//{socket.gethostname()}:", 1)
    logs = cfg.log.events or "stderr (the journal under systemd: journalctl -u lucida)"
    return [
        f"live view: {host_url.rstrip('/')}/ (token in {token_location(cfg)})",
        f"logs: {logs}; state: {cfg.state_dir}",
    ]
