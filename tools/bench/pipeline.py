"""`lucida bench pipeline`: the loop's processed fps against the model-bound limit, in one run.

The limit is 1 / (tiles per frame x one invoke p50) of the same bundle on a 1920x1080 frame; the
pipeline then runs on a replay of 1920x1080 virtual-microscope frames paced faster than that limit.
"""

from __future__ import annotations

import time

import numpy as np
from lucida.overlay.compose import ARComposer
from lucida.runtime.models import ModelSelector, pipeline_threads
from lucida.runtime.pipeline import Optics, Pipeline, nominal_um_per_px
from lucida.runtime.sources import ReplaySource
from lucida.runtime.stats import percentiles_ms

SIZE = (1920, 1080)


class NullSink:
    """Takes canvases and does nothing: the bench measures the loop, not a display."""

    name = "null"

    def open(self):
        pass

    def show(self, canvas, t_capture_ns=None):
        pass

    def close(self):
        pass


def _frames(n: int, objective: str, seed: int = 1000) -> list[np.ndarray]:
    """1080p frames of a held-out virtual slide (random noise if the virtual microscope is absent)."""
    try:
        from lucida.runtime.virtual.tissue import SyntheticSlide
    except ImportError:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8) for _ in range(n)]
    slide = SyntheticSlide(seed)
    rng = np.random.default_rng(seed)
    um = nominal_um_per_px(objective)
    out = []
    for _ in range(n):
        x, y = slide.random_point(rng)
        out.append(slide.render(x - SIZE[0] * um / 2, y - SIZE[1] * um / 2, *SIZE, um)[0])
    return out


def bench_pipeline(
    bundle, seconds: float = 10.0, threads: int | None = None, objective: str = "10x"
) -> dict:
    """Processed fps of the loop against 1 / (tiles per frame x invoke p50), both taken in the
    same measurement window from the same interpreter (so host drift hits both alike)."""
    frames = _frames(8, objective)
    threads = threads or pipeline_threads()
    um = nominal_um_per_px(objective)
    models = ModelSelector(bundle=bundle, num_threads=threads)
    engine = models.engine(bundle)
    m = bundle.manifest
    mw, mh = engine.model_size(*SIZE, um)
    tiles = len(engine.plan(mw, mh).tiles) if (mw, mh) != (m.input.width, m.input.height) else 1
    for f in frames[:2]:  # first inferences after the load are discarded
        engine.infer(f, um_per_px=um)
    alone = np.median([_timed(engine.infer, f, um) for f in frames * 2])
    source = ReplaySource(frames, fps=min(2 * 1e9 / alone, 120.0), objective=objective)
    pipe = Pipeline(
        source,
        models,
        ar=ARComposer(SIZE, eyepiece_circle=(SIZE[0] / 2, SIZE[1] / 2, SIZE[1] / 2)),
        ar_sinks=[NullSink()],
        optics_for=lambda _objective: Optics(um_per_px=um),
    )
    pipe.start()
    time.sleep(min(2.0, seconds / 4))  # warm-up
    engine.invoke_ns.clear()
    n0, t0 = pipe.stats.counts["processed"], time.monotonic()
    time.sleep(seconds)
    n1, t1 = pipe.stats.counts["processed"], time.monotonic()
    invoke = np.array(engine.invoke_ns)
    st = pipe.status()
    pipe.stop()
    fps = (n1 - n0) / (t1 - t0)
    limit_fps = 1e9 / (np.median(invoke) * tiles)
    interval_ms = 1000.0 / source.fps
    bound = st["infer_ms_p99"] + 2 * interval_ms + st["render_ms_p99"]
    return {
        "bench": "pipeline",
        "bundle": bundle.name,
        "objective": objective,
        "frame": f"{SIZE[0]}x{SIZE[1]}",
        "model_input": f"{mw}x{mh}",
        "tiles_per_frame": tiles,
        "threads": engine.num_threads,
        "source_fps": round(source.fps, 2),
        "limit_fps": round(float(limit_fps), 2),
        "fps": round(fps, 2),
        "throughput_ratio": round(float(fps / limit_fps), 4),
        "latency_ms_p50": st["latency_ms_p50"],
        "latency_ms_p90": st["latency_ms_p90"],
        "latency_ms_p99": st["latency_ms_p99"],
        **percentiles_ms(invoke, "invoke_ms"),
        "frame_infer_ms_p50": st["infer_ms_p50"],
        "frame_infer_ms_p99": st["infer_ms_p99"],
        "render_ms_p50": st["render_ms_p50"],
        "render_ms_p99": st["render_ms_p99"],
        "latency_bound_ms": round(bound, 3),
        "latency_within_bound": bool(st["latency_ms_p99"] <= bound),
        "drops_capture": st["drops_capture"],
        "drops_result": st["drops_result"],
    }


def _timed(fn, *args) -> int:
    t0 = time.perf_counter_ns()
    fn(*args)
    return time.perf_counter_ns() - t0
