"""`lucida bench engine|pipeline|overlay`: ours against the limit (or a peer) in one run, as JSON.

Each benchmark discards the first inference after a model load and reports p50/p90/p99.
"""

from __future__ import annotations

import json
import time

import numpy as np

BENCHES = ("engine", "pipeline", "overlay")


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: ours vs the limit or a peer, one JSON line")
    p.add_argument("which", choices=BENCHES)
    p.add_argument(
        "--bundle", default="lymph-m", help="bundle folder or shipped name (default lymph-m)"
    )
    p.add_argument("--runs", type=int, default=200, help="timed runs per variant")
    p.add_argument("--seconds", type=float, default=10.0, help="pipeline: how long to run")
    p.add_argument(
        "--threads", type=int, default=None, help="interpreter threads (default: all cores)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.set_defaults(func=run)


def resolve_bundle(spec: str):
    """A bundle folder or .tar.gz path, or the name of a shipped bundle."""
    from pathlib import Path

    from lucida.models import load_bundle, shipped_bundle

    return load_bundle(spec) if Path(spec).exists() else shipped_bundle(spec)


def run(args) -> int:
    if args.which == "engine":
        result = bench_engine(resolve_bundle(args.bundle), args.runs, args.threads)
    elif args.which == "pipeline":
        from .bench_pipeline import bench_pipeline

        result = bench_pipeline(resolve_bundle(args.bundle), args.seconds, args.threads)
    else:
        from .bench_overlay import run_overlay_bench

        result = run_overlay_bench(args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    return 0


def _interleaved(fns: dict, runs: int) -> dict:
    """Time each fn `runs` times, alternating between them so drift hits all alike (ns per call)."""
    for fn in fns.values():  # first call after load is discarded
        fn()
    times = {k: np.empty(runs, np.int64) for k in fns}
    for i in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter_ns()
            fn()
            times[k][i] = time.perf_counter_ns() - t
    return times


def bench_engine(bundle, runs: int = 200, threads: int | None = None) -> dict:
    """Raw interpreter (set_tensor + invoke + get_tensor) vs Engine.infer on a single-tile frame.

    Both run on the engine's own interpreter, alternating call by call, so the only difference
    is the engine's work around invoke (quantization, dequantization, the heatmap's affine).
    """
    from lucida.runtime.engine import Engine
    from lucida.runtime.stats import percentiles_ms

    engine = Engine(bundle, device="cpu", num_threads=threads)
    raw = engine.interpreter
    i, o = raw.get_input_details()[0], raw.get_output_details()[0]
    m = bundle.manifest
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (m.input.height, m.input.width, 3), dtype=np.uint8)
    x = frame[None].astype(i["dtype"])

    def raw_call():
        raw.set_tensor(i["index"], x)
        raw.invoke()
        return raw.get_tensor(o["index"])

    def engine_call():
        return engine.infer(frame, um_per_px=m.input.um_per_px)

    t = _interleaved({"raw": raw_call, "engine": engine_call}, runs)
    r, e = percentiles_ms(t["raw"], "raw_ms"), percentiles_ms(t["engine"], "engine_ms")
    return {
        "bench": "engine",
        "bundle": bundle.name,
        "input": f"{m.input.width}x{m.input.height}",
        "backend": f"{engine.info.backend} {engine.info.backend_version}",
        "threads": engine.num_threads,
        "runs": runs,
        **r,
        **e,
        "overhead_ratio": round(float(np.median(t["engine"]) / np.median(t["raw"])), 4),
    }
