"""An Edge TPU latency estimate without the device: analytic, calibrated on Coral's published
per-model latencies (coral_published.csv: coral.ai's benchmark table and pycoral's
benchmarks/reference/*.csv, with their sources).

Per invoke on target T (ms):

    t = a_T                              per-invoke host + driver overhead
      + b * GMACs on the TPU             int8 compute (one chip: b is shared by all targets)
      + c_T * streamed MB                parameters beyond the on-chip cache S (MB) plus the input
                                         and output tensors, over T's link (USB 2 / USB 3 / PCIe)
      + n_transitions * TRANSITION_MS    each TPU <-> CPU hand-over inside the graph
      + CPU part                         ops left on the CPU: the kernel predictor's figure for
                                         this host x CPU_FACTOR[T]

a_T, b, c_T, S and the host ms of an SSD post-process are fitted on the published figures by
robust (soft-L1) least squares on relative error, c_T pulled towards the link's nominal rate
(LINK_MS_PER_MB, weight PRIOR_WEIGHT) so a target with one streaming model stays physical.
(PRIOR_WEIGHT, F_SCALE and the SSD post-process term were chosen by looking at the
leave-one-out errors of a handful of variants: mild selection on the same figures.) `leave_one_out()` refits without
each published figure in turn and predicts it (`lucida predict --evaluate-edgetpu`).

What this is not: a measurement. The published models are fully mapped classic networks; ops
left on the CPU, TRANSITION_MS and CPU_FACTOR are not calibrated by them. `lucida profile
--target http://DEVICE:8080` on the device replaces any of these figures.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from importlib import resources

import numpy as np

DATA = "coral_published.csv"
# target -> link; nominal ms per MB: USB 2 480 Mbit/s, USB 3 5 Gbit/s (8b/10b), PCIe 2.0 x1
# 5 GT/s (8b/10b), each at ~60 % efficiency for bulk transfers
LINK = {
    "coral-usb3/x86_64": "usb3",
    "coral-usb/rpi4": "usb3",
    "coral-usb2/rpi3": "usb2",
    "coral-pcie/devboard": "pcie",
}
LINK_MS_PER_MB = {"usb2": 1000 / 36.0, "usb3": 1000 / 300.0, "pcie": 1000 / 300.0}
PRIOR_WEIGHT = 1.0  # residual weight of log(c_T / nominal)
F_SCALE = 0.1  # soft-L1: relative errors beyond ~10 % count linearly, not squared
CACHE_MB = (2.0, 8.0)  # bounds of the fitted on-chip parameter cache S
# the chip's peak: 4 TOPS = 2 int8 TMAC/s, i.e. b >= 0.5 ms per GMAC
PEAK_MS_PER_GMAC = 0.5
# Rough, uncalibrated: one TPU<->CPU hand-over (ms); target CPU time / this host's CPU time
# (devboard: median Embedded/Desktop CPU ratio of coral.ai's table is ~3.5; Pi 4 / Pi 3 guesses)
TRANSITION_MS = 0.5
CPU_FACTOR = {
    "coral-usb3/x86_64": 1.0,
    "coral-usb/rpi4": 2.5,
    "coral-usb2/rpi3": 6.0,
    "coral-pcie/devboard": 3.5,
}


class EdgeTPUEstimateError(ValueError):
    """An unknown Edge TPU target, or a model the estimate cannot read."""

    exit_code = 2


def targets() -> list[str]:
    return list(LINK)


def is_edgetpu_target(target: str) -> bool:
    return target in LINK


def published() -> list[dict]:
    """The published figures: model, target, ms, source and the model's facts (GMACs, parameter
    MB, input + output MB, whether a part runs on the host CPU)."""
    text = resources.files("lucida.tools.latency").joinpath(DATA).read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    rows = []
    for r in csv.DictReader(io.StringIO("\n".join(lines))):
        px = int(r["input_px"])
        rows.append(
            {
                "model": r["model"],
                "target": r["target"],
                "ms": float(r["ms"]),
                "source": r["source"],
                "gmacs": float(r["gmacs"]),
                "params_mb": float(r["params_m"]),
                "io_mb": (px * px * 3 + 1001) / 1e6,  # uint8 image in, ~1000 scores out
                "cpu_part": r.get("cpu_part") or "",
                "transitions": 0,
            }
        )
    return rows


def _unpack(theta: np.ndarray, tlist: list[str]) -> dict:
    n = len(tlist)
    return {
        "cache_mb": float(theta[2 * n + 2]),
        "b_ms_per_gmac": float(np.exp(theta[2 * n])),
        "postprocess_ms": float(np.exp(theta[2 * n + 1])),
        "targets": {
            t: {"a_ms": float(np.exp(theta[j])), "c_ms_per_mb": float(np.exp(theta[n + j]))}
            for j, t in enumerate(tlist)
        },
    }


def fit(rows: list[dict]) -> dict:
    """Constants from published rows (JSON-able): a_T, c_T per target; b, S and the host ms of
    an SSD post-process (x CPU_FACTOR[T]) shared. Robust (soft-L1) least squares on relative
    error, parameters in log space (all positive), c_T pulled towards LINK_MS_PER_MB."""
    from scipy.optimize import least_squares

    tlist = sorted({r["target"] for r in rows})
    n = len(tlist)
    prior = np.log([LINK_MS_PER_MB[LINK[t]] for t in tlist])
    theta0 = np.r_[np.log([2.0] * n), prior, 0.0, 0.0, 6.5]  # b starts at 1 ms/GMAC

    def residuals(theta):
        consts = _unpack(theta, tlist)
        out = [(estimate(consts, r["target"], r) - r["ms"]) / r["ms"] for r in rows]
        return np.r_[out, PRIOR_WEIGHT * (theta[n : 2 * n] - prior)]

    lo = np.r_[[-10.0] * (2 * n), math.log(PEAK_MS_PER_GMAC), -10.0, CACHE_MB[0]]
    hi = np.r_[[10.0] * (2 * n + 2), CACHE_MB[1]]
    sol = least_squares(residuals, theta0, loss="soft_l1", f_scale=F_SCALE, bounds=(lo, hi))
    return _unpack(sol.x, tlist)


def estimate(consts: dict, target: str, r: dict) -> float:
    """ms per invoke of one model (a row like `published()`'s) on target."""
    if target not in consts["targets"]:
        raise EdgeTPUEstimateError(
            f"no Edge TPU constants for target {target!r}; known: {', '.join(consts['targets'])}"
        )
    k = consts["targets"][target]
    streamed = max(0.0, r["params_mb"] - consts["cache_mb"]) + r["io_mb"]
    return (
        k["a_ms"]
        + consts["b_ms_per_gmac"] * r["gmacs"]
        + k["c_ms_per_mb"] * streamed
        + r.get("transitions", 0) * TRANSITION_MS
        + (consts["postprocess_ms"] if r.get("cpu_part") == "postprocess" else 0.0)
        * CPU_FACTOR.get(target, 1.0)
        + r.get("cpu_ms", 0.0) * CPU_FACTOR.get(target, 1.0)
    )


def leave_one_out(rows: list[dict] | None = None) -> dict:
    """Per target: each published figure predicted by constants fitted without it."""
    rows = published() if rows is None else rows
    per: dict[str, list[dict]] = {}
    for i, r in enumerate(rows):
        consts = fit(rows[:i] + rows[i + 1 :])
        p = estimate(consts, r["target"], r)
        per.setdefault(r["target"], []).append(
            {
                "model": r["model"],
                "published_ms": r["ms"],
                "predicted_ms": round(p, 2),
                "err_pct": round((p - r["ms"]) / r["ms"] * 100, 1),
                "source": r["source"],
            }
        )
    out = {}
    for tg, items in per.items():
        e = np.abs([it["err_pct"] for it in items])
        out[tg] = {
            "n": len(items),
            "median_abs_err_pct": round(float(np.median(e)), 1),
            "within_25pct": round(float(np.mean(e <= 25)), 3),
            "worst": max(items, key=lambda it: abs(it["err_pct"])),
            "models": items,
        }
    return {"targets": out, "constants_all": fit(rows)}


# -- a user's model --------------------------------------------------------------------------
def tpu_split(path) -> list[bool]:
    """Per op of a CPU .tflite: True where the Edge TPU compiler would map it (the one adapter
    to `lucida check`'s per-op verdicts, `edgetpu_rules.op_verdicts`; uncertain ops count as
    mapped, as check counts them)."""
    from lucida.tools.toolchain.edgetpu_rules import EDGETPU, op_verdicts
    from lucida.tools.toolchain.tflite_reader import read_tflite

    return [v.runs_on == EDGETPU for v in op_verdicts(read_tflite(path))]


def model_row(path, cpu_predictor: dict | None) -> dict:
    """The estimate's inputs for a CPU .tflite: TPU GMACs and parameter MB, input/output MB,
    TPU<->CPU transitions, and the CPU part's ms on this host (kernel predictor)."""
    from lucida.tools.latency.kernel_model import predict_model
    from lucida.tools.latency.opkinds import op_kind, op_shape
    from lucida.tools.toolchain.tflite_reader import read_tflite

    m = read_tflite(path)
    on = tpu_split(path)
    tpu_ops = [op for op, t in zip(m.ops, on) if t]
    cpu_ops = [op for op, t in zip(m.ops, on) if not t]
    transitions = sum(1 for a, b in zip(on, on[1:]) if a != b)  # CPU<->TPU hand-overs
    cpu_ms = 0.0
    if cpu_ops:
        if cpu_predictor is None:
            raise EdgeTPUEstimateError(
                f"{path}: {len(cpu_ops)} op(s) stay on the CPU and there is no kernel "
                "predictor for this host; run: lucida predict --fit-kernels"
            )
        kernels = [(op_kind(op), op_shape(op)) for op in cpu_ops]
        cpu_ms = predict_model(cpu_predictor, kernels)["ms"] - cpu_predictor["c0_ms"]
    return {
        "model": str(path),
        "gmacs": sum(op.macs for op in tpu_ops) / 1e9,
        "params_mb": sum(op.param_bytes for op in tpu_ops) / 1e6,
        "io_mb": (sum(t.bytes for t in m.inputs) + sum(t.bytes for t in m.outputs)) / 1e6,
        "transitions": transitions,
        "cpu_ms": cpu_ms,
        "tpu_ops": len(tpu_ops),
        "cpu_ops": len(cpu_ops),
    }


def predict_file(path, target: str, cpu_predictor: dict | None = None) -> dict:
    """Estimated p50 ms per invoke of a CPU .tflite on an Edge TPU target (marked predicted)."""
    if not is_edgetpu_target(target):
        raise EdgeTPUEstimateError(
            f"{target!r} is not an Edge TPU target; known: {', '.join(targets())}"
        )
    row = model_row(path, cpu_predictor)
    ms = estimate(fit(published()), target, row)
    return {
        **row,
        "target": target,
        "p50_ms": round(ms, 3),
        "predicted": True,
        "kind": "edgetpu-analytic",
    }


@functools.lru_cache(maxsize=1)
def _loo() -> dict:
    return leave_one_out()


def margin(target: str) -> float:
    """Safety margin of an estimate on target: the 90th percentile of its leave-one-out
    |relative error| on the published figures."""
    t = _loo()["targets"].get(target)
    if t is None:
        raise EdgeTPUEstimateError(
            f"{target!r} is not an Edge TPU target; known: {', '.join(targets())}"
        )
    return round(float(np.percentile([abs(m["err_pct"]) for m in t["models"]], 90)) / 100, 4)
