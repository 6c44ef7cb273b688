"""What the display showed, frame by frame, on the device clock: the HIL bench's evidence.

`ResultLog` is a ring buffer the pipeline's render stage fills (`Pipeline.on_display`); the
daemon serves it as GET /results?since=I. Three kinds of record, each with an index `i`:
  - overlay: a result was drawn. seq, t_capture_ns, t_display_ns (after the sinks took it),
    objective, model, frame_size (w, h px), regions (outer polygon and holes, frame px) and,
    for a virtual microscope frame, truth_fraction (tumour share of the field of view) and a
    downsampled truth mask (sent as PNG only when asked);
  - blank: the display was blanked (reason, t_display_ns, seq of the frame if any);
  - clear_request: something asked for a blank (turret, objective, model switch, camera lost),
    with t_ns when it was asked.
All times are time.monotonic_ns() of the device.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque

import cv2
import numpy as np

TRUTH_WIDTH = 480  # px: truth masks are kept at most this wide (majority downsampling)


def _poly(p: np.ndarray) -> list:
    return np.round(np.asarray(p, np.float32), 1).tolist()


class ResultLog:
    """The last `keep` display records (see the module docstring); thread-safe."""

    def __init__(self, keep: int = 512, truth_width: int = TRUTH_WIDTH):
        self.keep, self.truth_width = keep, truth_width
        self._records: deque[dict] = deque(maxlen=keep)
        self._next = 0
        self._lock = threading.Lock()

    def __call__(
        self,
        kind: str,
        t_ns: int,
        result=None,
        frame=None,
        reason=None,
        objective=None,
        shift_px=None,
        redraw=False,
    ) -> None:
        """The pipeline's hook: kind "overlay" (result, objective, shift_px: the motion
        compensation applied, camera px), "blank" (reason, frame) or "clear_request" (reason).
        Redraws of a shown result (motion compensation following the field) are not kept."""
        if redraw:
            return
        rec: dict = {"kind": kind}
        if kind == "overlay":
            f = result.frame
            rec.update(
                seq=f.seq,
                t_capture_ns=f.t_capture_ns,
                t_display_ns=t_ns,
                objective=objective if objective is not None else f.objective,
                model=result.model,
                frame_size=list(f.size),
                regions=self._regions(result.regions),
            )
            if shift_px is not None:
                rec["shift_px"] = [round(float(v), 2) for v in shift_px]
            if "replay_file" in f.meta:
                rec["source_frame"] = f.meta["replay_file"]
            mask = f.meta.get("truth_mask")
            if mask is not None:
                rec["truth_fraction"] = round(cv2.countNonZero(mask.view(np.uint8)) / mask.size, 5)
                rec["_truth"] = self._small(mask)
        elif kind == "blank":
            rec.update(t_display_ns=t_ns, reason=reason, seq=frame.seq if frame else None)
        else:
            rec.update(t_ns=t_ns, reason=reason)
        with self._lock:
            rec["i"] = self._next
            self._next += 1
            self._records.append(rec)

    @staticmethod
    def _regions(regions) -> list:
        if regions is None:
            return []
        return [
            {"outer": _poly(c), "holes": [_poly(h) for h in hs]}
            for c, hs in zip(regions.contours, regions.holes or [[]] * len(regions.contours))
        ]

    def _small(self, mask: np.ndarray) -> np.ndarray:
        h, w = mask.shape
        m = mask.view(np.uint8)
        if w <= self.truth_width:
            return m.copy()
        size = (self.truth_width, max(1, round(h * self.truth_width / w)))
        return cv2.resize(m, size, interpolation=cv2.INTER_AREA)  # 0/1: a majority vote

    def since(self, start: int = 0, truth: bool = False, limit: int | None = None) -> dict:
        """Records with index >= start: {"now_ns", "next", "dropped", "records"}.

        dropped: how many wanted records were already overwritten (poll more often).
        truth: include each overlay's truth mask as {"size": [w, h], "png": base64}.
        """
        now = time.monotonic_ns()
        with self._lock:
            recs = [r for r in self._records if r["i"] >= start]
            nxt = self._next
        if limit is not None:
            recs = recs[:limit]
        first = recs[0]["i"] if recs else nxt
        out = []
        for r in recs:
            r = dict(r)
            small = r.pop("_truth", None)
            if truth and small is not None:
                ok, png = cv2.imencode(".png", small * np.uint8(255))
                r["truth"] = {
                    "size": [small.shape[1], small.shape[0]],
                    "png": base64.b64encode(png.tobytes()).decode(),
                }
            out.append(r)
        return {
            "now_ns": now,
            "next": out[-1]["i"] + 1 if out else nxt,
            "dropped": max(0, first - start) if start < nxt else 0,
            "records": out,
        }
