"""The daemon's configuration file (YAML), validated: unknown keys and bad values are named.

Example (every key optional except where noted):

    source: {type: virtual, seed: 1001, fps: 15, objective: 10x}
    models: {task: lymph, device: auto, dirs: [], overrides: {lymph: {default: {bundle: lymph-m}}}}
    calibration: {profile: /etc/lucida/scope.yaml}
    display: {width: 1920, height: 1080, eyepiece: true, max_overlay_age_ms: 250}
    safety: {blank_display_px: 4, settle_frames: 2, compensate: true, rebuild_after_ms: 2000}
    sinks: {ar: ["window"], preview: []}
    serial: {port: auto, protocol: olympus, positions: {1: 4x, 2: 10x, 3: 20x, 4: 40x}}
    http: {bind: 127.0.0.1, port: 8080, token_file: /etc/lucida/token, allowed_hosts: [scope.lan]}
    state_dir: /var/lib/lucida
    log: {events: /var/log/lucida/events.jsonl, timings_every: 30}

Every key is bounded; `runtime.preflight` cross-checks what a schema cannot (paths, devices,
bundles, calibration), and `lucida run --check` runs exactly that validation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Dict, List, Literal, Optional, Tuple, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


OBJECTIVE = r"^\d{1,3}(\.\d{1,2})?x$"  # "20x", "2.5x"
MAX_W, MAX_H = 7680, 4320  # px: 8K is the largest camera or display accepted


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("contains a NUL byte: not a usable path")
    return value


def _usable_path(value: str) -> str:
    _no_nul(value)
    if any(len(part.encode()) > 255 for part in value.split("/")):
        raise ValueError("a name in it is longer than 255 bytes (NAME_MAX)")
    return value


# a file or folder name: bounded, no NUL byte, no name longer than the OS allows (it would
# refuse them only later, at start)
PathStr = Annotated[str, Field(max_length=4096), AfterValidator(_usable_path)]
# a device: an index, a file, a URL or a GStreamer pipeline (long runs without "/" are fine)
DeviceStr = Annotated[str, Field(max_length=4096), AfterValidator(_no_nul)]


class SourceConfig(_Strict):
    type: Literal["virtual", "opencv", "replay", "picamera"] = "virtual"
    seed: int = Field(default=1001, ge=0, le=2**31)  # virtual: slide seed
    # the objective until a nosepiece reports one (virtual: starting one)
    objective: str = Field(default="10x", pattern=OBJECTIVE)
    # opencv: index, file, URL or GStreamer pipeline
    device: Union[Annotated[int, Field(ge=0, le=1023)], DeviceStr] = 0
    path: Optional[PathStr] = None  # replay: folder of images
    fps: float = Field(default=15.0, gt=0, le=240)
    # no frame for this long: display blanks (ms)
    stall_timeout_ms: float = Field(default=500.0, gt=0, le=60000)
    width: int = Field(default=1920, ge=16, le=MAX_W)
    height: int = Field(default=1080, ge=16, le=MAX_H)
    report_motion: bool = True  # virtual: False = a camera like any other (no Frame.moving)
    stage: Literal["path", "tour"] = "path"  # virtual: jumps and pans, or hand-like TourPath
    # camera controls per objective ("default" for all), runtime.camera_controls names
    controls: Dict[str, Dict[str, Union[bool, float]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _controls_are_known(self):
        from .camera_controls import check_controls

        for objective, values in self.controls.items():
            try:
                check_controls(values)
            except ValueError as exc:
                raise ValueError(f"source.controls.{objective}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _replay_needs_path(self):
        if self.type == "replay" and not self.path:
            raise ValueError("source.type 'replay' needs source.path (a folder of images)")
        return self


class SandboxConfig(_Strict):
    """Limits of the child process that first loads an untrusted bundle (runtime.sandbox)."""

    memory_mb: int = Field(default=1536, ge=256, le=65536)  # address space (MiB)
    cpu_s: int = Field(default=60, ge=1, le=3600)  # CPU time (s)
    timeout_s: float = Field(default=90.0, gt=0, le=3600)  # wall clock (s)


class ArchiveConfig(_Strict):
    """Caps on an uploaded bundle archive (models.archive)."""

    max_members: int = Field(default=64, ge=2, le=10000)
    max_unpacked_mb: float = Field(default=256, gt=0, le=8192)
    max_name_bytes: int = Field(default=255, ge=16, le=4096)
    max_ext_header_kb: int = Field(default=64, ge=1, le=1024)


class ModelsConfig(_Strict):
    task: str = Field(default="lymph", min_length=1, max_length=64)
    # one spec, "all" (every Edge TPU found) or a list of specs: one interpreter per device
    device: Union[
        Annotated[str, Field(pattern=r"^(auto|cpu|edgetpu|all|usb:\d+|pci:\d+)$")],
        Annotated[
            List[Annotated[str, Field(pattern=r"^(usb|pci):\d+$")]],
            Field(min_length=1, max_length=16),
        ],
    ] = "auto"
    num_threads: Optional[int] = Field(default=None, ge=1, le=64)
    # several devices, a bundle per objective: each bundle on devices of its own, all loaded
    # at start, so a turn of the nosepiece reloads nothing (docs/accelerators.md)
    preload: bool = False
    dirs: List[PathStr] = Field(
        default_factory=list, max_length=32
    )  # extra bundle folders, searched after deployed ones
    overrides: Optional[Dict[str, Dict[str, Dict[str, object]]]] = None  # registry config
    # start (or reload) even when no bundle claims source.objective: the overlay stays off
    allow_no_model: bool = False
    keep_bundles: int = Field(default=3, ge=2, le=100)  # installed bundles kept on disk
    sandbox: SandboxConfig = SandboxConfig()
    archive: ArchiveConfig = ArchiveConfig()


class CalibrationConfig(_Strict):
    profile: Optional[PathStr] = None


class DisplayConfig(_Strict):
    width: int = Field(default=1920, ge=16, le=MAX_W)
    height: int = Field(default=1080, ge=16, le=MAX_H)
    # True: the inscribed circle; (x, y, radius) in display px; False: the whole display
    eyepiece: Union[bool, Tuple[float, float, float]] = True
    # an overlay older than this is cleared (ms); None: 2 frame intervals + the p99 latency
    max_overlay_age_ms: Optional[float] = Field(default=None, gt=0, le=60000)

    @model_validator(mode="after")
    def _circle_on_the_display(self):
        if isinstance(self.eyepiece, tuple):
            x, y, r = self.eyepiece
            if not (0 <= x <= self.width and 0 <= y <= self.height):
                raise ValueError(
                    f"display.eyepiece centre ({x:g}, {y:g}) is off the "
                    f"{self.width}x{self.height} display"
                )
            if not 0 < r <= max(self.width, self.height):
                raise ValueError(
                    f"display.eyepiece radius {r:g}: expected 0 < r <= "
                    f"{max(self.width, self.height)} px"
                )
        return self


class SinksConfig(_Strict):
    ar: List[PathStr] = Field(default_factory=list, max_length=8)  # ["window"], ["fb:/dev/fb0"]
    preview: List[PathStr] = Field(default_factory=list, max_length=8)  # ["video:/tmp/rec.mp4"]


class SerialConfig(_Strict):
    # None: no nosepiece; "auto": detect a USB serial adapter
    port: Optional[PathStr] = None
    protocol: Literal["olympus", "simple"] = "olympus"
    positions: Dict[int, str] = Field(
        default_factory=lambda: {1: "4x", 2: "10x", 3: "20x", 4: "40x", 5: "2x"},
        min_length=1,
        max_length=12,
    )
    poll_interval_s: float = Field(default=0.2, gt=0, le=5)
    login: bool = False  # olympus: `1LOG IN` at every session start
    notify: bool = False  # olympus: `1SNDOB ON`, unsolicited position reports

    @field_validator("positions")
    @classmethod
    def _positions(cls, v):
        import re

        for pos, obj in v.items():
            if not 1 <= pos <= 12:
                raise ValueError(f"nosepiece position {pos}: expected 1..12")
            if not re.match(OBJECTIVE, str(obj)):
                raise ValueError(f"position {pos}: objective {obj!r} is not like '20x'")
        seen: dict = {}
        for pos, obj in sorted(v.items()):
            if obj in seen:
                raise ValueError(f"objective {obj} is on positions {seen[obj]} and {pos}")
            seen[obj] = pos
        return v


class HttpConfig(_Strict):
    bind: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    port: int = Field(default=8080, ge=0, le=65535)
    token: Optional[str] = Field(default=None, min_length=1, max_length=512, pattern=r"^[!-~]+$")
    token_file: Optional[PathStr] = None
    max_upload_mb: float = Field(default=64, gt=0, le=1024)
    # Host header names accepted besides loopback, the bound address and this host's name
    allowed_hosts: List[str] = Field(default_factory=list, max_length=32)
    max_connections: int = Field(default=64, ge=4, le=4096)  # open HTTP connections
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)  # to send a request header (s)
    idle_timeout_s: float = Field(default=30.0, gt=0, le=3600)  # keep-alive, body stalls (s)
    min_free_mb: float = Field(default=200, ge=0, le=1e6)  # uploads refused below this (MiB)


class SafetyConfig(_Strict):
    """What blanks the display beyond the camera and turret (runtime/safety.py Safety)."""

    # stage speed that blanks (um/s); None: from blank_display_px
    blank_speed_um_s: Optional[float] = Field(default=None, gt=0, le=1e5)
    blank_display_px: float = Field(default=4.0, gt=0, le=500)  # shift per frame that blanks (px)
    settle_frames: int = Field(default=2, ge=1, le=30)
    compensate: bool = True
    slow_factor: float = Field(default=4.0, gt=1, le=100)
    rebuild_after_ms: float = Field(default=2000.0, ge=100, le=600000)
    focus_drop: float = Field(default=0.35, ge=0, lt=1)  # 0: no focus guard
    saturated_share: float = Field(default=0.2, gt=0, le=1)  # 1: no exposure guard


class LogConfig(_Strict):
    events: Optional[PathStr] = None  # JSON-lines file; None: stderr
    # log stage timings of every Nth frame (0: never)
    timings_every: int = Field(default=30, ge=0, le=100000)


class DaemonConfig(_Strict):
    source: SourceConfig = SourceConfig()
    models: ModelsConfig = ModelsConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    display: DisplayConfig = DisplayConfig()
    sinks: SinksConfig = SinksConfig()
    serial: SerialConfig = SerialConfig()
    http: HttpConfig = HttpConfig()
    safety: SafetyConfig = SafetyConfig()
    state_dir: Annotated[PathStr, Field(min_length=1)] = "/var/lib/lucida"
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
        raise ConfigError(f"{origin}: {'; '.join(_describe(e) for e in errs[:20])}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the schema names it
                continue
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short_key(key)} given twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


def short_key(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def load_config(path: str | os.PathLike) -> DaemonConfig:
    """Read and validate a YAML config file (a key given twice is an error, not the last one)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    return parse_config(data, str(path))
