"""Manual display registration, as on Google's ARM: concentric circles and a cross
are drawn on the micro-display where the camera sees the target slide; the user
nudges offset, scale and rotation (keyboard in the window sink, or the daemon's HTTP
API) until they sit on the target seen through the eyepiece. The result is the same
camera px -> display px homography as the automatic path.

The adjustment acts on the display side, about the display centre:
    H = T(c + d) . R(rotation) . S(scale) . T(-c) . H_base
H_base: a previous registration, or the nominal one (camera frame centred on the
display, or on the eyepiece circle, scaled to fit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from .errors import CalibrationError
from .homography import apply_homography, check_homography

# (coarse, fine) steps
STEPS = {"offset": (5.0, 0.5), "scale": (0.01, 0.001), "rotation": (1.0, 0.1)}

# cv2.waitKeyEx codes of the arrow keys: X11 keysyms (GTK/Qt on Linux), Windows, macOS
_ARROWS = {
    65361: "left",
    65362: "up",
    65363: "right",
    65364: "down",
    2424832: "left",
    2490368: "up",
    2555904: "right",
    2621440: "down",
    63234: "left",
    63232: "up",
    63235: "right",
    63233: "down",
}
# characters: lower case = coarse step, upper case = fine step
_CHARS = {
    "a": "left",
    "d": "right",
    "w": "up",
    "s": "down",
    "h": "left",
    "l": "right",
    "k": "up",
    "j": "down",
    "+": "bigger",
    "=": "bigger",
    "-": "smaller",
    "_": "smaller",
    "]": "rotate_cw",
    "[": "rotate_ccw",
    "}": "rotate_cw",
    "{": "rotate_ccw",
    "0": "reset",
    "\r": "save",
    "\n": "save",
    "\x1b": "cancel",
    "q": "cancel",
}
_FINE_CHARS = set("ADWSHLKJ_{}")
ACTIONS = ("left", "right", "up", "down", "bigger", "smaller", "rotate_cw", "rotate_ccw", "reset")


@dataclass
class Adjustment:
    """Display-side nudge: offset (display px), scale (x), rotation (degrees, clockwise
    on screen, since y points down)."""

    dx_px: float = 0.0
    dy_px: float = 0.0
    scale: float = 1.0
    rotation_deg: float = 0.0


def nominal_homography(
    camera_size: tuple[int, int],
    display_size: tuple[int, int],
    eyepiece_circle: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """Camera frame centred on the display (or on the eyepiece circle) and scaled so its
    short side fits it: a starting point before any registration."""
    cw, ch = camera_size
    dw, dh = display_size
    if eyepiece_circle is not None:
        cx, cy, r = eyepiece_circle
        s = 2.0 * r / min(cw, ch)
    else:
        cx, cy = (dw - 1) / 2.0, (dh - 1) / 2.0
        s = min(dw / cw, dh / ch)
    return np.array(
        [[s, 0, cx - s * (cw - 1) / 2.0], [0, s, cy - s * (ch - 1) / 2.0], [0, 0, 1]], np.float64
    )


def find_target(camera_image: np.ndarray) -> Optional[tuple[float, float, list[float]]]:
    """Centre (x, y) and radii (camera px) of a concentric-circle target slide in a camera
    image, or None. Hough circles; the centre is the median of the circles found."""
    gray = (
        camera_image if camera_image.ndim == 2 else cv2.cvtColor(camera_image, cv2.COLOR_RGB2GRAY)
    )
    gray = cv2.medianBlur(gray, 5)
    h, w = gray.shape
    circles = cv2.HoughCircles(
        gray,
        cv2.HOUGH_GRADIENT,
        dp=1.5,
        minDist=1,
        param1=100,
        param2=60,
        minRadius=max(5, min(h, w) // 40),
        maxRadius=min(h, w) // 2,
    )
    if circles is None:
        return None
    c = circles[0]
    cx, cy = np.median(c[:, 0]), np.median(c[:, 1])
    near = c[np.hypot(c[:, 0] - cx, c[:, 1] - cy) < 0.05 * min(h, w)]
    if len(near) < 2:
        return None
    return float(cx), float(cy), sorted(float(r) for r in near[:, 2])


class ManualRegistration:
    """State of a manual registration session.

    camera_size / display_size: (width, height) px. base: starting camera->display
    homography (default: nominal_homography). target: (cx, cy, radii) of the target
    slide in camera px (default: the camera centre and 4 radii up to 40% of the short side).
    """

    def __init__(
        self,
        camera_size: tuple[int, int],
        display_size: tuple[int, int],
        base: Optional[np.ndarray] = None,
        eyepiece_circle: Optional[Sequence[float]] = None,
        target: Optional[tuple[float, float, list[float]]] = None,
    ):
        self.camera_size = tuple(int(v) for v in camera_size)
        self.display_size = tuple(int(v) for v in display_size)
        self.eyepiece_circle = (
            None if eyepiece_circle is None else tuple(float(v) for v in eyepiece_circle)
        )
        if base is None:
            base = nominal_homography(self.camera_size, self.display_size, self.eyepiece_circle)
        check_homography(base, self.camera_size, "starting homography")
        self.base = np.asarray(base, np.float64) / base[2][2]
        cw, ch = self.camera_size
        if target is None:
            short = min(cw, ch)
            target = ((cw - 1) / 2.0, (ch - 1) / 2.0, [short * f for f in (0.1, 0.2, 0.3, 0.4)])
        self.target = target
        self.adjustment = Adjustment()

    # ------------------------------------------------------------ adjusting

    def nudge(self, action: str, fine: bool = False) -> Adjustment:
        """Apply one named step: left/right/up/down, bigger/smaller, rotate_cw/rotate_ccw, reset."""
        i = 1 if fine else 0
        a = self.adjustment
        off, sc, rot = STEPS["offset"][i], STEPS["scale"][i], STEPS["rotation"][i]
        moves = {
            "left": lambda: setattr(a, "dx_px", a.dx_px - off),
            "right": lambda: setattr(a, "dx_px", a.dx_px + off),
            "up": lambda: setattr(a, "dy_px", a.dy_px - off),
            "down": lambda: setattr(a, "dy_px", a.dy_px + off),
            "bigger": lambda: setattr(a, "scale", a.scale * (1 + sc)),
            "smaller": lambda: setattr(a, "scale", a.scale / (1 + sc)),
            "rotate_cw": lambda: setattr(a, "rotation_deg", a.rotation_deg + rot),
            "rotate_ccw": lambda: setattr(a, "rotation_deg", a.rotation_deg - rot),
            "reset": lambda: setattr(self, "adjustment", Adjustment()),
        }
        if action not in moves:
            raise CalibrationError(
                f"unknown manual registration action {action!r}; expected one of {', '.join(ACTIONS)}"
            )
        moves[action]()
        return self.adjustment

    def handle_key(self, key: Union[int, str]) -> Optional[str]:
        """Act on a key (cv2.waitKeyEx code or a character). Returns the action taken,
        "save", "cancel", or None for keys that mean nothing here."""
        if isinstance(key, int):
            if key < 0:
                return None
            if key in _ARROWS:
                self.nudge(_ARROWS[key])
                return _ARROWS[key]
            if key in (13, 10):
                return "save"
            if key == 27:
                return "cancel"
            if 0 < key < 0x110000:
                key = chr(key & 0xFFFF) if key > 0xFFFF else chr(key)
            else:
                return None
        ch = str(key)[:1]
        action = _CHARS.get(ch.lower()) if ch not in _CHARS else _CHARS[ch]
        if action is None:
            return None
        if action in ("save", "cancel"):
            return action
        self.nudge(action, fine=ch in _FINE_CHARS)
        return action

    def apply(self, command: dict) -> dict:
        """HTTP API body -> new state. {"action": "left", "fine": true}, or absolute
        values {"dx_px": .., "dy_px": .., "scale": .., "rotation_deg": ..}, or relative
        ones under "delta". Returns state()."""
        if not isinstance(command, dict):
            raise CalibrationError("manual registration command must be a JSON object")
        if "action" in command:
            self.nudge(str(command["action"]), bool(command.get("fine", False)))
        fields = {f for f in asdict(self.adjustment)}
        unknown = set(command) - fields - {"action", "fine", "delta"}
        if unknown:
            raise CalibrationError(
                f"unknown manual registration field(s): {', '.join(sorted(unknown))}"
            )
        for k in fields & set(command):
            setattr(self.adjustment, k, float(command[k]))
        for k, v in (command.get("delta") or {}).items():
            if k not in fields:
                raise CalibrationError(f"unknown manual registration field {k!r} in delta")
            cur = getattr(self.adjustment, k)
            setattr(self.adjustment, k, cur * float(v) if k == "scale" else cur + float(v))
        if not 0.05 < self.adjustment.scale < 20:
            raise CalibrationError(
                f"manual scale {self.adjustment.scale:.3f} is out of range (0.05..20)"
            )
        return self.state()

    def state(self) -> dict:
        """JSON-able: the adjustment and the resulting homography."""
        return {"adjustment": asdict(self.adjustment), "homography": self.homography().tolist()}

    # ------------------------------------------------------------ result

    def adjustment_matrix(self) -> np.ndarray:
        """3x3 display px -> display px nudge about the display centre."""
        a = self.adjustment
        cx, cy = (self.display_size[0] - 1) / 2.0, (self.display_size[1] - 1) / 2.0
        t = np.radians(a.rotation_deg)
        c, s = np.cos(t) * a.scale, np.sin(t) * a.scale
        return np.array(
            [
                [c, -s, cx + a.dx_px - c * cx + s * cy],
                [s, c, cy + a.dy_px - s * cx - c * cy],
                [0, 0, 1],
            ]
        )

    def homography(self) -> np.ndarray:
        """3x3 camera px -> display px with the current adjustment."""
        h = self.adjustment_matrix() @ self.base
        return h / h[2, 2]

    def render(self, color: tuple[int, int, int] = (0, 255, 0), thickness: int = 2) -> np.ndarray:
        """HxWx3 uint8 RGB display image: the target's circles and cross, mapped from
        camera px through the current homography (black elsewhere: invisible)."""
        w, h = self.display_size
        out = np.zeros((h, w, 3), np.uint8)
        hmat = self.homography()
        cx, cy, radii = self.target
        t = np.linspace(0, 2 * np.pi, 181)
        for r in radii:
            ring = apply_homography(hmat, np.c_[cx + r * np.cos(t), cy + r * np.sin(t)])
            cv2.polylines(
                out, [np.round(ring * 16).astype(np.int32)], True, color, thickness, cv2.LINE_AA, 4
            )
        arm = max(radii) * 1.15
        for p, q in (((cx - arm, cy), (cx + arm, cy)), ((cx, cy - arm), (cx, cy + arm))):
            a, b = apply_homography(hmat, np.array([p, q]))
            cv2.line(
                out,
                tuple(np.round(a * 16).astype(int)),
                tuple(np.round(b * 16).astype(int)),
                color,
                thickness,
                cv2.LINE_AA,
                4,
            )
        a = self.adjustment
        text = f"dx {a.dx_px:+.1f} dy {a.dy_px:+.1f} scale {a.scale:.4f} rot {a.rotation_deg:+.2f}"
        cv2.putText(out, text, (10, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, 1, cv2.LINE_AA)
        return out
