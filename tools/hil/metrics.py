"""What the bench computes from a device's display records (see lucida.runtime.results).

Every time here is the device's monotonic clock (ns): latency is t_display - t_capture of
each overlay drawn; fps counts overlays drawn per window of device time; clearing looks at
the display timeline around a trigger. Masks are HxW bool arrays; polygons are frame px.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import cv2
import numpy as np

FOV_TUMOUR_FRACTION = 0.01  # a field of view "has tumour" when >= 1 % of it is tumour


def overlays(records, t0_ns: int | None = None, t1_ns: int | None = None) -> list[dict]:
    """Overlay records displayed in [t0_ns, t1_ns) (device clock), in display order."""
    out = [
        r
        for r in records
        if r["kind"] == "overlay"
        and (t0_ns is None or r["t_display_ns"] >= t0_ns)
        and (t1_ns is None or r["t_display_ns"] < t1_ns)
    ]
    return sorted(out, key=lambda r: r["t_display_ns"])


def latencies_ms(records) -> list[float]:
    """Capture -> display latency (ms) of each overlay drawn."""
    return [(r["t_display_ns"] - r["t_capture_ns"]) / 1e6 for r in overlays(records)]


def window_fps(records, start_ns: int, window_s: float, windows: int) -> list[float]:
    """Overlays drawn per second in each of `windows` consecutive windows from start_ns."""
    w_ns = int(window_s * 1e9)
    t = np.array([r["t_display_ns"] for r in overlays(records)], np.int64)
    out = []
    for k in range(windows):
        a, b = start_ns + k * w_ns, start_ns + (k + 1) * w_ns
        out.append(round(int(np.count_nonzero((t >= a) & (t < b))) / window_s, 2))
    return out


def clearing(records, t_trigger_ns: int, mode: str = "fov", model: str | None = None) -> dict:
    """How the display behaved after a trigger at t_trigger_ns (device clock).

    mode "fov": the field of view changed (turret): an overlay on a frame captured before the
    trigger is stale, and the display is safe once it shows a blank or a fresh overlay.
    mode "model": a new model (`model`) took over: an overlay drawn by any other model is
    stale, one by the new model is safe. mode "blank": the view cannot be trusted (camera
    frozen or lost, objective unknown): only a blank makes it safe.

    showing_at_trigger: an overlay was on display at the trigger.
    cleared_after_ms: device time from the trigger to the first safe display update; None if
    none came. stale_after_clear: stale overlays drawn after it (must be 0).
    """
    disp = sorted(
        (r for r in records if r["kind"] in ("overlay", "blank")), key=lambda r: r["t_display_ns"]
    )
    before = [r for r in disp if r["t_display_ns"] < t_trigger_ns]
    showing = bool(before) and before[-1]["kind"] == "overlay"
    after = [r for r in disp if r["t_display_ns"] >= t_trigger_ns]

    def is_stale(r):
        if r["kind"] != "overlay":
            return False
        if mode == "model":
            return r.get("model") != model
        return r["t_capture_ns"] < t_trigger_ns

    def safe(r):
        return r["kind"] == "blank" or (mode != "blank" and not is_stale(r))

    first = next((r for r in after if safe(r)), None)
    stale = [r for r in after if is_stale(r)]
    t_first = first["t_display_ns"] if first is not None else None
    return {
        "mode": mode,
        "showing_at_trigger": showing,
        "cleared_after_ms": None if first is None else round((t_first - t_trigger_ns) / 1e6, 1),
        "cleared_by": None if first is None else (first.get("reason") or "new overlay"),
        "stale_after_clear": sum(1 for r in stale if t_first and r["t_display_ns"] > t_first),
        "stale_before_clear": sum(1 for r in stale if not t_first or r["t_display_ns"] <= t_first),
    }


def decode_truth(record: dict) -> np.ndarray | None:
    """The truth mask sent with an overlay record (HxW bool, downsampled), or None."""
    t = record.get("truth")
    if not t:
        return None
    png = np.frombuffer(base64.b64decode(t["png"]), np.uint8)
    m = cv2.imdecode(png, cv2.IMREAD_GRAYSCALE)
    return None if m is None else m > 127


def region_mask(regions: list, frame_size, out_size) -> np.ndarray:
    """Rasterize record regions (frame px polygons, holes left out) at out_size (w, h)."""
    fw, fh = frame_size
    ow, oh = out_size
    scale = np.array([ow / fw, oh / fh], np.float32)
    polys = []
    for reg in regions:
        for p in [reg["outer"], *reg.get("holes", [])]:
            a = np.asarray(p, np.float32).reshape(-1, 2)
            if len(a) >= 3:
                polys.append(
                    np.round((a + 0.5) * scale * 16 - 8).astype(np.int32).reshape(-1, 1, 2)
                )
    mask = np.zeros((oh, ow), np.uint8)
    if polys:
        cv2.fillPoly(mask, polys, 1, cv2.LINE_8, 4)
    return mask.astype(bool)


@dataclass
class Tally:
    """Contours vs ground truth, pooled over frames (and per objective)."""

    inter: int = 0
    union: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    frames: int = 0
    per_objective: dict = field(default_factory=dict)

    def add(self, record: dict, truth: np.ndarray) -> None:
        h, w = truth.shape
        pred = region_mask(record.get("regions", []), record["frame_size"], (w, h))
        i, u = int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred | truth))
        self.inter += i
        self.union += u
        obj = self.per_objective.setdefault(record.get("objective"), [0, 0])
        obj[0] += i
        obj[1] += u
        has_tumour = bool(truth.mean() >= FOV_TUMOUR_FRACTION)
        drawn = bool(record.get("regions"))
        self.tp += has_tumour and drawn
        self.fn += has_tumour and not drawn
        self.fp += drawn and not has_tumour
        self.tn += not drawn and not has_tumour
        self.frames += 1

    @property
    def iou(self) -> float | None:
        return round(self.inter / self.union, 4) if self.union else None

    @property
    def fov_accuracy(self) -> float | None:
        return round((self.tp + self.tn) / self.frames, 4) if self.frames else None

    def summary(self) -> dict:
        return {
            "frames_scored": self.frames,
            "iou": self.iou,
            "fov_accuracy": self.fov_accuracy,
            "fov_tp_fp_tn_fn": [self.tp, self.fp, self.tn, self.fn],
            "iou_per_objective": {
                str(k): round(i / u, 4) if u else None for k, (i, u) in self.per_objective.items()
            },
        }


def median_thirds(values) -> tuple[float | None, float | None]:
    """(median of the first third, median of the last third) of a series."""
    v = [x for x in values if x is not None]
    if len(v) < 3:
        return (None, None)
    k = max(1, len(v) // 3)
    return float(np.median(v[:k])), float(np.median(v[-k:]))
