"""Camera controls: exposure, gain, auto-exposure, white balance and frame rate, one vocabulary
for every source (operators change brightness per objective and per slide).

Names and units (what the config, `POST /camera` and `/status` use):
    exposure_ms: float > 0      gain: float > 0 (analogue)      auto_exposure: bool
    white_balance_k: colour temperature in K (manual white balance)      fps: float > 0
OpenCV/V4L2 sources set them through VideoCapture properties (V4L2's exposure is in 100 us
steps, auto-exposure 1 = manual, 3 = aperture priority) and read each one back; picamera2 gets
libcamera controls (ExposureTime us, AnalogueGain, AeEnable, FrameDurationLimits) and reads
back its frame metadata. What a camera did not take is reported as such, never assumed.
"""

from __future__ import annotations

import cv2

CONTROLS = {
    "exposure_ms": float,
    "gain": float,
    "auto_exposure": bool,
    "white_balance_k": float,
    "fps": float,
}


class ControlError(ValueError):
    """A camera control that does not exist or has a value out of range."""


def check_controls(controls: dict) -> dict:
    """Validated {name: value}; raises ControlError naming the control."""
    if not isinstance(controls, dict):
        raise ControlError("camera controls: expected a mapping of control -> value")
    out = {}
    for name, value in controls.items():
        kind = CONTROLS.get(name)
        if kind is None:
            raise ControlError(f"camera control {name!r}: expected one of {sorted(CONTROLS)}")
        if kind is bool:
            if not isinstance(value, bool):
                raise ControlError(f"camera control {name}: expected true or false")
            out[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ControlError(f"camera control {name} {value!r}: expected a number > 0")
        out[name] = float(value)
    return out


# control -> (property, value in the property's units); V4L2's conventions through OpenCV
_CV = {
    "exposure_ms": (cv2.CAP_PROP_EXPOSURE, lambda v: v * 10.0),  # 100 us steps
    "gain": (cv2.CAP_PROP_GAIN, lambda v: v),
    "auto_exposure": (cv2.CAP_PROP_AUTO_EXPOSURE, lambda v: 3.0 if v else 1.0),
    "white_balance_k": (cv2.CAP_PROP_WB_TEMPERATURE, lambda v: v),
    "fps": (cv2.CAP_PROP_FPS, lambda v: v),
}
_CV_BACK = {
    "exposure_ms": lambda x: x / 10.0,
    "auto_exposure": lambda x: x >= 2,
}


def apply_opencv(cap, controls: dict) -> dict:
    """Set each control as a VideoCapture property, then read it back.

    Returns {name: {"asked": value, "accepted": bool (what set() said), "read": value now}}.
    Manual white balance and manual exposure first turn the automatic ones off."""
    out = {}
    controls = check_controls(controls)
    if "white_balance_k" in controls:
        cap.set(cv2.CAP_PROP_AUTO_WB, 0.0)
    if "exposure_ms" in controls and "auto_exposure" not in controls:
        controls = {"auto_exposure": False, **controls}
    for name, value in controls.items():
        prop, to_prop = _CV[name]
        accepted = bool(cap.set(prop, to_prop(value)))
        read = cap.get(prop)
        out[name] = {"asked": value, "accepted": accepted, "read": _CV_BACK.get(name, float)(read)}
    return out


def read_opencv(cap) -> dict:
    """The controls' values now, read from VideoCapture properties in this module's units
    (None where the driver answers with a negative value: it does not have the control)."""
    out = {}
    for name, (prop, _) in _CV.items():
        raw = cap.get(prop)
        out[name] = _CV_BACK.get(name, float)(raw) if raw >= 0 else None
    return out


PICAMERA2_HAS = ("exposure_ms", "gain", "auto_exposure", "fps")  # no colour temperature


def picamera2_controls(controls: dict) -> tuple[dict, dict]:
    """(libcamera controls for Picamera2.set_controls, {name: reason} of those it cannot take)."""
    controls = check_controls(controls)
    lib, refused = {}, {}
    for name, value in controls.items():
        if name == "exposure_ms":
            lib["ExposureTime"] = int(round(value * 1000))
            lib.setdefault("AeEnable", False)
        elif name == "gain":
            lib["AnalogueGain"] = value
        elif name == "auto_exposure":
            lib["AeEnable"] = value
        elif name == "fps":
            period = int(round(1e6 / value))
            lib["FrameDurationLimits"] = (period, period)
        else:  # libcamera takes colour gains, not a temperature
            refused[name] = "picamera2 takes ColourGains, not a colour temperature"
    return lib, refused


def read_picamera2(metadata: dict) -> dict:
    """Applied values from a picamera2 frame's metadata, in this module's names and units."""
    out = {}
    if "ExposureTime" in metadata:
        out["exposure_ms"] = metadata["ExposureTime"] / 1000.0
    if "AnalogueGain" in metadata:
        out["gain"] = float(metadata["AnalogueGain"])
    if "FrameDuration" in metadata and metadata["FrameDuration"]:
        out["fps"] = 1e6 / metadata["FrameDuration"]
    if "ColourTemperature" in metadata:
        out["white_balance_k"] = float(metadata["ColourTemperature"])
    return out
