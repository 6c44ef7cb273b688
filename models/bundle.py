"""Model bundles on disk: a folder (or a .tar.gz of one) with manifest.json, models and golden I/O.

`load_bundle` validates the manifest, checks every listed file's sha256 and size, and returns a
`Bundle`; nothing half-loaded escapes: any problem is one `BundleError` naming the file and field.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lucida.calibration.atomic import atomic_write_bytes, atomic_write_text
from pydantic import ValidationError

from .archive import ArchiveError, ArchiveLimits, check_archive, short
from .manifest import Manifest

MANIFEST = "manifest.json"
MAX_UNPACKED_BYTES = 256 * 1024 * 1024

# Temp folders that .tar.gz bundles were unpacked into (no unpack_dir given): the Bundle's files
# live there while the process runs; they are removed when it exits.
_UNPACKED: list[Path] = []


@atexit.register
def _remove_unpacked() -> None:
    while _UNPACKED:
        shutil.rmtree(_UNPACKED.pop(), ignore_errors=True)


class BundleError(ValueError):
    """A bundle that cannot be used: names the bundle, the file or field, and what was expected."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder and its manifest."""

    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    def file(self, name: str) -> Path:
        """Path of a file listed in the manifest."""
        if name not in self.manifest.files:
            raise BundleError(f"bundle {self.name}: no file {name!r} in manifest")
        return self.path / name

    @property
    def has_edgetpu(self) -> bool:
        return "edgetpu.tflite" in self.manifest.files

    def sha256(self, name: str = "cpu.tflite") -> str:
        return self.manifest.files[name].sha256

    def golden(self, model_file: str = "cpu.tflite") -> tuple[np.ndarray, np.ndarray] | None:
        """(input uint8 HxWx3, expected output float32 of `model_file`) or None when the bundle
        has no golden pair. A model file without its own golden output uses cpu.tflite's."""
        g = self.manifest.golden
        if g is None:
            return None
        try:
            x = np.load(self.path / g.input, allow_pickle=False)
            y = np.load(self.path / g.outputs.get(model_file, g.output), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"bundle {self.name}: golden I/O unreadable: {exc}") from None
        return x, y


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """Parse and validate `folder/manifest.json`."""
    path = Path(folder) / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{folder}: not a bundle (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise BundleError(f"{path}: field '{field}': {err['msg']}{more}") from None


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Check that every listed file exists with the listed size and sha256."""
    for name, entry in manifest.files.items():
        p = folder / name
        if Path(name).name != name:
            raise BundleError(f"bundle {manifest.name}: file name {name!r} must not contain a path")
        if not p.is_file():
            raise BundleError(f"bundle {manifest.name}: {name} is missing")
        size = p.stat().st_size
        if size != entry.bytes:
            raise BundleError(
                f"bundle {manifest.name}: {name} is {size} bytes, manifest says {entry.bytes}"
            )
        digest = sha256_file(p)
        if digest != entry.sha256:
            raise BundleError(
                f"bundle {manifest.name}: {name} sha256 {digest[:12]}... does not match "
                f"manifest {entry.sha256[:12]}..."
            )


def load_bundle(path: str | os.PathLike, unpack_dir: str | os.PathLike | None = None) -> Bundle:
    """Load and verify a bundle folder or .tar.gz (unpacked safely into `unpack_dir` or a temp dir)."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        if unpack_dir:
            path = unpack_archive(path, Path(unpack_dir))
        else:
            dest = Path(tempfile.mkdtemp(prefix="lucida-bundle-"))
            _UNPACKED.append(dest)
            try:
                path = unpack_archive(path, dest)
            except BundleError:
                shutil.rmtree(dest, ignore_errors=True)
                _UNPACKED.remove(dest)
                raise
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder or .tar.gz")
    manifest = read_manifest(path)
    verify_files(path, manifest)
    if manifest.golden is not None:
        g = manifest.golden
        for name in (g.input, g.output, *g.outputs.values()):
            if name not in manifest.files:
                raise BundleError(
                    f"bundle {manifest.name}: golden file {name} not hashed in 'files'"
                )
    return Bundle(path=path.resolve(), manifest=manifest)


def unpack_archive(
    archive: Path,
    dest: Path,
    max_bytes: int = MAX_UNPACKED_BYTES,
    limits: ArchiveLimits | None = None,
) -> Path:
    """Unpack a bundle .tar.gz into dest safely; return the folder holding manifest.json.

    Every member header is checked first, streaming (see models.archive: extension header
    size, name length, member count, total size <= `max_bytes`, types); then absolute paths,
    `..`, links and devices are refused before anything is written.
    """
    limits = limits or ArchiveLimits(max_total_bytes=max_bytes)
    try:
        check_archive(archive, limits)
    except ArchiveError as exc:
        raise BundleError(str(exc)) from None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                name = m.name
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise BundleError(f"{archive.name}: unsafe path {short(name)} in archive")
                if not (m.isfile() or m.isdir()):
                    raise BundleError(
                        f"{archive.name}: {short(name)} is a link or device, not a file"
                    )
            dest.mkdir(parents=True, exist_ok=True)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **kwargs)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(
            f"{archive.name}: not a readable .tar.gz ({short(str(exc), 120)})"
        ) from None
    candidates = [p.parent for p in dest.rglob(MANIFEST)]
    if len(candidates) != 1:
        raise BundleError(f"{archive.name}: expected one {MANIFEST}, found {len(candidates)}")
    return candidates[0]


def pack_bundle(folder: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write folder as out (.tar.gz) with one top-level folder named after the bundle, atomically."""
    folder, out = Path(folder), Path(out)
    manifest = read_manifest(folder)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder / MANIFEST, arcname=f"{manifest.name}/{MANIFEST}")
        for name in manifest.files:
            tar.add(folder / name, arcname=f"{manifest.name}/{name}")
    atomic_write_bytes(out, buf.getvalue())
    return out


def write_bundle(
    out_dir: str | os.PathLike,
    manifest: dict,
    files: dict[str, bytes | np.ndarray | str | os.PathLike],
) -> Bundle:
    """Create a bundle folder atomically: files (bytes, arrays saved as .npy, or paths to copy) are
    written, hashed into manifest["files"], the manifest validated, then the folder swapped in."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be read by the daemon's user
    try:
        entries = {}
        for name, content in files.items():
            p = tmp / name
            if isinstance(content, np.ndarray):
                np.save(p, content, allow_pickle=False)
            elif isinstance(content, (bytes, bytearray)):
                p.write_bytes(content)
            else:
                shutil.copyfile(content, p)
            entries[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        manifest = dict(manifest, files=entries)
        Manifest.model_validate(manifest)
        _write_json_atomic(tmp / MANIFEST, manifest)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(out_dir)


def update_manifest(folder: str | os.PathLike, **fields) -> Manifest:
    """Replace top-level manifest fields (e.g. metrics, latency) atomically, re-validated."""
    folder = Path(folder)
    raw = json.loads((folder / MANIFEST).read_text())
    raw.update(fields)
    manifest = Manifest.model_validate(raw)
    _write_json_atomic(folder / MANIFEST, raw)
    return manifest


def _write_json_atomic(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
