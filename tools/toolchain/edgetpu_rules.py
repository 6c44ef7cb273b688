"""Which ops of a TFLite model edgetpu_compiler (version 16, runtime 14) puts on the Edge TPU.

Three steps, each from Coral's documentation and public compiler logs
(tests/data/edgetpu_evidence.yaml keeps every row with its source):
1. `op_rule`: can the Edge TPU run this op at all? Op type and runtime version, 8-bit tensors,
   at most 3 non-trivial dimensions, the per-op conditions of Coral's table. "uncertain" where
   the evidence has the compiler both mapping and refusing ops like it (size limits).
2. `partition`: the compiler makes one Edge TPU subgraph. CPU ops that only depend on the model
   inputs may run before it (their consumers are still mapped); an op that depends on a CPU op
   which itself depends on the Edge TPU part stays on the CPU ("More than one subgraph is not
   supported"), and so does everything downstream of it.
3. `parameter_layout`: parameter bytes as the compiler lays them out, and how many fit the
   on-chip cache (the rest streams from host memory on every inference).

`op_verdicts(model, runtime_version)` is the plain per-op answer: a list of `OpVerdict`
(index, op, runs_on "edgetpu"/"cpu", reason, uncertain). Uncertain ops count as mapped, so the
number of mapped ops is an upper bound of what the compiler maps.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from lucida.tools.toolchain import edgetpu_ops as E
from lucida.tools.toolchain.tflite_reader import OpInfo, TensorInfo, TFLiteModel

EIGHT_BIT = ("int8", "uint8")
CONST_OK = ("int32", "int64")  # biases, shapes, axes, paddings
EDGETPU, CPU, UNCERTAIN = "edgetpu", "cpu", "uncertain"


@dataclass(frozen=True)
class OpVerdict:
    """Where one op runs. kind: short key of the reason (scripts, tests); uncertain: the
    evidence has the compiler both mapping and refusing ops like this one (counted as mapped);
    low_confidence: for a mapped op, the public log where the compiler left such an op on the
    CPU without a cause (empty when there is none)."""

    index: int
    op: str
    runs_on: str
    reason: str
    kind: str = "mapped"
    uncertain: bool = False
    low_confidence: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _t(t: TensorInfo) -> str:
    return f"{t.dtype}[{','.join(str(d) for d in t.shape_signature)}]"


def _nontrivial(shape) -> int:
    return sum(1 for d in shape if d > 1)


def _act(op: OpInfo) -> TensorInfo | None:
    """The first non-constant input (the activation)."""
    return next((t for t in op.inputs if not t.constant), None)


def _consts(op: OpInfo) -> list[TensorInfo]:
    return [t for t in op.inputs if t.constant]


def _axes(op: OpInfo, rank: int) -> tuple[int, ...] | None:
    """Constant axis operand of a reduction/split/pad op, normalised to >= 0; None if unknown."""
    for t in _consts(op):
        if t.values is not None and t.dtype in CONST_OK:
            if op.opcode == "PAD" or op.opcode == "MIRROR_PAD":  # paddings [rank, 2]
                pads = t.values
                return tuple(i for i in range(len(pads) // 2) if pads[2 * i] or pads[2 * i + 1])
            return tuple(a % rank if rank else a for a in t.values)
    return None


def _dtype_problem(op: OpInfo) -> str | None:
    """Why the tensors of this op are not what the Edge TPU takes; None when they are."""
    lstm = op.opcode == "UNIDIRECTIONAL_SEQUENCE_LSTM"
    for t in (*op.inputs, *op.outputs):
        if t.dtype in EIGHT_BIT or (t.constant and t.dtype in CONST_OK):
            continue
        if lstm and (t.variable or t.dtype in ("int16", "int32")):
            continue  # quantized LSTM keeps its cell state in int16 and its biases in int32
        what = "constant" if t.constant else "tensor"
        return f"{what} '{t.name}' is {_t(t)}; the Edge TPU needs int8/uint8"
    return None


def _rank_problem(op: OpInfo) -> str | None:
    for t in (*op.inputs, *op.outputs):
        if t.constant or op.opcode == "UNIDIRECTIONAL_SEQUENCE_LSTM":
            continue
        if len(t.shape) > 3 and _nontrivial(t.shape[:-3]):
            return f"tensor '{t.name}' {_t(t)} with {_nontrivial(t.shape)} dimensions > 1"
    return None


def _condition(op: OpInfo, runtime: int) -> tuple[str, str, str] | None:
    """(verdict, kind, why) from the per-op conditions of Coral's table and the logs."""
    name, o = op.opcode, op.options
    a = _act(op)
    if runtime < 14 and op.version > E.MAX_VERSION_BEFORE_14.get(name, op.version):
        return UNCERTAIN, "version", f"version {op.version}: compilers before 16 refused it"
    out = op.outputs[0] if op.outputs else None
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION") and o.get(
        "fused_activation_function"
    ):
        return CPU, "condition", "has a fused activation function (not mapped)"
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D") and o.get("dilation_h_factor", 1) != o.get(
        "dilation_w_factor", 1
    ):
        return CPU, "condition", "dilation differs in x and y"
    if name == "CONCATENATION":
        consts = _consts(op)
        if consts and (len(op.inputs) > 2 or not all(t.all_zero for t in consts)):
            return CPU, "condition", "a constant input must be all zeros, with only 2 inputs"
    if name == "FULLY_CONNECTED":
        if o.get("weights_format", 0):
            return CPU, "condition", "weights not in the default format"
        if out is not None and _nontrivial(out.shape) > 1:
            return CPU, "condition", f"output {_t(out)} is not one-dimensional"
    if name == "SOFTMAX" and a is not None:
        if _nontrivial(a.shape) > 1:
            return CPU, "condition", f"input {_t(a)} is not one-dimensional"
        if a.elements > E.SOFTMAX_MAX_ELEMENTS:
            return CPU, "condition", f"input has {a.elements} elements (max 16,000)"
    if name == "STRIDED_SLICE":
        strides = op.inputs[3].values if len(op.inputs) > 3 else None
        if strides is not None and any(s != 1 for s in strides):
            return CPU, "condition", f"strides {list(strides)} (only 1 is mapped)"
        if o.get("ellipsis_mask") or o.get("new_axis_mask"):
            return CPU, "condition", "ellipsis or new-axis mask set"
    if name == "PRELU" and len(op.inputs) > 1 and _nontrivial(op.inputs[1].shape) > 1:
        return CPU, "condition", "alpha is not one-dimensional"
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "PAD", "PACK", "SPLIT", "TRANSPOSE"):
        rank = len(a.shape) if a is not None else 0
        axes = _axes(op, rank)
        if name == "PACK":
            axes = (op.options.get("axis", 1),) if "axis" in op.options else None
        if name == "TRANSPOSE" and axes is not None:
            axes = (0,) if axes and axes[0] != 0 else ()
        if axes is not None and rank > 3 and 0 in axes:
            return CPU, "condition", "operates on the batch dimension"
        if name == "MEAN" and a is not None and axes is not None and rank >= 3:
            if rank - 1 in axes and a.shape[-1] % 4:
                return CPU, "condition", f"z-reduction of depth {a.shape[-1]} (needs x4)"
            hw = math.prod(a.shape[1:3]) if rank == 4 else math.prod(a.shape[:2])
            if hw > E.MEAN_UNCERTAIN_PX:
                return UNCERTAIN, "size", f"reduces {_t(a)}: large means stayed on the CPU"
    if name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR") and out is not None:
        hw = math.prod(out.shape[1:3]) if len(out.shape) == 4 else out.elements
        if hw > E.RESIZE_UNCERTAIN_PX:
            return UNCERTAIN, "size", f"output {_t(out)}: large resizes may stay on the CPU"
    if name == "RESHAPE" and a is not None and a.elements > E.RESHAPE_UNCERTAIN_ELEMENTS:
        return UNCERTAIN, "size", f"reshape of {_t(a)}: large reshapes may stay on the CPU"
    if name == "TRANSPOSE_CONV":
        w = next((t for t in _consts(op) if t.dtype in EIGHT_BIT), None)
        if w is not None and w.bytes > E.TRANSPOSE_CONV_UNCERTAIN_BYTES:
            return UNCERTAIN, "size", f"kernel of {w.bytes} bytes: large ones stayed on the CPU"
    if name == "UNIDIRECTIONAL_SEQUENCE_LSTM" and a is not None and a.shape:
        if a.shape[-1] > E.LSTM_UNCERTAIN_FEATURES:
            return (
                UNCERTAIN,
                "size",
                f"{a.shape[-1]} input features: the compiler failed above ~900",
            )
    return None


def op_rule(op: OpInfo, runtime: int = E.DEFAULT_RUNTIME_VERSION) -> tuple[str, str, str]:
    """(verdict, kind, why) for one op on its own: "edgetpu", "cpu" or "uncertain".

    why reads after the op's name ("op 3 LEAKY_RELU is not supported by the Edge TPU").
    """
    if op.custom:
        if op.opcode == E.EDGETPU_CUSTOM_OP:
            return EDGETPU, "compiled", "is already compiled for the Edge TPU"
        return CPU, "custom_op", "is a custom op, not an Edge TPU op"
    dtype = _dtype_problem(op)
    if op.opcode not in E.SUPPORTED_OPS:
        tail = f" and is a float op: {dtype}" if dtype and "float" in dtype else ""
        return CPU, "unsupported_op", "is not supported by the Edge TPU" + tail
    need = E.SUPPORTED_OPS[op.opcode][0]
    if need > runtime:
        return CPU, "runtime_version", f"needs Edge TPU runtime >= {need} (targeting {runtime})"
    if dtype:
        if "float" in dtype:
            return CPU, "float_op", f"is a float op: {dtype}"
        return CPU, "dtype", f"is not 8-bit: {dtype}"
    rank = _rank_problem(op)
    if rank:
        return CPU, "rank", f"has {rank}; the Edge TPU maps at most 3 (the innermost)"
    cond = _condition(op, runtime)
    if cond:
        return cond
    return EDGETPU, "mapped", "maps to the Edge TPU"


def _producers(model: TFLiteModel) -> dict[int, int]:
    return {t.index: op.index for op in model.ops for t in op.outputs}


def partition(model: TFLiteModel, runtime: int = E.DEFAULT_RUNTIME_VERSION) -> list[OpVerdict]:
    """Per-op verdicts with the compiler's single-subgraph partitioning applied.

    A CPU op downstream of Edge TPU work blocks everything that depends on it. Input QUANTIZE
    ops alone do not count as Edge TPU work: whether the compiler keeps them on the Edge TPU
    or moves them to the CPU in front of a leading CPU op, the logs do not say, so they are
    marked uncertain and what follows the leading CPU op stays mappable (an upper bound).
    """
    prod = _producers(model)
    compiled = any(op.custom and op.opcode == E.EDGETPU_CUSTOM_OP for op in model.ops)
    rows: list[list] = []  # [verdict fields...] mutable until the end
    tpu_up: dict[int, bool] = {}  # real Edge TPU work (not only input QUANTIZE) at or upstream
    blocked: dict[int, int | None] = {}  # the CPU op (downstream of Edge TPU work) it depends on
    for op in model.ops:
        verdict, kind, why = op_rule(op, runtime)
        if compiled and op.opcode != E.EDGETPU_CUSTOM_OP:  # the compiler has decided already
            why = "was left on the CPU by edgetpu_compiler" + (
                "; it " + why if verdict == CPU else ""
            )
            verdict, kind = CPU, "left_on_cpu"
        parents = [prod[t.index] for t in op.inputs if t.index in prod]
        block = next((blocked[p] for p in parents if blocked.get(p) is not None), None)
        if verdict == CPU:
            runs_on, uncertain = CPU, False
        elif block is not None:
            runs_on, kind, uncertain = CPU, "after_cpu", False
            why = f"follows CPU op {block} {model.ops[block].opcode}: one Edge TPU subgraph only"
        else:
            runs_on, uncertain = EDGETPU, verdict == UNCERTAIN
        work = runs_on == EDGETPU and not (op.opcode == "QUANTIZE" and not parents)
        tpu_up[op.index] = work or any(tpu_up.get(p) for p in parents)
        if block is not None:
            blocked[op.index] = block
        elif runs_on == CPU and any(tpu_up.get(p) for p in parents):
            blocked[op.index] = op.index
        else:
            blocked[op.index] = None
        if runs_on == CPU and block is None and not blocked[op.index]:
            for p in parents:  # a leading CPU op after an input QUANTIZE
                r = rows[p]
                if r[1] == "QUANTIZE" and r[2] == EDGETPU:
                    r[3], r[5] = "may run on the CPU in front of a leading CPU op", True
        rows.append([op.index, op.opcode, runs_on, why, kind, uncertain])
    out = []
    for r, op in zip(rows, model.ops):
        low = _unexplained(op, runtime) if r[2] == EDGETPU and not compiled else ""
        out.append(OpVerdict(*r, low_confidence=low))
    return out


def _unexplained(op: OpInfo, runtime: int) -> str:
    """The source of an unexplained refusal of an op like this one, or "" (edgetpu_ops)."""
    name = op.opcode
    src = E.UNEXPLAINED_REFUSALS.get(name)
    if src is None or name in E.UNEXPLAINED_NOTE_ONLY:
        return ""
    if name == "TRANSPOSE_CONV":
        out = op.outputs[0].shape if op.outputs else ()
        if len(out) < 3 or out[-2] * out[-3] < E.UNEXPLAINED_TRANSPOSE_CONV_PX:
            return ""
    if name in ("SPLIT", "MUL") and runtime > E.UNEXPLAINED_OLD_RUNTIME:
        return ""
    return f"the compiler left such an op on the CPU without a cause in {src}"


def unexplained_notes(model: TFLiteModel, verdicts: list[OpVerdict]) -> list[str]:
    """Report notes for common op types with an unexplained refusal (not flagged op by op)."""
    notes = []
    for name in E.UNEXPLAINED_NOTE_ONLY:
        n = sum(1 for v in verdicts if v.op == name and v.runs_on == EDGETPU)
        if n:
            notes.append(
                f"{n} {name} op(s) mapped: public logs map this op type, but once left one on "
                f"the CPU without a cause ({E.UNEXPLAINED_REFUSALS[name]})"
            )
    return notes


def op_verdicts(model: TFLiteModel, runtime_version: int = E.DEFAULT_RUNTIME_VERSION):
    """The per-op answer for other tools (the latency predictor): list of `OpVerdict`."""
    return partition(model, runtime_version)


def segments(verdicts: list[OpVerdict]) -> list[list[int]]:
    """Maximal runs of consecutive op indices on the Edge TPU, as [first, last] (inclusive)."""
    out: list[list[int]] = []
    for v in verdicts:
        if v.runs_on != EDGETPU:
            continue
        if out and out[-1][1] == v.index - 1:
            out[-1][1] = v.index
        else:
            out.append([v.index, v.index])
    return out


def layout(model: TFLiteModel, verdicts: list[OpVerdict]) -> dict:
    """How the compiled model runs: leading CPU ops, the Edge TPU subgraph, the CPU tail.

    leading: CPU ops the Edge TPU part depends on (run before it); tail: the other CPU ops;
    transitions: CPU<->Edge TPU hand-overs per inference (the compiler makes one subgraph, so at
    most one before and one after it); tail_only: every CPU op is an expected tail op
    (`edgetpu_ops.TAIL_OPS`, post-processing custom ops) or only follows one.
    """
    prod = _producers(model)
    on_tpu = {v.index for v in verdicts if v.runs_on == EDGETPU}
    feeds_tpu: set[int] = set()
    for op in reversed(model.ops):  # CPU ops upstream of any Edge TPU op
        if op.index in on_tpu or op.index in feeds_tpu:
            feeds_tpu.update(prod[t.index] for t in op.inputs if t.index in prod)
    cpu = [v for v in verdicts if v.runs_on == CPU]
    leading = [v.index for v in cpu if v.index in feeds_tpu]
    tail = [v.index for v in cpu if v.index not in feeds_tpu]
    roots = [v for v in cpu if v.index in tail and v.kind != "after_cpu"]
    tail_only = (
        bool(on_tpu)
        and not leading
        and all(v.op in E.TAIL_OPS or re.search(E.TAIL_CUSTOM, v.op) for v in roots)
    )
    transitions = (1 if leading and on_tpu else 0) + (1 if tail and on_tpu else 0)
    return {
        "edgetpu_subgraphs": 1 if on_tpu else 0,
        "tpu_segments": segments(verdicts),
        "leading_cpu_ops": leading,
        "tail_cpu_ops": tail,
        "transitions": transitions,
        "tail_only": tail_only,
    }


def _round(n: int, m: int) -> int:
    return -(-n // m) * m


WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D")


@dataclass(frozen=True)
class ParamLayout:
    """How edgetpu_compiler stores a weight op's parameters (defaults: fitted, edgetpu_ops).

    rows: output channels are padded to a multiple of this; depth: each channel's input depth is
    padded to a multiple of this (bytes, int8); channel_bytes: requantization data per padded
    channel when the weights are quantized per channel (bytes); bias_bytes: per padded channel
    when the weights are quantized per tensor and the bias is not all zero (bytes); dw_rows,
    dw_channel_bytes: a depthwise convolution's channels padded to a multiple of dw_rows, each
    taking dw_channel_bytes (3x3 taps and per-channel data; bytes).
    """

    rows: int = E.PARAM_ROWS
    depth: int = E.PARAM_DEPTH
    channel_bytes: int = E.PARAM_CHANNEL_BYTES
    bias_bytes: int = E.PARAM_BIAS_BYTES
    dw_rows: int = E.PARAM_DW_ROWS
    dw_channel_bytes: int = E.PARAM_DW_CHANNEL_BYTES


FITTED_LAYOUT = ParamLayout()


def op_parameter_bytes(op: OpInfo, layout: ParamLayout = FITTED_LAYOUT) -> tuple[int, int]:
    """(raw, laid-out) parameter bytes of one op as edgetpu_compiler stores them.

    Weight ops (conv, fully-connected): output channels padded to `layout.rows`, each row the
    kernel taps x input depth padded to `layout.depth` bytes, plus `layout.channel_bytes` per
    padded channel when the weights are quantized per channel, or `layout.bias_bytes` when they
    are quantized per tensor and the bias is not all zero (a zero or absent bias takes nothing).
    Fitted and checked on real compile logs (tests/data/edgetpu_memory.yaml, compiler 16).
    Depthwise convolutions: `layout.dw_channel_bytes` per channel, the channels padded to
    `layout.dw_rows`, as read from a real compiled MobileNetV2 (compiler 2.0, 3x3 kernels; an
    assumption: kernels of up to 32 taps take the same, larger ones their extra taps rounded up
    to 32 bytes). Other ops: their 8-bit constant
    operands as they are; int32/int64 operands (shapes, paddings) take nothing.
    """
    consts = _consts(op)
    raw = sum(t.bytes for t in consts)
    w = next((t for t in consts if t.dtype in EIGHT_BIT and len(t.shape) >= 2), None)
    if op.opcode not in WEIGHT_OPS or w is None:
        return raw, sum(t.bytes for t in consts if t.dtype in EIGHT_BIT)
    if op.opcode == "DEPTHWISE_CONV_2D":  # [1, kh, kw, channels]
        channels = w.shape[-1]
        taps = w.elements // max(channels, 1)
        per_channel = layout.dw_channel_bytes + max(0, _round(taps, 32) - 32)
        return raw, _round(channels, layout.dw_rows) * per_channel
    rows = w.shape[0]  # [out, (kh, kw,) in]
    row = (w.elements // max(rows * w.shape[-1], 1)) * _round(w.shape[-1], layout.depth)
    bias = next((t for t in consts if t.dtype == "int32" and t.elements == rows), None)
    if w.scales > 1:
        per_channel = layout.channel_bytes
    elif bias is not None and bias.all_zero is False:
        per_channel = layout.bias_bytes
    else:
        per_channel = 0
    return raw, _round(rows, layout.rows) * (row + per_channel)


def parameter_layout(
    model: TFLiteModel,
    verdicts: list[OpVerdict],
    cache_bytes: int = E.PARAM_CACHE_BYTES,
    layout: ParamLayout = FITTED_LAYOUT,
    op_cache_bytes: int = E.PARAM_OP_CACHE_BYTES,
) -> dict:
    """Parameter bytes of the Edge TPU part as the compiler lays them out, on-chip vs streamed.

    Each mapped op's parameters (`op_parameter_bytes`) are cached on chip in op order while they
    fit `cache_bytes` (the compiler's parameter cache, fitted on real logs; it did not shrink with
    activations of up to 2.5 MiB per tensor there) and the op itself is at most
    `op_cache_bytes`; an op that is not cached streams from host memory at every inference (later
    ops may still be cached). Bytes: raw (the file's constants), laid out, on-chip, off-chip.
    """
    on_tpu = {v.index for v in verdicts if v.runs_on == EDGETPU}
    raw = laid = on_chip = off_chip = 0
    for op in model.ops:
        if op.index not in on_tpu:
            continue
        b, size = op_parameter_bytes(op, layout)
        raw += b
        laid += size
        if size <= op_cache_bytes and on_chip + size <= cache_bytes:
            on_chip += size
        else:
            off_chip += size
    return {
        "raw_bytes": raw,
        "laid_out_bytes": laid,
        "on_chip_bytes": on_chip,
        "off_chip_bytes": off_chip,
        "cache_capacity_bytes": cache_bytes,
        "fits_on_chip": off_chip == 0,
    }
