"""`lucida bench engine`: the engine's work around invoke against the raw interpreter, same calls.

The first inference after a model load is discarded; times are ns per call, reported as p50/p90/p99.
"""

from __future__ import annotations

import os
import time

import numpy as np


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
    is the engine's work around invoke (quantization, output decoding, the heatmap's affine).
    decode_ratio: 1 + (output decoding alone) / raw, from the same run: steadier than
    overhead_ratio on a loaded machine, where scheduling noise hits whole calls.
    decode_1thread_cpu_ms_p50: the decoding's work on one thread, in thread CPU time (what other
    jobs on the machine do not change much).
    """
    from lucida.runtime.engine import Engine
    from lucida.runtime.outputs import OutputDecoder
    from lucida.runtime.pipeline import single_threaded_opencv
    from lucida.runtime.stats import percentiles_ms

    single_threaded_opencv()  # as the daemon runs the engine
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

    out = raw_call()[0].copy()

    def decode_call():  # the output decoding alone (no interpreter): steady CPU work
        return engine.decoder.positive(out)

    load_before = os.getloadavg()[0]
    t = _interleaved({"raw": raw_call, "engine": engine_call, "decode": decode_call}, runs)
    one = OutputDecoder(m.output, m.quantization.output, threads=1)
    one.positive(out)
    cpu = np.empty(runs, np.int64)
    for k in range(runs):  # the decoding's work: CPU time of one thread, whatever the load
        c = time.thread_time_ns()
        one.positive(out)
        cpu[k] = time.thread_time_ns() - c
    r, e = percentiles_ms(t["raw"], "raw_ms"), percentiles_ms(t["engine"], "engine_ms")
    d = percentiles_ms(t["decode"], "decode_ms")
    return {
        "bench": "engine",
        "bundle": bundle.name,
        "input": f"{m.input.width}x{m.input.height}",
        "backend": f"{engine.info.backend} {engine.info.backend_version}",
        "threads": engine.num_threads,
        "runs": runs,
        "output": f"{m.output.kind} {[int(v) for v in o['shape']]} {np.dtype(o['dtype']).name} "
        f"{m.output.activation}",
        # softmax outputs: decoded by the compiled kernel (runtime/softmax_kernel.c, built where
        # the install found a C compiler) or by the NumPy path (LUCIDA_NATIVE_DECODE=0 forces it)
        "softmax_decode": ("compiled" if engine.decoder.compiled else "numpy")
        if m.output.activation == "softmax"
        else None,
        **r,
        **e,
        **d,
        "decode_1thread_cpu_ms_p50": round(float(np.median(cpu)) / 1e6, 3),
        "overhead_ratio": round(float(np.median(t["engine"]) / np.median(t["raw"])), 4),
        "decode_ratio": round(1 + float(np.median(t["decode"]) / np.median(t["raw"])), 4),
        # 1-minute load average before and after the timed runs: the ratios are only as steady
        # as the machine (other jobs take the cores that invoke and decoding share)
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
