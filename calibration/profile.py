"""Calibration profiles: one file per microscope, one section per objective.

    schema_version: 1
    microscope: "arm-1"
    revision: 7                 # +1 on every save
    updated: "2025-01-01T12:00:00Z"
    sensor_pixel_um: 3.45       # optional, for the nominal pixel-size fallback
    objectives:
      "10x":
        magnification: 10       # nominal; um_per_px falls back to sensor_pixel_um / magnification
        homography: [[...], [...], [...]]   # camera px -> display px
        registration: {method: auto, rms_px: 0.4, inliers: 120, camera_size: [1920, 1080]}
        um_per_px: 0.6512
        um_per_px_uncertainty: 0.0004
        flat: flat_10x_1a2b3c4d.npy         # next to the profile; HxWx3 float32 DN
        dark: null
        white_balance: [1.02, 1.0, 1.11]
        display: {width: 1920, height: 1080, eyepiece_circle: null}

JSON or YAML by file suffix. Loading validates everything (unknown keys, shapes,
ranges, referenced files); saving is atomic (temp file, fsync, rename), and the flat
and dark arrays are content-named, so a crash at any point leaves the old profile
intact and consistent.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .atomic import atomic_save_npy, atomic_write_text
from .errors import ProfileError, UnknownObjectiveError

SCHEMA_VERSION = 1
DEFAULT_NAME = "profile.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DisplaySpec(_Strict):
    """The micro-display: size in px and, for a round eyepiece field, the visible circle
    (cx, cy, r) in display px."""

    width: int = Field(gt=0, le=16384)
    height: int = Field(gt=0, le=16384)
    eyepiece_circle: Optional[Tuple[float, float, float]] = None


class RegistrationInfo(_Strict):
    """How the homography was obtained. method: auto (pattern photo), manual (nudged by
    eye), nominal (a guess). For manual: the adjustment that was applied."""

    method: Literal["auto", "manual", "nominal"] = "auto"
    rms_px: Optional[float] = Field(default=None, ge=0)
    inliers: Optional[int] = Field(default=None, ge=0)
    camera_size: Optional[Tuple[int, int]] = None
    adjustment: Optional[Dict[str, float]] = None
    updated: str = ""


class ObjectiveSection(_Strict):
    """Everything calibrated for one objective; any part may be missing until measured."""

    magnification: Optional[float] = Field(default=None, gt=0)
    homography: Optional[List[List[float]]] = None
    registration: Optional[RegistrationInfo] = None
    um_per_px: Optional[float] = Field(default=None, gt=0)
    um_per_px_uncertainty: Optional[float] = Field(default=None, ge=0)
    flat: Optional[str] = None
    dark: Optional[str] = None
    white_balance: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    display: Optional[DisplaySpec] = None

    @field_validator("homography")
    @classmethod
    def _homography_3x3(cls, v):
        if v is None:
            return v
        h = np.asarray(v, dtype=np.float64)
        if h.shape != (3, 3) or not np.all(np.isfinite(h)):
            raise ValueError("homography must be a finite 3x3 matrix")
        if abs(np.linalg.det(h / max(np.abs(h).max(), 1e-300))) < 1e-12:
            raise ValueError("homography is singular")
        return [[float(x) for x in row] for row in h]

    @field_validator("white_balance")
    @classmethod
    def _positive_gains(cls, v):
        if any(not np.isfinite(g) or g <= 0 or g > 16 for g in v):
            raise ValueError("white_balance gains must be in (0, 16]")
        return v

    @field_validator("flat", "dark")
    @classmethod
    def _plain_name(cls, v):
        if v is not None and (os.path.isabs(v) or ".." in Path(v).parts):
            raise ValueError("flat/dark must be a file name next to the profile")
        return v

    def homography_array(self) -> Optional[np.ndarray]:
        """3x3 float64 camera px -> display px, or None when not registered."""
        return None if self.homography is None else np.asarray(self.homography, np.float64)


class Profile(_Strict):
    """A microscope's calibration profile (see the module docstring for the layout)."""

    schema_version: int = SCHEMA_VERSION
    microscope: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    revision: int = Field(default=0, ge=0)
    updated: str = ""
    sensor_pixel_um: Optional[float] = Field(default=None, gt=0)
    objectives: Dict[str, ObjectiveSection] = Field(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v):
        if v != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {v} is not supported (this lucida reads {SCHEMA_VERSION})"
            )
        return v

    @field_validator("objectives")
    @classmethod
    def _objective_names(cls, v):
        for name in v:
            if (
                not name
                or len(name) > 32
                or not name.replace(".", "").replace("_", "").replace("-", "").isalnum()
            ):
                raise ValueError(
                    f"objective name {name!r} must be short and alphanumeric, e.g. '10x'"
                )
        return v

    # ------------------------------------------------------------ access

    def section(self, objective: str) -> ObjectiveSection:
        """The section of `objective`; UnknownObjectiveError names the known ones."""
        try:
            return self.objectives[objective]
        except KeyError:
            known = ", ".join(sorted(self.objectives)) or "none"
            raise UnknownObjectiveError(
                f"objective {objective!r} is not in calibration profile {self.microscope!r} "
                f"(known objectives: {known})"
            ) from None

    def ensure_section(self, objective: str) -> ObjectiveSection:
        """The section of `objective`, created empty if missing."""
        if objective not in self.objectives:
            self.objectives = {**self.objectives, objective: ObjectiveSection()}
            Profile._objective_names(self.objectives)
        return self.objectives[objective]

    def update_section(self, objective: str, **fields) -> ObjectiveSection:
        """Set fields of an objective's section (created if missing), validated."""
        current = self.ensure_section(objective).model_dump()
        current.update(fields)
        try:
            sec = ObjectiveSection.model_validate(current)
        except ValidationError as exc:
            raise ProfileError(f"objective {objective!r}: {_first_error(exc)}") from None
        self.objectives[objective] = sec
        return sec

    def um_per_px(self, objective: str) -> Tuple[float, str]:
        """(um per camera px, "measured" | "nominal") for `objective`; the nominal
        fallback is sensor_pixel_um / magnification."""
        sec = self.section(objective)
        if sec.um_per_px is not None:
            return sec.um_per_px, "measured"
        if self.sensor_pixel_um is not None and sec.magnification:
            return self.sensor_pixel_um / sec.magnification, "nominal"
        raise ProfileError(
            f"objective {objective!r} has no measured pixel size and no nominal fallback "
            "(set sensor_pixel_um and the objective's magnification)"
        )

    # ------------------------------------------------------------ files

    @staticmethod
    def resolve(path: str | os.PathLike) -> Path:
        """A profile path: a file, or a folder holding profile.json / profile.yaml."""
        p = Path(path)
        if p.is_dir() or (not p.suffix and not p.exists()):
            for name in (DEFAULT_NAME, "profile.yaml", "profile.yml"):
                if (p / name).exists():
                    return p / name
            return p / DEFAULT_NAME
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        """Read and validate a profile (JSON or YAML); ProfileError says what is wrong."""
        p = cls.resolve(path)
        if not p.is_file():
            raise ProfileError(f"calibration profile {str(p)!r} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
            data = (
                yaml.safe_load(text) if p.suffix.lower() in (".yaml", ".yml") else json.loads(text)
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ProfileError(
                f"calibration profile {str(p)!r} cannot be parsed: {first}"
            ) from None
        if not isinstance(data, dict):
            raise ProfileError(
                f"calibration profile {str(p)!r} must hold a mapping at the top level"
            )
        try:
            prof = cls.model_validate(data)
        except ValidationError as exc:
            raise ProfileError(
                f"calibration profile {str(p)!r} is invalid: {_first_error(exc)}"
            ) from None
        for name, sec in prof.objectives.items():
            for kind in ("flat", "dark"):
                ref = getattr(sec, kind)
                if ref is not None and not (p.parent / ref).is_file():
                    raise ProfileError(
                        f"calibration profile {str(p)!r}: objective {name!r} {kind} file "
                        f"{ref!r} is missing next to the profile"
                    )
        return prof

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (JSON, or YAML for a .yaml/.yml path); bumps `revision`."""
        p = self.resolve(path)
        self.revision += 1
        self.updated = _now()
        data = self.model_dump(mode="json")
        if p.suffix.lower() in (".yaml", ".yml"):
            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2) + "\n"
        return atomic_write_text(p, text)

    def store_array(
        self, path: str | os.PathLike, objective: str, kind: str, array: np.ndarray
    ) -> str:
        """Save a flat/dark array next to the profile under a content-derived name and
        point the objective's section at it (the profile itself is saved separately)."""
        if kind not in ("flat", "dark"):
            raise ProfileError(f"array kind must be flat or dark, got {kind!r}")
        arr = np.ascontiguousarray(array, dtype=np.float32)
        digest = hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:10]
        safe = "".join(c if c.isalnum() else "_" for c in objective)
        name = f"{kind}_{safe}_{digest}.npy"
        atomic_save_npy(self.resolve(path).parent / name, arr)
        self.update_section(objective, **{kind: name})
        return name

    def load_array(
        self, path: str | os.PathLike, objective: str, kind: str
    ) -> Optional[np.ndarray]:
        """The flat/dark array of an objective (HxWx3 float32), or None if not set."""
        ref = getattr(self.section(objective), kind)
        if ref is None:
            return None
        f = self.resolve(path).parent / ref
        try:
            arr = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ProfileError(
                f"{kind} file {str(f)!r} of objective {objective!r} is unreadable: {exc}"
            ) from None
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ProfileError(f"{kind} file {str(f)!r} must be HxWx3, got shape {arr.shape}")
        return arr.astype(np.float32)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    msg = err.get("msg", "invalid")
    return f"{loc}: {msg}" if loc else msg


def _now() -> str:
    return (
        _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    )


def load_or_new(path: str | os.PathLike, microscope: Optional[str] = None) -> Profile:
    """Load the profile at `path`, or start a new one (named `microscope`, else the folder)."""
    p = Profile.resolve(path)
    if p.exists():
        return Profile.load(p)
    name = microscope or p.parent.name or "microscope"
    name = (
        "".join(c if (c.isalnum() or c in " ._-") else "-" for c in name).strip(" .-_")
        or "microscope"
    )
    return Profile(microscope=name)
