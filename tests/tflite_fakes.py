"""Hand-edited TFLite flatbuffers for tests (LiteRT's generated schema object API, no TensorFlow).

`fake_compiled`: what edgetpu_compiler makes of a model (one edgetpu-custom-op between the same
input and output), for bundles with an edgetpu.tflite on a machine without the compiler.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as S

CUSTOM = 32  # BuiltinOperator.CUSTOM


def load(data: bytes):
    return S.ModelT.InitFromPackedBuf(bytearray(data), 0)


def save(model) -> bytes:
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _custom_code(name: str):
    oc = S.OperatorCodeT()
    oc.builtinCode = CUSTOM
    oc.deprecatedBuiltinCode = CUSTOM
    oc.customCode = name
    oc.version = 1
    return oc


def fake_compiled(cpu: bytes) -> bytes:
    """The model with all its ops replaced by one edgetpu-custom-op (same I/O tensors)."""
    m = load(cpu)
    m.operatorCodes = [_custom_code("edgetpu-custom-op")]
    sg = m.subgraphs[0]
    op = S.OperatorT()
    op.opcodeIndex = 0
    op.inputs = list(sg.inputs)
    op.outputs = list(sg.outputs)
    params = sum(
        len(m.buffers[t.buffer].data)
        for t in sg.tensors
        if t.buffer and m.buffers[t.buffer].data is not None
    )
    op.customOptions = list(compiled_package(params, 0))
    sg.operators = [op]
    return save(m)


def with_custom_op(data: bytes, index: int, name: str) -> bytes:
    """Op `index` turned into a custom op `name` (same tensors)."""
    m = load(data)
    m.operatorCodes.append(_custom_code(name))
    op = m.subgraphs[0].operators[index]
    op.opcodeIndex = len(m.operatorCodes) - 1
    op.builtinOptionsType = 0
    op.builtinOptions = None
    return save(m)


def with_extra_subgraph(data: bytes) -> bytes:
    """A second subgraph (what WHILE/IF bodies look like to the compiler)."""
    m = load(data)
    m.subgraphs.append(load(data).subgraphs[0])
    return save(m)


def with_big_params_and_input(data: bytes, param_bytes: int, side: int) -> bytes:
    """An extra constant tensor of `param_bytes` and the input enlarged to side x side px."""
    m = load(data)
    buf = S.BufferT()
    buf.data = np.zeros(param_bytes, np.uint8)
    m.buffers.append(buf)
    t = S.TensorT()
    t.shape = [param_bytes]
    t.type = 9  # INT8
    t.buffer = len(m.buffers) - 1
    t.name = "big_weights"
    sg = m.subgraphs[0]
    sg.tensors.append(t)
    sg.tensors[sg.inputs[0]].shape = [1, side, side, 3]
    return save(m)


# --- Edge TPU packages in libedgetpu's layout (executable/executable.fbs, custom_op_data.cc) ---


def _vector_bytes(b: flatbuffers.Builder, data: bytes) -> int:
    return b.CreateByteVector(data)


def executable(
    kind: int, parameters: bytes = b"", token: int = 0, name: str = "model", instructions=b""
) -> bytes:
    """An `Executable` flatbuffer. kind: 0 STAND_ALONE, 1 PARAMETER_CACHING, 2 EXECUTION_ONLY."""
    b = flatbuffers.Builder(1024 + len(parameters))
    name_off = b.CreateString(name)
    chip_off = b.CreateString("beagle")
    params_off = _vector_bytes(b, parameters)
    bits = _vector_bytes(b, instructions)
    b.StartObject(2)  # InstructionBitstream
    b.PrependUOffsetTRelativeSlot(0, bits, 0)
    ib = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(ib)
    ibs = b.EndVector()
    b.StartObject(17)
    b.PrependUOffsetTRelativeSlot(1, name_off, 0)
    b.PrependInt32Slot(3, 1, 0)  # batch_size
    b.PrependInt32Slot(4, 4096, 0)  # scratch_size_bytes
    b.PrependUOffsetTRelativeSlot(5, ibs, 0)
    b.PrependUOffsetTRelativeSlot(6, params_off, 0)
    b.PrependUOffsetTRelativeSlot(10, chip_off, 0)
    b.PrependInt16Slot(13, kind, 0)
    b.PrependUint64Slot(14, token, 0)
    b.PrependInt64Slot(16, 12345, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def package(executables: list[bytes], min_runtime: int = 14, compiler: str = "16.0.384591198"):
    """A `Package` flatbuffer (identifier DWN1) holding a MultiExecutable of `executables`."""
    m = flatbuffers.Builder(1024)
    offs = [m.CreateString(e) for e in executables]  # bytes: stored as they are
    m.StartVector(4, len(offs), 4)
    for o in reversed(offs):
        m.PrependUOffsetTRelative(o)
    vec = m.EndVector()
    m.StartObject(1)
    m.PrependUOffsetTRelativeSlot(0, vec, 0)
    m.Finish(m.EndObject())
    multi = bytes(m.Output())
    b = flatbuffers.Builder(1024 + len(multi))
    multi_off = _vector_bytes(b, multi)
    cv = b.CreateString(compiler)
    b.StartObject(8)
    b.PrependInt32Slot(0, min_runtime, 0)
    b.PrependUOffsetTRelativeSlot(1, multi_off, 0)
    b.PrependUOffsetTRelativeSlot(4, cv, 0)
    b.Finish(b.EndObject(), file_identifier=b"DWN1")
    return bytes(b.Output())


def custom_options(pkg: bytes, more: list[bytes] = ()) -> bytes:
    """The edgetpu-custom-op's custom options: a flexbuffer map as libedgetpu serializes it."""
    from flatbuffers import flexbuffers

    fb = flexbuffers.Builder()
    with fb.Map():
        fb.Int("1", 1)
        fb.Key("4")
        fb._WriteBlob(pkg, append_zero=True, type_=flexbuffers.Type.STRING)  # binary "string"
        fb.Int("5", 0)
        with fb.Vector("6"):
            for _ in range(1 + len(more)):
                fb.Int(0)
        with fb.Vector("7"):
            for p in more:
                fb._WriteBlob(p, append_zero=True, type_=flexbuffers.Type.STRING)
    return bytes(fb.Finish())


def compiled_package(on_chip: int, off_chip: int, token: int = 0x5EED, min_runtime: int = 14):
    """Custom options for a model with `on_chip` cached and `off_chip` streamed parameter bytes."""
    exes = []
    if on_chip:
        exes.append(executable(1, bytes(on_chip), token))
        exes.append(executable(2, bytes(off_chip), token, instructions=b"\x01" * 64))
    else:
        exes.append(executable(0, bytes(off_chip), 0, instructions=b"\x01" * 64))
    return custom_options(package(exes, min_runtime))


def compile_prefix(cpu: bytes, last: int, on_chip: int, off_chip: int, token: int = 0x5EED):
    """Ops 0..last replaced by one edgetpu-custom-op (as the compiler does); later ops kept."""
    m = load(cpu)
    sg = m.subgraphs[0]
    m.operatorCodes.append(_custom_code("edgetpu-custom-op"))
    op = S.OperatorT()
    op.opcodeIndex = len(m.operatorCodes) - 1
    op.inputs = list(sg.inputs)
    op.outputs = list(sg.operators[last].outputs)
    op.customOptions = list(compiled_package(on_chip, off_chip, token))
    sg.operators = [op, *sg.operators[last + 1 :]]
    return save(m)


def with_custom_options(compiled: bytes, options: bytes) -> bytes:
    """A compiled model whose edgetpu-custom-op carries other custom options (e.g. garbage)."""
    m = load(compiled)
    for op in m.subgraphs[0].operators:
        if m.operatorCodes[op.opcodeIndex].customCode in (
            b"edgetpu-custom-op",
            "edgetpu-custom-op",
        ):
            op.customOptions = list(options)
    return save(m)
