"""Bundles deployed to this device: unpacked safely, verified, kept with the previous one.

Layout under `state_dir`: bundles/<name>-<manifest sha12>/ (one folder per installed bundle) and
deployed.json {"active": path, "previous": path} written atomically, so a crash mid-deploy
leaves the device on the bundle it was running.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from lucida.calibration.atomic import atomic_write_text
from lucida.models import Bundle, BundleError, load_bundle
from lucida.models.bundle import MANIFEST, sha256_file, unpack_archive


class BundleStore:
    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir)
        self.bundles = self.root / "bundles"
        self.incoming = self.root / "incoming"
        self.state_file = self.root / "deployed.json"
        for d in (self.bundles, self.incoming):
            d.mkdir(parents=True, exist_ok=True)

    def install(self, archive: Path, max_bytes: int) -> Bundle:
        """Unpack and verify an uploaded .tar.gz; returns the installed bundle (not yet active)."""
        work = Path(tempfile.mkdtemp(prefix="unpack-", dir=self.incoming))
        try:
            folder = unpack_archive(archive, work, max_bytes=max_bytes)
            bundle = load_bundle(folder)
            # the manifest's hash covers every file's hash: same folder name, same bytes
            dest = self.bundles / f"{bundle.name}-{sha256_file(folder / MANIFEST)[:12]}"
            if not dest.exists():
                folder.rename(dest)
            return load_bundle(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def discard(self, bundle: Bundle) -> None:
        """Remove an installed bundle that failed to activate (never the active or previous one)."""
        path = Path(bundle.path)
        if path.parent == self.bundles and str(path) not in self.state().values():
            shutil.rmtree(path, ignore_errors=True)

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> Bundle:
        """A bundle by path, installed folder name ("lymph-m-0123abcd4567") or name (newest)."""
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
