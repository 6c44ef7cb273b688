"""`lucida check MODEL.tflite`: is this model Edge TPU compatible? Reads the flatbuffer, no TensorFlow.

Rules (Coral "Model requirements", see `edgetpu_ops`): every op in the supported list for the
target runtime, every tensor 8-bit (constant int32/int64 operands such as biases and shapes
excepted), static shapes, batch 1, at most 3 non-trivial dimensions on mapped ops, one subgraph.
The compiler maps ops up to the first unsupported one; that op and all after it run on the CPU.
Warnings (not failures): parameters above the ~8 MiB on-chip memory, very large inputs.

Exit codes: 0 compatible, 1 incompatible (each problem named), 2 unreadable file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

from lucida.tools.toolchain import edgetpu_ops as E
from lucida.tools.toolchain.tflite_reader import (
    OpInfo,
    TensorInfo,
    TFLiteModel,
    TFLiteReadError,
    read_tflite,
)

EIGHT_BIT = ("int8", "uint8")
CONST_OK = ("int32", "int64")  # biases, shapes, axes, paddings


@dataclass
class Problem:
    """One reason the model is not Edge TPU compatible. kind: a short key for scripts and tests."""

    kind: str
    message: str
    op: int | None = None


@dataclass
class CheckReport:
    path: str
    runtime_version: int
    compatible: bool
    problems: list[Problem]
    warnings: list[str]
    first_cpu_op: dict | None  # {"index", "opcode", "reason"}: where the CPU takes over
    ops_total: int
    ops_mappable: int  # ops before the first CPU op (what the compiler can map, at most)
    param_bytes: int
    activation_bytes: int
    macs: int
    compiled: bool  # already holds an edgetpu-custom-op
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    ops: list[dict] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """One line: why the model is incompatible (first problem, and how many more)."""
        if not self.problems:
            return "compatible"
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return self.problems[0].message + more

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reason"] = self.reason
        return d


def _t(t: TensorInfo) -> str:
    shape = ",".join(str(d) for d in t.shape_signature)
    return f"{t.dtype}[{shape}]"


def _tensor_dict(t: TensorInfo) -> dict:
    return {
        "name": t.name,
        "dtype": t.dtype,
        "shape": list(t.shape_signature),
        "bytes": t.bytes,
        "scale": t.scale,
        "zero_point": t.zero_point,
    }


def _op_dict(op: OpInfo) -> dict:
    return {
        "index": op.index,
        "opcode": op.opcode,
        "version": op.version,
        "inputs": [_t(t) for t in op.inputs if not t.constant],
        "outputs": [_t(t) for t in op.outputs],
        "macs": op.macs,
        "param_bytes": op.param_bytes,
    }


def _op_support(op: OpInfo, runtime: int) -> tuple[str, str] | None:
    """(kind, why) the Edge TPU cannot map this op; None when it can, as far as the file tells."""
    if op.custom:
        if op.opcode == E.EDGETPU_CUSTOM_OP:
            return None
        return "custom_op", "is a custom op, not an Edge TPU op"
    if op.opcode not in E.SUPPORTED_OPS:
        return "unsupported_op", "is not supported by the Edge TPU"
    need = E.SUPPORTED_OPS[op.opcode][0]
    if need > runtime:
        return "runtime_version", f"needs Edge TPU runtime >= {need} (targeting {runtime})"
    return None


def _op_dtype(op: OpInfo) -> tuple[str, str] | None:
    """(kind, why) this op is not 8-bit; None when all its tensors are."""
    if op.custom and op.opcode == E.EDGETPU_CUSTOM_OP:
        return None
    for t in (*op.inputs, *op.outputs):
        if t.dtype in EIGHT_BIT or (t.constant and t.dtype in CONST_OK):
            continue
        what = "constant" if t.constant else "tensor"
        tail = f"{what} '{t.name}' is {_t(t)}; the Edge TPU needs int8/uint8"
        if t.dtype.startswith(("float", "bfloat")):
            return "float_op", f"is a float op: {tail}"
        return "dtype", f"is not 8-bit: {tail}"
    return None


def _op_rank(op: OpInfo, skip_batch: bool) -> tuple[str, str] | None:
    """(kind, why) a tensor of this op has more than 3 non-trivial dimensions."""
    for t in (*op.inputs, *op.outputs):
        if t.constant or len(t.shape) <= 3:
            continue
        shape = (1, *t.shape[1:]) if skip_batch else t.shape
        if any(d > 1 for d in shape[:-3]):
            big = sum(1 for d in shape if d > 1)
            return "rank", (
                f"has tensor '{t.name}' {_t(t)} with {big} dimensions > 1; the Edge TPU maps at "
                "most 3 (the innermost)"
            )
    return None


def check_model(
    model: TFLiteModel, runtime_version: int = E.DEFAULT_RUNTIME_VERSION
) -> CheckReport:
    """Apply the Edge TPU rules to a parsed model."""
    problems: list[Problem] = []
    warnings: list[str] = []
    first_cpu: dict | None = None

    for t in model.inputs:
        if t.shape_signature and t.shape_signature[0] < 0:
            problems.append(
                Problem(
                    "dynamic_batch",
                    f"dynamic batch: input '{t.name}' is {_t(t)}; convert with the batch fixed to 1",
                )
            )
        elif t.shape and t.shape[0] != 1:
            problems.append(
                Problem(
                    "batch",
                    f"batch size {t.shape[0]}: input '{t.name}' is {_t(t)}; the Edge "
                    "TPU runs batch 1",
                )
            )
    batch_reported = any(p.kind == "dynamic_batch" for p in problems)
    dyn = [
        t
        for t in model.tensors
        if any(d < 0 for d in t.shape_signature[1:]) or (t.dynamic and not batch_reported)
    ]
    if dyn:
        problems.append(
            Problem(
                "dynamic_shape",
                f"dynamic shape: tensor '{dyn[0].name}' is {_t(dyn[0])} "
                f"({len(dyn)} tensor(s) not static); the Edge TPU needs static shapes",
            )
        )
    if model.subgraphs > 1:
        problems.append(
            Problem(
                "subgraphs",
                f"{model.subgraphs} subgraphs (control flow such as WHILE/IF); the Edge TPU "
                "compiler maps only the main one",
            )
        )

    batch_problem = any(p.kind in ("batch", "dynamic_batch") for p in problems)
    for op in model.ops:
        support = _op_support(op, runtime_version)
        found = [
            f
            for f in (support, _op_dtype(op), None if support else _op_rank(op, batch_problem))
            if f
        ]
        if found:
            why = " and ".join(text for _, text in found)
            problems.append(Problem(found[0][0], f"op {op.index} {op.opcode} {why}", op.index))
            if first_cpu is None:
                first_cpu = {"index": op.index, "opcode": op.opcode, "reason": why}

    # The compiler maps ops up to the first one it cannot: say so on that op's problem.
    if first_cpu is not None:
        p = next(p for p in problems if p.op == first_cpu["index"])
        rest = len(model.ops) - p.op - 1
        p.message += f" (op {p.op} and the {rest} op(s) after it run on the CPU)"

    compiled = any(op.custom and op.opcode == E.EDGETPU_CUSTOM_OP for op in model.ops)
    if model.param_bytes > E.ON_CHIP_BYTES:
        warnings.append(
            f"parameters {model.param_bytes / 2**20:.1f} MiB exceed the ~8 MiB on-chip memory: the "
            "rest streams from host memory on every inference (slower)"
        )
    for t in model.inputs:
        if t.elements > E.LARGE_INPUT_ELEMENTS or max(t.shape[1:3] or (0,)) > E.LARGE_INPUT_SIDE:
            warnings.append(
                f"input '{t.name}' {_t(t)} is very large: edgetpu_compiler is known to fail or to "
                "leave ops on the CPU for inputs this size; tile the frame instead"
            )
    mappable = first_cpu["index"] if first_cpu else len(model.ops)
    return CheckReport(
        path=model.path,
        runtime_version=runtime_version,
        compatible=not problems,
        problems=problems,
        warnings=warnings,
        first_cpu_op=first_cpu,
        ops_total=len(model.ops),
        ops_mappable=mappable,
        param_bytes=model.param_bytes,
        activation_bytes=model.activation_bytes,
        macs=model.macs,
        compiled=compiled,
        inputs=[_tensor_dict(t) for t in model.inputs],
        outputs=[_tensor_dict(t) for t in model.outputs],
        ops=[_op_dict(op) for op in model.ops],
    )


def check_file(path, runtime_version: int = E.DEFAULT_RUNTIME_VERSION) -> CheckReport:
    """Read and check a .tflite file; raises TFLiteReadError (exit code 2) when unreadable."""
    return check_model(read_tflite(path), runtime_version)


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def format_report(r: CheckReport, out=None) -> None:
    """The human-readable op table and verdict (to `out`, default stdout)."""
    out = out or sys.stdout
    p = lambda s="": print(s, file=out)  # noqa: E731
    p(
        f"{r.path}: {r.ops_total} ops, parameters {_kib(r.param_bytes)}, activations "
        f"{_kib(r.activation_bytes)}, {r.macs / 1e6:.2f} M MACs"
    )
    p(f"  {'#':>3}  {'op':<24} {'v':>2}  {'inputs':<28} {'outputs':<24} {'MACs':>10}")
    for op in r.ops:
        ins = " ".join(op["inputs"]) or "-"
        outs = " ".join(op["outputs"]) or "-"
        mark = (
            " <- CPU from here" if r.first_cpu_op and r.first_cpu_op["index"] == op["index"] else ""
        )
        p(
            f"  {op['index']:>3}  {op['opcode']:<24} {op['version']:>2}  {ins:<28} {outs:<24} "
            f"{op['macs']:>10}{mark}"
        )
    for w in r.warnings:
        p(f"warning: {w}")
    if r.compatible:
        extra = " (already compiled)" if r.compiled else ""
        p(f"compatible with the Edge TPU (runtime >= {r.runtime_version}){extra}")
    else:
        p(f"NOT Edge TPU compatible: {r.reason}")
        for prob in r.problems[1:]:
            p(f"  - {prob.message}")


def register(sub) -> None:
    p = sub.add_parser(
        "check",
        help="check a .tflite model against the Edge TPU's rules (no TensorFlow needed)",
        description="Exit 0: compatible; 1: incompatible (each problem named); 2: unreadable.",
    )
    p.add_argument("model", help="a .tflite file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--runtime-version",
        type=int,
        default=E.DEFAULT_RUNTIME_VERSION,
        help=f"Edge TPU runtime version to target (default {E.DEFAULT_RUNTIME_VERSION})",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from lucida.tools.toolchain.bundle import model_path

    try:
        report = check_file(model_path(args.model), args.runtime_version)
    except TFLiteReadError as exc:
        if args.json:
            print(json.dumps({"path": str(args.model), "readable": False, "error": str(exc)}))
        raise
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        format_report(report)
    return 0 if report.compatible else 1
