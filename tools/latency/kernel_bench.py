"""Measure plain .tflite files (sampled kernels, held-out real networks) on this CPU, into the DB.

One run = one `Interpreter.invoke()` on a fixed random input, 1 interpreter thread, timed by
the thread's CPU time (`profile.measure` with clock "cpu": other processes on a shared host do
not count). Files are measured in batches whose windows are interleaved (`profile.measure`);
every batch also re-times ANCHORS (four fixed kernels spread over 0.01..2 ms) and divides its
figures by the host's speed now relative to the anchors' first figures on this target
(`profile.HostDrift`), so kernels measured minutes apart stay on one scale, and the held-out
networks are on the same scale as the kernels they are predicted from.

Results go to the latency database like any profile (kind "kernel" or "zoo"), keyed by the file's
sha256, the target and the backend: nothing is measured twice.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys

import numpy as np
from lucida.tools.latency.db import LatencyDB, Measurement, resolve_target
from lucida.tools.latency.kernel_space import KernelSpec

ANCHORS = (
    KernelSpec("add", 8, 8, 32),
    KernelSpec("dwconv", 56, 56, 144, 144, 3, 1, "relu6"),
    KernelSpec("conv1x1", 28, 28, 128, 128, 1, 1, "relu6"),
    KernelSpec("convKxK", 56, 56, 64, 64, 3, 1, "relu6"),
)
ANCHOR_KIND = "kernel-anchor"


def backend_name() -> str:
    """'<interpreter>-<version>/cpu', as `lucida profile` names a CPU backend."""
    from lucida.runtime.backends import select_backend

    b = select_backend()
    return f"{b.name}-{b.version}/cpu"


def invoker(source: str | os.PathLike | bytes):
    """A no-argument callable that runs one invoke of the model on a fixed random input."""
    from lucida.runtime.backends import select_backend

    Interp = select_backend().Interpreter
    if isinstance(source, (bytes, bytearray)):
        it = Interp(model_content=bytes(source), num_threads=1)
    else:
        it = Interp(model_path=str(source), num_threads=1)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        dt = np.dtype(d["dtype"])
        if dt.kind == "f":
            x = rng.uniform(-1, 1, d["shape"]).astype(dt)
        else:
            info = np.iinfo(dt)
            x = rng.integers(max(info.min, -128), min(info.max, 255) + 1, d["shape"]).astype(dt)
        it.set_tensor(d["index"], x)
    return it.invoke


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def measure_files(
    items: list[tuple[str, bytes, dict]],
    db: LatencyDB,
    kind: str,
    batch: int = 48,
    min_runs: int = 5,
    min_seconds: float = 0.05,
    warmup_s: float = 0.02,
    window_s: float = 0.01,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Measurement]:
    """Measure models (name, .tflite bytes, record for db.add_model) not yet in the DB for this
    CPU; {sha256: Measurement} for all of them (cached ones included)."""
    from lucida.tools.latency.timing import HostDrift, measure
    from tqdm import tqdm

    target = resolve_target("local", 1, "cpu")
    backend = backend_name()
    out: dict[str, Measurement] = {}
    todo = []
    for name, data, rec in items:
        key = sha256(data)
        db.add_model(key, name=name, kind=kind, **rec)
        known = None if force else db.get(key, target, backend)
        if known is not None:
            out[key] = known
        elif key not in {k for k, _ in todo}:
            todo.append((key, data))
    if not todo:
        return out
    anchors = anchor_points(db, target, backend)
    chunks = [todo[i : i + batch] for i in range(0, len(todo), batch)]
    command = " ".join(["lucida", *sys.argv[1:]])
    for chunk in tqdm(chunks, desc=f"measuring {kind}s", unit="batch", disable=not progress):
        fns = {k: invoker(d) for k, d in chunk}
        for key, (_, data) in anchors.items():
            fns["anchor:" + key] = invoker(data)
        res = measure(fns, min_runs, min_seconds, warmup_s, window_s=window_s, clock="cpu")
        drift = HostDrift(
            [(ref.p50_ms, res["anchor:" + k]["p50_ms"]) for k, (ref, _) in anchors.items()]
        )
        for key, _ in chunk:
            r = res[key]
            scale = drift.scale(r["p50_ms"])
            for q in ("p50_ms", "p90_ms", "p99_ms", "wall_p50_ms"):
                if r.get(q) is not None:
                    r[q] = round(r[q] / scale, 5)
            m = _cpu_measurement(
                key, target, backend, command, scale=round(scale, 4), anchors=len(drift.points), **r
            )
            db.put(m)
            out[key] = m
        del fns
    return out


def _cpu_measurement(key: str, target: str, backend: str, command: str, **figures) -> Measurement:
    """A one-thread CPU measurement of a kernel on this host (figures: p50_ms, ..., scale)."""
    return Measurement(
        sha256=key,
        target=target,
        backend=backend,
        delegate="cpu",
        threads=1,
        host=platform.node(),
        machine=platform.machine(),
        load1=round(os.getloadavg()[0], 2),
        command=command,
        **figures,
    )


def anchor_points(db: LatencyDB, target: str, backend: str) -> dict[str, tuple[Measurement, bytes]]:
    """The anchor kernels with their reference figures on this target (measured now, together,
    the first time: they define the target's scale)."""
    from lucida.tools.latency.kernel_space import build
    from lucida.tools.latency.timing import measure

    blobs = {}
    for spec in ANCHORS:
        data = build(spec)
        key = sha256(data)
        db.add_model(key, name=spec.name, path="", kind=ANCHOR_KIND, spec=spec.to_dict())
        blobs[key] = data
    known = {k: db.get(k, target, backend) for k in blobs}
    missing = [k for k, m in known.items() if m is None]
    if missing:
        res = measure(
            {k: invoker(blobs[k]) for k in blobs}, 50, 1.0, 0.2, window_s=0.01, clock="cpu"
        )
        for k in blobs:
            if known[k] is None:
                m = _cpu_measurement(k, target, backend, "anchor reference", **res[k])
                db.put(m)
                known[k] = m
    return {k: (known[k], blobs[k]) for k in blobs}
