"""Bundle archives checked header by header before `tarfile` reads them.

`tarfile` reads a GNU long-name ('L'/'K') or PAX ('x'/'g') extension header whole into memory
before any size check: a 1 MB .tar.gz can carry a 1 GB name. `check_archive` walks the
decompressed stream itself, 512-byte block by block, and refuses an archive as soon as one
header breaks a limit (extension size, name length, member count, total size, member type),
reading member data in bounded chunks and never holding more than one extension header
(<= `max_ext_header_bytes`) in memory. Only an archive that passed is opened with `tarfile`.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

BLOCK = 512
CHUNK = 1 << 20  # bytes read at a time while skipping member data


class ArchiveError(ValueError):
    """An archive refused before unpacking; names the archive, the member and the limit."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on a bundle archive (bytes unless named otherwise)."""

    max_members: int = 64  # files and folders
    max_total_bytes: int = 256 * 1024 * 1024  # sum of member sizes once unpacked
    max_name_bytes: int = 255  # a member's path
    max_ext_header_bytes: int = 64 * 1024  # one PAX or GNU long-name header


ALLOWED_TYPES = {
    b"0": "file",
    b"\0": "file",
    b"5": "folder",
    b"x": "pax",  # per-member PAX header: read (bounded), applies to the next member
    b"L": "longname",  # GNU long name: read (bounded), applies to the next member
}


def short(text: object, limit: int = 80) -> str:
    """repr() of a name or value, cut to `limit` characters with a marker (for messages)."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 14] + f"...(+{len(r) - limit + 14} chars)"


def _octal(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU): huge or negative sizes
        value = int.from_bytes(field[1:], "big")
        return -1 if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ArchiveError(f"header field {what} {short(text)} is not octal") from None


def _checksum_ok(header: bytes) -> bool:
    stored = header[148:156].split(b"\0", 1)[0].strip(b" \0")
    try:
        want = int(stored, 8)
    except ValueError:
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 8 * 32
    return want in (unsigned, signed)


def _pax_records(data: bytes) -> dict[str, str]:
    """'LEN key=value\\n' records of a PAX header (already bounded in size)."""
    out, pos = {}, 0
    while pos < len(data) and data[pos : pos + 1] not in (b"\0", b""):
        sp = data.find(b" ", pos, pos + 24)
        if sp < 0:
            raise ArchiveError("malformed PAX header record")
        try:
            n = int(data[pos:sp])
        except ValueError:
            raise ArchiveError("malformed PAX header record length") from None
        if n <= sp - pos or pos + n > len(data):
            raise ArchiveError("malformed PAX header record length")
        key, _, value = data[sp + 1 : pos + n - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += n
    return out


class _Reader:
    """The decompressed stream in blocks, counting every byte read."""

    def __init__(self, fh):
        self.fh, self.read_bytes = fh, 0

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        self.read_bytes += len(data)
        if len(data) != n:
            raise ArchiveError("archive ends in the middle of a member (truncated upload?)")
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, CHUNK)
            self.take(step)
            n -= step


def check_archive(archive: str | Path, limits: ArchiveLimits = ArchiveLimits()) -> int:
    """Walk every member header of a .tar.gz; raise ArchiveError at the first one that breaks
    a limit or is not a plain file/folder. Returns the number of members (files + folders)."""
    archive = Path(archive)
    try:
        with gzip.open(archive, "rb") as fh:
            return _walk(_Reader(fh), limits)
    except ArchiveError as exc:
        raise ArchiveError(f"{archive.name}: {exc}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(
            f"{archive.name}: not a readable .tar.gz ({short(str(exc), 120)})"
        ) from None


def _walk(r: _Reader, lim: ArchiveLimits) -> int:
    members, total = 0, 0
    pending: dict[str, str] = {}  # PAX / long-name overrides for the next member
    while True:
        header = r.fh.read(BLOCK)
        r.read_bytes += len(header)
        if len(header) < BLOCK:
            if header.strip(b"\0") or members == 0:
                raise ArchiveError("archive ends in the middle of a header (truncated upload?)")
            return members  # end without the two zero blocks: tarfile accepts it too
        if header == bytes(BLOCK):  # end of archive (tarfile stops at the first one too)
            if members == 0:
                raise ArchiveError("empty archive (no members)")
            return members
        if not _checksum_ok(header):
            raise ArchiveError(f"corrupt member header (bad checksum) after {members} members")
        kind = ALLOWED_TYPES.get(header[156:157])
        raw_name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
        shown = short((prefix + b"/" + raw_name if prefix else raw_name).decode("utf-8", "replace"))
        if kind is None:
            raise ArchiveError(
                f"member {shown} is a link or device (type {short(header[156:157])}), not a "
                f"file or folder (only those and PAX/GNU long-name headers are allowed)"
            )
        size = _octal(header[124:136], "size")
        if kind in ("pax", "longname"):
            if not 0 <= size <= lim.max_ext_header_bytes:
                raise ArchiveError(
                    f"a {'PAX' if kind == 'pax' else 'GNU long-name'} header of {size} bytes "
                    f"exceeds the {lim.max_ext_header_bytes} byte limit"
                )
            data = r.take(size)
            r.skip(-size % BLOCK)
            if kind == "longname":
                pending["path"] = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            else:
                pending.update(_pax_records(data))
            continue
        name = pending.get("path") or (prefix + b"/" + raw_name if prefix else raw_name).decode(
            "utf-8", "replace"
        )
        if "size" in pending:
            try:
                size = int(pending["size"])
            except ValueError:
                raise ArchiveError(f"member {short(name)}: PAX size is not a number") from None
        pending = {}
        if len(name.encode()) > lim.max_name_bytes:
            raise ArchiveError(
                f"member name of {len(name.encode())} bytes exceeds the "
                f"{lim.max_name_bytes} byte limit: {short(name)}"
            )
        if size < 0:
            raise ArchiveError(f"member {short(name)} has a negative size")
        members += 1
        if members > lim.max_members:
            raise ArchiveError(f"more than {lim.max_members} members")
        if kind == "folder":
            size = 0
        total += size
        if total > lim.max_total_bytes:
            raise ArchiveError(
                f"unpacks to more than {lim.max_total_bytes} bytes (at member {short(name)})"
            )
        r.skip(size + (-size % BLOCK))
