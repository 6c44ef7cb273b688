"""Read a .tflite flatbuffer without TensorFlow: ops, tensors, MACs and byte counts.

Uses the `tflite` package (generated bindings of TensorFlow Lite's schema.fbs on the `flatbuffers`
runtime), so it runs on a device as well as on the host. `read_tflite(path_or_bytes)` returns a
`TFLiteModel` with one `OpInfo` per operator of the main subgraph, in execution order. Anything
that is not a readable TFLite flatbuffer (empty, truncated, another format) raises
`TFLiteReadError` with one line naming the file and what is wrong.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

TFLITE_IDENTIFIER = b"TFL3"

# tflite.TensorType enum value -> (numpy-style dtype name, bytes per element)
_DTYPES = {
    0: ("float32", 4),
    1: ("float16", 2),
    2: ("int32", 4),
    3: ("uint8", 1),
    4: ("int64", 8),
    5: ("string", 1),
    6: ("bool", 1),
    7: ("int16", 2),
    8: ("complex64", 8),
    9: ("int8", 1),
    10: ("float64", 8),
    11: ("complex128", 16),
    12: ("uint64", 8),
    13: ("resource", 0),
    14: ("variant", 0),
    15: ("uint32", 4),
    16: ("uint16", 2),
    17: ("int4", 0.5),
    18: ("bfloat16", 2),
}


class TFLiteReadError(ValueError):
    """The file is not a readable TFLite model (exit code 2 on the CLI)."""

    exit_code = 2


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: dtype, shape (static, 1 where the signature is dynamic), size in bytes.

    shape_signature: the shape with -1 for dynamic dimensions (equal to shape when all static).
    constant: the tensor has data in the file (weights, biases, shape/axis operands).
    scales: number of quantization scales (0: not quantized, 1: per-tensor, >1: per-channel).
    """

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    bytes: int
    constant: bool
    scales: int = 0
    scale: float | None = None
    zero_point: int | None = None
    values: tuple[int, ...] | None = None  # small int32/int64 constants (axes, strides, shapes)
    all_zero: bool | None = None  # constants only: every byte is 0
    variable: bool = False  # a state tensor (e.g. an LSTM's cell state)

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape_signature)

    @property
    def elements(self) -> int:
        return math.prod(max(d, 1) for d in self.shape) if self.shape else 1


@dataclass(frozen=True)
class OpInfo:
    """One operator of the main subgraph.

    opcode: builtin name (e.g. CONV_2D) or, for custom ops, the custom code (e.g. edgetpu-custom-op).
    macs: multiply-accumulates of conv / depthwise / fully-connected / transpose-conv / matmul ops
      (0 for the others); elements: output elements (a work measure for element-wise ops).
    param_bytes: bytes of the op's constant inputs; activation_bytes: bytes of its outputs.
    """

    index: int
    opcode: str
    version: int
    custom: bool
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    macs: int = 0
    elements: int = 0
    options: dict = field(default_factory=dict)
    custom_options: bytes = field(default=b"", repr=False)

    @property
    def param_bytes(self) -> int:
        return sum(t.bytes for t in self.inputs if t.constant)

    @property
    def activation_bytes(self) -> int:
        return sum(t.bytes for t in self.outputs)


@dataclass(frozen=True)
class TFLiteModel:
    """A parsed model: main-subgraph ops and tensors, inputs/outputs, totals."""

    path: str
    file_bytes: int
    schema_version: int
    description: str
    subgraphs: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    tensors: tuple[TensorInfo, ...]
    ops: tuple[OpInfo, ...]
    param_bytes: int
    activation_bytes: int

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    def opcodes(self) -> list[str]:
        """Distinct op names in order of first use."""
        return list(dict.fromkeys(op.opcode for op in self.ops))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["macs"] = self.macs
        for op, od in zip(self.ops, d["ops"]):
            od["custom_options"] = len(op.custom_options)  # bytes (the payload is binary)
            od["param_bytes"] = op.param_bytes
            od["activation_bytes"] = op.activation_bytes
        return d


def _opcode_name(code: int) -> str:
    from tflite.utils import BUILTIN_OPCODE2NAME

    return BUILTIN_OPCODE2NAME.get(code, f"BUILTIN_{code}")


def _tensor_bytes(shape: tuple[int, ...], dtype_size: float) -> int:
    n = math.prod(max(d, 1) for d in shape) if shape else 1
    return int(math.ceil(n * dtype_size))


def _read_tensor(t, index: int, buffer_sizes: list[int], buffers=None) -> TensorInfo:
    dtype, size = _DTYPES.get(t.Type(), (f"type{t.Type()}", 0))
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    sig = tuple(int(d) for d in t.ShapeSignatureAsNumpy()) if t.ShapeSignatureLength() else shape
    buf = t.Buffer()
    constant = 0 < buf < len(buffer_sizes) and buffer_sizes[buf] > 0
    nbytes = buffer_sizes[buf] if constant else _tensor_bytes(shape, size)
    q = t.Quantization()
    scales, scale, zp = 0, None, None
    if q is not None and q.ScaleLength():
        scales = q.ScaleLength()
        scale = float(q.Scale(0))
        zp = int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0
    name = t.Name()
    values, all_zero = None, None
    if constant and buffers is not None and buffers[buf] is not None:
        raw = buffers[buf]
        all_zero = not any(raw)
        if dtype in ("int32", "int64") and nbytes <= 64:
            import numpy as np

            values = tuple(int(v) for v in np.frombuffer(raw, "<i4" if dtype == "int32" else "<i8"))
    return TensorInfo(
        index=index,
        name=name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or ""),
        dtype=dtype,
        shape=shape,
        shape_signature=sig,
        bytes=nbytes,
        constant=constant,
        scales=scales,
        scale=scale,
        zero_point=zp,
        values=values,
        all_zero=all_zero,
        variable=bool(t.IsVariable()),
    )


# builtin op -> (options class in the tflite package, fields read into OpInfo.options)
_OPTIONS = {
    "CONV_2D": ("Conv2DOptions", ("StrideH", "StrideW", "DilationHFactor", "DilationWFactor",
                                  "FusedActivationFunction")),
    "DEPTHWISE_CONV_2D": ("DepthwiseConv2DOptions", ("StrideH", "StrideW", "DilationHFactor",
                                                     "DilationWFactor", "DepthMultiplier",
                                                     "FusedActivationFunction")),
    "AVERAGE_POOL_2D": ("Pool2DOptions", ("FilterHeight", "FilterWidth", "StrideH", "StrideW",
                                          "FusedActivationFunction")),
    "MAX_POOL_2D": ("Pool2DOptions", ("FilterHeight", "FilterWidth", "StrideH", "StrideW",
                                      "FusedActivationFunction")),
    "L2_POOL_2D": ("Pool2DOptions", ("FilterHeight", "FilterWidth", "StrideH", "StrideW",
                                     "FusedActivationFunction")),
    "CONCATENATION": ("ConcatenationOptions", ("Axis", "FusedActivationFunction")),
    "STRIDED_SLICE": ("StridedSliceOptions", ("BeginMask", "EndMask", "EllipsisMask",
                                              "NewAxisMask", "ShrinkAxisMask")),
    "FULLY_CONNECTED": ("FullyConnectedOptions", ("WeightsFormat", "KeepNumDims",
                                                  "FusedActivationFunction")),
    "TRANSPOSE_CONV": ("TransposeConvOptions", ("StrideH", "StrideW")),
    "RESIZE_BILINEAR": ("ResizeBilinearOptions", ("AlignCorners", "HalfPixelCenters")),
    "RESIZE_NEAREST_NEIGHBOR": ("ResizeNearestNeighborOptions", ("AlignCorners",
                                                                 "HalfPixelCenters")),
}  # fmt: skip


def _options(name: str, op) -> dict:
    """The builtin options the Edge TPU rules and cost model read, as {snake_case: value}."""
    import re

    import tflite

    spec = _OPTIONS.get(name)
    table = op.BuiltinOptions() if spec else None
    if table is None:
        return {}
    opt = getattr(tflite, spec[0])()
    opt.Init(table.Bytes, table.Pos)
    out = {re.sub(r"(?<!^)(?=[A-Z])", "_", f).lower(): int(getattr(opt, f)()) for f in spec[1]}
    if "filter_height" in out:  # kept for the cost model (pool window, px)
        out["filter"] = (out["filter_height"], out["filter_width"])
        out["stride"] = (out["stride_h"], out["stride_w"])
    return out


def _work(name: str, ins: tuple[TensorInfo, ...], outs: tuple[TensorInfo, ...], options: dict):
    """(MACs, output elements) of one op from its tensor shapes."""
    out_elems = sum(t.elements for t in outs)
    w = ins[1].shape if len(ins) > 1 else ()
    macs = 0
    if name == "CONV_2D" and len(w) == 4:  # weights [Co, Kh, Kw, Ci]
        macs = outs[0].elements * w[1] * w[2] * w[3]
    elif name == "DEPTHWISE_CONV_2D" and len(w) == 4:  # weights [1, Kh, Kw, Co]
        macs = outs[0].elements * w[1] * w[2]
    elif name == "FULLY_CONNECTED" and len(w) == 2:  # weights [units, K]
        macs = outs[0].elements * w[1]
    elif name == "CONV_3D" and len(w) == 5:  # weights [Kd, Kh, Kw, Ci, Co]
        macs = outs[0].elements * w[0] * w[1] * w[2] * w[3]
    elif name == "TRANSPOSE_CONV" and len(ins) > 2 and len(w) == 4:  # (shape, [Co,Kh,Kw,Ci], x)
        macs = ins[2].elements * w[0] * w[1] * w[2]
    elif name == "BATCH_MATMUL" and ins and ins[0].shape:
        macs = outs[0].elements * ins[0].shape[-1]
    elif name in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D") and "filter" in options:
        out_elems *= options["filter"][0] * options["filter"][1]
    return int(macs), int(out_elems)


def read_tflite(source: str | os.PathLike | bytes) -> TFLiteModel:
    """Parse a TFLite flatbuffer (a path or the file's bytes) into a `TFLiteModel`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), "<bytes>"
    else:
        where = str(source)
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise TFLiteReadError(f"{where}: no such file") from None
        except IsADirectoryError:
            raise TFLiteReadError(f"{where}: is a folder, not a .tflite file") from None
        except OSError as exc:
            raise TFLiteReadError(f"{where}: cannot read ({exc.strerror})") from None
    if not data:
        raise TFLiteReadError(f"{where}: empty file (zero bytes), not a TFLite model")
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise TFLiteReadError(f"{where}: not a TFLite model (no 'TFL3' flatbuffer identifier)")
    try:
        return _parse(data, where)
    except TFLiteReadError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise TFLiteReadError(
            f"{where}: truncated or corrupt TFLite file ({len(data)} bytes): "
            "its tables point past the end of the file"
        ) from None


def _parse(data: bytes, where: str) -> TFLiteModel:
    import tflite

    model = tflite.Model.GetRootAs(data, 0)
    n = len(data)
    buffer_sizes, small = [], []
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        if b.Offset() > 1:  # data stored after the flatbuffer (models > 2 GiB)
            if b.Offset() + b.Size() > n:
                raise TFLiteReadError(f"{where}: truncated: buffer {i} ends past the end of file")
            buffer_sizes.append(int(b.Size()))
            start = b.Offset()
            small.append(data[start : start + b.Size()] if b.Size() <= 1 << 20 else None)
        elif b.DataLength():
            arr = b.DataAsNumpy()  # zero-copy view; raises when the vector runs past the end
            if arr.nbytes != b.DataLength():
                raise ValueError("short buffer")
            buffer_sizes.append(int(b.DataLength()))
            small.append(arr.tobytes() if arr.nbytes <= 1 << 20 else None)
        else:
            buffer_sizes.append(0)
            small.append(None)
    if model.SubgraphsLength() < 1:
        raise TFLiteReadError(f"{where}: TFLite model without a subgraph")
    sg = model.Subgraphs(0)
    tensors = tuple(
        _read_tensor(sg.Tensors(i), i, buffer_sizes, small) for i in range(sg.TensorsLength())
    )
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = oc.BuiltinCode()
        custom = code == 32  # BuiltinOperator.CUSTOM
        name = (oc.CustomCode() or b"custom").decode("utf-8", "replace") if custom else None
        codes.append((name or _opcode_name(code), max(int(oc.Version()), 1), custom))
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        opname, version, custom = codes[op.OpcodeIndex()]
        ins = tuple(tensors[j] for j in op.InputsAsNumpy() if j >= 0) if op.InputsLength() else ()
        outs = (
            tuple(tensors[j] for j in op.OutputsAsNumpy() if j >= 0) if op.OutputsLength() else ()
        )
        options = {} if custom else _options(opname, op)
        macs, elems = _work(opname, ins, outs, options)
        copts = bytes(op.CustomOptionsAsNumpy().tobytes()) if op.CustomOptionsLength() else b""
        ops.append(OpInfo(i, opname, version, custom, ins, outs, macs, elems, options, copts))
    ins = tuple(tensors[j] for j in sg.InputsAsNumpy()) if sg.InputsLength() else ()
    outs = tuple(tensors[j] for j in sg.OutputsAsNumpy()) if sg.OutputsLength() else ()
    const_buffers = {sg.Tensors(t.index).Buffer() for t in tensors if t.constant}
    # a compiled model keeps the original graph's tensors that no op uses any more: not counted
    used = {t.index for t in ins + outs} | {t.index for op in ops for t in op.inputs + op.outputs}
    desc = model.Description()
    return TFLiteModel(
        path=where,
        file_bytes=n,
        schema_version=int(model.Version()),
        description=desc.decode("utf-8", "replace") if desc else "",
        subgraphs=int(model.SubgraphsLength()),
        inputs=ins,
        outputs=outs,
        tensors=tensors,
        ops=tuple(ops),
        param_bytes=sum(buffer_sizes[b] for b in const_buffers),
        activation_bytes=sum(t.bytes for t in tensors if not t.constant and t.index in used),
    )
