"""`lucida compile a.tflite b.tflite ...`: co-compile several models for one Edge TPU.

Given several models, edgetpu_compiler compiles them together so that their parameters share the
Edge TPU's on-chip cache (a switch between them then reloads nothing). It prints "Models compiled
successfully in N ms." once, then one section per model, from its "Input model:" line to the next:
that model's sizes, on-chip / off-chip parameter memory, subgraphs and op counts, and its operator
table (with -s; older compilers write the table only to the model's `<name>_edgetpu.log`). The
order of the models changes how the cache is split (google-coral/edgetpu#518), so each model's
figures are reported. Every output is read back (`edgetpu_package`): the models that cache
parameters on-chip must share a parameter-caching token, else they were not compiled together.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lucida.tools.toolchain.compile import (
    COMPILER,
    CompileError,
    find_compiler,
    parse_compiler_log,
    run_compiler,
    verify_compiled,
)
from lucida.tools.toolchain.edgetpu_ops import DEFAULT_RUNTIME_VERSION

_SECTION = re.compile(r"^Input model:", re.M)


class CoCompileInputError(ValueError):
    """The models given cannot be co-compiled as asked (exit code 2)."""

    exit_code = 2


def split_sections(text: str) -> tuple[str, list[str]]:
    """A multi-model log -> (the part before the first model, one text per model section)."""
    starts = [m.start() for m in _SECTION.finditer(text)]
    if not starts:
        return text, []
    ends = starts[1:] + [len(text)]
    return text[: starts[0]], [text[a:b] for a, b in zip(starts, ends)]


def parse_cocompile_log(text: str) -> dict:
    """What edgetpu_compiler printed for several models -> run-wide fields and "models".

    Each entry of "models" is `parse_compiler_log` of that model's section (sizes in MiB, op
    counts, operator rows); "succeeded", "errors", "compiler_version", "compile_ms" are the run's.
    """
    whole = parse_compiler_log(text)
    _, sections = split_sections(text)
    models = []
    for sec in sections:
        m = parse_compiler_log(sec)
        for key in ("succeeded", "errors", "compiler_version", "compile_ms"):
            m.pop(key, None)
        models.append(m)
    for m in models:  # no CPU-op lines in a section of a successful run: all ops mapped
        if whole["succeeded"] and "ops_total" in m:
            m.setdefault("ops_cpu", 0)
            m.setdefault("ops_tpu", m["ops_total"] - m["ops_cpu"])
    keys = ("succeeded", "errors", "compiler_version", "compile_ms")
    return {**{k: whole[k] for k in keys if k in whole}, "models": models}


def _section_for(model: Path, parsed: list[dict], i: int) -> dict:
    """The log section of `model`: the one naming its file, else the i-th (compiler order)."""
    for sec in parsed:
        if Path(sec.get("input_model", "")).name == model.name:
            return sec
    return parsed[i] if i < len(parsed) else {"operators": []}


def compile_models(
    models: list[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    runtime_version: int = DEFAULT_RUNTIME_VERSION,
    compiler: str | None = None,
    timeout_s: float = 600,
) -> dict:
    """Co-compile models -> out_dir/<name>_edgetpu.tflite each; returns the parsed log.

    "models": per model its log section, "edgetpu_model" and "package" (read back, with
    "log_mismatch"); "shared_cache": True when every model that caches parameters on-chip shares
    a caching token with the others (models that cache nothing stream all their parameters).
    Raises CoCompileInputError (exit 2) for duplicate file names, CompilerNotFound (exit 3),
    CompileError (exit 1).
    """
    from lucida.tools.toolchain.tflite_reader import read_tflite

    paths = [Path(m) for m in models]
    names = [p.name for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CoCompileInputError(
            f"{', '.join(dup)} given twice: each model needs its own file name "
            "(the compiler names every output <name>_edgetpu.tflite in one folder)"
        )
    for p in paths:
        read_tflite(p)  # exit 2 for a missing or broken file, before compiling
    exe = find_compiler(compiler)
    out = Path(out_dir) if out_dir else paths[0].resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-s", "-m", str(runtime_version), "-o", str(out), *map(str, paths)]
    proc, text = run_compiler(cmd, timeout_s)
    result = parse_cocompile_log(text)
    result.update(command=cmd, returncode=proc.returncode)
    if proc.returncode != 0 or not result["succeeded"]:
        why = result["errors"][0] if result["errors"] else (text.strip().splitlines() or ["?"])[-1]
        listed = ", ".join(names)
        raise CompileError(f"{COMPILER} failed on {listed} (exit {proc.returncode}): {why}")
    per_model = []
    for i, p in enumerate(paths):
        sec = _section_for(p, result["models"], i)
        log_file = out / f"{p.stem}_edgetpu.log"
        if not sec["operators"] and log_file.is_file():  # the table is only in the .log file
            table = parse_compiler_log(log_file.read_text(errors="replace"))
            for key in ("operators", "ops_total", "ops_tpu", "ops_cpu"):
                if key in table:
                    sec[key] = table[key]
        compiled = out / f"{p.stem}_edgetpu.tflite"
        if not compiled.is_file():
            raise CompileError(f"{COMPILER} reported success but wrote no {compiled}")
        sec.update(model=str(p), edgetpu_model=str(compiled))
        sec["package"] = verify_compiled(compiled, sec)
        per_model.append(sec)
    result["models"] = per_model
    cached = [m for m in per_model if m["package"]["on_chip_bytes"]]
    tokens = [set(m["package"]["caching_tokens"]) for m in cached]
    shared = set.intersection(*tokens) if tokens else set()
    result["shared_cache"] = len(cached) <= 1 or bool(shared)
    result["caching_tokens"] = sorted(shared)
    result["on_chip_mib_total"] = round(sum(m.get("on_chip_mib", 0) for m in per_model), 6)
    return result


def format_cocompile(r: dict) -> str:
    """The human-readable report: one block per model, then whether the cache is shared."""
    n = len(r["models"])
    lines = [
        f"{COMPILER} {r.get('compiler_version', '?')}: co-compiled {n} models in "
        f"{r.get('compile_ms', '?')} ms"
    ]
    for m in r["models"]:
        pk = m["package"]
        lines.append(f"{m['model']} -> {m['edgetpu_model']}")
        lines.append(
            f"  parameters on-chip {m.get('on_chip_mib', 0):.2f} MiB, off-chip "
            f"{m.get('off_chip_mib', 0):.2f} MiB; Edge TPU subgraphs: {m.get('subgraphs', '?')}; "
            f"ops: {m.get('ops_total', '?')} total, {m.get('ops_tpu', '?')} on the Edge TPU, "
            f"{m.get('ops_cpu', '?')} on the CPU"
        )
        for row in m["operators"]:
            lines.append(f"    {row['op']:<28} {row['count']:>4}  {row['status']}")
        lines.append(
            f"  read back: on-chip {pk['on_chip_bytes'] / 2**20:.2f} MiB, off-chip "
            f"{pk['off_chip_bytes'] / 2**20:.2f} MiB, caching token(s) "
            + (", ".join(f"{t:#x}" for t in pk["caching_tokens"]) or "none (streams everything)")
        )
        for mm in pk["log_mismatch"]:
            lines.append(f"warning: {m['edgetpu_model']} and the log disagree on {mm}")
        if m.get("ops_cpu"):
            lines.append(f"warning: part of {Path(m['model']).name} runs on the CPU (slower)")
    lines.append(f"on-chip parameters of all models: {r['on_chip_mib_total']:.2f} MiB")
    if r["shared_cache"]:
        lines.append("shared on-chip cache: yes (the models that cache parameters share a token)")
    else:
        lines.append(
            "warning: the compiled models share no parameter-caching token: they were not "
            "compiled together and will evict each other's cache on one Edge TPU"
        )
    return "\n".join(lines)
