"""The whole-model latency predictor: a kernel sum fitted on whole measured models (the random
candidates) of a target that has been profiled before, a device's daemon included. (For this
machine's CPU, `kernel_model` is fitted on kernels measured alone and generalizes further.)

nn-Meter's idea on TFLite: a model's latency is the sum of its kernels' latencies, and each kernel
type has its own cost model. In an int8 TFLite graph every op already is a fused kernel (batch
norm folded, ReLU6 fused), so kernels = ops, typed by opcode and shape class: CONV_2D_1x1,
CONV_2D_KxK, DEPTHWISE_CONV_2D, ADD (two activations) vs ADD_C (an activation and a constant),
QUANTIZE, ... (an Edge TPU model's compiled part is one `edgetpu-custom-op` kernel).

Per kernel type the cost is linear in its work: a per-call constant, MACs, MACs padded to the
CPU's GEMM tiles (output channels to 16, input channels to 8: XNNPACK's int8 microkernels),
activation bytes read and written, parameter bytes. The coefficients of all kernel types, plus a
per-model constant and per-input/output-byte terms (quantize, dequantize, copies), are fitted
jointly on measured whole-model latencies by non-negative least squares on relative error
(we measure models, not single kernels; non-negativity keeps every kernel's cost physical, and a
linear model extrapolates to larger inputs, where trees cannot). One model for p50, one for p90.

Edge TPU: features from `edgetpu_compiler`'s log where one is given (on-chip and off-chip MiB,
ops left on the CPU) enter as model-level terms when the target's training models have them.

Baselines for `--evaluate`: linear in total MACs; a gradient-boosted regressor on whole-model
totals (MACs, params, activations, ops, input px); and, as an ablation, the kernel sum without
the padded-MACs term.

Fitted predictors are plain JSON (no pickle), stored in the latency database per target.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

PREDICTOR_VERSION = 1
OP_TERMS = ("n", "macs", "macs_pad", "in_bytes", "out_bytes", "param_bytes")
MODEL_TERMS = ("one", "input_bytes", "output_bytes")
TPU_TERMS = ("tpu_on_chip_mib", "tpu_off_chip_mib", "tpu_cpu_ops")
# units that keep the design matrix well conditioned: ms per unit is then O(0.001..1)
_SCALE = {
    "n": 1.0,
    "macs": 1e6,
    "macs_pad": 1e6,
    "in_bytes": 1e5,
    "out_bytes": 1e5,
    "param_bytes": 1e5,
    "one": 1.0,
    "input_bytes": 1e5,
    "output_bytes": 1e5,
    "tpu_on_chip_mib": 1.0,
    "tpu_off_chip_mib": 1.0,
    "tpu_cpu_ops": 1.0,
}


class PredictorError(ValueError):
    """No predictor for that target, or too little data to fit one."""

    exit_code = 2


# -- features ------------------------------------------------------------------------------------
def _ceil(x: int, m: int) -> int:
    return -(-int(x) // m) * m


def kernel_type(op) -> str:
    """The kernel class of one op (see module docstring)."""
    name = op.opcode
    if name == "CONV_2D" and len(op.inputs) > 1 and len(op.inputs[1].shape) == 4:
        kh, kw = op.inputs[1].shape[1:3]
        return "CONV_2D_1x1" if (kh, kw) == (1, 1) else "CONV_2D_KxK"
    if name in ("ADD", "MUL", "SUB") and any(t.constant for t in op.inputs):
        return name + "_C"
    return name


def op_features(op) -> dict:
    """Work of one op: MACs, MACs padded to GEMM tiles, bytes in/out/params."""
    macs = int(op.macs)
    pad = macs
    w = op.inputs[1].shape if len(op.inputs) > 1 else ()
    if op.opcode == "CONV_2D" and len(w) == 4 and op.outputs:
        co, kh, kw, ci = w
        out_hw = op.outputs[0].elements // max(co, 1)
        pad = out_hw * kh * kw * _ceil(ci, 8) * _ceil(co, 16)
    elif op.opcode == "DEPTHWISE_CONV_2D" and len(w) == 4 and op.outputs:
        _, kh, kw, co = w
        out_hw = op.outputs[0].elements // max(co, 1)
        pad = out_hw * kh * kw * _ceil(co, 16)
    return {
        "type": kernel_type(op),
        "n": 1,
        "macs": macs,
        "macs_pad": int(pad),
        "in_bytes": int(sum(t.bytes for t in op.inputs if not t.constant)),
        "out_bytes": int(op.activation_bytes),
        "param_bytes": int(op.param_bytes),
    }


def find_compiler_log(model_path: str | os.PathLike) -> Path | None:
    """edgetpu_compiler's log next to a compiled model (X_edgetpu.tflite -> X_edgetpu.log)."""
    p = Path(model_path)
    for cand in (p.with_suffix(".log"), p.parent / "edgetpu_compile.log"):
        if cand.is_file():
            return cand
    return None


def model_features(
    source: str | os.PathLike | bytes, compiler_log: str | os.PathLike | None = None
) -> dict:
    """Predictor features of a TFLite model: per-op rows, totals, Edge TPU compiler figures."""
    from lucida.tools.toolchain.tflite_reader import read_tflite

    m = read_tflite(source)
    ops = [op_features(op) for op in m.ops]
    feats = {
        "ops": ops,
        "input_bytes": int(sum(t.bytes for t in m.inputs)),
        "output_bytes": int(sum(t.bytes for t in m.outputs)),
        "totals": {
            "macs": int(m.macs),
            "param_bytes": int(m.param_bytes),
            "activation_bytes": int(m.activation_bytes),
            "ops": len(m.ops),
            "input_px": int(m.inputs[0].elements // max(m.inputs[0].shape[-1], 1))
            if m.inputs
            else 0,
        },
        "edgetpu": None,
    }
    if compiler_log is None and not isinstance(source, (bytes, bytearray, memoryview)):
        compiler_log = find_compiler_log(source)
    if compiler_log is not None:
        from lucida.tools.toolchain.compile import parse_compiler_log

        log = parse_compiler_log(Path(compiler_log).read_text(errors="replace"))
        feats["edgetpu"] = {
            "tpu_on_chip_mib": float(log.get("on_chip_mib", 0.0)),
            "tpu_off_chip_mib": float(log.get("off_chip_mib", 0.0)),
            "tpu_cpu_ops": float(log.get("ops_cpu", 0)),
        }
    return feats


# -- the kernel-sum model --------------------------------------------------------------------
def columns_for(feature_sets: list[dict], terms: tuple = OP_TERMS) -> list[str]:
    """Design-matrix columns: model terms, then TYPE:term for every kernel type seen."""
    types = sorted({op["type"] for f in feature_sets for op in f["ops"]})
    cols = list(MODEL_TERMS)
    if feature_sets and all(f.get("edgetpu") for f in feature_sets):
        cols += list(TPU_TERMS)
    cols += [f"{t}:{term}" for t in types for term in terms]
    return cols


def design_row(feats: dict, columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """One model's row (in _SCALE units) and the kernel types it has that the columns lack."""
    index = {c: i for i, c in enumerate(columns)}
    x = np.zeros(len(columns))
    unknown = []
    model_level = {
        "one": 1.0,
        "input_bytes": feats["input_bytes"],
        "output_bytes": feats["output_bytes"],
        **(feats.get("edgetpu") or {}),
    }
    for k, v in model_level.items():
        if k in index:
            x[index[k]] = v / _SCALE[k]
    for op in feats["ops"]:
        if f"{op['type']}:n" not in index:
            unknown.append(op["type"])
            continue
        for term in OP_TERMS:
            i = index.get(f"{op['type']}:{term}")
            if i is not None:
                x[i] += op[term] / _SCALE[term]
    return x, sorted(set(unknown))


def fit_nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error: min sum(((Xb - y) / y)^2), b >= 0."""
    from scipy.optimize import nnls

    A = X / y[:, None]
    norms = np.linalg.norm(A, axis=0)
    norms[norms == 0] = 1.0
    b, _ = nnls(A / norms, np.ones_like(y), maxiter=50 * X.shape[1])
    return b / norms


def fit_kernel_model(
    feature_sets: list[dict], p50: np.ndarray, p90: np.ndarray, terms: tuple = OP_TERMS
) -> dict:
    """Fit the kernel-sum model on measured models; a JSON-able dict (see `predict`)."""
    if len(feature_sets) < 8:
        raise PredictorError(
            f"{len(feature_sets)} measured models are too few to fit a predictor (need >= 8); "
            "generate and profile candidates: lucida candidates && lucida profile "
            "build/candidates/cand-*"
        )
    cols = columns_for(feature_sets, terms)
    X = np.stack([design_row(f, cols)[0] for f in feature_sets])
    used = X.any(axis=0)
    cols = [c for c, u in zip(cols, used) if u]
    X = X[:, used]
    b50 = fit_nnls(X, np.asarray(p50, float))
    b90 = fit_nnls(X, np.asarray(p90, float))
    return {
        "version": PREDICTOR_VERSION,
        "kind": "kernel-sum-nnls",
        "columns": cols,
        "scale": {c: _SCALE[c.split(":")[-1]] for c in cols},
        "coef_p50": [float(v) for v in b50],
        "coef_p90": [float(v) for v in b90],
        "trained_on": len(feature_sets),
    }


def predict(model: dict, feats: dict) -> dict:
    """p50/p90 ms of one model from its features; per-kernel-type p50 breakdown; unknown kernels."""
    cols = model["columns"]
    x, unknown = design_row(feats, cols)
    b50, b90 = np.asarray(model["coef_p50"]), np.asarray(model["coef_p90"])
    parts: dict[str, float] = {}
    for c, v in zip(cols, x * b50):
        key = c.split(":")[0] if ":" in c else "per-model"
        parts[key] = parts.get(key, 0.0) + float(v)
    p50 = float(x @ b50)
    p90 = max(float(x @ b90), p50)
    return {
        "p50_ms": round(p50, 4),
        "p90_ms": round(p90, 4),
        "kernels_ms": {k: round(v, 4) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
        "unknown_kernels": unknown,
    }


# -- baselines -------------------------------------------------------------------------------
def fit_macs_linear(feature_sets: list[dict], y: np.ndarray) -> tuple[float, float]:
    """Baseline: latency = a + b * total MACs, least squares on relative error."""
    macs = np.array([f["totals"]["macs"] / 1e6 for f in feature_sets])
    A = np.stack([np.ones_like(macs), macs], axis=1) / y[:, None]
    coef, *_ = np.linalg.lstsq(A, np.ones_like(y), rcond=None)
    return float(coef[0]), float(coef[1])


def _totals_matrix(feature_sets: list[dict]) -> np.ndarray:
    keys = ("macs", "param_bytes", "activation_bytes", "ops", "input_px")
    return np.array([[math.log1p(f["totals"][k]) for k in keys] for f in feature_sets])


def fit_predict_gbr(train: list[dict], y: np.ndarray, test: list[dict]) -> np.ndarray:
    """Baseline: gradient-boosted trees on whole-model totals (log features, log target)."""
    from sklearn.ensemble import GradientBoostingRegressor

    gbr = GradientBoostingRegressor(
        n_estimators=300, max_depth=3, learning_rate=0.05, random_state=0
    )
    gbr.fit(_totals_matrix(train), np.log(y))
    return np.exp(gbr.predict(_totals_matrix(test)))


# -- evaluation ------------------------------------------------------------------------------
def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def accuracy(pred, true) -> dict:
    """Share within +/-10 %, MAPE %, Spearman, and the 90th-percentile |relative error| %."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    rel = (pred - true) / true
    return {
        "n": int(true.size),
        "within_10pct": round(float(np.mean(np.abs(rel) <= 0.10)), 4),
        "mape_pct": round(float(np.mean(np.abs(rel)) * 100), 2),
        "p90_abs_err_pct": round(float(np.percentile(np.abs(rel), 90) * 100), 2),
        "max_abs_err_pct": round(float(np.max(np.abs(rel)) * 100), 2),
        "spearman": round(spearman(pred, true), 4),
    }


def evaluate(rows: list[tuple[dict, float, float, bool]]) -> tuple[dict, dict]:
    """rows: (features, measured p50, measured p90, held_out). Fits on the rest, scores the held
    out; returns (the fitted kernel model with its held-out scores and margin, the report)."""
    train = [r for r in rows if not r[3]]
    test = [r for r in rows if r[3]]
    if len(test) < 3:
        raise PredictorError(f"only {len(test)} held-out models measured; need >= 3")
    tf = [r[0] for r in train]
    y50, y90 = np.array([r[1] for r in train]), np.array([r[2] for r in train])
    model = fit_kernel_model(tf, y50, y90)
    xf = [r[0] for r in test]
    t50, t90 = np.array([r[1] for r in test]), np.array([r[2] for r in test])
    preds = [predict(model, f) for f in xf]
    k50 = np.array([p["p50_ms"] for p in preds])
    k90 = np.array([p["p90_ms"] for p in preds])
    plain = fit_kernel_model(tf, y50, y90, tuple(t for t in OP_TERMS if t != "macs_pad"))
    a, b = fit_macs_linear(tf, y50)
    macs = np.array([f["totals"]["macs"] / 1e6 for f in xf])
    report = {
        "trained_on": len(train),
        "held_out": len(test),
        "kernel_sum_p50": accuracy(k50, t50),
        "kernel_sum_p90": accuracy(k90, t90),
        "ablation_kernel_sum_unpadded_macs_p50": accuracy(
            [predict(plain, f)["p50_ms"] for f in xf], t50
        ),
        "baseline_macs_linear_p50": accuracy(a + b * macs, t50),
    }
    try:
        report["baseline_gbr_totals_p50"] = accuracy(fit_predict_gbr(tf, y50, xf), t50)
    except ImportError:  # scikit-learn is a host extra
        pass
    margin = float(np.percentile(np.abs((k90 - t90) / t90), 90))
    model["held_out"] = {"p50": report["kernel_sum_p50"], "p90": report["kernel_sum_p90"]}
    model["margin"] = round(margin, 4)
    model["fitted_at"] = time.time()
    report["margin_pct"] = round(margin * 100, 2)
    return model, report
