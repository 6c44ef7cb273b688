"""Will this config start? One check for `lucida run --check`, the daemon's start and SIGHUP reload.

`preflight(cfg)` returns one `Finding` per check (ok, a short subject, a detail that says what
to do, and the config key it is about), in the order a new user would fix them: folders the
daemon writes to (state_dir, the event log's folder, a video/png sink's folder; created when
`create` is true, as the daemon would need them), the token file, the calibration profile, the
camera, the serial port and nosepiece, the sinks, the models (task, bundles, a model for the
start objective unless `models.allow_no_model`) and, when `sandbox` is true, every bundle the
config would run loaded and golden-checked in a child process (runtime.sandbox) first. With
`running`, the config it would replace: http.bind/port cannot change without a restart.

`--check` prints every finding; `check_config` (start and reload) raises one `PreflightError`
naming every failing key. Both read the same findings.
"""

from __future__ import annotations

import glob
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from lucida.models.archive import short
from lucida.models.registry import SHIPPED_DIR

from .config import ConfigError, DaemonConfig, SandboxConfig

TOKEN_HINT = (
    "create it with `python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > {path} "
    "&& chmod 600 {path}`, or drop http.token_file to have one generated into state_dir/token"
)
PROFILE_HINT = (
    "calibrate first (`lucida calibrate pixel-size ... --profile {path} --microscope NAME`), "
    "or drop calibration.profile to run on nominal optics"
)


def _name(value: object, limit: int = 120) -> str:
    """A path or name for a message: as is, or repr() cut with a marker when long."""
    text = str(value)
    return text if len(text) <= limit else short(text, limit)


class PreflightError(ConfigError):
    """A config that validates but would not start: every problem, each naming its key."""


@dataclass(frozen=True)
class Finding:
    ok: bool
    subject: str  # e.g. "state_dir /var/lib/lucida"
    detail: str = ""  # what was found, or what to do
    key: str = ""  # the config key this is about, e.g. "sinks.ar[0]"

    def line(self) -> str:
        """One line for --check: `ok   subject: detail` or `FAIL subject: detail [key]` (the
        config key when the subject does not already name it)."""
        where = f" [{self.key}]" if not self.ok and self.key not in self.subject else ""
        return (
            f"{'ok  ' if self.ok else 'FAIL'} {self.subject}"
            + (f": {self.detail}" if self.detail else "")
            + where
        )

    def problem(self) -> str:
        """The failure as one phrase naming its key (start and reload errors)."""
        text = self.subject + (f": {self.detail}" if self.detail else "")
        return f"key '{self.key}': {text}" if self.key else text


def _folder(key: str, folder: Path, create: bool, subject: str | None = None) -> Finding:
    """A folder the daemon writes into: exists (or is created) and is writable."""
    subject = f"{subject or key} {_name(folder)}"
    made = False
    if not folder.exists() and create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            made = True
        except OSError as exc:
            return Finding(False, subject, f"cannot create it ({exc.strerror})", key)
    if folder.exists() and not folder.is_dir():
        return Finding(False, subject, "is not a folder", key)
    if not folder.is_dir():
        return Finding(False, subject, "missing (run --check to create it)", key)
    if not os.access(folder, os.W_OK | os.X_OK):
        return Finding(False, subject, "not writable by this user", key)
    return Finding(True, subject, "created" if made else "", key)


def _token(cfg: DaemonConfig) -> Finding:
    path = cfg.http.token_file
    key = "http.token_file"
    if path:
        p = Path(path)
        subject = f"http.token_file {_name(p)}"
        if not p.is_file():
            return Finding(False, subject, "missing; " + TOKEN_HINT.format(path=p), key)
        try:
            text = p.read_text().strip()
        except OSError as exc:
            return Finding(False, subject, f"unreadable ({exc.strerror})", key)
        if not text:
            return Finding(False, subject, "empty; " + TOKEN_HINT.format(path=p), key)
        return Finding(True, subject, "", key)
    if cfg.http.token:
        return Finding(True, "http.token", "set in the config file (readable by its readers)")
    return Finding(True, "token", f"generated into {Path(cfg.state_dir, 'token')} at start")


def _profile(cfg: DaemonConfig) -> Finding | None:
    path = cfg.calibration.profile
    if not path:
        return None
    from lucida.calibration.store import CalibrationStore

    key = "calibration.profile"
    try:
        store = CalibrationStore.open(path)
    except (ValueError, OSError) as exc:
        return Finding(
            False,
            f"calibration.profile {_name(path)}",
            f"{_name(exc, 300)}; " + PROFILE_HINT.format(path=path),
            key,
        )
    objectives = ", ".join(sorted(store.profile.objectives)) or "none yet"
    return Finding(True, f"calibration.profile {store.path}", f"objectives {objectives}", key)


def _source(cfg: DaemonConfig) -> Finding:
    s = cfg.source
    if s.type == "virtual":
        return Finding(True, "source virtual", f"synthetic slide {s.seed}")
    if s.type == "replay":
        p = Path(s.path or "")
        ok = p.is_dir() and any(p.iterdir())
        return Finding(
            ok, f"source replay {p}", "" if ok else "no such folder of images", "source.path"
        )
    if s.type == "picamera":
        from importlib.util import find_spec

        ok = find_spec("picamera2") is not None
        hint = "" if ok else "picamera2 is not importable: `sudo apt install python3-picamera2`"
        return Finding(
            ok,
            "source picamera",
            hint + (" (venv with --system-site-packages)" if hint else ""),
            "source.type",
        )
    dev = s.device
    if isinstance(dev, int) or str(dev).isdigit():
        node = Path(f"/dev/video{int(dev)}")
        ok = node.exists()
        seen = ", ".join(sorted(glob.glob("/dev/video*"))) or "none"
        detail = "" if ok else f"no such camera (found: {seen})"
        return Finding(ok, f"source opencv {node}", detail, "source.device")
    if "://" in str(dev) or "!" in str(dev):  # URL or GStreamer pipeline: checked when opened
        return Finding(True, f"source opencv {dev}", "not checked before start")
    ok = Path(str(dev)).exists()
    detail = "" if ok else "no such file or device"
    return Finding(ok, f"source opencv {dev}", detail, "source.device")


def objectives(cfg: DaemonConfig) -> set[str]:
    """Objectives this microscope is configured with: the nosepiece's positions (also without a
    serial link: the page and POST /objective switch them by hand) and the start one."""
    return {cfg.source.objective} | set(cfg.serial.positions.values())


def _serial(cfg: DaemonConfig) -> list[Finding]:
    port = cfg.serial.port
    if not port:
        return []
    out = []
    if port == "auto":
        from serial.tools import list_ports

        found = [p.device for p in list_ports.comports() if p.vid is not None]
        detail = f"found {', '.join(found)}" if found else "no USB serial adapter plugged in now"
        out.append(Finding(True, "serial auto", detail + " (the daemon keeps looking)"))
    else:
        try:
            ok = stat.S_ISCHR(os.stat(port).st_mode)  # a tty (or a link to one, by-id)
            detail = "" if ok else "not a serial device (a character device like /dev/ttyUSB0)"
        except OSError:
            ok, detail = False, "no such port (plug the adapter, or 'auto')"
        out.append(Finding(ok, f"serial {_name(port)}", detail, "serial.port"))
    positions = cfg.serial.positions
    if cfg.source.objective not in positions.values():
        where = ", ".join(f"{k}: {v}" for k, v in sorted(positions.items()))
        out.append(
            Finding(
                False,
                f"objective {cfg.source.objective}",
                f"on no nosepiece position ({where})",
                "source.objective",
            )
        )
    if len(set(positions.values())) != len(positions):
        out.append(
            Finding(False, "nosepiece", "an objective is on two positions", "serial.positions")
        )
    return out


def _sinks(cfg: DaemonConfig, create: bool) -> list[Finding]:
    from lucida.overlay.sinks import make_sink

    out = []
    for group in ("ar", "preview"):
        for i, spec in enumerate(getattr(cfg.sinks, group)):
            key = f"sinks.{group}[{i}]"
            try:
                make_sink(spec)  # parses only: nothing opens before start()
            except ValueError as exc:
                out.append(Finding(False, f"sink {_name(spec)}", str(exc), key))
                continue
            kind, _, arg = str(spec).partition(":")
            kind = kind.lower()
            if kind == "fb":
                dev = Path(arg or "/dev/fb0")
                ok = dev.exists() and os.access(dev, os.W_OK)
                detail = "" if ok else "framebuffer missing or not writable (group video)"
                out.append(Finding(ok, f"sink {spec}", detail, key))
            elif kind == "window":
                ok = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
                detail = "" if ok else "no $DISPLAY: use fb:/dev/fb0 on a Pi without a desktop"
                out.append(Finding(ok, f"sink {spec}", detail, key))
            elif kind in ("video", "png") and arg:
                folder = Path(arg).parent if kind == "video" else Path(arg)
                out.append(_folder(key, folder, create, subject=f"sink {kind}"))
            elif kind == "mjpeg":
                out.append(_mjpeg(cfg, spec, key))
    return out


def listen_problem(host: str, port: int = 0) -> str | None:
    """Why a server could not listen on host:port (port 0: only the address is tried), or None.

    The address is resolved and bound as the server would (every address it resolves to),
    then closed at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return f"not an address of this machine ({getattr(exc, 'strerror', None) or exc})"
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(addr)
        except OSError as exc:
            if exc.errno == 98 and port:  # EADDRINUSE
                return f"port {port} is in use"
            return f"cannot listen on {addr[0]} ({exc.strerror})"
    return None


def _mjpeg(cfg: DaemonConfig, spec: str, key: str) -> Finding:
    """An MJPEG sink: a port in range, on an address of this machine, not the API's own."""
    host, _, port = str(spec).partition(":")[2].rpartition(":")
    host, port = host or "127.0.0.1", int(port or 8080)  # make_sink parsed it already
    subject = f"sink {_name(spec)}"
    if not 0 <= port <= 65535:
        return Finding(False, subject, f"port {port}: expected 0..65535", key)
    wild = {"0.0.0.0", "::", ""}
    if port and port == cfg.http.port and (host == cfg.http.bind or {host, cfg.http.bind} & wild):
        return Finding(False, subject, f"port {port} is the HTTP API's (http.port)", key)
    problem = listen_problem(host, 0)
    return Finding(problem is None, subject, problem or "", key)


def _bind(cfg: DaemonConfig, running: DaemonConfig | None) -> Finding | None:
    """http.bind is an address of this machine (a running daemon holds its own port)."""
    if running is not None and running.http.bind == cfg.http.bind:
        return None
    problem = listen_problem(cfg.http.bind, 0)
    if problem is None:
        return None
    return Finding(False, f"http.bind {_name(cfg.http.bind)}", problem, "http.bind")


def _models(cfg: DaemonConfig, sandbox: bool, verified: set | None) -> list[Finding]:
    """Cross-check the models section: folders, task, overrides, a model for the start
    objective, and (with `sandbox`) every bundle it would run checked in a child process."""
    from lucida.models import Registry

    out = []
    for i, d in enumerate(cfg.models.dirs):
        ok = Path(d).is_dir()
        detail = "" if ok else "no such folder"
        out.append(Finding(ok, f"models.dirs {_name(d)}", detail, f"models.dirs[{i}]"))
    try:
        registry = Registry(
            search_dirs=[*cfg.models.dirs, SHIPPED_DIR], config=cfg.models.overrides
        )
        manifests = registry.manifests()
    except (ValueError, OSError) as exc:
        return out + [Finding(False, "models", str(exc), "models.overrides")]
    task = cfg.models.task
    subject = f"models for task {_name(task)}"
    tasks = {m.task for _, m in manifests.values()}
    if task not in tasks:
        known = ", ".join(sorted(tasks)) or "none"
        detail = f"no bundle found (tasks known: {known}; models.dirs, or deploy one)"
        return out + [Finding(False, subject, detail, "models.task")]
    for t, entries in (cfg.models.overrides or {}).items():
        for k, entry in entries.items():
            name = entry.get("bundle") if isinstance(entry, dict) else None
            if name is not None and name not in manifests:
                key = f"models.overrides.{t}.{k}.bundle"
                out.append(Finding(False, key, f"no bundle named {_name(name)}", key))
    bundles, dark = {}, []
    linked = set(cfg.serial.positions.values()) if cfg.serial.port else set()
    for obj in sorted(linked | {cfg.source.objective}):  # what the daemon loads at start
        try:
            resolved = registry.resolve(task, obj)
            claims = obj in resolved.bundle.manifest.objectives
            why = f"bundle {resolved.bundle.name} does not claim {obj}"
        except ValueError as exc:
            claims, why = False, str(exc)
        if not claims:
            dark.append(obj)
            if obj == cfg.source.objective and not cfg.models.allow_no_model:
                out.append(
                    Finding(
                        False,
                        f"objective {obj}",
                        f"no model for task {task} ({why}); "
                        "set models.allow_no_model: true to run without one",
                        "models.allow_no_model",
                    )
                )
            continue
        bundles[resolved.bundle.name] = resolved.bundle
    found = sorted(n for n, (_, m) in manifests.items() if m.task == task)
    detail = ", ".join(found) + (
        f"; no model for {', '.join(dark)} (nothing is drawn there)" if dark else ""
    )
    out.append(Finding(True, subject, detail))
    if sandbox:
        for b in bundles.values():
            errors: list[str] = []
            sandbox_check(b, cfg, errors, verified)
            out += [Finding(False, f"bundle {b.name} ({b.path})", e, "models") for e in errors]
    return out


def sandbox_check(bundle, cfg: DaemonConfig, errors: list | None = None, verified=None) -> dict:
    """Golden-check `bundle` in a child process (shipped bundles and ones already verified in
    this process are trusted). With `errors`, a failure is appended; without, it is raised."""
    from .sandbox import SandboxError, SandboxLimits, check_in_child

    key = (str(bundle.path), bundle.sha256())
    if Path(bundle.path).parent == SHIPPED_DIR or (verified is not None and key in verified):
        return {"ok": True, "trusted": True}
    sb: SandboxConfig = cfg.models.sandbox
    try:  # on the CPU: the daemon may hold the Edge TPUs, and the file parsed is the same
        health = check_in_child(
            bundle.path,
            device="cpu",
            num_threads=1,
            limits=SandboxLimits(sb.memory_mb, sb.cpu_s, sb.timeout_s),
        )
    except SandboxError as exc:
        if errors is None:
            raise
        errors.append(str(exc))
        return {"ok": False, "error": str(exc)}
    if verified is not None:
        verified.add(key)
    return health


def _moved(cfg: DaemonConfig, running: DaemonConfig) -> list[Finding]:
    out = []
    for key in ("bind", "port"):
        old, new = getattr(running.http, key), getattr(cfg.http, key)
        if old != new:
            out.append(
                Finding(
                    False,
                    f"http.{key}",
                    f"changed from {old} to {new}; the API cannot move while running: "
                    "restart the daemon (systemctl restart lucida)",
                    f"http.{key}",
                )
            )
    return out


def preflight(
    cfg: DaemonConfig,
    create: bool = True,
    running: DaemonConfig | None = None,
    sandbox: bool = True,
    verified: set | None = None,
) -> list[Finding]:
    """Every check of `cfg`, in the order a new user would fix them (see the module doc)."""
    found = [_folder("state_dir", Path(cfg.state_dir), create)]
    if cfg.log.events:
        found.append(
            _folder("log.events", Path(cfg.log.events).parent, create, subject="log folder")
        )
        if Path(cfg.log.events).is_dir():
            found.append(
                Finding(False, f"log.events {cfg.log.events}", "is a folder", "log.events")
            )
    found.append(_token(cfg))
    bind = _bind(cfg, running)
    if bind is not None:
        found.append(bind)
    found += [f for f in (_profile(cfg), _source(cfg)) if f is not None]
    found += _serial(cfg)
    found += _sinks(cfg, create)
    if running is not None:
        found += _moved(cfg, running)
    found += _models(cfg, sandbox, verified)
    return found


def check_config(cfg: DaemonConfig, origin: str, **kwargs) -> None:
    """preflight, raised as one PreflightError listing every problem (start and reload)."""
    bad = [f for f in preflight(cfg, **kwargs) if not f.ok]
    if bad:
        n = len(bad)
        raise PreflightError(
            f"{origin}: {n} problem{'s' if n > 1 else ''}: " + "; ".join(f.problem() for f in bad)
        )


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
