"""Kernel kinds and shape features of TFLite ops, from the flatbuffer alone (no TensorFlow).

In an int8 TFLite graph every op is already a fused kernel (batch norm folded, ReLU/ReLU6 fused
into the conv), so a kernel = one op. `op_kind(op)` names its kind ("conv1x1", "convKxK",
"dwconv", "fc", "add", "concat", ...); `op_shape(op)` gives the numbers its cost depends on:
output height/width (px), input/output channels, kernel size, stride, MACs, MACs padded to the
int8 GEMM tiles of XNNPACK (input channels to 8, output channels to 16), activation bytes in and
out, parameter bytes and the number of inputs.
"""

from __future__ import annotations

# opcode -> kind for ops whose kind does not depend on their shapes
_KIND = {
    "DEPTHWISE_CONV_2D": "dwconv",
    "FULLY_CONNECTED": "fc",
    "TRANSPOSE_CONV": "tconv",
    "AVERAGE_POOL_2D": "avgpool",
    "MAX_POOL_2D": "maxpool",
    "CONCATENATION": "concat",
    "RESIZE_BILINEAR": "resize_bilinear",
    "RESIZE_NEAREST_NEIGHBOR": "resize_nearest",
    "RESHAPE": "reshape",
    "SQUEEZE": "reshape",
    "EXPAND_DIMS": "reshape",
    "SOFTMAX": "softmax",
    "ARG_MAX": "argmax",
    "QUANTIZE": "quantize",
    "DEQUANTIZE": "dequantize",
    "MEAN": "mean",
    "PAD": "pad",
    "PADV2": "pad",
    "HARD_SWISH": "hardswish",
    "LOGISTIC": "logistic",
    "RELU": "relu",
    "RELU6": "relu",
    "TRANSPOSE": "transpose",
}


def _ceil(x: int, m: int) -> int:
    return -(-int(x) // m) * m


def _hwc(shape: tuple) -> tuple[int, int, int]:
    """(H, W, C) of an NHWC shape; 1-D/2-D shapes as (1, 1, C)."""
    s = tuple(int(d) for d in shape)
    if len(s) == 4:
        return s[1], s[2], s[3]
    if len(s) == 3:
        return 1, s[1], s[2]
    return 1, 1, s[-1] if s else 1


def op_kind(op) -> str:
    """The kernel kind of one op (see module docstring); 'other:<OPCODE>' for the rest."""
    name = op.opcode
    if name == "CONV_2D":
        w = op.inputs[1].shape if len(op.inputs) > 1 else ()
        return "conv1x1" if len(w) == 4 and tuple(w[1:3]) == (1, 1) else "convKxK"
    if name in ("ADD", "MUL", "SUB"):
        acts = [t for t in op.inputs if not t.constant]
        if len(acts) < 2:
            return name.lower() + "_c"
        a, b = acts[0].elements, acts[1].elements
        return name.lower() + ("_bcast" if a != b else "")
    return _KIND.get(name, f"other:{name}")


def op_shape(op) -> dict:
    """The shape features of one op (module docstring); all ints."""
    acts = [t for t in op.inputs if not t.constant]
    x = acts[0] if acts else (op.inputs[0] if op.inputs else None)
    y = op.outputs[0] if op.outputs else None
    if op.opcode == "TRANSPOSE_CONV" and len(op.inputs) > 2:
        x = op.inputs[2]
    hi, wi, ci = _hwc(x.shape) if x is not None else (1, 1, 1)
    ho, wo, co = _hwc(y.shape) if y is not None else (1, 1, 1)
    k = 1
    w = op.inputs[1].shape if len(op.inputs) > 1 else ()
    macs = int(op.macs)
    pad = macs
    if op.opcode == "CONV_2D" and len(w) == 4:
        k = int(w[1])
        pad = ho * wo * w[1] * w[2] * _ceil(w[3], 8) * _ceil(w[0], 16)
    elif op.opcode == "DEPTHWISE_CONV_2D" and len(w) == 4:
        k = int(w[1])
        pad = ho * wo * w[1] * w[2] * _ceil(w[3], 16)
    elif op.opcode == "FULLY_CONNECTED" and len(w) == 2:
        pad = _ceil(w[0], 16) * _ceil(w[1], 8) * max(1, y.elements // max(w[0], 1) if y else 1)
    elif op.opcode == "TRANSPOSE_CONV" and len(w) == 4:
        k = int(w[1])
    elif "filter" in op.options:
        k = int(op.options["filter"][0])
    stride = max(1, round(hi / ho)) if ho and op.opcode != "TRANSPOSE_CONV" else 1
    return {
        "hout": ho,
        "wout": wo,
        "hin": hi,
        "win": wi,
        "cin": ci,
        "cout": co,
        "k": k,
        "stride": stride,
        "macs": macs,
        "macs_pad": int(pad),
        "in_bytes": int(sum(t.bytes for t in acts)),
        "out_bytes": int(op.activation_bytes),
        "param_bytes": int(op.param_bytes),
        "inputs": len(acts),
        "elements": int(op.elements),
    }


def model_kernels(source) -> list[tuple[str, dict]]:
    """(kind, shape features) of every op of a .tflite file or its bytes, in execution order."""
    from lucida.tools.toolchain.tflite_reader import read_tflite

    return [(op_kind(op), op_shape(op)) for op in read_tflite(source).ops]
