"""Latest-value hand-off between pipeline stages: a newer item replaces an unconsumed one."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds at most one item. `put` overwrites (and says so: a drop); `take` waits for a new one."""

    def __init__(self):
        self._item: T | None = None
        self._cond = threading.Condition()
        self.drops = 0

    def put(self, item: T) -> bool:
        """Store item; True when it replaced one nobody took (counted in `drops`)."""
        with self._cond:
            dropped = self._item is not None
            self.drops += dropped
            self._item = item
            self._cond.notify_all()
            return dropped

    def take(self, timeout_s: float | None = None) -> T | None:
        """The newest item, waiting up to timeout_s; None when nothing new arrived."""
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            if item is not None:
                self._cond.notify_all()  # wakes wait_taken
            return item

    def wait_taken(self, timeout_s: float | None = None) -> bool:
        """Wait until the slot is empty (its item was taken); True when it is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._item is None, timeout_s)
