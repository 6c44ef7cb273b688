"""The audit trail: what the eyepiece showed, kept on disk across restarts.

One JSON object per line, written when what is shown changes (overlay <-> blank, model, model
file, objective, threshold, classes, region count, or total outlined area by more than
AREA_CHANGE): time (UTC and device clock), what was shown, model name and sha256, objective,
threshold and classes, region count and areas (um2 when the pixel size is known, else px2), and
the calibration profile revision. Lines go through a queue to a writer thread
(logging.handlers.QueueListener), so the render loop never waits on the disk; the file is rotated
by size (RotatingFileHandler): at most `max_bytes * (backups + 1)` bytes on disk.

`read_audit(path, since)` yields the records of the file and its rotated copies, oldest first.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

AREA_CHANGE = 0.10  # relative change of the total outlined area that makes a new record
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_BACKUPS = 4


class AuditTrail:
    """The pipeline's on_display hook that records changes of what is shown (see module doc).

    context(): {"model_sha256", "threshold", "classes", "calibration_revision"} of the moment,
    read on the render thread (keep it cheap: attribute reads only).
    """

    def __init__(
        self,
        path: str | Path,
        context: Callable[[], dict] = dict,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.context = context
        self.max_bytes, self.backups = int(max_bytes), int(backups)
        handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=self.max_bytes, backupCount=self.backups, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._handler = handler
        self._listener.start()
        self._last_key: tuple | None = None
        self._last_area = 0.0
        self.written = 0

    def __call__(self, kind: str, t_ns: int, result=None, frame=None, reason=None, objective=None):
        if kind == "overlay" and result is not None:
            rec = self._overlay(result, objective)
        elif kind == "blank":
            if objective is None and frame is not None:
                objective = frame.objective
            rec = {"shown": "nothing", "reason": reason, "objective": objective}
        else:
            return  # clear requests are not what was shown
        ctx = self.context() or {}
        rec.update(
            model_sha256=ctx.get("model_sha256") if rec["shown"] == "overlay" else None,
            threshold=ctx.get("threshold"),
            classes=ctx.get("classes"),
            calibration_revision=ctx.get("calibration_revision"),
        )
        key = tuple(
            str(rec.get(k))
            for k in ("shown", "reason", "model", "model_sha256", "objective", "threshold")
        ) + (str(rec.get("classes")), rec.get("regions"))
        area = float(rec.get("total_area") or 0.0)
        if key == self._last_key and not _area_changed(self._last_area, area):
            return
        self._last_key, self._last_area = key, area
        now = time.time()
        line = {
            "ts": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
            "t_ns": t_ns,
            **rec,
        }
        record = logging.LogRecord("lucida.audit", logging.INFO, "", 0, None, None, None)
        record.msg = json.dumps(line, default=str)
        self._queue.put_nowait(record)  # never blocks the render thread
        self.written += 1

    @staticmethod
    def _overlay(result, objective) -> dict:
        regions = result.regions
        um2 = getattr(regions, "areas_um2", None)  # None when the pixel size is unknown
        areas = list(um2 if um2 is not None else (getattr(regions, "areas_px2", None) or []))
        unit = "um2" if um2 is not None else "px2"
        return {
            "shown": "overlay",
            "model": result.model,
            "objective": objective if objective is not None else result.frame.objective,
            "regions": len(areas),
            f"areas_{unit}": [round(a, 1) for a in areas],
            "total_area": round(sum(areas), 1),
            "area_unit": unit,
        }

    def disk(self) -> dict:
        """Bytes used by the trail (file + rotated copies) and free bytes on its file system."""
        used = sum(p.stat().st_size for p in audit_files(self.path))
        free = shutil.disk_usage(self.path.parent).free
        return {
            "audit_bytes": used,
            "audit_cap_bytes": self.max_bytes * (self.backups + 1),
            "disk_free_bytes": free,
        }

    def close(self) -> None:
        """Write what is queued and close the file."""
        self._listener.stop()
        self._handler.close()


def _area_changed(before: float, after: float) -> bool:
    if before <= 0 or after <= 0:
        return (before <= 0) != (after <= 0)
    return abs(after - before) / before > AREA_CHANGE


def audit_files(path: str | Path) -> list[Path]:
    """The trail's files, oldest first: path.N ... path.1, path."""
    path = Path(path)
    rotated = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*rotated, *([path] if path.exists() else [])]


def read_audit(path: str | Path, since: datetime | None = None) -> Iterator[dict]:
    """Records of the trail at `path` (and its rotated copies) at or after `since` (UTC)."""
    for f in audit_files(path):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a power loss
                if since is not None and datetime.fromisoformat(rec["ts"]) < since:
                    continue
                yield rec
