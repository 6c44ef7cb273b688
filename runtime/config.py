"""The daemon's configuration file (YAML), validated: unknown keys and bad values are named.

Example (every key optional except where noted):

    source: {type: virtual, seed: 1001, fps: 15, objective: 10x}
    models: {task: lymph, device: auto, dirs: [], overrides: {lymph: {default: {bundle: lymph-m}}}}
    calibration: {profile: /etc/lucida/scope.yaml}
    display: {width: 1920, height: 1080, eyepiece: true}
    sinks: {ar: ["window"], preview: []}
    serial: {port: auto, protocol: olympus, positions: {1: 4x, 2: 10x, 3: 20x, 4: 40x}}
    http: {bind: 127.0.0.1, port: 8080, token_file: /etc/lucida/token}
    state_dir: /var/lib/lucida
    log: {events: /var/log/lucida/events.jsonl, timings_every: 30}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Dict, List, Literal, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    type: Literal["virtual", "opencv", "replay", "picamera"] = "virtual"
    seed: int = 1001  # virtual: slide seed
    objective: str = "10x"  # the objective until a nosepiece reports one (virtual: starting one)
    device: Union[int, str] = 0  # opencv: index, file, URL or GStreamer pipeline
    path: Optional[str] = None  # replay: folder of images
    fps: float = Field(default=15.0, gt=0, le=240)
    stall_timeout_ms: float = Field(default=500.0, gt=0)  # no frame for this long: display blanks
    width: int = Field(default=1920, gt=0)
    height: int = Field(default=1080, gt=0)

    @model_validator(mode="after")
    def _replay_needs_path(self):
        if self.type == "replay" and not self.path:
            raise ValueError("source.type 'replay' needs source.path (a folder of images)")
        return self


class ModelsConfig(_Strict):
    task: str = "lymph"
    # one spec, "all" (every Edge TPU found) or a list of specs: one interpreter per device
    device: Union[
        Annotated[str, Field(pattern=r"^(auto|cpu|edgetpu|all|usb:\d+|pci:\d+)$")],
        Annotated[List[Annotated[str, Field(pattern=r"^(usb|pci):\d+$")]], Field(min_length=1)],
    ] = "auto"
    num_threads: Optional[int] = Field(default=None, ge=1)
    # several devices, a bundle per objective: each bundle on devices of its own, all loaded
    # at start, so a turn of the nosepiece reloads nothing (docs/accelerators.md)
    preload: bool = False
    dirs: List[str] = Field(
        default_factory=list
    )  # extra bundle folders, searched after deployed ones
    overrides: Optional[Dict[str, Dict[str, Dict[str, object]]]] = None  # registry config


class CalibrationConfig(_Strict):
    profile: Optional[str] = None


class DisplayConfig(_Strict):
    width: int = Field(default=1920, gt=0)
    height: int = Field(default=1080, gt=0)
    eyepiece: Union[bool, Tuple[float, float, float]] = True  # True: inscribed circle


class SinksConfig(_Strict):
    ar: List[str] = Field(default_factory=list)  # e.g. ["window"], ["fb:/dev/fb0"]
    preview: List[str] = Field(default_factory=list)  # e.g. ["video:/tmp/rec.mp4"]


class SerialConfig(_Strict):
    port: Optional[str] = None  # None: no nosepiece; "auto": detect a USB serial adapter
    protocol: Literal["olympus", "simple"] = "olympus"
    positions: Dict[int, str] = Field(
        default_factory=lambda: {1: "4x", 2: "10x", 3: "20x", 4: "40x", 5: "2x"}
    )
    poll_interval_s: float = Field(default=0.2, gt=0, le=5)


class HttpConfig(_Strict):
    bind: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token: Optional[str] = None
    token_file: Optional[str] = None
    max_upload_mb: float = Field(default=64, gt=0)


class LogConfig(_Strict):
    events: Optional[str] = None  # JSON-lines file; None: stderr
    timings_every: int = Field(default=30, ge=0)  # log stage timings of every Nth frame (0: never)


class DaemonConfig(_Strict):
    source: SourceConfig = SourceConfig()
    models: ModelsConfig = ModelsConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    display: DisplayConfig = DisplayConfig()
    sinks: SinksConfig = SinksConfig()
    serial: SerialConfig = SerialConfig()
    http: HttpConfig = HttpConfig()
    state_dir: str = "/var/lib/lucida"
    log: LogConfig = LogConfig()

    def token(self) -> str | None:
        """The bearer token for state-changing requests (from `http.token` or `http.token_file`)."""
        if self.http.token_file:
            try:
                return Path(self.http.token_file).read_text().strip() or None
            except OSError as exc:
                raise ConfigError(
                    f"http.token_file {self.http.token_file}: {exc.strerror}"
                ) from None
        return self.http.token


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"key '{key}': {err['msg']}"


def parse_config(data: object, origin: str = "config") -> DaemonConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of keys at the top level")
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        errs = exc.errors()
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        raise ConfigError(f"{origin}: {_describe(errs[0])}{more}") from None


def load_config(path: str | os.PathLike) -> DaemonConfig:
    """Read and validate a YAML config file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    return parse_config(data, str(path))
