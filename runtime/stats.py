"""Latency statistics: percentiles in ms, the way every benchmark and report prints them."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def percentiles_ms(samples_ns: Iterable[int] | np.ndarray, prefix: str = "ms") -> dict:
    """{prefix_p50, prefix_p90, prefix_p99} in ms from durations in ns (empty -> NaN-free zeros)."""
    a = np.asarray(
        list(samples_ns) if not isinstance(samples_ns, np.ndarray) else samples_ns, float
    )
    if a.size == 0:
        return {f"{prefix}_p50": 0.0, f"{prefix}_p90": 0.0, f"{prefix}_p99": 0.0}
    p50, p90, p99 = np.percentile(a / 1e6, [50, 90, 99])
    return {f"{prefix}_p{q}": round(float(v), 3) for q, v in ((50, p50), (90, p90), (99, p99))}
