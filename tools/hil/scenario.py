"""HIL scenarios: a YAML file naming a device setup and the steps to run on it, validated.

    name: smoke
    description: one line
    dut: {fps: 10, width: 960, height: 540, objective: 10x, models: {task: lymph}}
    steps:
      - health: {}
      - deploy: {bundle: lymph-s}
      - objective: {to: 20x, cleared_within_ms: 400}
      - stage: {where: [tumour, normal], dwell_s: 3}
      - expect: {seconds: 6, iou_min: 0.3, fov_accuracy_min: 0.7}
      - measure: {windows: 5, window_s: 10, fps_min: 3, latency_p99_ms_max: 800}
      - soak: {seconds: 600, rss_growth_mb_max: 64, fps_drop_max: 0.25}
      - fault: {kind: source_stall, seconds: 2, cleared_within_ms: 600}
        name: camera-freezes
      - hand: {seconds: 20, seed: 11}  # stage moved as a hand does; motion from the image        # optional, else "NN-kind[-detail]"

Every step is a mapping with one step key (its parameters below) and an optional `name`.
Unknown keys and bad values are errors that name the file, the step and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Literal, Optional, Union

import yaml
from lucida.runtime.config import ModelsConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SHIPPED = Path(__file__).resolve().parent / "scenarios"
WHERE = ("tumour", "normal", "boundary", "tissue")


class ScenarioError(ValueError):
    """A scenario file that cannot be run: the message names the file, the step and the key."""

    exit_code = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _objective(v: str) -> str:
    if not (isinstance(v, str) and v.endswith("x") and v[:-1].replace(".", "", 1).isdigit()):
        raise ValueError(f"objective {v!r} is not like '20x'")
    return v


class DutSpec(_Strict):
    """How the emulated device is set up (a remote device is as the lab configured it).

    Virtual camera: seed (slide), fps, width x height px, starting objective. positions: the
    nosepiece's objective per position (must be on the virtual turret: 2x 4x 10x 20x 40x).
    models: the daemon's `models` config section. poll_interval_s: serial poll period.
    stall_timeout_ms: no camera frame for this long blanks the display.
    """

    seed: int = 1001
    fps: float = Field(default=10.0, gt=0, le=60)
    width: int = Field(default=960, ge=64, le=3840)
    height: int = Field(default=540, ge=64, le=2160)
    objective: str = "10x"
    positions: Dict[int, str] = Field(
        default_factory=lambda: {1: "2x", 2: "4x", 3: "10x", 4: "20x", 5: "40x"}
    )
    models: ModelsConfig = Field(default_factory=lambda: ModelsConfig(num_threads=2))
    # 0.15 s: the daemon reopens the link after 3 unanswered polls; the emulated nosepiece is a
    # Python thread of the bench, which a loaded 2-core CI host can starve for a few 100 ms.
    poll_interval_s: float = Field(default=0.15, gt=0, le=1)
    stall_timeout_ms: float = Field(default=400.0, gt=0)
    report_motion: bool = True  # False: the virtual microscope is a camera like any other

    @field_validator("objective")
    @classmethod
    def _obj(cls, v):
        return _objective(v)

    @field_validator("positions")
    @classmethod
    def _pos(cls, v):
        for o in v.values():
            _objective(o)
        return v


class HealthStep(_Strict):
    """Reachable, camera delivering, a model running, and its golden check passes (LAVA-style:
    a failure takes the device out of service and every later step is skipped)."""

    timeout_s: float = Field(default=60.0, gt=0)


class DeployStep(_Strict):
    """Upload a bundle (folder, .tar.gz or shipped name); the device must run it afterwards."""

    bundle: str
    cleared_within_ms: Optional[float] = Field(default=None, gt=0)
    timeout_s: float = Field(default=60.0, gt=0)


class ObjectiveStep(_Strict):
    """Turn the nosepiece (over serial) to `to`; the daemon must follow, and an overlay on
    display must be cleared within `cleared_within_ms` (device clock)."""

    to: str
    cleared_within_ms: Optional[float] = Field(default=None, gt=0)
    timeout_s: float = Field(default=15.0, gt=0)

    @field_validator("to")
    @classmethod
    def _obj(cls, v):
        return _objective(v)


class StageStep(_Strict):
    """Move the stage: jump between random points of these kinds, `dwell_s` at each, looping
    (emulated: the virtual microscope; remote: skipped, replay a slide video instead)."""

    where: List[Literal["tumour", "normal", "boundary", "tissue"]] = ["tumour"]
    dwell_s: float = Field(default=3.0, gt=0, le=3600)
    seed: int = 0

    @field_validator("where", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v


class WaitStep(_Strict):
    seconds: float = Field(gt=0, le=86400)


class HandStep(_Strict):
    """Move the stage as a hand does for `seconds` (seeded pans with acceleration, stops,
    drifts, vibration; the virtual microscope's TourPath) and judge the display records
    against that path: blank within `blank_within_intervals` camera intervals of each pan
    faster than the device's blanking speed, no overlay from a frame taken while the field
    moved faster, overlays back within `back_within_s` of the stage settling, and during slow
    pans an overlay on display for >= `slow_shown_min` of the time, motion-compensated: where
    an overlay is drawn vs where its tissue is half an interval later, p95 <= `shift_err_px_max`
    camera px, and its shift covers >= `compensated_min` of the field's true displacement
    (median, overlays an unshifted copy of which would lag >= 1 px). `margin`: speeds
    within this fraction of the blanking speed count as neither fast nor slow (the device's
    figure moves with its latency, and its gate settles only below 0.8 x it). Emulated only
    (remote: skipped)."""

    seconds: float = Field(default=20.0, gt=2, le=600)
    seed: int = 11
    blank_within_intervals: float = Field(default=1.0, gt=0)
    back_within_s: float = Field(default=2.0, gt=0)
    slow_shown_min: Optional[float] = Field(default=0.4, ge=0, le=1)
    shift_err_px_max: Optional[float] = Field(default=3.0, gt=0)
    compensated_min: Optional[float] = Field(default=0.5, ge=0, le=1)
    margin: float = Field(default=0.25, ge=0, lt=1)


class ExpectStep(_Strict):
    """Watch `seconds` of displayed results and check them: contour IoU against the ground
    truth (pooled over frames), FoV detection accuracy (tumour >= 1 % of the view vs any
    contour drawn), what runs (objective, model, delegate), and how many overlays are drawn
    (max_overlays 0: at an objective no model claims, nothing may be drawn)."""

    seconds: float = Field(default=5.0, gt=0, le=3600)
    iou_min: Optional[float] = Field(default=None, ge=0, le=1)
    fov_accuracy_min: Optional[float] = Field(default=None, ge=0, le=1)
    objective: Optional[str] = None
    model: Optional[str] = None
    delegate: Optional[str] = None
    min_overlays: int = Field(default=3, ge=0)
    max_overlays: Optional[int] = Field(default=None, ge=0)  # 0: nothing may be drawn


class MeasureStep(_Strict):
    """Throughput and latency on the device clock (MLPerf Tiny style): the median overlay fps
    over `windows` (>= 5) windows of `window_s`, and capture->display latency p50/p90/p99."""

    windows: int = Field(default=5, ge=5, le=100)
    window_s: float = Field(default=10.0, gt=0, le=600)
    fps_min: Optional[float] = Field(default=None, ge=0)
    latency_p50_ms_max: Optional[float] = Field(default=None, gt=0)
    latency_p90_ms_max: Optional[float] = Field(default=None, gt=0)
    latency_p99_ms_max: Optional[float] = Field(default=None, gt=0)


class SoakStep(_Strict):
    """Run for `seconds`, sampling memory (RSS) and fps every `sample_s`: the device must stay
    up, memory must not grow more than rss_growth_mb_max (last third vs first third, medians),
    fps must not drop by more than fps_drop_max (a fraction)."""

    seconds: float = Field(gt=0, le=7 * 86400)
    sample_s: float = Field(default=10.0, gt=0)
    rss_growth_mb_max: Optional[float] = Field(default=64.0, gt=0)
    # memory growth as a percentage, judged on samples after `warmup_s` only (the first
    # minutes fill caches and pools): last third vs first third of those, medians
    rss_growth_pct_max: Optional[float] = Field(default=None, gt=0)
    warmup_s: float = Field(default=0.0, ge=0)
    fps_drop_max: Optional[float] = Field(default=0.25, gt=0, le=1)
    fps_min: Optional[float] = Field(default=None, ge=0)


class _Fault(_Strict):
    recover_within_s: float = Field(default=20.0, gt=0)


class SourceStall(_Fault):
    """The camera freezes for `seconds`: the overlay must be cleared, then come back."""

    kind: Literal["source_stall"]
    seconds: float = Field(default=2.0, gt=0, le=600)
    cleared_within_ms: Optional[float] = Field(default=None, gt=0)


class SourceUnplug(_Fault):
    """The camera is unplugged for `seconds`, then plugged back."""

    kind: Literal["source_unplug"]
    seconds: float = Field(default=2.0, gt=0, le=600)
    cleared_within_ms: Optional[float] = Field(default=None, gt=0)


class SerialUnplug(_Fault):
    """The nosepiece's serial adapter is pulled for `seconds`: the objective is unknown, so the
    overlay must be cleared; after replugging, the link and the overlay come back."""

    kind: Literal["serial_unplug"]
    seconds: float = Field(default=2.0, gt=0, le=600)
    cleared_within_ms: Optional[float] = Field(default=None, gt=0)


class SerialGarbage(_Fault):
    """`bytes` of noise on the serial line: the daemon keeps its objective and its overlay."""

    kind: Literal["serial_garbage"]
    bytes: int = Field(default=512, ge=1, le=65536)
    seed: int = 0


class EdgeTpuUnavailable(_Fault):
    """Restart with the Edge TPU asked for but its library missing: the daemon must run on the
    CPU, say why (fallback_reason), and keep drawing; then restart as before."""

    kind: Literal["edgetpu_unavailable"]


class CorruptDeploy(_Fault):
    """Upload broken copies of `bundle` (default: the one running): truncated archive,
    tampered model file, wrong golden output. Each must be refused, the running model kept."""

    kind: Literal["corrupt_deploy"]
    bundle: Optional[str] = None
    how: List[Literal["truncated", "tampered", "bad_golden"]] = [
        "truncated",
        "tampered",
        "bad_golden",
    ]


class SigKill(_Fault):
    """kill -9 the daemon, restart it the way systemd's Restart=on-failure does (after
    `restart_after_s`); it must be READY again with the same deployed model and settings."""

    kind: Literal["sigkill"]
    restart_after_s: float = Field(default=1.0, ge=0, le=60)


class HostileStep(_Strict):
    """The red team's catalogue (tools/hil/hostile.py), each attack judged alone: refused,
    daemon survived with the old model serving, max display gap (ms, device clock) and, for
    uploads, memory peak above the baseline (MiB); nothing left in incoming/ at the end.
    Attacks needing the daemon's process (reload_bad_configs, kill9_mid_deploy) are skipped
    on a remote device."""

    attacks: Optional[List[str]] = None  # default: all
    max_display_gap_ms: float = Field(default=500.0, gt=0)
    upload_memory_mb_max: float = Field(default=200.0, gt=0)

    @field_validator("attacks")
    @classmethod
    def _known(cls, v):
        from .hostile import ATTACKS

        for a in v or []:
            if a not in ATTACKS:
                raise ValueError(f"unknown attack {a!r}; known: {', '.join(ATTACKS)}")
        return v


FaultStep = Union[
    SourceStall,
    SourceUnplug,
    SerialUnplug,
    SerialGarbage,
    EdgeTpuUnavailable,
    CorruptDeploy,
    SigKill,
]


class _FaultHolder(_Strict):
    fault: FaultStep = Field(discriminator="kind")


STEP_KINDS: dict[str, type] = {
    "health": HealthStep,
    "deploy": DeployStep,
    "objective": ObjectiveStep,
    "stage": StageStep,
    "wait": WaitStep,
    "expect": ExpectStep,
    "measure": MeasureStep,
    "soak": SoakStep,
    "fault": _FaultHolder,
    "hand": HandStep,
    "hostile": HostileStep,
}


class Step(BaseModel):
    """One validated step: its kind, its name (unique in the scenario) and its parameters."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    index: int
    kind: str
    name: str
    params: BaseModel


class Scenario(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    description: str = ""
    path: Optional[Path] = None
    dut: DutSpec
    steps: List[Step]

    def resolve(self, ref: str) -> Path | None:
        """A file or folder named in the scenario, relative to the scenario's folder first."""
        p = Path(ref).expanduser()
        if not p.is_absolute() and self.path is not None:
            q = self.path.parent / p
            if q.exists():
                return q
        return p if p.exists() else None


def _describe(err: dict, skip: int = 0) -> str:
    loc = [str(x) for x in err["loc"][skip:]]
    key = ".".join(loc) or "(the step)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if err["type"] == "union_tag_invalid":
        return f"key 'kind': {err['msg']}"
    return f"key '{key}': {err['msg']}"


def _step_detail(kind: str, params: BaseModel) -> str:
    if kind == "fault":
        return params.fault.kind
    if kind == "objective":
        return params.to
    if kind == "deploy":
        return Path(params.bundle).name.removesuffix(".tar.gz")
    return ""


def parse_scenario(data: object, origin: str = "scenario", path: Path | None = None) -> Scenario:
    """Validate a scenario given as parsed YAML; raises ScenarioError naming what is wrong."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{origin}: expected a mapping with 'name' and 'steps'")
    extra = set(data) - {"name", "description", "dut", "steps"}
    if extra:
        raise ScenarioError(f"{origin}: unknown key '{sorted(extra)[0]}' at the top level")
    try:
        dut = DutSpec.model_validate(data.get("dut") or {})
    except ValidationError as exc:
        raise ScenarioError(f"{origin}: dut: {_describe(exc.errors()[0])}") from None
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ScenarioError(f"{origin}: 'steps' must be a non-empty list")
    steps, names = [], set()
    for i, item in enumerate(raw_steps):
        where = f"{origin}: step {i + 1}"
        if not isinstance(item, dict):
            raise ScenarioError(f"{where}: expected a mapping like {{health: {{}}}}")
        kinds = [k for k in item if k in STEP_KINDS]
        others = [k for k in item if k not in STEP_KINDS and k != "name"]
        if others:
            raise ScenarioError(
                f"{where}: unknown key '{others[0]}' (steps: {', '.join(STEP_KINDS)}; and 'name')"
            )
        if len(kinds) != 1:
            raise ScenarioError(f"{where}: expected exactly one of {', '.join(STEP_KINDS)}")
        kind = kinds[0]
        body = item[kind] if item[kind] is not None else {}
        where = f"{where} ({kind})"
        if not isinstance(body, dict):
            raise ScenarioError(f"{where}: parameters must be a mapping")
        try:
            params = STEP_KINDS[kind].model_validate({"fault": body} if kind == "fault" else body)
        except ValidationError as exc:
            err = exc.errors()[0]
            skip = 2 if kind == "fault" and len(err["loc"]) > 1 else (1 if kind == "fault" else 0)
            raise ScenarioError(f"{where}: {_describe(err, skip)}") from None
        if kind == "objective" and params.to not in dut.positions.values():
            raise ScenarioError(
                f"{where}: objective {params.to} is not on the nosepiece "
                f"{sorted(set(dut.positions.values()))} (dut.positions)"
            )
        detail = _step_detail(kind, params)
        name = str(item.get("name") or f"{i + 1:02d}-{kind}" + (f"-{detail}" if detail else ""))
        if name in names:
            raise ScenarioError(f"{where}: step name {name!r} is used twice")
        names.add(name)
        steps.append(Step(index=i + 1, kind=kind, name=name, params=params))
    name = str(data.get("name") or (path.stem if path else "scenario"))
    return Scenario(
        name=name, description=str(data.get("description", "")), path=path, dut=dut, steps=steps
    )


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def load_scenario(ref: str | Path) -> Scenario:
    """A scenario from a YAML file, or a shipped one by name ("smoke", "qualify")."""
    path = Path(ref)
    if not path.exists() and (SHIPPED / f"{ref}.yaml").exists():
        path = SHIPPED / f"{ref}.yaml"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(
            f"{ref}: cannot read scenario ({exc.strerror}); shipped: "
            f"{', '.join(shipped_scenarios())}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ScenarioError(f"{path}:{where} not valid YAML") from None
    return parse_scenario(data, str(path), path.resolve())
