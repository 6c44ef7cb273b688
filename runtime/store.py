"""Bundles deployed to this device: unpacked safely, verified, kept with the previous one.

Layout under `state_dir`: bundles/<name>-<manifest sha12>/ (one folder per installed bundle) and
deployed.json {"active": path, "previous": path} written atomically, so a crash mid-deploy
leaves the device on the bundle it was running. incoming/ (uploads being received or unpacked)
is emptied when the store opens: whatever is there was left by a crash. `collect` keeps the
newest `keep` installed bundles and never removes the active or previous one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from lucida.calibration.atomic import atomic_write_text
from lucida.models import Bundle, BundleError, load_bundle
from lucida.models.archive import ArchiveLimits, short
from lucida.models.bundle import MANIFEST, sha256_file, unpack_archive


def _tree_bytes(folder: Path) -> tuple[int, int]:
    """(bytes, files) under folder, not following links."""
    total = files = 0
    for dirpath, _, names in os.walk(folder):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
                files += 1
            except OSError:
                pass
    return total, files


class BundleStore:
    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir)
        self.bundles = self.root / "bundles"
        self.incoming = self.root / "incoming"
        self.state_file = self.root / "deployed.json"
        for d in (self.bundles, self.incoming):
            d.mkdir(parents=True, exist_ok=True)
        self.swept = self.sweep()

    def sweep(self) -> int:
        """Remove everything in incoming/ (left by a crash mid-upload); returns how many."""
        n = 0
        for p in self.incoming.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
        return n

    def install(self, archive: Path, max_bytes: int, limits: ArchiveLimits | None = None) -> Bundle:
        """Unpack and verify an uploaded .tar.gz; returns the installed bundle (not yet active)."""
        work = Path(tempfile.mkdtemp(prefix="unpack-", dir=self.incoming))
        try:
            folder = unpack_archive(archive, work, max_bytes=max_bytes, limits=limits)
            bundle = load_bundle(folder)
            # the manifest's hash covers every file's hash: same folder name, same bytes
            dest = self.bundles / f"{bundle.name}-{sha256_file(folder / MANIFEST)[:12]}"
            if not dest.exists():
                folder.rename(dest)
            os.utime(dest)  # newest install: the last one `collect` removes
            return load_bundle(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def discard(self, bundle: Bundle) -> None:
        """Remove an installed bundle that failed to activate (never the active or previous one)."""
        path = Path(bundle.path)
        if path.parent == self.bundles and str(path) not in self.state().values():
            shutil.rmtree(path, ignore_errors=True)

    def collect(self, keep: int) -> list[str]:
        """Remove installed bundles beyond the newest `keep` (by install time), never the active
        or the previous one; returns the folder names removed."""
        protected = {str(Path(p)) for p in self.state().values() if p}
        folders = sorted(
            (p for p in self.bundles.iterdir() if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        removed, kept = [], 0
        for p in folders:
            if str(p) in protected or str(p.resolve()) in protected:
                continue
            kept += 1
            if kept + len(protected) > keep:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed

    def disk(self) -> dict:
        """Disk use of the state folder and free space on its file system (MiB)."""
        du = shutil.disk_usage(self.root)
        used, _ = _tree_bytes(self.root)
        _, incoming = _tree_bytes(self.incoming)
        return {
            "free_mb": round(du.free / 2**20, 1),
            "total_mb": round(du.total / 2**20, 1),
            "state_mb": round(used / 2**20, 1),
            "bundles": sum(1 for p in self.bundles.iterdir() if p.is_dir()),
            "incoming_files": incoming,
        }

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> Bundle:
        """A bundle by path, installed folder name ("lymph-m-0123abcd4567") or name (newest);
        a path must be an installed folder, a name a plain name (no folders, no '..')."""
        if Path(key).is_absolute():
            if Path(key).parent != self.bundles:
                raise BundleError(f"{short(key)} is not an installed bundle on this device")
        elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", key):
            raise BundleError(f"bundle name {short(key)}: expected letters, digits, '.', '_', '-'")
        path = Path(key) if Path(key).is_absolute() else self.bundles / key
        if not path.is_dir():
            matches = sorted(
                (p for p in self.bundles.iterdir() if p.name.rsplit("-", 1)[0] == key),
                key=lambda p: p.stat().st_mtime,
            )
            if not matches:
                raise BundleError(f"no installed bundle {key!r} on this device")
            path = matches[-1]
        return load_bundle(path)

    def active(self) -> Bundle | None:
        key = self.state().get("active")
        return self.get(key) if key else None

    def previous(self) -> Bundle | None:
        key = self.state().get("previous")
        return self.get(key) if key else None

    def set_active(self, bundle: Bundle) -> None:
        """Record `bundle` as active and the one active until now as previous (atomically)."""
        old = self.state().get("active")
        new = str(bundle.path)
        state = {"active": new, "previous": old if old != new else self.state().get("previous")}
        atomic_write_text(self.state_file, json.dumps(state, indent=2) + "\n")
