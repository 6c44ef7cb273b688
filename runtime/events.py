"""The structured event log: one JSON object per line (start/stop, objective, model switch,
snapshot, overlay on/off, calibration, errors, sampled stage timings)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

FIELD_CHARS = 2000  # longest string field kept in an event (chars); longer ones are cut
RECORD_CHARS = 8000  # longest event line (chars)


def bounded(text: object, limit: int = FIELD_CHARS) -> str:
    """str(text) cut to `limit` characters, with a marker saying how much was cut."""
    s = str(text)
    if len(s) <= limit:
        return s
    marker = f"...[{len(s) - limit} more chars cut]"
    return s[: max(0, limit - len(marker))] + marker


def _bound_value(v, depth: int = 0):
    if isinstance(v, str):
        return bounded(v)
    if isinstance(v, (int, float, bool)) or v is None:
        return v
    if depth < 3 and isinstance(v, dict):
        return {bounded(k, 100): _bound_value(x, depth + 1) for k, x in list(v.items())[:50]}
    if depth < 3 and isinstance(v, (list, tuple)):
        return [_bound_value(x, depth + 1) for x in list(v)[:50]]
    return bounded(v)


class EventLog:
    """Appends {"ts": ISO-8601 UTC, "mono_ns": device clock, "event": kind, ...} lines."""

    def __init__(self, path: str | Path | None = None, keep: int = 500):
        if path:  # 0600 from creation: events can name patients' slides
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fh: TextIO = open(fd, "a", buffering=1)
        else:
            self._fh = sys.stderr
        self._own = path is not None
        self._lock = threading.Lock()
        self.recent: list[dict] = []
        self._dropped = 0  # events that fell out of `recent` (index of recent[0])
        self.keep = keep

    def __call__(self, event: str, **fields) -> None:
        rec = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            + f".{time.time_ns() % 10**9 // 10**6:03d}Z",
            "mono_ns": time.monotonic_ns(),
            "event": bounded(event, 100),
            **{bounded(k, 100): _bound_value(v) for k, v in fields.items()},
        }
        line = json.dumps(rec, default=str)
        if len(line) > RECORD_CHARS:  # many long fields: keep the kind, say it was cut
            rec = {k: rec[k] for k in ("ts", "mono_ns", "event")}
            rec["cut"] = f"event of {len(line)} chars cut to its kind"
            line = json.dumps(rec)
        with self._lock:
            self.recent.append(rec)
            over = len(self.recent) - self.keep
            if over > 0:
                del self.recent[:over]
                self._dropped += over
            try:
                self._fh.write(line + "\n")
            except (OSError, ValueError):
                pass

    def page(self, before: int | None = None, limit: int = 50) -> dict:
        """Recent events, newest last: at most `limit` (1..500) with index < `before`;
        `next_before` pages further back (None at the oldest kept)."""
        limit = max(1, min(500, int(limit)))
        with self._lock:
            recent = list(self.recent)
            first = self._dropped
        end = len(recent) if before is None else max(0, min(len(recent), before - first))
        start = max(0, end - limit)
        return {
            "events": recent[start:end],
            "first": first + start,
            "next_before": first + start if start > 0 else None,
        }

    def close(self) -> None:
        if self._own:
            self._fh.close()
