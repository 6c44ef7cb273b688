"""Latency statistics: percentiles in ms, the way every benchmark and report prints them."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def percentiles(values: Iterable[float] | np.ndarray, prefix: str = "", ndigits: int = 3) -> dict:
    """{prefix p50, p90, p99} of the values, in their own unit, rounded; {} when empty."""
    a = np.asarray(values if isinstance(values, np.ndarray) else list(values), float)
    if a.size == 0:
        return {}
    return {
        f"{prefix}p{q}": round(float(v), ndigits)
        for q, v in zip((50, 90, 99), np.percentile(a, [50, 90, 99]))
    }


def percentiles_ms(samples_ns: Iterable[int] | np.ndarray, prefix: str = "ms") -> dict:
    """{prefix_p50, prefix_p90, prefix_p99} in ms from durations in ns (empty -> zeros)."""
    a = np.asarray(samples_ns if isinstance(samples_ns, np.ndarray) else list(samples_ns), float)
    return percentiles(a / 1e6, f"{prefix}_") or {f"{prefix}_p{q}": 0.0 for q in (50, 90, 99)}


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
