"""Request bodies of the HTTP API: one pydantic model per body, with bounds.

Every model forbids unknown keys and NaN/inf, and checks types strictly (no "1" for 1, no
null for a value); nothing changes state before its body validated. `parse(Model, data)`
turns a ValidationError into one `RequestError` line naming the key and what was expected.
"""

from __future__ import annotations

from typing import Annotated, Dict, List, Literal, Optional, Union

from lucida.calibration.manual import ACTIONS
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from .events import bounded


class RequestError(ValueError):
    """A request body that cannot be used (HTTP 400): names the key and what was expected."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


Finite = Annotated[float, Field(allow_inf_nan=False)]  # strict: a number (int ok), not "1"


class OverlayBody(_Body):
    """POST /overlay: overlay on/off and the contour threshold (0 < t <= 1)."""

    enabled: Optional[StrictBool] = None
    threshold: Optional[Annotated[Finite, Field(gt=0, le=1)]] = None
    # class name (or index) -> on, off or "toggle"; names are checked against the running model
    classes: Optional[
        Dict[Annotated[str, Field(max_length=64)], Union[StrictBool, Literal["toggle"]]]
    ] = Field(default=None, max_length=64)


class SnapshotBody(_Body):
    """POST /snapshot: an optional case id and comment (runtime.snapshots checks their form)."""

    case_id: Optional[str] = Field(default=None, max_length=200)
    comment: Optional[str] = Field(default=None, max_length=4000)


class ObjectiveBody(_Body):
    """POST /objective: an objective this microscope is configured with ("20x")."""

    objective: str = Field(min_length=1, max_length=16)


class ManualDelta(_Body):
    dx_px: Optional[Annotated[Finite, Field(ge=-4000, le=4000)]] = None
    dy_px: Optional[Annotated[Finite, Field(ge=-4000, le=4000)]] = None
    scale: Optional[Annotated[Finite, Field(gt=0.05, lt=20)]] = None
    rotation_deg: Optional[Annotated[Finite, Field(ge=-360, le=360)]] = None


class ManualBody(ManualDelta):
    """POST /calibration/manual: a named step, absolute values, a relative `delta`, save, stop."""

    action: Optional[Literal[ACTIONS]] = None  # type: ignore[valid-type]
    fine: StrictBool = False
    delta: Optional[ManualDelta] = None
    save: StrictBool = False
    stop: StrictBool = False

    def command(self) -> dict:
        """The command dict calibration.manual understands (only the keys that were given)."""
        out = self.model_dump(exclude_none=True, exclude_defaults=True)
        if self.delta is not None:
            out["delta"] = self.delta.model_dump(exclude_none=True)
        return out


class BenchmarkBody(_Body):
    """POST /benchmark: which bundle (default: the running one), how many timed runs."""

    bundle: Optional[str] = Field(default=None, min_length=1, max_length=200)
    runs: StrictInt = Field(default=50, ge=1, le=10000)


class VirtualBody(_Body):
    """POST /virtual: drive the virtual microscope (emulated benches only)."""

    action: str = Field(min_length=1, max_length=32)  # the daemon names the known ones
    seconds: Annotated[Finite, Field(gt=0, le=600)] = 1.0
    objective: Optional[str] = Field(default=None, min_length=1, max_length=16)
    where: Union[
        Literal["tumour", "normal", "boundary", "tissue"],
        List[Literal["tumour", "normal", "boundary", "tissue"]],
    ] = "tumour"
    dwell_s: Annotated[Finite, Field(gt=0, le=3600)] = 3.0
    seed: StrictInt = Field(default=0, ge=0, le=2**31)
    defocus_um: Annotated[Finite, Field(ge=-100, le=100)] = 0.0  # action "focus"


class TaskBody(_Body):
    """POST /task: what the models find ("lymph"); one of the tasks of the bundles held."""

    task: str = Field(min_length=1, max_length=64)


class LoginBody(_Body):
    """POST /login: the token once; answered with a session cookie for the page."""

    token: str = Field(min_length=1, max_length=512)


def describe(exc: ValidationError) -> str:
    """One line: every bad key with what was expected (at most three, then a count)."""
    parts = []
    for err in exc.errors()[:3]:
        key = ".".join(str(p) for p in err["loc"]) or "(body)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{bounded(key, 40)}'")
        else:
            parts.append(f"'{bounded(key, 40)}': {err['msg']}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse(model: type[BaseModel], data: object):
    """Validate a parsed JSON body; RequestError with one readable line otherwise."""
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestError(describe(exc)) from None
