"""The kernel-level latency predictor (nn-Meter's approach on TFLite): a model's per-invoke
latency is a per-invoke constant plus the sum of its kernels' latencies, each predicted by a small
regressor of its kind fitted on sampled kernels measured alone (`kernel_space`, `kernel_bench`).

Per kind the regressor is (1) a cost linear in the kernel's work, fitted by non-negative least
squares on relative error: a per-call constant, MACs padded to XNNPACK's int8 tiles, MACs,
activation bytes in and out, parameter bytes, output pixels (non-negative: every term is a
physical cost), times (2) a correction for what a line misses (cache levels, tile shapes): the
distance-weighted mean log-ratio measured/linear of the k nearest sampled kernels in a standard-
ised space of log shapes (px, channels, kernel, stride, work). Both are plain numbers: the fitted
predictor is JSON (no pickle) and lives in the latency database.

Labels: a sampled kernel's file holds its op alone (or, for quantize/dequantize kernels, around
a ReLU6), so its label is its measured p50 minus the per-invoke constant (the median of the
smallest files' p50) minus the predicted cost of any other op in the file (fitted first),
divided by the number of ops of its kind in the file (a uint8 quantize file requantizes twice).
Adaptive sampling (`weak_spots`): 5-fold cross-validated error per sampled kernel; where a kind
has kernels off by more than 10 %, more kernels are drawn next to them.
"""

from __future__ import annotations

import math

import numpy as np
from lucida.tools.latency.whole_model import fit_nnls

VERSION = 2
K_NEIGHBOURS = 5
HEAVY = ("conv1x1", "convKxK", "dwconv", "fc", "tconv")
# kinds whose files hold another op too: fitted after the ones they contain
AFTER = {"quantize": ("relu",), "dequantize": ("relu",)}
UNKNOWN_AS = "add_c"  # kinds never sampled are costed as an element-wise op of their bytes


class KernelModelError(ValueError):
    """Too few measured kernels to fit, or a predictor of another version."""

    exit_code = 2


def linear_terms(kind: str, s: dict) -> list[float]:
    """The linear cost terms of one kernel (ms per unit is then O(1e-3..1))."""
    if kind in HEAVY:
        return [
            1.0,
            s["macs_pad"] / 1e6,
            s["macs"] / 1e6,
            s["in_bytes"] / 1e5,
            s["out_bytes"] / 1e5,
            s["param_bytes"] / 1e5,
            s["hout"] * s["wout"] / 1e4,
        ]
    return [1.0, s["in_bytes"] / 1e5, s["out_bytes"] / 1e5, s["elements"] / 1e5, 0.0, 0.0, 0.0]


def shape_vector(s: dict) -> list[float]:
    """Where a kernel sits in shape space (for the nearest-neighbour correction)."""
    return [
        math.log(s["hout"] * s["wout"]),
        math.log(max(s["cin"], 1)),
        math.log(max(s["cout"], 1)),
        float(s["k"]),
        float(s["stride"]),
        math.log1p(s["macs"] + s["elements"]),
    ]


def fit_kind(shapes: list[dict], y: np.ndarray, kind: str) -> dict:
    """One kind's regressor from kernel shapes and labels (ms)."""
    y = np.maximum(np.asarray(y, float), 1e-4)
    X = np.array([linear_terms(kind, s) for s in shapes])
    coef = fit_nnls(X, y)
    base = np.maximum(X @ coef, 1e-6)
    V = np.array([shape_vector(s) for s in shapes])
    mu, sd = V.mean(axis=0), V.std(axis=0)
    sd[sd == 0] = 1.0
    return {
        "coef": [float(c) for c in coef],
        "mu": [float(v) for v in mu],
        "sd": [float(v) for v in sd],
        "points": ((V - mu) / sd).round(5).tolist(),
        "logratio": np.log(y / base).round(5).tolist(),
        "n": int(len(y)),
    }


def predict_kind(reg: dict, kind: str, s: dict, exclude: int | None = None) -> float:
    """Predicted ms of one kernel (exclude: a training point left out, for cross-validation)."""
    base = max(float(np.dot(linear_terms(kind, s), reg["coef"])), 1e-6)
    pts = np.asarray(reg["points"])
    if len(pts) < 3:
        return base
    v = (np.asarray(shape_vector(s)) - np.asarray(reg["mu"])) / np.asarray(reg["sd"])
    d = np.linalg.norm(pts - v, axis=1)
    if exclude is not None:
        d[exclude] = np.inf
    idx = np.argsort(d)[:K_NEIGHBOURS]
    w = 1.0 / (d[idx] + 0.3)
    corr = float(np.sum(w * np.asarray(reg["logratio"])[idx]) / np.sum(w))
    return base * math.exp(corr)


def per_invoke_constant(rows: list[dict]) -> float:
    """ms every invoke costs (the median p50 of the 5 fastest sampled kernels' files)."""
    p = sorted(r["p50_ms"] for r in rows)
    return float(np.median(p[:5])) * 0.9 if p else 0.0


def fit(rows: list[dict], quantile: str = "p50_ms") -> dict:
    """The predictor from measured kernels. rows: {"kind", "kernels": [(kind, shape), ...],
    "p50_ms", "p90_ms"} per sampled kernel file."""
    if len(rows) < 10:
        raise KernelModelError(
            f"{len(rows)} measured kernels are too few to fit the kernel predictor; run: "
            "lucida predict --fit-kernels"
        )
    c0 = per_invoke_constant(rows)
    kinds = sorted({r["kind"] for r in rows}, key=lambda k: k in AFTER)
    regs: dict[str, dict] = {}
    for kind in kinds:
        mine = [r for r in rows if r["kind"] == kind]
        shapes, ys = [], []
        for r in mine:
            others, main, count = 0.0, None, 0
            for k, s in r["kernels"]:
                if k == kind:
                    main = main or s
                    count += 1
                elif k in regs:
                    others += predict_kind(regs[k], k, s)
            if main is None:
                continue
            shapes.append(main)  # a quantize file holds two of the same size: half each
            ys.append(max(r[quantile] - c0 - others, 0.05 * r[quantile]) / count)
        if len(shapes) >= 3:
            regs[kind] = fit_kind(shapes, np.array(ys), kind)
    return {"version": VERSION, "kind": "kernel-level", "c0_ms": round(c0, 5), "kinds": regs}


def predict_model(pred: dict, kernels: list[tuple[str, dict]]) -> dict:
    """Predicted ms of a model from its (kind, shape) kernels: total, per kind, unknown kinds."""
    parts: dict[str, float] = {}
    unknown = []
    for kind, s in kernels:
        reg = pred["kinds"].get(kind)
        if reg is None:
            unknown.append(kind)
            reg = pred["kinds"].get(UNKNOWN_AS)
            if reg is None:
                continue
            ms = predict_kind(reg, UNKNOWN_AS, s)
        else:
            ms = predict_kind(reg, kind, s)
        parts[kind] = parts.get(kind, 0.0) + ms
    total = pred["c0_ms"] + sum(parts.values())
    return {
        "ms": total,
        "kernels_ms": {k: round(v, 4) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
        "unknown_kernels": sorted(set(unknown)),
    }


def cross_validate(rows: list[dict], quantile: str = "p50_ms") -> list[tuple[dict, float]]:
    """Leave-one-out relative error of every single-op sampled kernel under its kind's fit
    (the nearest-neighbour correction leaves the kernel itself out): (row, error) pairs."""
    pred = fit(rows, quantile)
    out = []
    for kind, reg in pred["kinds"].items():
        mine = [r for r in rows if r["kind"] == kind and len(r["kernels"]) == 1]
        for i, r in enumerate(mine):
            s = r["kernels"][0][1]
            p = pred["c0_ms"] + predict_kind(reg, kind, s, exclude=i)
            out.append((r, (p - r[quantile]) / r[quantile]))
    return out


def weak_spots(rows: list[dict], tolerance: float = 0.10) -> dict[str, list[dict]]:
    """Per kind, the sampled kernels predicted worse than tolerance under cross-validation."""
    bad: dict[str, list[dict]] = {}
    for r, err in cross_validate(rows):
        if abs(err) > tolerance:
            bad.setdefault(r["kind"], []).append(r)
    return bad
