"""The structured event log: one JSON object per line (start/stop, objective, model switch,
snapshot, overlay on/off, calibration, errors, sampled stage timings)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TextIO


class EventLog:
    """Appends {"ts": ISO-8601 UTC, "mono_ns": device clock, "event": kind, ...} lines."""

    def __init__(self, path: str | Path | None = None, keep: int = 500):
        self._fh: TextIO = open(path, "a", buffering=1) if path else sys.stderr
        self._own = path is not None
        self._lock = threading.Lock()
        self.recent: list[dict] = []
        self.keep = keep

    def __call__(self, event: str, **fields) -> None:
        rec = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            + f".{time.time_ns() % 10**9 // 10**6:03d}Z",
            "mono_ns": time.monotonic_ns(),
            "event": event,
            **fields,
        }
        line = json.dumps(rec, default=str)
        with self._lock:
            self.recent.append(rec)
            del self.recent[: -self.keep]
            try:
                self._fh.write(line + "\n")
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self._own:
            self._fh.close()
