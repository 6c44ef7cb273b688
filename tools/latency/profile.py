"""`lucida profile BUNDLE...`: measured per-invoke latency on a target, into the latency database.

The timing protocol (interleaved windows, the clock, host drift) is in `lucida.tools.latency.timing`.

Local targets are keyed by CPU model, interpreter threads and clock (`--threads`, default 1;
use the device's core count, with wall clock, to profile for a real deployment). A remote target
(`--target http://DEVICE:PORT --token T`) runs the daemon's POST /benchmark on a bundle installed
there (named by its manifest name); the device uses its own configured threads and delegate.

A (model sha256, target, backend) already in the database is never measured again (`--force`
measures anyway).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from lucida.models import resolve_bundle
from lucida.tools.latency.db import LatencyDB, Measurement, default_clock, resolve_target
from lucida.tools.latency.timing import WINDOW_S, HostDrift, ProfileError, measure, pick_anchors


def model_record(bundle, model_file: str = "cpu.tflite") -> dict:
    """What the DB keeps about a bundle's model: name, path, kind, candidate seed/spec, features,
    metrics."""
    from lucida.tools.latency.candidates import read_spec
    from lucida.tools.latency.whole_model import model_features

    spec = read_spec(bundle)
    path = bundle.file(model_file)
    return {
        "name": bundle.name,
        "path": str(path),
        "kind": "candidate" if spec is not None else "bundle",
        "seed": spec.seed if spec is not None else None,
        "spec": spec.to_dict() if spec is not None else None,
        "features": model_features(path),
        "metrics": dict(bundle.manifest.metrics) or None,
    }


def _versions(backend_name: str, backend_version: str) -> dict:
    return {
        backend_name: backend_version,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def profile_local(
    specs: list[str],
    db: LatencyDB,
    threads: int = 1,
    device: str = "cpu",
    runs: int = 50,
    seconds: float = 1.0,
    window_s: float = WINDOW_S,
    clock: str | None = None,
    force: bool = False,
    anchors: int = 4,
    progress: bool = False,
) -> list[dict]:
    """Profile bundles on this machine; rows for all of them (cached ones marked "cached").

    anchors: that many models the DB already knows on this target are re-timed alongside, and
    the new figures are divided by the host's speed now relative to then (see module doc).
    """
    from lucida.runtime.engine import Engine

    clock = clock or default_clock(threads)
    target = resolve_target("local", threads, clock)
    rows: dict[str, dict] = {}
    fns: dict[str, Callable] = {}
    engines = {}
    order: list[str] = []
    for spec in specs:
        bundle = resolve_bundle(spec)
        engine = Engine(bundle, device=device, num_threads=threads)
        info = engine.info
        backend = f"{info.backend}-{info.backend_version}/{info.delegate.split(':')[0]}"
        rec = model_record(bundle, info.model_file)
        db.add_model(info.model_sha256, **rec)
        key = info.model_sha256
        if key in order:
            continue  # the same model named twice
        order.append(key)
        known = None if force else db.get(key, target, backend)
        if known is not None:
            rows[key] = {"bundle": bundle.name, "cached": True, **known.to_dict()}
            continue
        m = bundle.manifest
        tile = np.random.default_rng(0).integers(
            0, 256, (m.input.height, m.input.width, 3), np.uint8
        )
        engines[key] = (bundle, engine, backend)
        fns[key] = (lambda e, t: lambda: e.infer_tile(t))(engine, tile)
    anchor_rows = {}
    if fns and anchors > 0:
        backends = {b for _, _, b in engines.values()}
        for m, known, engine, tile in pick_anchors(db, target, backends, set(order), anchors):
            key = "anchor:" + m["sha256"]
            anchor_rows[key] = known
            fns[key] = (lambda e, t: lambda: e.infer_tile(t))(engine, tile)
    results = measure(fns, runs, seconds, window_s=window_s, clock=clock, progress=progress)
    drift = HostDrift(
        [(x.p50_ms, results[k]["p50_ms"]) for k, x in anchor_rows.items() if x.p50_ms > 0]
    )
    host, machine = platform.node(), platform.machine()
    command = " ".join(["lucida", *sys.argv[1:]]) if sys.argv else ""
    for key, r in results.items():
        if key in anchor_rows:
            continue
        bundle, engine, backend = engines[key]
        info = engine.info
        scale = drift.scale(r["p50_ms"])
        for q in ("p50_ms", "p90_ms", "p99_ms", "wall_p50_ms"):
            if r.get(q) is not None:
                r[q] = round(r[q] / scale, 4)
        meas = Measurement(
            sha256=key,
            target=target,
            backend=backend,
            delegate=info.delegate,
            threads=threads,
            host=host,
            machine=machine,
            versions=_versions(info.backend, info.backend_version),
            load1=_load1(),
            command=command,
            scale=round(scale, 4),
            anchors=len(drift.points),
            **r,
        )
        db.put(meas)
        rows[key] = {"bundle": bundle.name, "cached": False, **meas.to_dict()}
    return [rows[k] for k in order]


def profile_remote(
    specs: list[str],
    db: LatencyDB,
    url: str,
    token: str | None,
    runs: int = 50,
    force: bool = False,
    progress: bool = False,
) -> list[dict]:
    """Profile bundles installed on a device through its daemon's POST /benchmark."""
    from lucida.tools.toolchain.deploy import request
    from tqdm import tqdm

    target = resolve_target(url)
    rows = []
    for spec in tqdm(specs, desc="profiling", unit="bundle", disable=not progress, leave=False):
        name, sha = spec, None
        if Path(spec).exists():  # a local copy: its hash tells whether the DB knows it already
            bundle = resolve_bundle(spec)
            name, sha = bundle.name, bundle.sha256("cpu.tflite")
            db.add_model(sha, **model_record(bundle))
            if not force:
                known = db.get(sha, target)
                if known is None and bundle.has_edgetpu:
                    sha_tpu = bundle.sha256("edgetpu.tflite")
                    known = db.get(sha_tpu, target)
                if known is not None:
                    rows.append({"bundle": name, "cached": True, **known.to_dict()})
                    continue
        answer = request(url, "/benchmark", token, body=json.dumps({"bundle": name, "runs": runs}))
        try:
            meas = Measurement(
                sha256=answer["sha256"],
                target=target,
                backend=f"{answer['backend']}-{answer['backend_version']}/"
                f"{str(answer['delegate']).split(':')[0]}",
                delegate=answer["delegate"],
                p50_ms=float(answer["ms_p50"]),
                p90_ms=float(answer["ms_p90"]),
                p99_ms=float(answer["ms_p99"]),
                runs=int(answer["runs"]),
                host=str(answer.get("host", "")),
                machine=str(answer.get("machine", "")),
                versions={answer["backend"]: answer["backend_version"]},
                command=" ".join(["lucida", *sys.argv[1:]]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{url}/benchmark: unexpected answer {answer!r} ({exc})") from None
        if sha is None or db.model(meas.sha256) is None:
            db.add_model(meas.sha256, name=str(answer.get("bundle", name)), path="", kind="bundle")
        db.put(meas)
        rows.append({"bundle": answer.get("bundle", name), "cached": False, **meas.to_dict()})
    return rows


# -- CLI ---------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser(
        "profile", help="measure per-invoke latency of bundles on a target (latency database)"
    )
    p.add_argument("bundles", nargs="*", help="bundle folders, .tar.gz files or shipped names")
    p.add_argument("--target", default="local", help="'local' (this machine) or http://DEVICE:PORT")
    p.add_argument("--threads", type=int, default=1, help="local: interpreter threads (default 1)")
    p.add_argument("--device", default="cpu", help="local: cpu, auto, usb:0, pci:0 (default cpu)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per bundle, at least (50)")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per bundle (1.0)")
    p.add_argument(
        "--window-ms",
        type=float,
        default=WINDOW_S * 1000,
        help=f"local: interleaving window per bundle, ms ({WINDOW_S * 1000:g})",
    )
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="local: time runs by the thread's CPU time (default with --threads 1) or wall clock",
    )
    p.add_argument("--db", default=None, help="latency database (build/latency.sqlite)")
    p.add_argument("--token", default=os.environ.get("LUCIDA_TOKEN"), help="remote: bearer token")
    p.add_argument("--force", action="store_true", help="measure even when the DB has it")
    p.add_argument(
        "--anchors",
        type=int,
        default=4,
        help="local: known models re-timed alongside to correct for host speed drift (4)",
    )
    p.add_argument(
        "--record-overhead",
        metavar="BENCH_JSON",
        default=None,
        help="store capture + render ms per frame for the target (for `select --fps`) from the "
        "output of `lucida bench pipeline --json` ('-': stdin)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per bundle")
    p.set_defaults(func=run)


def record_overhead(db: LatencyDB, target: str, source: str) -> dict:
    """Store render_ms_p50 (+ capture_ms_p50 when present) of a `bench pipeline` JSON."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        bench = json.loads(text.strip().splitlines()[-1])
        render = float(bench["render_ms_p50"])
        capture = float(bench.get("capture_ms_p50", 0.0))
    except (ValueError, KeyError, TypeError, IndexError):
        raise ProfileError(
            f"{source}: not the JSON of `lucida bench pipeline --json` (needs render_ms_p50)"
        ) from None
    what = f"bench pipeline {bench.get('bundle', '?')} {bench.get('frame', '')}".strip()
    db.put_overhead(target, capture, render, what)
    return {"target": target, "capture_ms": capture, "render_ms": render, "source": what}


def run(args) -> int:
    if args.runs < 50 or args.seconds < 1.0:
        raise ProfileError("--runs must be >= 50 and --seconds >= 1.0 (the protocol's minimum)")
    if args.threads < 1:
        raise ProfileError("--threads must be >= 1")
    progress = not args.json and sys.stderr.isatty()
    if args.record_overhead is not None:
        target = resolve_target(args.target, args.threads, args.clock)
        with LatencyDB(args.db) as db:
            row = record_overhead(db, target, args.record_overhead)
        print(json.dumps(row) if args.json else f"overhead for {target}: {row}")
        if not args.bundles:
            return 0
    if not args.bundles:
        raise ProfileError("name at least one bundle to profile")
    with LatencyDB(args.db) as db:
        if args.target.startswith(("http://", "https://")):
            rows = profile_remote(
                args.bundles, db, args.target, args.token, args.runs, args.force, progress
            )
        elif args.target == "local":
            rows = profile_local(
                args.bundles,
                db,
                threads=args.threads,
                device=args.device,
                runs=args.runs,
                seconds=args.seconds,
                window_s=args.window_ms / 1000,
                clock=args.clock,
                force=args.force,
                anchors=args.anchors,
                progress=progress,
            )
        else:
            raise ProfileError(f"--target {args.target!r}: expected 'local' or http://HOST:PORT")
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"target {rows[0]['target'] if rows else args.target}  (db {db.path})")
    print(f"{'bundle':<20} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'runs':>6}  backend")
    for r in rows:
        note = " (cached)" if r["cached"] else ""
        print(
            f"{r['bundle']:<20} {r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} {r['p99_ms']:>9.3f} "
            f"{r['runs']:>6}  {r['backend']}{note}"
        )
    return 0
