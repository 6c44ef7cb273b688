"""Back-off between attempts: one mechanism for the Edge TPU delegate, the serial link, the camera."""

from __future__ import annotations

import threading
import time


class Backoff:
    """Waits between attempts that start at `first_s` and grow by `factor` up to `max_s` (s).

    `wait()` sleeps the current delay (or until `stop` is set) and lengthens the next one;
    `reset()` after a success, so the next outage starts from `first_s` again.
    """

    def __init__(self, first_s: float, max_s: float | None = None, factor: float = 2.0):
        max_s = first_s if max_s is None else max_s
        if not (0 <= first_s <= max_s) or factor < 1:
            raise ValueError(
                f"back-off ({first_s!r}, {max_s!r}, x{factor!r}): expected 0 <= first <= max, "
                "factor >= 1"
            )
        self.first_s, self.max_s, self.factor = float(first_s), float(max_s), float(factor)
        self.delay_s = self.first_s

    def reset(self) -> None:
        self.delay_s = self.first_s

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Sleep the current delay, then lengthen it; True when `stop` was set meanwhile."""
        delay, self.delay_s = self.delay_s, min(self.delay_s * self.factor, self.max_s)
        if stop is not None:
            return stop.wait(delay)
        time.sleep(delay)
        return False
