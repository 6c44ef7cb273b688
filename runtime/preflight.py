"""What a config schema cannot check, checked before the daemon starts or reloads with it.

`preflight(cfg)` returns every problem at once, each naming its key: paths that neither exist
nor can be created, sink specs, the serial port, the calibration profile, the objectives
(configured start objective on the nosepiece), the model task and bundles, a model for the
start objective (unless `models.allow_no_model`), and, when `sandbox` is true, every bundle the
config would run loaded and golden-checked in a child process (runtime.sandbox) first.
`lucida run --check` and SIGHUP reload run exactly this.
"""

from __future__ import annotations

import os
from pathlib import Path

from lucida.models.archive import short
from lucida.models.registry import SHIPPED_DIR

from .config import ConfigError, DaemonConfig, SandboxConfig


class PreflightError(ConfigError):
    """A config that validates but would not start: every problem, each naming its key."""


def _creatable(path: str | os.PathLike, what: str, errors: list, folder: bool) -> None:
    p = Path(path)
    target = p if folder else p.parent
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        errors.append(f"{what} {short(str(p))}: {probe} is not a folder")
    elif target.exists() and not os.access(target, os.W_OK):
        errors.append(f"{what} {short(str(p))}: folder {target} is not writable")
    elif not target.exists() and not os.access(probe, os.W_OK):
        errors.append(f"{what} {short(str(p))}: cannot create it ({probe} is not writable)")
    if not folder and p.is_dir():
        errors.append(f"{what} {short(str(p))}: is a folder, expected a file")


def _sinks(cfg: DaemonConfig, errors: list) -> None:
    from lucida.overlay.sinks import make_sink

    for group in ("ar", "preview"):
        for i, spec in enumerate(getattr(cfg.sinks, group)):
            key = f"sinks.{group}[{i}]"
            try:
                make_sink(spec)  # parses only: nothing opens before start()
            except ValueError as exc:
                errors.append(f"key '{key}': {exc}")
                continue
            kind, _, arg = str(spec).partition(":")
            kind = kind.lower()
            if kind == "fb" and not Path(arg or "/dev/fb0").exists():
                errors.append(f"key '{key}': framebuffer {arg or '/dev/fb0'} does not exist")
            elif kind in ("video", "png"):
                _creatable(arg, f"key '{key}':", errors, folder=kind == "png")


def objectives(cfg: DaemonConfig) -> set[str]:
    """Objectives this microscope is configured with: the nosepiece's and the start one."""
    out = {cfg.source.objective}
    if cfg.serial.port:
        out |= set(cfg.serial.positions.values())
    return out


def _models(cfg: DaemonConfig, errors: list, sandbox: bool, verified: set | None) -> list:
    """Cross-check the models section; returns the bundles the config would run."""
    from lucida.models import Registry

    for i, d in enumerate(cfg.models.dirs):
        if not Path(d).is_dir():
            errors.append(f"key 'models.dirs[{i}]': {short(d)} is not a folder")
    try:
        registry = Registry(
            search_dirs=[*cfg.models.dirs, SHIPPED_DIR], config=cfg.models.overrides
        )
        manifests = registry.manifests()
    except ValueError as exc:
        errors.append(f"key 'models.overrides': {exc}")
        return []
    tasks = {m.task for _, m in manifests.values()}
    if cfg.models.task not in tasks:
        errors.append(
            f"key 'models.task': no bundle for task {short(cfg.models.task)} "
            f"(tasks known: {', '.join(sorted(tasks)) or 'none'})"
        )
        return []
    for task, entries in (cfg.models.overrides or {}).items():
        for key, entry in entries.items():
            name = entry.get("bundle") if isinstance(entry, dict) else None
            if name is not None and name not in manifests:
                errors.append(
                    f"key 'models.overrides.{task}.{key}.bundle': no bundle named {short(name)}"
                )
    bundles = {}
    for obj in sorted(objectives(cfg)):
        try:
            resolved = registry.resolve(cfg.models.task, obj)
        except ValueError as exc:
            if obj == cfg.source.objective and not cfg.models.allow_no_model:
                errors.append(
                    f"key 'source.objective': no model for task {cfg.models.task} at {obj} "
                    f"({exc}); set models.allow_no_model: true to run without one"
                )
            continue
        if obj not in resolved.bundle.manifest.objectives:
            if obj == cfg.source.objective and not cfg.models.allow_no_model:
                errors.append(
                    f"key 'source.objective': bundle {resolved.bundle.name} does not claim {obj}; "
                    f"set models.allow_no_model: true to run without a model there"
                )
            continue
        bundles[resolved.bundle.name] = resolved.bundle
    if sandbox:
        for b in bundles.values():
            sandbox_check(b, cfg, errors, verified)
    return list(bundles.values())


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
        errors.append(f"bundle {bundle.name} ({bundle.path}): {exc}")
        return {"ok": False, "error": str(exc)}
    if verified is not None:
        verified.add(key)
    return health


def preflight(
    cfg: DaemonConfig,
    running: DaemonConfig | None = None,
    sandbox: bool = True,
    verified: set | None = None,
) -> list[str]:
    """Every problem that would stop `cfg` from starting (empty: it will start). With
    `running`, the config it would replace: http.bind/port cannot change without a restart."""
    errors: list[str] = []
    _creatable(cfg.state_dir, "key 'state_dir':", errors, folder=True)
    if cfg.log.events:
        _creatable(cfg.log.events, "key 'log.events':", errors, folder=False)
    if cfg.source.type == "replay" and cfg.source.path and not Path(cfg.source.path).is_dir():
        errors.append(f"key 'source.path': {short(cfg.source.path)} is not a folder of images")
    if cfg.http.token_file:
        try:
            if not Path(cfg.http.token_file).read_text().strip():
                errors.append(f"key 'http.token_file': {cfg.http.token_file} is empty")
        except OSError as exc:
            errors.append(f"key 'http.token_file': {cfg.http.token_file}: {exc.strerror}")
    if cfg.calibration.profile:
        try:
            from lucida.calibration.store import CalibrationStore

            CalibrationStore.open(cfg.calibration.profile)
        except (ValueError, OSError) as exc:
            errors.append(f"key 'calibration.profile': {short(str(exc), 300)[1:-1]}")
    _sinks(cfg, errors)
    if cfg.serial.port:
        if cfg.serial.port != "auto" and not Path(cfg.serial.port).exists():
            errors.append(f"key 'serial.port': {short(cfg.serial.port)} does not exist")
        if cfg.source.objective not in cfg.serial.positions.values():
            errors.append(
                f"key 'source.objective': {cfg.source.objective} is on no nosepiece position "
                f"({', '.join(f'{k}: {v}' for k, v in sorted(cfg.serial.positions.items()))})"
            )
        if len(set(cfg.serial.positions.values())) != len(cfg.serial.positions):
            errors.append("key 'serial.positions': an objective is on two positions")
    if running is not None:
        for key in ("bind", "port"):
            old, new = getattr(running.http, key), getattr(cfg.http, key)
            if old != new:
                errors.append(
                    f"key 'http.{key}': changed from {old} to {new}; the API cannot move "
                    f"while running: restart the daemon (systemctl restart lucida)"
                )
    _models(cfg, errors, sandbox, verified)
    return errors


def check_config(cfg: DaemonConfig, origin: str, **kwargs) -> None:
    """preflight, raised as one PreflightError listing every problem."""
    errors = preflight(cfg, **kwargs)
    if errors:
        n = len(errors)
        raise PreflightError(f"{origin}: {n} problem{'s' if n > 1 else ''}: " + "; ".join(errors))
