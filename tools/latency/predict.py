"""`lucida predict MODEL --target T`: predicted p50/p90 latency per invoke on a profiled target.

`lucida predict --evaluate --target T` fits the kernel-sum predictor on the candidates measured on
T (all but the held-out seeds), scores it and two whole-model baselines on the held-out ones
(share within +/-10 %, MAPE, Spearman), and stores the fitted predictor in the latency database
with its safety margin (the 90th percentile of its held-out p90 error). A plain `predict` uses the
stored predictor, fitting one first when there is none.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from lucida.tools.latency.db import LatencyDB, resolve_target
from lucida.tools.latency.kernels import PredictorError, evaluate, model_features, predict


def training_rows(db: LatencyDB, target: str) -> tuple[list, str]:
    """(features, p50, p90, held_out) of the candidates measured on target, and their backend."""
    from lucida.tools.latency.candidates import is_held_out

    pairs = [(m, x) for m, x in db.measurements(target, kind="candidate") if m["features"]]
    if not pairs:
        known = ", ".join(f"{t} ({n})" for t, n in db.targets()) or "none"
        raise PredictorError(
            f"no candidates measured on target {target}; measured targets: {known}. "
            "Run: lucida candidates && lucida profile build/candidates/cand-* --target ..."
        )
    backend = Counter(x.backend for _, x in pairs).most_common(1)[0][0]
    rows = [
        (m["features"], x.p50_ms, x.p90_ms, is_held_out(int(m["seed"])))
        for m, x in pairs
        if x.backend == backend and m["seed"] is not None
    ]
    return rows, backend


def fit_and_store(db: LatencyDB, target: str) -> tuple[dict, dict]:
    """Evaluate on held-out candidates, store the fitted predictor; (predictor, report)."""
    rows, backend = training_rows(db, target)
    model, report = evaluate(rows)
    model.update(target=target, backend=backend)
    db.put_predictor(target, backend, model)
    report.update(target=target, backend=backend)
    return model, report


def load_predictor(db: LatencyDB, target: str, refit: bool = False) -> dict:
    """The stored predictor of a target (fitted now when there is none, or refit is asked)."""
    model = None if refit else db.predictor(target)
    if model is None:
        model, _ = fit_and_store(db, target)
    return model


def model_file(spec: str) -> Path:
    """A .tflite path, or the cpu.tflite of a bundle folder / .tar.gz / shipped name."""
    p = Path(spec)
    if p.is_file() and p.suffix == ".tflite":
        return p
    from lucida.models import resolve_bundle

    return resolve_bundle(spec).file("cpu.tflite")


def predict_model(db: LatencyDB, target: str, spec: str, compiler_log=None) -> dict:
    path = model_file(spec)
    model = load_predictor(db, target)
    out = predict(model, model_features(path, compiler_log))
    out.update(
        model=str(path),
        target=target,
        backend=model["backend"],
        margin=model["margin"],
        p90_ms_with_margin=round(out["p90_ms"] * (1 + model["margin"]), 4),
        predicted=True,
    )
    return out


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict a model's latency on a profiled target")
    p.add_argument("model", nargs="?", help=".tflite file, bundle folder or shipped bundle name")
    p.add_argument("--target", default="local", help="'local', http://DEVICE:PORT or a DB key")
    p.add_argument("--threads", type=int, default=1, help="local: interpreter threads (1)")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None, help="local: clock")
    p.add_argument("--db", default=None, help="latency database (build/latency.sqlite)")
    p.add_argument("--evaluate", action="store_true", help="fit, score on held-out candidates")
    p.add_argument("--compiler-log", default=None, help="edgetpu_compiler log of the model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    target = resolve_target(args.target, args.threads, args.clock)
    with LatencyDB(args.db) as db:
        if args.evaluate:
            _, report = fit_and_store(db, target)
            if args.json:
                print(json.dumps(report))
            else:
                _print_report(report)
            if args.model is None:
                return 0
        elif args.model is None:
            raise PredictorError("name a model to predict (or --evaluate)")
        out = predict_model(db, target, args.model, args.compiler_log)
    if out["unknown_kernels"]:
        print(
            f"lucida predict: warning: kernels never measured on {target}: "
            f"{', '.join(out['unknown_kernels'])} (counted as 0 ms)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['model']}: predicted p50 {out['p50_ms']:.3f} ms, p90 {out['p90_ms']:.3f} ms "
            f"(+{out['margin'] * 100:.0f}% margin: {out['p90_ms_with_margin']:.3f} ms) on {target}"
        )
        for k, v in out["kernels_ms"].items():
            print(f"  {k:<22} {v:8.3f} ms")
    return 0


def _print_report(r: dict) -> None:
    print(
        f"target {r['target']} ({r['backend']}): trained on {r['trained_on']} candidates, "
        f"scored on {r['held_out']} held-out ones"
    )
    print(f"{'predictor':<38} {'within10%':>9} {'MAPE%':>7} {'p90err%':>8} {'Spearman':>9}")
    for key in (
        "kernel_sum_p50",
        "kernel_sum_p90",
        "ablation_kernel_sum_unpadded_macs_p50",
        "baseline_macs_linear_p50",
    ):
        _row(key, r[key])
    if "baseline_gbr_totals_p50" in r:
        _row("baseline_gbr_totals_p50", r["baseline_gbr_totals_p50"])
    print(f"safety margin for predicted p90: +{r['margin_pct']}%")


def _row(name: str, a: dict) -> None:
    print(
        f"{name:<38} {a['within_10pct'] * 100:>8.1f}% {a['mape_pct']:>7.2f} "
        f"{a['p90_abs_err_pct']:>8.2f} {a['spearman']:>9.3f}"
    )
