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


def roc_auc(labels, scores) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied ranks); None with one class only."""
    y = np.asarray(labels, bool).ravel()
    s = np.asarray(scores, float).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average rank of each tie group
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
