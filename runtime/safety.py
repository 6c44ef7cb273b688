"""The display's safety limits beyond motion: the overlay age limit and the inference watchdog.

An overlay is never shown once its source frame is older than the age limit (default: two
camera intervals + the model's measured p99 per frame), so a slow or hung inference blanks the
display within that bound. An inference running past `slow_factor` x its p99 is reported; past
`rebuild_after_ms` the pipeline rebuilds the engine (new interpreter, delegate reopened, the
CPU when the device is gone) without restarting the daemon.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Safety:
    """What blanks the display, and when (every field has a default that works).

    blank_speed_um_s: stage speed (um/s) above which the display blanks; None: derived so that
    a contour stays within `blank_display_px` display px over one inference latency.
    settle_frames: frames below the blanking speed before an overlay may come back.
    compensate: shift the drawn overlay by the field's displacement since its frame.
    max_overlay_age_ms: None: 2 camera intervals + the model's p99 per frame.
    slow_factor: report an inference running past this many times its p99.
    rebuild_after_ms: rebuild the engine when one inference runs this long.
    focus_drop: no new overlay when the focus measure falls below this share of its recent
    median; saturated_share: ... when more than this share of the pixels is clipped.
    """

    blank_speed_um_s: float | None = None
    blank_display_px: float = 4.0
    settle_frames: int = 2
    compensate: bool = True
    max_overlay_age_ms: float | None = None
    slow_factor: float = 4.0
    rebuild_after_ms: float = 2000.0
    focus_drop: float = 0.35
    saturated_share: float = 0.2

    def max_age_ns(self, interval_s: float, infer_p99_ms: float | None) -> int:
        """The overlay age limit in ns (see the class docstring)."""
        if self.max_overlay_age_ms is not None:
            return int(self.max_overlay_age_ms * 1e6)
        p99 = infer_p99_ms if infer_p99_ms and infer_p99_ms > 0 else 500.0
        return int((2 * interval_s * 1e3 + p99) * 1e6)


class InferenceWatchdog:
    """Watches the one inference in flight (the inference thread calls begin/end around it).

    `check(p99_ms)` -> None, "slow" (once per inference, past slow_factor x p99) or "rebuild"
    (once, past rebuild_after_ms); `epoch` changes at every rebuild, so an inference thread
    that wakes up from a hung invoke knows its result belongs to an engine given up on.
    """

    def __init__(self, slow_factor: float = 4.0, rebuild_after_ms: float = 2000.0):
        self.slow_factor = slow_factor
        self.rebuild_after_ns = int(rebuild_after_ms * 1e6)
        self.epoch = 0
        self.rebuilds = 0
        self.slow_reports = 0
        self._started_ns = 0
        self._reported = False
        self._lock = threading.Lock()

    def begin(self) -> int:
        """An inference starts now; returns the epoch it runs in."""
        with self._lock:
            self._started_ns = time.monotonic_ns()
            self._reported = False
            return self.epoch

    def end(self, epoch: int) -> bool:
        """The inference of `epoch` returned; False when its engine was given up on meanwhile."""
        with self._lock:
            if epoch != self.epoch:
                return False
            self._started_ns = 0
            return True

    def running_ms(self) -> float:
        started = self._started_ns
        return (time.monotonic_ns() - started) / 1e6 if started else 0.0

    def check(self, p99_ms: float | None) -> str | None:
        with self._lock:
            if not self._started_ns:
                return None
            running = time.monotonic_ns() - self._started_ns
            if running >= self.rebuild_after_ns:
                self.epoch += 1
                self.rebuilds += 1
                self._started_ns = 0
                return "rebuild"
            if not self._reported and p99_ms and running > self.slow_factor * p99_ms * 1e6:
                self._reported = True
                self.slow_reports += 1
                return "slow"
        return None
