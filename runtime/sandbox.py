"""Untrusted models run in a child process first: load, allocate, golden check, with limits.

A crafted .tflite can crash the interpreter library (SIGSEGV) or hang it; in the daemon's own
process that takes the eyepiece overlay with it. `check_in_child` runs `python -m
lucida.runtime.sandbox BUNDLE` with an address-space limit (MiB, RLIMIT_AS) and a CPU-time
limit (s, RLIMIT_CPU) set by the child on itself before it imports the interpreter, and a
wall-clock timeout (s) enforced by the parent. A crash, a hang or a limit hit is a
`SandboxError` with one line ("the interpreter crashed loading this model: signal 11
(SIGSEGV)"); only a bundle that passed there is loaded in the caller's process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lucida.models.archive import short


class SandboxError(ValueError):
    """The model failed in the child process (crash, hang, limit, load or golden-check error)."""


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int = 1024  # address space of the child (MiB)
    cpu_s: int = 60  # CPU time of the child (s)
    timeout_s: float = 60.0  # wall clock before the child is killed (s)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def check_in_child(
    bundle_path: str | os.PathLike,
    device: str = "cpu",
    num_threads: int = 1,
    limits: SandboxLimits = SandboxLimits(),
) -> dict:
    """Load `bundle_path` (a verified bundle folder), allocate it and run its golden check in
    a child process; the health dict ({"ok": True, "max_abs_error": ...}) or SandboxError.
    A bare .tflite file is loaded, allocated and invoked once on zeros instead."""
    cmd = [
        sys.executable,
        "-m",
        "lucida.runtime.sandbox",
        str(bundle_path),
        "--device",
        device,
        "--threads",
        str(num_threads),
        "--memory-mb",
        str(limits.memory_mb),
        "--cpu-s",
        str(limits.cpu_s),
    ]
    env = {**os.environ, "PYTHONFAULTHANDLER": ""}
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            timeout=limits.timeout_s,
            env=env,
            stdin=subprocess.DEVNULL,
            close_fds=True,
        )
    except subprocess.TimeoutExpired:
        raise SandboxError(
            f"the interpreter hung loading this model: no answer within {limits.timeout_s:g} s"
        ) from None
    rc = proc.returncode
    if rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            raise SandboxError(f"loading this model used more than {limits.cpu_s} s of CPU")
        raise SandboxError(
            f"the interpreter crashed loading this model: signal {sig} ({_signal_name(sig)})"
        )
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise SandboxError(
            f"the model check exited with status {rc} without an answer: {short(tail[0], 160)}"
        )
    if answer.get("error"):
        raise SandboxError(short(answer["error"], 300)[1:-1])
    return answer["health"]


def _limit(memory_mb: int, cpu_s: int) -> None:
    import resource

    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        os.nice(19)  # the display process it protects keeps the CPU first
    except OSError:
        pass


def _run_tflite(path: Path, threads: int) -> dict:
    """Child side for a bare model: load, allocate, invoke once on zeros."""
    import numpy as np

    from .backends import select_backend

    interp = select_backend().Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    interp.invoke()
    outs = [interp.get_tensor(d["index"]).shape for d in interp.get_output_details()]
    return {"ok": True, "outputs": [list(map(int, s)) for s in outs]}


def main(argv: list[str] | None = None) -> int:
    """Child side: limits first, then load + golden check; one JSON line on stdout."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lucida.runtime.sandbox")
    ap.add_argument("bundle")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--cpu-s", type=int, default=60)
    args = ap.parse_args(argv)
    _limit(args.memory_mb, args.cpu_s)
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not mix with the answer
    try:
        if Path(args.bundle).is_file():
            answer = {"health": _run_tflite(Path(args.bundle), args.threads)}
            out.write(json.dumps(answer, default=str) + "\n")
            out.flush()
            return 0
        from lucida.models import load_bundle

        from .engine import Engine

        bundle = load_bundle(Path(args.bundle))
        engine = Engine(bundle, device=args.device, num_threads=args.threads)
        health = engine.health_check(raise_on_fail=False)
        answer = {"health": {**health, "delegate": engine.info.delegate}}
        if not health.get("ok"):
            answer["error"] = (
                f"golden check failed: max abs error {health.get('max_abs_error')} > "
                f"atol {health.get('atol')}"
            )
    except (MemoryError, SyntaxError):
        # near the limit, compiling a module being imported can fail as "SyntaxError: expected
        # ':'" (the parser out of memory; seen in a fresh clone, no .pyc yet): the same files
        # import in the caller, so in the child it is the limit
        answer = {"error": f"loading this model exceeded the {args.memory_mb} MiB memory limit"}
    except (ValueError, OSError, RuntimeError) as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    out.write(json.dumps(answer, default=str) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
