"""How `lucida profile` times a model on a shared host: the protocol, the clock, host drift.

Protocol (the same for every bundle, local or remote): the first inference after loading is
discarded, then >= 0.5 s of warm-up, then >= 50 timed runs over >= 1 s. Locally the timed runs are
split into short windows (25 ms) and the windows of all bundles profiled together are interleaved
round-robin in a shuffled order; each window starts with one untimed run (the previous bundle
evicted this one from the caches). On a shared host the speed of a core drifts by 2x on a scale of
100 ms (measured here: 25 ms-window medians of one model ranged 0.14..0.40 ms); fine interleaving
makes every bundle sample the same mix of host states, so their ratios hold even when the host's
mood does not. p50/p90/p99 over all timed runs. One run = `Engine.infer_tile` on a random tile
(quantize, invoke, dequantize): what the pipeline pays per tile.

Clock: with one interpreter thread (`--threads 1`, the default) a run is timed by the invoking
thread's CPU time (`--clock cpu`): XNNPACK then computes in that thread alone, so this equals the
wall latency on an idle core, and it leaves out the time the scheduler hands to other processes on
a shared development host (on this 2-core host at load 9, wall p90 was 3-6x the CPU-time p90).
The wall-clock p50 of the same runs is stored beside it.
`--clock wall` (the default with more threads) times wall clock only.

Host drift: on a shared host the speed of the core also drifts between sessions (here: 1.45x
to 1.6x between a busy and a quieter half hour). So each local profile run re-times `--anchors`
(4) models the database already has on the target, spread over its latency range, interleaved
with the new ones, and divides the new figures by the ratio now/then, interpolated over log
latency between the anchors (the drift is not the same for small and large models); they stay on
the target's scale (that of its first session). The factor is stored as `scale` (raw = stored x
scale); on a dedicated device it stays near 1. Measured here: 10 candidates re-profiled while
the host ran ~1.5x faster came back within 10 % of their first figures (mean 3.4 %; the median
factor alone: 9 of 10, mean 6.3 %; raw: none).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
from lucida.tools.latency.db import LatencyDB

WINDOW_S = 0.025  # s, one interleaving window per bundle


class ProfileError(ValueError):
    """A bundle or target that cannot be profiled."""


# -- the protocol --------------------------------------------------------------------
def measure(
    fns: dict[str, Callable[[], object]],
    min_runs: int = 50,
    min_seconds: float = 1.0,
    warmup_s: float = 0.5,
    window_s: float = WINDOW_S,
    clock: str = "wall",
    seed: int = 0,
    progress: bool = False,
    desc: str = "profiling",
) -> dict[str, dict]:
    """Time each callable (one invoke each); per key p50/p90/p99 ms, runs, windows, seconds.

    First call discarded, warm-up >= warmup_s; then windows of >= window_s, n = min_seconds /
    window_s (at least 5) per key, >= ceil(min_runs / n) timed runs each after one untimed run
    (caches refilled after the switch); the windows of all keys interleaved round-robin in a
    shuffled order, so every key samples the same spread of host states. Percentiles over all
    timed runs. clock "cpu": runs timed by the calling thread's CPU time (wall_p50_ms added).
    """
    from tqdm import tqdm

    if clock not in ("cpu", "wall"):
        raise ProfileError(f"clock {clock!r}: expected 'cpu' or 'wall'")
    keys = list(fns)
    if not keys:
        return {}
    windows = max(5, math.ceil(float(min_seconds) / window_s - 1e-9))
    per_window_runs = max(1, -(-int(min_runs) // windows))
    rng = random.Random(seed)
    samples: dict[str, list[int]] = {k: [] for k in keys}
    walls: dict[str, list[int]] = {k: [] for k in keys}
    timed_s = {k: 0.0 for k in keys}
    wall = time.perf_counter_ns
    cpu = time.thread_time_ns if clock == "cpu" else None
    span = int(window_s * 1e9)
    with tqdm(
        total=len(keys) * (windows + 1), desc=desc, unit="win", disable=not progress, leave=False
    ) as bar:
        for k in keys:  # first inference discarded, then warm-up
            fn = fns[k]
            fn()
            t_end = time.perf_counter() + warmup_s
            while time.perf_counter() < t_end:
                fn()
            bar.update(1)
        for _ in range(windows):
            order = keys[:]
            rng.shuffle(order)
            for k in order:
                fn, t, tw = fns[k], samples[k], walls[k]
                fn()  # untimed: the previous key's run evicted this one's data from the caches
                n, t_start = 0, wall()
                while n < per_window_runs or wall() - t_start < span:
                    if cpu is not None:
                        c0, w0 = cpu(), wall()
                        fn()
                        w1, c1 = wall(), cpu()
                        t.append(c1 - c0)
                    else:
                        w0 = wall()
                        fn()
                        w1 = wall()
                    tw.append(w1 - w0)
                    n += 1
                timed_s[k] += (wall() - t_start) / 1e9
                bar.update(1)
    out = {}
    for k in keys:
        runs = np.asarray(samples[k] if cpu is not None else walls[k], float) / 1e6
        p50, p90, p99 = np.percentile(runs, [50, 90, 99])
        out[k] = {
            "p50_ms": round(float(p50), 4),
            "p90_ms": round(float(p90), 4),
            "p99_ms": round(float(p99), 4),
            "runs": int(runs.size),
            "windows": windows,
            "seconds": round(timed_s[k], 3),
            "clock": clock,
        }
        if cpu is not None:
            out[k]["wall_p50_ms"] = round(float(np.median(walls[k])) / 1e6, 4)
    return out


class HostDrift:
    """How much slower the host runs now than when the anchors were measured, per latency.

    points: (p50 then, p50 now) of the anchors, ms. With >= 3 anchors the ratio is a line in
    log-log over the anchors' range (the drift hits small and large models differently: here
    0.60 for a 0.05 ms model, 0.75 for a 4 ms one), clamped at its ends; else their median.
    """

    def __init__(self, points: list[tuple[float, float]]):
        self.points = points
        self.median = float(np.median([b / a for a, b in points])) if points else 1.0
        self.line = None
        if len(points) >= 3:
            x = np.log([a for a, _ in points])
            y = np.log([b / a for a, b in points])
            if np.ptp(x) > 0:
                self.line = (np.polyfit(x, y, 1), float(x.min()), float(x.max()))

    def scale(self, p50_now: float) -> float:
        """raw / scale = the figure on the target's scale, for a model timed at p50_now ms."""
        if self.line is None or p50_now <= 0:
            return self.median
        (b, a), lo, hi = self.line
        s = self.median
        for _ in range(3):  # the model's latency on the old scale depends on the scale itself
            x = min(max(math.log(p50_now / s), lo), hi)
            s = math.exp(a + b * x)
        return s


def pick_anchors(db: LatencyDB, target: str, backends: set, exclude: set, k: int) -> list:
    """Up to k models measured on target (same backend, files still there, not in exclude),
    spread over the latency range: (model, measurement, engine, tile) each."""
    from lucida.models import load_bundle
    from lucida.runtime.engine import Engine

    pool = [
        (m, x)
        for m, x in db.measurements(target)
        if x.backend in backends
        and m["kind"] in ("bundle", "candidate")  # not sampled kernels or zoo files: no bundle
        and m["sha256"] not in exclude
        and m["path"]
        and Path(m["path"]).is_file()
    ]
    pool.sort(key=lambda mx: mx[1].p50_ms)
    picks = sorted({int(round(i)) for i in np.linspace(0, len(pool) - 1, k)}) if pool else []
    out = []
    for i in picks:
        m, x = pool[i]
        try:
            bundle = load_bundle(Path(m["path"]).parent)
            engine = Engine(bundle, device="cpu", num_threads=x.threads or 1)
        except (ValueError, OSError):
            continue
        if engine.info.model_sha256 != m["sha256"]:
            continue  # the folder holds another model now
        mi = bundle.manifest.input
        tile = np.random.default_rng(0).integers(0, 256, (mi.height, mi.width, 3), np.uint8)
        out.append((m, x, engine, tile))
    return out
