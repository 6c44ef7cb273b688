"""Snapshots with provenance: one folder per snapshot of what the eyepiece showed.

Files in each folder (all of the same displayed overlay):
  frame.png        the raw camera frame (RGB, lossless)
  model_input.png  what the model saw: flat-field/white balance, colour normalization, resampled
                   to the model's pixel size (before tiling)
  heatmap.npy      float32 probabilities in [0, 1], heatmap cells (affine in metadata.json)
  heatmap.png      the same, coloured (inferno palette, 0 -> black, 1 -> yellow)
  eyepiece.png     the micro-display canvas (display px; black is invisible in the eyepiece)
  preview.jpg      camera frame with the overlay, as on the live page
  metadata.json    time, case id, comment, model name/version/sha256, objective, threshold and
                   classes, calibration profile and revision, camera settings, software version

A folder is written under a temporary name and renamed when complete. The store keeps at most
`max_bytes`; the oldest snapshots are removed first.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from lucida.calibration.atomic import atomic_write_text

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
# UTC date-time, microseconds, 4 random hex digits: names sort oldest first
ID_PATTERN = re.compile(r"^\d{8}-\d{6}-\d{6}[0-9a-f]{4}$")
FILES = (
    "frame.png",
    "model_input.png",
    "heatmap.npy",
    "heatmap.png",
    "eyepiece.png",
    "preview.jpg",
    "metadata.json",
)
MAX_TEXT = 2000  # characters of a comment; case ids are shorter (CASE_ID)
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/-]{0,63}$")


class SnapshotError(ValueError):
    """A snapshot that cannot be taken or found (the message says why)."""


def _png(path: Path, rgb: np.ndarray) -> None:
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: cannot write PNG")


def heatmap_picture(probs: np.ndarray) -> np.ndarray:
    """float [0, 1] HxW -> RGB uint8 with the inferno palette."""
    u8 = np.clip(np.asarray(probs, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def check_text(case_id: str | None, comment: str | None) -> tuple[str, str]:
    """Validated (case_id, comment): the case id is a short plain token, the comment plain text."""
    case_id = (case_id or "").strip()
    comment = (comment or "").strip()
    if case_id and not CASE_ID.match(case_id):
        raise SnapshotError(
            "case_id: up to 64 letters, digits, space and . _ / - (starting with a letter or digit)"
        )
    if len(comment) > MAX_TEXT:
        raise SnapshotError(f"comment: at most {MAX_TEXT} characters, got {len(comment)}")
    return case_id, comment


class SnapshotStore:
    """Snapshot folders under `folder`, at most `max_bytes` in all (oldest removed first)."""

    def __init__(self, folder: str | Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()

    def save(self, images: dict, metadata: dict) -> dict:
        """Write one snapshot. images: frame, model_input, eyepiece, preview (RGB uint8) and
        heatmap (float32 probs). Returns {"id", "files", "bytes"}."""
        now_ns = time.time_ns()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_ns // 10**9))
        sid = f"{stamp}-{now_ns // 1000 % 10**6:06d}{secrets.token_hex(2)}"
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{sid}.partial"
        tmp.mkdir()
        try:
            _png(tmp / "frame.png", images["frame"])
            _png(tmp / "model_input.png", images["model_input"])
            np.save(tmp / "heatmap.npy", np.asarray(images["heatmap"], np.float32))
            _png(tmp / "heatmap.png", heatmap_picture(images["heatmap"]))
            _png(tmp / "eyepiece.png", images["eyepiece"])
            ok, jpg = cv2.imencode(
                ".jpg",
                cv2.cvtColor(images["preview"], cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 90],
            )
            (tmp / "preview.jpg").write_bytes(jpg.tobytes())
            meta = {"id": sid, **metadata}
            atomic_write_text(tmp / "metadata.json", json.dumps(meta, indent=1, default=str) + "\n")
            tmp.rename(self.folder / sid)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        size = sum(p.stat().st_size for p in (self.folder / sid).iterdir())
        removed = self._enforce_cap(keep=sid)
        return {"id": sid, "files": list(FILES), "bytes": size, "removed_oldest": removed}

    def _enforce_cap(self, keep: str) -> list[str]:
        with self._lock:
            folders = sorted(p for p in self.folder.iterdir() if ID_PATTERN.match(p.name))
            sizes = {p: sum(f.stat().st_size for f in p.iterdir()) for p in folders}
            total, removed = sum(sizes.values()), []
            for p in folders:  # ids start with the UTC time: sorted = oldest first
                if total <= self.max_bytes or p.name == keep:
                    break
                shutil.rmtree(p, ignore_errors=True)
                total -= sizes[p]
                removed.append(p.name)
            return removed

    def list(self) -> list[dict]:
        """Every snapshot, newest first: id, time, case id, comment, model, objective, bytes."""
        if not self.folder.is_dir():
            return []
        out = []
        for p in sorted(self.folder.iterdir(), reverse=True):
            if not ID_PATTERN.match(p.name):
                continue
            try:
                meta = json.loads((p / "metadata.json").read_text())
            except (OSError, ValueError):
                continue
            out.append(
                {
                    "id": p.name,
                    "time": meta.get("time"),
                    "case_id": meta.get("case_id"),
                    "comment": meta.get("comment"),
                    "model": (meta.get("model") or {}).get("name"),
                    "objective": meta.get("objective"),
                    "bytes": sum(f.stat().st_size for f in p.iterdir()),
                    "files": sorted(f.name for f in p.iterdir()),
                }
            )
        return out

    def file(self, sid: str, name: str = "metadata.json") -> Path:
        """A snapshot's file; SnapshotError for an unknown id or a name not in FILES."""
        if not ID_PATTERN.match(sid or "") or name not in FILES:
            raise SnapshotError(f"no snapshot file {sid}/{name}")
        path = self.folder / sid / name
        if not path.is_file():
            raise SnapshotError(f"no snapshot file {sid}/{name}")
        return path

    def usage(self) -> dict:
        used = (
            sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file())
            if self.folder.is_dir()
            else 0
        )
        return {"snapshots_bytes": used, "snapshots_cap_bytes": self.max_bytes}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def capture(daemon, case_id: str | None = None, comment: str | None = None):
    """(images, metadata) of the overlay the daemon shows now; SnapshotError when nothing is.

    Works from the last displayed result (kept by the daemon's display hook): the eyepiece and
    preview are composed again from it and the model input is prepared again with the
    pipeline's own preprocessing, so every file is of the same frame and the same model.
    """
    case_id, comment = check_text(case_id, comment)
    shown = daemon.shown
    if shown is None:
        raise SnapshotError("nothing has been shown yet: no snapshot")
    if shown["kind"] != "overlay":
        raise SnapshotError(f"nothing is shown now ({shown.get('reason')}): no snapshot")
    result, objective = shown["result"], shown["objective"]
    pipe = daemon.pipeline
    active, optics = pipe._active, pipe._optics
    if active is None or active.name != result.model:
        raise SnapshotError("the model changed since this overlay was shown: try again")
    frame, hm = result.frame, result.heatmap
    um = optics.um_per_px or frame.meta.get("um_per_px")
    model_input = pipe.model_input(frame, active, optics)
    w, h = model_input.size
    draw = dict(heatmap_affine=hm.affine, objective=objective, um_per_px=um, model=result.model)
    images = {
        "frame": frame.image,
        "model_input": model_input.image[:h, :w],
        "heatmap": hm.probs,
        "eyepiece": pipe.ar.compose(result.regions, heatmap=hm.probs, **draw),
        "preview": pipe.preview.compose(frame.image, result.regions, hm.probs, **draw),
    }
    bundle, info = active.engine.bundle, active.engine.info
    regions = result.regions
    src = daemon.config.source
    profile = daemon.profile
    metadata = {
        "time": utc_now(),
        "case_id": case_id or None,
        "comment": comment or None,
        "shown_at_ns": shown["t_ns"],
        "frame": {"seq": frame.seq, "t_capture_ns": frame.t_capture_ns, "size": list(frame.size)},
        "objective": objective,
        "um_per_px": um,
        "model": {
            "name": bundle.name,
            "version": bundle.manifest.version,
            "sha256": info.model_sha256,
            "file": info.model_file,
            "delegate": info.delegate,
            "backend": f"{info.backend} {info.backend_version}",
        },
        "threshold": pipe.threshold,
        "classes": None,  # per-class toggles (issue 14)
        "regions": {
            "count": len(regions.contours) if regions is not None else 0,
            "areas_um2": [round(a, 1) for a in (getattr(regions, "areas_um2", None) or [])],
        },
        "heatmap": {
            "shape": list(hm.probs.shape),
            "affine_to_frame_px": np.asarray(hm.affine).tolist(),
        },
        "calibration": {
            "profile": str(profile.path) if profile else None,
            "revision": profile.profile.revision if profile else None,
        },
        "camera": {
            "source": src.type,
            "width": src.width,
            "height": src.height,
            "fps": src.fps,
            "controls": pipe.source.camera_controls(),  # exposure_ms, gain, ... now
        },
        "software": daemon.software(),
    }
    return images, metadata
