"""`lucida compile MODEL.tflite [MORE ...]`: run Coral's `edgetpu_compiler`, parse what it prints.

Several models are co-compiled (`cocompile.py`); one model is handled here.

The compiler is optional (x86-64 Linux only, not on PyPI or Debian): it is looked up as the
`--compiler` argument, then $LUCIDA_EDGETPU_COMPILER, then `edgetpu_compiler` on PATH. When it is
absent the command says how to install it and exits 3.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from lucida.tools.toolchain.edgetpu_ops import DEFAULT_RUNTIME_VERSION

COMPILER = "edgetpu_compiler"
ENV_COMPILER = "LUCIDA_EDGETPU_COMPILER"
INSTALL_HINT = (
    "install it on an x86-64 Debian/Ubuntu host: add Coral's apt repository and "
    "`sudo apt-get install edgetpu-compiler` (see https://coral.ai/docs/edgetpu/compiler/), "
    f"or point ${ENV_COMPILER} / --compiler at it"
)

_UNITS = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
_SIZE = r"([0-9.]+)\s*(B|KiB|MiB|GiB)"
_FIELDS = {
    "input_mib": r"Input size:\s*" + _SIZE,
    "output_mib": r"Output size:\s*" + _SIZE,
    "on_chip_mib": r"On-chip memory used for caching model parameters:\s*" + _SIZE,
    "on_chip_remaining_mib": r"On-chip memory remaining for caching model parameters:\s*" + _SIZE,
    "off_chip_mib": r"Off-chip memory used for streaming uncached model parameters:\s*" + _SIZE,
}
_INTS = {
    "subgraphs": r"Number of Edge TPU subgraphs:\s*(\d+)",
    "ops_total": r"Total number of operations:\s*(\d+)",
    "ops_tpu": r"Number of operations that will run on Edge TPU:\s*(\d+)",
    "ops_cpu": r"Number of operations that will run on CPU:\s*(\d+)",
    "compile_ms": r"Models? compiled successfully in\s*(\d+)\s*ms",
}
_TEXT = {
    "compiler_version": r"Edge TPU Compiler version\s*(\S+)",
    "input_model": r"^Input(?: model)?:\s*(.+?)\s*$",
    "output_model": r"^Output(?: model)?:\s*(.+?)\s*$",
    "log_file": r"^Operation log:\s*(.+?)\s*$",
}
_OP_ROW = re.compile(r"^([A-Z][A-Z0-9_]*|[a-z][a-z0-9-]*-op)\s{2,}(\d+)\s{2,}(\S.*?)\s*$")


class CompilerNotFound(ValueError):
    """edgetpu_compiler is not installed here."""

    exit_code = 3


class CompileError(ValueError):
    """edgetpu_compiler ran and failed (its own error line is in the message)."""

    exit_code = 1


def parse_compiler_log(text: str) -> dict:
    """What edgetpu_compiler printed (stdout with -s, or its .log file) -> a JSON-able dict.

    Sizes in MiB; ops_tpu/ops_cpu from the summary lines, or counted from the operator table
    ("Mapped to Edge TPU" rows) when the summary does not say; operators: one row per table line.
    """
    out: dict = {"succeeded": False, "errors": [], "operators": []}
    for key, pat in _TEXT.items():
        m = re.search(pat, text, re.M)
        if m:
            out[key] = m.group(1)
    for key, pat in _FIELDS.items():
        m = re.search(pat, text)
        if m:
            out[key] = round(float(m.group(1)) * _UNITS[m.group(2)], 6)
    for key, pat in _INTS.items():
        m = re.search(pat, text)
        if m:
            out[key] = int(m.group(1))
    in_table = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Operator") and "Count" in s and "Status" in s:
            in_table = True
            continue
        m = _OP_ROW.match(s) if in_table else None
        if m:
            status = m.group(3)
            out["operators"].append(
                {
                    "op": m.group(1),
                    "count": int(m.group(2)),
                    "status": status,
                    "mapped": status.startswith("Mapped to Edge TPU"),
                }
            )
        if s.startswith(("ERROR", "Error", "Internal compiler error")) or (
            s.startswith("Compilation failed") and s not in out["errors"]
        ):
            out["errors"].append(s)
    out["succeeded"] = bool(
        re.search(r"^Compilation succeeded", text, re.M)
        or ("compile_ms" in out and not re.search(r"^Compilation failed", text, re.M))
    )
    if out["operators"]:
        mapped = sum(r["count"] for r in out["operators"] if r["mapped"])
        total = sum(r["count"] for r in out["operators"])
        out.setdefault("ops_tpu", mapped)
        out.setdefault("ops_cpu", total - mapped)
        out.setdefault("ops_total", total)
    elif "ops_total" in out and out["succeeded"]:
        out.setdefault("ops_cpu", 0)
        out.setdefault("ops_tpu", out["ops_total"] - out["ops_cpu"])
    return out


def find_compiler(explicit: str | None = None) -> str:
    """Path of the compiler to run; CompilerNotFound (exit 3) with install steps when absent."""
    cand = explicit or os.environ.get(ENV_COMPILER) or COMPILER
    path = shutil.which(cand)
    if path is None:
        where = (
            f"{cand!r} is not an executable"
            if (explicit or os.environ.get(ENV_COMPILER))
            else (f"{COMPILER} is not on PATH")
        )
        raise CompilerNotFound(f"{where}; {INSTALL_HINT}")
    return path


def run_compiler(cmd: list[str], timeout_s: float) -> tuple[subprocess.CompletedProcess, str]:
    """Run the compiler command; returns the process and what it printed (stdout, then stderr)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise CompileError(f"{COMPILER} did not finish within {timeout_s:g} s") from None
    except OSError as exc:
        raise CompileError(f"cannot run {cmd[0]}: {exc.strerror}") from None
    return proc, proc.stdout + ("\n" + proc.stderr if proc.stderr else "")


def compile_model(
    model: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    runtime_version: int = DEFAULT_RUNTIME_VERSION,
    compiler: str | None = None,
    timeout_s: float = 600,
) -> dict:
    """Compile model.tflite -> out_dir/model_edgetpu.tflite; returns the parsed log.

    Adds "edgetpu_model" (path of the compiled file), "command" and "returncode".
    Raises CompilerNotFound (exit 3) or CompileError (exit 1, with the compiler's error line).
    """
    from lucida.tools.toolchain.tflite_reader import read_tflite

    model = Path(model)
    read_tflite(model)  # a clear exit-2 message for a missing or broken file, before compiling
    exe = find_compiler(compiler)
    out_dir = Path(out_dir) if out_dir else model.resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-s", "-m", str(runtime_version), "-o", str(out_dir), str(model)]
    proc, text = run_compiler(cmd, timeout_s)
    result = parse_compiler_log(text)
    log_path = out_dir / f"{model.stem}_edgetpu.log"
    if not result["operators"] and log_path.is_file():  # older compilers print the table only there
        result = parse_compiler_log(text + "\n" + log_path.read_text(errors="replace"))
    compiled = out_dir / f"{model.stem}_edgetpu.tflite"
    result.update(command=cmd, returncode=proc.returncode, edgetpu_model=str(compiled))
    if proc.returncode != 0 or not result["succeeded"] or not compiled.is_file():
        why = (
            result["errors"][0]
            if result["errors"]
            else ((text.strip().splitlines() or ["no output"])[-1])
        )
        raise CompileError(f"{COMPILER} failed on {model.name} (exit {proc.returncode}): {why}")
    result["package"] = verify_compiled(compiled, result)
    return result


def verify_compiled(compiled: str | os.PathLike, log: dict | None = None) -> dict:
    """Read back what the compiler wrote (`edgetpu_package`) and check it against its log.

    Returns the package summary (subgraphs, declared runtime, on-chip/off-chip bytes, caching
    tokens) plus "log_mismatch": the figures where the log and the file disagree beyond the
    log's rounding (0.01 MiB or 1 %). Raises CompileError when the file holds no readable package.
    """
    from lucida.tools.toolchain.edgetpu_package import (
        PackageReadError,
        read_compiled,
        summarize,
    )
    from lucida.tools.toolchain.tflite_reader import TFLiteReadError, read_tflite

    try:
        packages = read_compiled(read_tflite(compiled))
    except (TFLiteReadError, PackageReadError) as exc:
        raise CompileError(f"{COMPILER} wrote an unreadable model: {exc}") from None
    if not packages:
        raise CompileError(
            f"{compiled}: no edgetpu-custom-op: nothing was compiled for the Edge TPU"
        )
    s = summarize(packages)
    mismatch = []
    for key, mib in (("on_chip_bytes", "on_chip_mib"), ("off_chip_bytes", "off_chip_mib")):
        if log and mib in log:
            got = s[key] / 2**20
            if abs(got - log[mib]) > max(0.01, 0.01 * log[mib]):
                mismatch.append(f"{key}: log {log[mib]:.2f} MiB, file {got:.2f} MiB")
    if log and "subgraphs" in log and log["subgraphs"] != s["edgetpu_subgraphs"]:
        mismatch.append(f"subgraphs: log {log['subgraphs']}, file {s['edgetpu_subgraphs']}")
    s["log_mismatch"] = mismatch
    return s


def format_result(r: dict) -> str:
    lines = [
        f"{COMPILER} {r.get('compiler_version', '?')}: compiled {r['edgetpu_model']}",
        f"  parameters on-chip {r.get('on_chip_mib', 0):.2f} MiB, off-chip "
        f"{r.get('off_chip_mib', 0):.2f} MiB; Edge TPU subgraphs: {r.get('subgraphs', '?')}",
        f"  ops: {r.get('ops_total', '?')} total, {r.get('ops_tpu', '?')} on the Edge TPU, "
        f"{r.get('ops_cpu', '?')} on the CPU",
    ]
    for row in r["operators"]:
        lines.append(f"    {row['op']:<28} {row['count']:>4}  {row['status']}")
    pk = r.get("package")
    if pk:
        lines.append(
            f"  read back: {pk['edgetpu_subgraphs']} Edge TPU subgraph(s), runtime >= "
            f"{pk['min_runtime_version']}, on-chip {pk['on_chip_bytes'] / 2**20:.2f} MiB, "
            f"off-chip {pk['off_chip_bytes'] / 2**20:.2f} MiB"
        )
        for m in pk["log_mismatch"]:
            lines.append(f"warning: the compiled file and the log disagree on {m}")
    if r.get("ops_cpu"):
        lines.append("warning: part of the model runs on the CPU (slower); see `lucida check`")
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser(
        "compile",
        help="compile a .tflite model for the Edge TPU with edgetpu_compiler (exit 3: not installed)",
    )
    p.add_argument(
        "model",
        nargs="+",
        help="full-integer .tflite file(s) (e.g. a bundle's cpu.tflite); several are co-compiled "
        "to share the Edge TPU's on-chip parameter cache, each reported on its own",
    )
    p.add_argument(
        "--out-dir", help="where MODEL_edgetpu.tflite goes (default: beside the first MODEL)"
    )
    p.add_argument(
        "--runtime-version",
        type=int,
        default=DEFAULT_RUNTIME_VERSION,
        help=f"lowest Edge TPU runtime to support, passed as -m (default {DEFAULT_RUNTIME_VERSION})",
    )
    p.add_argument("--compiler", help=f"path of edgetpu_compiler (default ${ENV_COMPILER} or PATH)")
    p.add_argument("--timeout", type=float, default=600, help="seconds (default 600)")
    p.add_argument("--json", action="store_true", help="print the parsed compiler log as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    if len(args.model) > 1:
        from lucida.tools.toolchain.cocompile import compile_models, format_cocompile

        result = compile_models(
            args.model, args.out_dir, args.runtime_version, args.compiler, args.timeout
        )
        print(json.dumps(result, indent=2) if args.json else format_cocompile(result))
        return 0
    result = compile_model(
        args.model[0], args.out_dir, args.runtime_version, args.compiler, args.timeout
    )
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0
