"""`lucida bench engine|pipeline|overlay|safety`: ours against the limit (or a peer), as JSON.

`lucida bench models --out DIR` builds one bundle per output kind to bench the engine on.

Each benchmark discards the first inference after a model load and reports p50/p90/p99.
"""

from __future__ import annotations

import json

BENCHES = ("engine", "pipeline", "overlay", "models", "safety")


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: ours vs the limit or a peer, one JSON line")
    p.add_argument("which", choices=BENCHES)
    p.add_argument(
        "--bundle", default="lymph-m", help="bundle folder or shipped name (default lymph-m)"
    )
    p.add_argument("--runs", type=int, default=200, help="timed runs per variant")
    p.add_argument(
        "--seconds", type=float, default=10.0, help="pipeline: how long to run; safety: per tour"
    )
    p.add_argument(
        "--seeds", default="1,2", help="safety: tour seeds, comma-separated (default 1,2)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="interpreter threads (default: all cores)"
    )
    p.add_argument(
        "--sim-edgetpu-ms",
        type=float,
        default=None,
        help="pipeline: run on a SIMULATED Edge TPU (tests/fake_edgetpu.c) taking this many ms "
        "per invoke; measures orchestration, not accuracy",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="pipeline with --sim-edgetpu-ms: simulated devices (1 device is measured too)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument("--out", default="bench-models", help="models: folder for the bundles")
    p.set_defaults(func=run)


def run(args) -> int:
    from lucida.models import resolve_bundle

    if args.which == "models":
        from lucida.tools.bench.models import build_bench_models

        result = build_bench_models(args.out)
    elif args.which == "engine":
        from lucida.tools.bench.engine import bench_engine

        result = bench_engine(resolve_bundle(args.bundle), args.runs, args.threads)
    elif args.which == "pipeline":
        from lucida.tools.bench.pipeline import bench_pipeline

        result = bench_pipeline(
            resolve_bundle(args.bundle),
            args.seconds,
            args.threads,
            sim_edgetpu_ms=args.sim_edgetpu_ms,
            devices=args.devices,
        )
    elif args.which == "safety":
        from lucida.tools.bench.safety import bench_safety

        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds {args.seeds!r}: expected integers like 1,2") from None
        result = bench_safety(
            resolve_bundle(args.bundle), args.seconds, seeds, threads=args.threads
        )
    else:
        from lucida.tools.bench.overlay import run_overlay_bench

        result = run_overlay_bench(args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    return 0
