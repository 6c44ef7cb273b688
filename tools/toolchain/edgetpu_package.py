"""Read what edgetpu_compiler put into a compiled model (`*_edgetpu.tflite`), without TensorFlow.

A compiled model holds one `edgetpu-custom-op` per Edge TPU subgraph. Its custom options are a
flexbuffer map (libedgetpu `tflite/custom_op_data.cc`): "1" version, "4" the serialized package,
"5" execution preference, "6" chip per executable, "7" further packages. The package is a
flatbuffer of libedgetpu's `executable/executable.fbs` (root `Package`, identifier "DWN1"):
`min_runtime_version`, `compiler_version`, and a `MultiExecutable` whose strings are `Executable`
flatbuffers. An executable of type PARAMETER_CACHING holds the parameters cached in on-chip SRAM;
EXECUTION_ONLY and STAND_ALONE executables hold the parameters streamed from host memory on every
inference (off-chip). Executables with the same non-zero `parameter_caching_token` were
co-compiled and share the on-chip cache.

`read_package(custom_options)` -> `EdgeTpuPackage`; `read_compiled(model)` -> one per custom op.
Only the `flatbuffers` runtime (which includes flexbuffers) is needed, so this runs on a device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from flatbuffers import flexbuffers
from flatbuffers.table import Table

EXECUTABLE_TYPES = {0: "STAND_ALONE", 1: "PARAMETER_CACHING", 2: "EXECUTION_ONLY"}

# Field slots (declaration order in executable.fbs) -> vtable offsets 4 + 2 * slot.
_PKG = {"min_runtime_version": 0, "serialized_multi_executable": 1, "compiler_version": 4,
        "virtual_chip_id": 5, "model_identifier": 7}  # fmt: skip
_EXE = {"version": 0, "name": 1, "batch_size": 3, "scratch_size_bytes": 4,
        "instruction_bitstreams": 5, "parameters": 6, "input_layers": 8, "output_layers": 9,
        "chip": 10, "estimated_cycles": 11, "used_narrow_memory_bytes_per_tile": 12, "type": 13,
        "parameter_caching_token": 14, "estimated_cycles_64bit": 16}  # fmt: skip
_LAYER = {"name": 0, "size_bytes": 1, "y_dim": 2, "x_dim": 3, "z_dim": 4}


class PackageReadError(ValueError):
    """The custom op's options are not an Edge TPU package we can read (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Executable:
    """One compiled executable. parameter_bytes: parameters it carries (bytes)."""

    type: str
    name: str
    chip: str
    parameter_bytes: int
    instruction_bytes: int
    scratch_bytes: int
    caching_token: int
    estimated_cycles: int
    inputs: tuple[dict, ...] = ()
    outputs: tuple[dict, ...] = ()


@dataclass(frozen=True)
class EdgeTpuPackage:
    """One edgetpu-custom-op: the package the compiler wrote and its executables.

    on_chip_bytes: parameters cached in the Edge TPU's SRAM (PARAMETER_CACHING executables);
    off_chip_bytes: parameters streamed from host memory at every inference (the others).
    """

    op_index: int
    custom_op_version: int
    min_runtime_version: int
    compiler_version: str
    executables: tuple[Executable, ...] = field(default_factory=tuple)

    @property
    def on_chip_bytes(self) -> int:
        return sum(e.parameter_bytes for e in self.executables if e.type == "PARAMETER_CACHING")

    @property
    def off_chip_bytes(self) -> int:
        return sum(e.parameter_bytes for e in self.executables if e.type != "PARAMETER_CACHING")

    @property
    def caching_tokens(self) -> set[int]:
        return {e.caching_token for e in self.executables if e.caching_token}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(on_chip_bytes=self.on_chip_bytes, off_chip_bytes=self.off_chip_bytes)
        d["caching_tokens"] = sorted(self.caching_tokens)
        return d


def _table(buf: bytes, pos: int = 0) -> Table:
    root = int.from_bytes(buf[pos : pos + 4], "little")
    if pos + root + 4 > len(buf):
        raise PackageReadError("flatbuffer root points past the end")
    return Table(bytearray(buf), pos + root)


def _field(t: Table, slot: int) -> int:
    return t.Offset(4 + 2 * slot)


def _int(t: Table, slot: int, fmt: str = "<i", default: int = 0) -> int:
    import struct

    o = _field(t, slot)
    if not o:
        return default
    return struct.unpack_from(fmt, t.Bytes, t.Pos + o)[0]


def _bytes(t: Table, slot: int) -> bytes:
    o = _field(t, slot)
    if not o:
        return b""
    start = t.Vector(o)
    n = t.VectorLen(o)
    if start + n > len(t.Bytes):
        raise PackageReadError("vector runs past the end")
    return bytes(t.Bytes[start : start + n])


def _str(t: Table, slot: int) -> str:
    o = _field(t, slot)
    return t.String(t.Pos + o).decode("utf-8", "replace") if o else ""


def _vector_items(t: Table, slot: int) -> list[int]:
    """Positions of what a vector of offsets (tables or strings) at `slot` points to."""
    o = _field(t, slot)
    if not o:
        return []
    start = t.Vector(o)
    return [t.Indirect(start + 4 * i) for i in range(t.VectorLen(o))]


def _tables(t: Table, slot: int) -> list[Table]:
    return [Table(t.Bytes, p) for p in _vector_items(t, slot)]


def _byte_vectors(t: Table, slot: int) -> list[bytes]:
    """A [string] vector whose strings hold binary data (length-prefixed, not NUL-safe)."""
    out = []
    for p in _vector_items(t, slot):
        length = int.from_bytes(t.Bytes[p : p + 4], "little")
        out.append(bytes(t.Bytes[p + 4 : p + 4 + length]))
    return out


def _layers(t: Table, slot: int) -> tuple[dict, ...]:
    return tuple(
        {
            "name": _str(lt, _LAYER["name"]),
            "bytes": _int(lt, _LAYER["size_bytes"]),
            "shape_yxz": [_int(lt, _LAYER[k], default=1) for k in ("y_dim", "x_dim", "z_dim")],
        }
        for lt in _tables(t, slot)
    )


def read_executable(buf: bytes) -> Executable:
    """One `Executable` flatbuffer -> its type, parameter and instruction sizes."""
    t = _table(buf)
    bitstreams = _tables(t, _EXE["instruction_bitstreams"])
    cycles = _int(t, _EXE["estimated_cycles_64bit"], "<q") or _int(t, _EXE["estimated_cycles"])
    return Executable(
        type=EXECUTABLE_TYPES.get(_int(t, _EXE["type"], "<h"), "UNKNOWN"),
        name=_str(t, _EXE["name"]),
        chip=_str(t, _EXE["chip"]),
        parameter_bytes=len(_bytes(t, _EXE["parameters"])),
        instruction_bytes=sum(len(_bytes(b, 0)) for b in bitstreams),
        scratch_bytes=_int(t, _EXE["scratch_size_bytes"]),
        caching_token=_int(t, _EXE["parameter_caching_token"], "<Q"),
        estimated_cycles=int(cycles),
        inputs=_layers(t, _EXE["input_layers"]),
        outputs=_layers(t, _EXE["output_layers"]),
    )


def _read_package_flatbuffer(buf: bytes) -> tuple[int, str, list[Executable]]:
    if len(buf) < 8 or buf[4:8] != b"DWN1":
        raise PackageReadError("the executable is not a DarwiNN package (no 'DWN1' identifier)")
    pkg = _table(buf)
    multi = _bytes(pkg, _PKG["serialized_multi_executable"])
    exes = []
    if multi:
        mt = _table(multi)
        exes = [read_executable(b) for b in _byte_vectors(mt, 0)]
    return _int(pkg, _PKG["min_runtime_version"]), _str(pkg, _PKG["compiler_version"]), exes


def read_package(custom_options: bytes, op_index: int = 0) -> EdgeTpuPackage:
    """The custom options of one edgetpu-custom-op -> an `EdgeTpuPackage`.

    Raises PackageReadError naming what is wrong (not a flexbuffer map, no package, corrupt).
    """
    import struct

    if not custom_options:
        raise PackageReadError(f"op {op_index}: edgetpu-custom-op without custom options")
    try:
        root = flexbuffers.GetRoot(bytearray(custom_options))
        if not root.IsMap:
            raise PackageReadError(f"op {op_index}: custom options are not a flexbuffer map")
        m = root.AsMap
        exe = _get(m, "4")
        if exe is None:
            raise PackageReadError(f"op {op_index}: custom options hold no executable (key '4')")
        ver = _get(m, "1")
        version = ver.AsInt if ver is not None else 0
        blobs = [_blob(exe)]
        more = _get(m, "7")
        if more is not None and more.IsVector:
            blobs += [_blob(r) for r in more.AsVector]
        min_rt, compiler, exes = 0, "", []
        for blob in blobs:
            rt, cv, ex = _read_package_flatbuffer(blob)
            min_rt, compiler = max(min_rt, rt), compiler or cv
            exes += ex
    except PackageReadError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, KeyError) as exc:
        raise PackageReadError(
            f"op {op_index}: corrupt Edge TPU package in the custom options ({exc})"
        ) from None
    return EdgeTpuPackage(op_index, int(version), int(min_rt), compiler, tuple(exes))


def _get(m, key: str):
    """Value of `key` in a flexbuffer map, or None."""
    try:
        return m[key]
    except KeyError:
        return None


def _blob(ref) -> bytes:
    if ref.IsString:
        return bytes(ref.AsStringBytes)
    if ref.IsBlob:
        return bytes(ref.AsBlob)
    raise PackageReadError("executable entry is neither a string nor a blob")


def read_compiled(model) -> list[EdgeTpuPackage]:
    """Every edgetpu-custom-op of a parsed `TFLiteModel` (tflite_reader), in op order."""
    from lucida.tools.toolchain.edgetpu_ops import EDGETPU_CUSTOM_OP

    return [
        read_package(op.custom_options, op.index)
        for op in model.ops
        if op.custom and op.opcode == EDGETPU_CUSTOM_OP
    ]


def summarize(packages: list[EdgeTpuPackage]) -> dict:
    """Totals over a compiled model's packages: what `check`, `compile` and `bundle` report."""
    tokens = set().union(*(p.caching_tokens for p in packages)) if packages else set()
    return {
        "edgetpu_subgraphs": len(packages),
        "min_runtime_version": max((p.min_runtime_version for p in packages), default=None),
        "compiler_version": next((p.compiler_version for p in packages if p.compiler_version), ""),
        "on_chip_bytes": sum(p.on_chip_bytes for p in packages),
        "off_chip_bytes": sum(p.off_chip_bytes for p in packages),
        "caching_tokens": sorted(tokens),
        "executables": sum(len(p.executables) for p in packages),
    }


def co_compiled(a: list[EdgeTpuPackage], b: list[EdgeTpuPackage]) -> bool:
    """True when two compiled models share a parameter-caching token (compiled together)."""
    ta = set().union(*(p.caching_tokens for p in a)) if a else set()
    tb = set().union(*(p.caching_tokens for p in b)) if b else set()
    return bool(ta & tb)
