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
    op.customOptions = list(b"fake compiled executable")
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
