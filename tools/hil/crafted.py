"""Hostile inputs built from real ones: a model that crashes the interpreter, header bombs.

`crashing_bundle` mutates 4 bytes of a real int8 model (one float32 per-channel weight scale
set to a value the interpreter's quantization code cannot take), re-hashes the bundle so it
verifies, and keeps the first mutation that kills a child process loading it
(runtime.sandbox); it refuses to return a bundle that does not crash. `header_bomb` writes a
.tar.gz whose one member has a GNU long-name or PAX header of `name_mb` MiB (a few KiB
compressed); `member_flood`, `zip_bomb` and `traversal` are the other archive attacks.
"""

from __future__ import annotations

import io
import shutil
import struct
import tarfile
from pathlib import Path

BAD_SCALES = (1e30, float("inf"), float("nan"), -1.0, 1e-30)


def scale_offsets(model: bytes) -> list[tuple[int, int]]:
    """(byte offset of scale[0], tensor index) of every per-channel quantized tensor."""
    import tflite

    m = tflite.Model.GetRootAsModel(model, 0)
    out = []
    for s in range(m.SubgraphsLength()):
        g = m.Subgraphs(s)
        for t in range(g.TensorsLength()):
            q = g.Tensors(t).Quantization()
            if q is None or q.ScaleLength() < 2:
                continue
            o = q._tab.Offset(8)  # QuantizationParameters.scale
            out.append((q._tab.Vector(o), t))
    return out


class NoCrashFound(RuntimeError):
    """No mutation tried made the interpreter crash (a hardened interpreter: good news)."""


def crashing_bundle(src: str | Path, out_dir: str | Path, max_tries: int = 12, limits=None):
    """A copy of bundle `src` whose cpu.tflite crashes the interpreter in a child process.

    Returns (bundle, description, sandbox message). Every candidate is checked for real."""
    from lucida.models import load_bundle, write_bundle
    from lucida.runtime.sandbox import SandboxError, SandboxLimits, check_in_child

    bundle = load_bundle(src)
    raw = bundle.file("cpu.tflite").read_bytes()
    files = {n: bundle.path / n for n in bundle.manifest.files if n != "edgetpu.tflite"}
    manifest = bundle.manifest.model_dump(mode="json", exclude={"files"})
    tries = 0
    for value in BAD_SCALES:
        for offset, tensor in scale_offsets(raw):
            if tries >= max_tries:
                break
            tries += 1
            data = bytearray(raw)
            data[offset : offset + 4] = struct.pack("<f", value)
            out = Path(out_dir) / f"crash-{tries}"
            shutil.rmtree(out, ignore_errors=True)
            cand = write_bundle(out, manifest, {**files, "cpu.tflite": bytes(data)})
            try:
                check_in_child(cand.path, limits=limits or SandboxLimits(timeout_s=60))
            except SandboxError as exc:
                if "crashed" in str(exc):
                    where = f"tensor {tensor} scale[0] := {value!r} (4 bytes at {offset})"
                    return cand, where, str(exc)
            shutil.rmtree(out, ignore_errors=True)
    raise NoCrashFound(f"{tries} mutations of {bundle.name} tried: none crashed the interpreter")


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], fmt) -> Path:
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def header_bomb(path: str | Path, kind: str = "gnu", name_mb: float = 64) -> Path:
    """One member with a `name_mb` MiB name in a GNU long-name ('gnu') or PAX ('pax') header."""
    info = tarfile.TarInfo("b/" + "a" * int(name_mb * 2**20))
    info.size = 2
    fmt = tarfile.GNU_FORMAT if kind == "gnu" else tarfile.PAX_FORMAT
    return _write(Path(path), [(info, b"{}")], fmt)


def member_flood(path: str | Path, members: int = 20000) -> Path:
    """`members` empty files."""
    out = []
    for i in range(members):
        info = tarfile.TarInfo(f"b/f{i}")
        info.size = 0
        out.append((info, b""))
    return _write(Path(path), out, tarfile.GNU_FORMAT)


def zip_bomb(path: str | Path, unpacked_mb: int = 1024) -> Path:
    """One member of `unpacked_mb` MiB of zeros (about 1/1000 of that compressed)."""
    path = Path(path)
    info = tarfile.TarInfo("b/cpu.tflite")
    info.size = unpacked_mb * 2**20

    class Zeros(io.RawIOBase):
        def __init__(self, n):
            self.left = n

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.addfile(info, io.BufferedReader(Zeros(info.size), 1 << 20))
    return path


def traversal(path: str | Path) -> Path:
    info = tarfile.TarInfo("../../../../tmp/lucida-evil")
    info.size = 2
    return _write(Path(path), [(info, b"{}")], tarfile.GNU_FORMAT)
