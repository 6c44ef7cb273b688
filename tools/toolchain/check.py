"""`lucida check MODEL.tflite`: what edgetpu_compiler will map, op by op. Reads the flatbuffer only.

Per op: `runs_on` "edgetpu"/"cpu" with the reason (`edgetpu_rules`: Coral's op table and
conditions, the compiler's single-subgraph partitioning, public compiler logs kept in
tests/data/edgetpu_evidence.yaml), "uncertain" where the evidence has the compiler both mapping
and refusing such ops (counted as mapped: `ops_mappable` is an upper bound). Per model: the Edge
TPU segments as op-index ranges, CPU<->Edge TPU transitions, parameter bytes as laid out for the
Edge TPU, on-chip (cached) vs off-chip (streamed). A compiled model (`*_edgetpu.tflite`) is read
back through `edgetpu_package`: subgraphs, declared runtime version, on-chip/off-chip bytes.

Exit codes: 0 compatible, or "mapped except its tail" (only post-processing such as ArgMax or
detection post-processing stays on the CPU, after the Edge TPU part); 1 incompatible (each
problem named); 2 unreadable file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

from lucida.tools.toolchain import edgetpu_ops as E
from lucida.tools.toolchain import edgetpu_rules as R
from lucida.tools.toolchain.edgetpu_package import PackageReadError, read_compiled, summarize
from lucida.tools.toolchain.tflite_reader import (
    OpInfo,
    TensorInfo,
    TFLiteModel,
    TFLiteReadError,
    read_tflite,
)


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
    compatible: bool  # every op maps to the Edge TPU (or the model is compiled and readable)
    verdict: str  # "compatible" | "mapped_except_tail" | "incompatible"
    problems: list[Problem]
    warnings: list[str]
    first_cpu_op: dict | None  # {"index", "opcode", "reason"}: the first op left on the CPU
    ops_total: int
    ops_mappable: int  # ops on the Edge TPU, uncertain ones included (an upper bound)
    ops_uncertain: int
    ops_low_confidence: int  # mapped, but a public log shows such an op refused without a cause
    param_bytes: int  # constant bytes in the file (compiled: package parameters + CPU constants)
    activation_bytes: int
    macs: int | None  # None for a compiled model: the Edge TPU part's MACs are not in the file
    compiled: bool  # already holds an edgetpu-custom-op
    layout: dict = field(default_factory=dict)  # segments, transitions, leading/tail CPU ops
    memory: dict = field(default_factory=dict)  # parameter layout: on-chip vs streamed bytes
    package: dict | None = None  # compiled models: what the edgetpu-custom-op holds
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    ops: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # evidence gaps worth knowing, not warnings

    @property
    def exit_ok(self) -> bool:
        return self.verdict in ("compatible", "mapped_except_tail")

    @property
    def reason(self) -> str:
        """One line: why the model is incompatible (first problem, and how many more)."""
        if not self.problems:
            return self.verdict.replace("_", " ")
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


def _op_dict(op: OpInfo, v: R.OpVerdict) -> dict:
    return {
        "index": op.index,
        "opcode": op.opcode,
        "version": op.version,
        "runs_on": v.runs_on,
        "reason": v.reason,
        "kind": v.kind,
        "uncertain": v.uncertain,
        "confidence": "low" if v.low_confidence else "high",
        "confidence_note": v.low_confidence,
        "inputs": [_t(t) for t in op.inputs if not t.constant],
        "outputs": [_t(t) for t in op.outputs],
        "macs": op.macs,
        "param_bytes": op.param_bytes,
    }


def _model_problems(model: TFLiteModel) -> list[Problem]:
    problems = []
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
    return problems


def check_model(
    model: TFLiteModel, runtime_version: int = E.DEFAULT_RUNTIME_VERSION
) -> CheckReport:
    """Apply the Edge TPU rules to a parsed model."""
    problems = _model_problems(model)
    warnings: list[str] = []
    verdicts = R.op_verdicts(model, runtime_version)
    lay = R.layout(model, verdicts)
    cpu = [v for v in verdicts if v.runs_on == R.CPU]
    first_cpu = (
        {"index": cpu[0].index, "opcode": cpu[0].op, "reason": cpu[0].reason} if cpu else None
    )
    for v in cpu:
        if v.kind == "after_cpu":
            continue
        expected = v.index in lay["tail_cpu_ops"] and lay["tail_only"]
        if not expected:
            problems.append(Problem(v.kind, f"op {v.index} {v.op} {v.reason}", v.index))
    op_problems = [p for p in problems if p.op is not None]
    if op_problems:
        p = op_problems[0]
        after = [v.index for v in verdicts if v.kind == "after_cpu"]
        if after:
            p.message += f" (it and the {len(after)} op(s) that follow it run on the CPU)"
        else:
            p.message += " (it runs on the CPU)"

    compiled = any(op.custom and op.opcode == E.EDGETPU_CUSTOM_OP for op in model.ops)
    package = None
    macs: int | None = model.macs
    param_bytes = model.param_bytes
    if compiled:
        try:
            package = summarize(read_compiled(model))
        except PackageReadError as exc:
            problems.insert(0, Problem("package", f"unreadable Edge TPU package: {exc}"))
        macs = None
        if package:
            runtime_version = package["min_runtime_version"] or runtime_version
            param_bytes = (
                package["on_chip_bytes"]
                + package["off_chip_bytes"]
                + sum(op.param_bytes for op in model.ops if not op.custom)
            )
        memory = {
            "on_chip_bytes": package["on_chip_bytes"] if package else None,
            "off_chip_bytes": package["off_chip_bytes"] if package else None,
            "source": "compiled package",
        }
    else:
        memory = R.parameter_layout(model, verdicts)
        memory["source"] = "estimate"
        if memory["off_chip_bytes"] or model.param_bytes > E.ON_CHIP_BYTES:
            total = max(memory["laid_out_bytes"], model.param_bytes)
            warnings.append(
                f"parameters ~{total / 2**20:.1f} MiB exceed the ~8 MiB on-chip memory (the "
                f"compiler caches about {E.PARAM_CACHE_BYTES / 2**20:.1f} MiB, no layer above "
                f"{E.PARAM_OP_CACHE_BYTES / 2**20:.1f} MiB): ~"
                f"{memory['off_chip_bytes'] / 2**20:.1f} MiB stream from host memory on every "
                "inference (slower)"
            )
    for t in model.inputs:
        if t.bytes > E.ON_CHIP_BYTES:
            warnings.append(
                f"input '{t.name}' {_t(t)} is very large ({t.bytes / 2**20:.1f} MiB, more than "
                "the Edge TPU's on-chip memory): tile the frame instead"
            )
    uncertain = [v for v in verdicts if v.uncertain]
    if uncertain:
        warnings.append(
            f"{len(uncertain)} op(s) uncertain (counted as mapped): "
            + "; ".join(f"op {v.index} {v.op} {v.reason}" for v in uncertain[:3])
        )
    if problems:
        verdict = "incompatible"
    elif not cpu:
        verdict = "compatible"
    else:
        verdict = "mapped_except_tail"
    return CheckReport(
        path=model.path,
        runtime_version=runtime_version,
        compatible=verdict == "compatible",
        verdict=verdict,
        problems=problems,
        warnings=warnings,
        first_cpu_op=first_cpu,
        ops_total=len(model.ops),
        ops_mappable=len(verdicts) - len(cpu),
        ops_uncertain=len(uncertain),
        ops_low_confidence=sum(1 for v in verdicts if v.low_confidence),
        param_bytes=param_bytes,
        activation_bytes=model.activation_bytes,
        macs=macs,
        compiled=compiled,
        layout=lay,
        memory=memory,
        package=package,
        inputs=[_tensor_dict(t) for t in model.inputs],
        outputs=[_tensor_dict(t) for t in model.outputs],
        ops=[_op_dict(op, v) for op, v in zip(model.ops, verdicts)],
        notes=[] if compiled else R.unexplained_notes(model, verdicts),
    )


def check_file(path, runtime_version: int = E.DEFAULT_RUNTIME_VERSION) -> CheckReport:
    """Read and check a .tflite file; raises TFLiteReadError (exit code 2) when unreadable."""
    return check_model(read_tflite(path), runtime_version)


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def _ranges(idx: list[int]) -> str:
    return (
        ", ".join(
            f"{a}" if a == b else f"{a}-{b}"
            for a, b in R.segments([R.OpVerdict(i, "", R.EDGETPU, "") for i in idx])
        )
        or "-"
    )


def format_report(r: CheckReport, out=None) -> None:
    """The human-readable op table, grouped into Edge TPU and CPU parts, and the verdict."""
    out = out or sys.stdout
    p = lambda s="": print(s, file=out)  # noqa: E731
    macs = "MACs unknown (compiled)" if r.macs is None else f"{r.macs / 1e6:.2f} M MACs"
    p(
        f"{r.path}: {r.ops_total} ops, parameters {_kib(r.param_bytes)}, activations "
        f"{_kib(r.activation_bytes)}, {macs}"
    )
    p(
        f"  {'#':>3}  {'op':<24} {'v':>2}  {'runs on':<8} {'inputs':<28} {'outputs':<24} {'MACs':>10}"
    )
    for op in r.ops:
        ins = " ".join(op["inputs"]) or "-"
        outs = " ".join(op["outputs"]) or "-"
        where = op["runs_on"] + ("?" if op["uncertain"] else "")
        where += "~" if op["confidence"] == "low" else ""
        mark = ""
        if r.first_cpu_op and r.first_cpu_op["index"] == op["index"]:
            mark = " <- CPU from here"
        if op["runs_on"] == "cpu" or op["uncertain"]:
            mark += f"  ({op['reason']})"
        if op["confidence"] == "low":
            mark += f"  (low confidence: {op['confidence_note']})"
        p(
            f"  {op['index']:>3}  {op['opcode']:<24} {op['version']:>2}  {where:<8} {ins:<28} "
            f"{outs:<24} {op['macs']:>10}{mark}"
        )
    lay = r.layout
    tpu = [o["index"] for o in r.ops if o["runs_on"] == "edgetpu"]
    p(
        f"Edge TPU: {r.ops_mappable} of {r.ops_total} ops (ops {_ranges(tpu)}), "
        f"{lay.get('edgetpu_subgraphs', 0)} subgraph, {lay.get('transitions', 0)} CPU<->Edge TPU "
        f"transition(s); CPU before it: {_ranges(lay.get('leading_cpu_ops', []))}; "
        f"CPU after it: {_ranges(lay.get('tail_cpu_ops', []))}"
    )
    m = r.memory
    if m.get("on_chip_bytes") is not None:
        what = "read from the compiled package" if r.compiled else "estimated"
        p(
            f"parameters on-chip {_kib(m['on_chip_bytes'])}, streamed (off-chip) "
            f"{_kib(m['off_chip_bytes'])} ({what})"
        )
    if r.package:
        pk = r.package
        p(
            f"compiled: {pk['edgetpu_subgraphs']} Edge TPU subgraph(s), declares runtime >= "
            f"{pk['min_runtime_version']}, compiler {pk['compiler_version'] or '?'}, "
            f"caching token(s) {', '.join(f'{t:#x}' for t in pk['caching_tokens']) or '-'}"
        )
    for w in r.warnings:
        p(f"warning: {w}")
    if r.ops_low_confidence:
        p(
            f"low confidence: {r.ops_low_confidence} mapped op(s) marked '~' are like ones the "
            "compiler once left on the CPU without a cause (counted as mapped)"
        )
    for n in r.notes:
        p(f"note: {n}")
    if r.verdict == "compatible":
        extra = " (already compiled)" if r.compiled else ""
        p(f"compatible with the Edge TPU (runtime >= {r.runtime_version}){extra}")
    elif r.verdict == "mapped_except_tail":
        tail = ", ".join(f"{o['index']} {o['opcode']}" for o in r.ops if o["runs_on"] == "cpu")
        extra = " (already compiled)" if r.compiled else ""
        p(f"mapped except its tail: only post-processing stays on the CPU (ops {tail}){extra}")
    else:
        p(f"NOT Edge TPU compatible: {r.reason}")
        for prob in r.problems[1:]:
            p(f"  - {prob.message}")


def register(sub) -> None:
    p = sub.add_parser(
        "check",
        help="check a .tflite model against the Edge TPU's rules (no TensorFlow needed)",
        description="Exit 0: compatible, or mapped except a post-processing tail; 1: "
        "incompatible (each problem named); 2: unreadable.",
    )
    p.add_argument("model", help="a .tflite file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--run",
        action="store_true",
        help="also load, allocate and invoke the model once, in a child process with time and "
        "memory limits (a crash is reported, never suffered)",
    )
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
    ran = None
    if args.run:
        from lucida.runtime.sandbox import check_in_child

        ran = check_in_child(args.model)  # SandboxError: one line, exit 2
    if args.json:
        print(json.dumps({**report.to_dict(), **({"run": ran} if ran else {})}, indent=2))
    else:
        format_report(report)
        if ran:
            print(f"ran once in a child process: outputs {ran['outputs']}")
    return 0 if report.exit_ok else 1
