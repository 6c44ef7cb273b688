"""The whole kernel-level fit: sample kernels, build them, measure them, fit, sample more where
the fit is poor, fit again; store the predictor in the latency database (`lucida predict
--fit-kernels`).

Files are kept under build/kernels/<name>.tflite and their measurements in the latency database
(kind "kernel"), so a second run measures only what is new. DEFAULT_PLAN draws ~500 kernels over
24 kinds; one adaptive round adds up to ADAPT_PER_KIND x 2 neighbours of the worst kernels of
each kind that cross-validates worse than +/-10 %. Measured on this 2-core shared host: see
README (`lucida predict --fit-kernels --json` prints the seconds it took).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from lucida.tools.latency.db import LatencyDB, resolve_target
from lucida.tools.latency.kernel_bench import backend_name, measure_files
from lucida.tools.latency.kernel_model import cross_validate, fit
from lucida.tools.latency.kernel_space import KernelSpec, build, neighbours, sample
from lucida.tools.latency.opkinds import model_kernels

KERNEL_DIR = Path("build") / "kernels"
DEFAULT_PLAN = {
    "conv1x1": 60,
    "convKxK": 60,
    "dwconv": 50,
    "fc": 20,
    "tconv": 15,
    "maxpool": 15,
    "avgpool": 15,
    "mean": 20,
    "add": 20,
    "mul": 12,
    "mul_bcast": 15,
    "add_c": 12,
    "mul_c": 12,
    "concat": 20,
    "resize_bilinear": 15,
    "resize_nearest": 12,
    "reshape": 12,
    "softmax": 15,
    "argmax": 15,
    "quantize": 20,
    "dequantize": 12,
    "pad": 15,
    "hardswish": 15,
    "logistic": 12,
    "relu": 12,
}
ADAPT_PER_KIND = 10


def build_specs(specs: list[KernelSpec], out_dir: str | os.PathLike = KERNEL_DIR) -> list:
    """(name, .tflite bytes, DB record) per spec; files are built once and kept in out_dir."""
    from lucida.calibration.atomic import atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for spec in specs:
        path = out / f"{spec.name}.tflite"
        if path.is_file():
            data = path.read_bytes()
        else:
            data = build(spec)
            atomic_write_bytes(path, data)
        rec = {
            "path": str(path),
            "spec": spec.to_dict(),
            "features": {"kernels": model_kernels(data)},
        }
        items.append((spec.name, data, rec))
    return items


def kernel_rows(db: LatencyDB, target: str) -> list[dict]:
    """The measured sampled kernels of a target as rows for kernel_model.fit."""
    rows = []
    for m, x in db.measurements(target, kind="kernel"):
        if not m["spec"] or not m["features"]:
            continue
        rows.append(
            {
                "name": m["name"],
                "kind": m["spec"]["kind"],
                "spec": m["spec"],
                "kernels": m["features"]["kernels"],
                "p50_ms": x.p50_ms,
                "p90_ms": x.p90_ms,
            }
        )
    return rows


def _cv_report(rows: list[dict]) -> dict:
    by: dict[str, list[float]] = {}
    for r, err in cross_validate(rows):
        by.setdefault(r["kind"], []).append(abs(err))
    return {
        k: {
            "n": len(v),
            "within_10pct": round(float(np.mean(np.array(v) <= 0.10)), 3),
            "mape_pct": round(float(np.mean(v)) * 100, 2),
        }
        for k, v in sorted(by.items())
    }


def fit_kernels(
    db: LatencyDB,
    plan: dict[str, int] | None = None,
    rounds: int = 1,
    seed: int = 0,
    out_dir: str | os.PathLike = KERNEL_DIR,
    progress: bool = False,
) -> tuple[dict, dict]:
    """Sample, build, measure, fit (+ adaptive rounds); store; (predictor, report)."""
    t0 = time.perf_counter()
    plan = DEFAULT_PLAN if plan is None else plan
    target = resolve_target("local", 1, "cpu")
    rng = np.random.default_rng(seed)
    specs = [s for kind, n in plan.items() for s in sample(kind, n, rng)]
    measure_files(build_specs(specs, out_dir), db, "kernel", progress=progress)
    rows = [r for r in kernel_rows(db, target) if r["kind"] in plan]
    added = 0
    for _ in range(rounds):
        extra: dict[str, KernelSpec] = {}
        errs = sorted(cross_validate(rows), key=lambda re: -abs(re[1]))
        per_kind: dict[str, int] = {}
        for r, err in errs:
            if abs(err) <= 0.10 or per_kind.get(r["kind"], 0) >= ADAPT_PER_KIND:
                continue
            per_kind[r["kind"]] = per_kind.get(r["kind"], 0) + 1
            for s in neighbours(KernelSpec.from_dict(r["spec"]), 2, rng):
                extra.setdefault(s.name, s)
        if not extra:
            break
        measure_files(build_specs(list(extra.values()), out_dir), db, "kernel", progress=progress)
        added += len(extra)
        rows = [r for r in kernel_rows(db, target) if r["kind"] in plan]
    pred = fit(rows, "p50_ms")
    pred90 = fit(rows, "p90_ms")
    pred.update(
        p90={"c0_ms": pred90["c0_ms"], "kinds": pred90["kinds"]},
        target=target,
        backend=backend_name(),
        kernels=len(rows),
        fitted_at=time.time(),
    )
    db.put_kernel_predictor(target, pred["backend"], pred)
    report = {
        "target": target,
        "kernels_measured": len(rows),
        "adaptive_added": added,
        "kinds": len(pred["kinds"]),
        "c0_ms": pred["c0_ms"],
        "cross_validated": _cv_report(rows),
        "seconds": round(time.perf_counter() - t0, 1),
        "load1": round(os.getloadavg()[0], 2),
    }
    return pred, report
