"""`lucida predict MODEL --target T`: predicted p50/p90 latency per invoke on a target.

Three predictors, one per situation:
- kernel level (`kernel_model`, this machine's CPU): fitted on sampled kernels measured alone
  (`lucida predict --fit-kernels`: ~500 one-op .tflite files built with TF, one adaptive round);
  it has never seen a whole network;
- whole-model kernel sum (`whole_model`, any profiled target, e.g. a device's daemon): fitted on
  the measured random candidates of that target;
- Edge TPU analytic (`edgetpu`, targets coral-usb3/x86_64, coral-usb/rpi4, coral-usb2/rpi3,
  coral-pcie/devboard): calibrated on Coral's published figures; no device needed.
A plain `predict` uses the first that applies (Edge TPU target -> analytic; a local target with a
kernel-level predictor -> that; else the whole-model one, fitted first when there is none).

`lucida predict --evaluate --target T` fits the whole-model predictor on T's candidates (all but
the held-out seeds) and scores it and two baselines on the held-out ones; on the local CPU it also
scores the kernel-level predictor on the held-out candidates and, separately, on real
architectures it never saw (`zoo`: built and measured on first use, cached): share within
+/-10 %, MAPE, Spearman, worst model. `--evaluate-edgetpu`: leave-one-out error of the Edge TPU
estimate on the published figures, per target.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from lucida.tools.latency.db import LatencyDB, add_target_arguments, resolve_target
from lucida.tools.latency.whole_model import PredictorError, evaluate, model_features, predict

# safety margin of a kernel-level prediction until `--evaluate` has measured one (the 90th
# percentile of its |error| on the held-out real architectures)
DEFAULT_KERNEL_MARGIN = 0.15


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
    """Predicted p50/p90 ms per invoke of a .tflite or bundle on target (module docstring: which
    predictor); marked predicted, with the predictor's kind and safety margin."""
    from lucida.tools.latency import edgetpu

    path = model_file(spec)
    if edgetpu.is_edgetpu_target(target):
        cpu = db.kernel_predictor(resolve_target("local", 1, "cpu"))
        out = edgetpu.predict_file(path, target, cpu)
        margin = edgetpu.margin(target)
        out.update(
            p90_ms=out["p50_ms"],
            margin=margin,
            p90_ms_with_margin=round(out["p50_ms"] * (1 + margin), 4),
            kernels_ms={},
            unknown_kernels=[],
            backend="edgetpu-analytic",
            predictor="edgetpu-analytic",
        )
        return out
    kpred = db.kernel_predictor(target) if target.startswith("local/") else None
    if kpred is not None:
        from lucida.tools.latency.opkinds import model_kernels

        out = predict_kernels(kpred, model_kernels(path))
        margin = float(kpred.get("margin", DEFAULT_KERNEL_MARGIN))
        out.update(
            model=str(path),
            target=target,
            backend=kpred["backend"],
            margin=margin,
            p90_ms_with_margin=round(out["p90_ms"] * (1 + margin), 4),
            predicted=True,
            predictor="kernel-level",
        )
        return out
    model = load_predictor(db, target)
    out = predict(model, model_features(path, compiler_log))
    out.update(
        model=str(path),
        target=target,
        backend=model["backend"],
        margin=model["margin"],
        p90_ms_with_margin=round(out["p90_ms"] * (1 + model["margin"]), 4),
        predicted=True,
        predictor="whole-model",
    )
    return out


# -- kernel level -------------------------------------------------------------------------------
def kernel_level(db: LatencyDB, target: str) -> dict:
    """The stored kernel-level predictor of target, or one error naming the command to fit it."""
    pred = db.kernel_predictor(target)
    if pred is None:
        raise PredictorError(
            f"no kernel-level predictor for {target}; fit one (about 10 minutes on 2 cores): "
            "lucida predict --fit-kernels"
        )
    return pred


def predict_kernels(pred: dict, kernels: list) -> dict:
    """p50/p90 ms per invoke of a model's (kind, shape) kernels under a kernel-level predictor."""
    from lucida.tools.latency.kernel_model import predict_model as sum_kernels

    p50 = sum_kernels(pred, kernels)
    p90 = sum_kernels(pred["p90"], kernels)["ms"] if "p90" in pred else p50["ms"]
    return {
        "p50_ms": round(p50["ms"], 4),
        "p90_ms": round(max(p90, p50["ms"]), 4),
        "kernels_ms": p50["kernels_ms"],
        "unknown_kernels": p50["unknown_kernels"],
    }


def evaluate_real(db: LatencyDB, pred: dict, progress: bool = False) -> dict:
    """Score the kernel-level predictor on the held-out real architectures (built and measured
    here on first use): within +/-10 %, MAPE, Spearman, worst model, per-model rows."""
    import numpy as np
    from lucida.tools.latency.kernel_bench import measure_files
    from lucida.tools.latency.opkinds import model_kernels
    from lucida.tools.latency.whole_model import accuracy
    from lucida.tools.latency.zoo import build_zoo

    items = []
    for path in build_zoo(progress=progress):
        data = path.read_bytes()
        rec = {"path": str(path), "features": {"kernels": model_kernels(data)}}
        items.append((path.stem, data, rec))
    measured = measure_files(
        items,
        db,
        "zoo",
        min_runs=10,
        min_seconds=0.25,
        warmup_s=0.1,
        window_s=0.025,
        progress=progress,
    )
    from lucida.tools.latency.kernel_bench import sha256

    rows = []
    for name, data, rec in items:
        m = measured[sha256(data)]
        p = predict_kernels(pred, rec["features"]["kernels"])
        rows.append(
            {
                "model": name,
                "measured_p50_ms": m.p50_ms,
                "predicted_p50_ms": p["p50_ms"],
                "err_pct": round((p["p50_ms"] - m.p50_ms) / m.p50_ms * 100, 1),
                "unknown_kernels": p["unknown_kernels"],
            }
        )
    acc = accuracy([r["predicted_p50_ms"] for r in rows], [r["measured_p50_ms"] for r in rows])
    worst = max(rows, key=lambda r: abs(r["err_pct"]))
    loads = [m.load1 for m in measured.values() if m.load1 is not None]
    return {
        **acc,
        "worst_model": worst["model"],
        "worst_err_pct": worst["err_pct"],
        "load1_median": round(float(np.median(loads)), 2) if loads else None,
        "models": rows,
    }


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict a model's latency on a profiled target")
    p.add_argument("model", nargs="?", help=".tflite file, bundle folder or shipped bundle name")
    add_target_arguments(p)
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="fit, score on held-out candidates and (local) held-out real architectures",
    )
    p.add_argument(
        "--fit-kernels",
        action="store_true",
        help="sample, build and measure kernels on this CPU, fit the kernel-level predictor",
    )
    p.add_argument(
        "--kernels-dir",
        default=None,
        help="--fit-kernels: where the sampled kernel .tflite files are kept (build/kernels)",
    )
    p.add_argument(
        "--evaluate-edgetpu",
        action="store_true",
        help="leave-one-out error of the Edge TPU estimate on Coral's published figures",
    )
    p.add_argument("--compiler-log", default=None, help="edgetpu_compiler log of the model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from lucida.tools.latency import edgetpu

    if args.evaluate_edgetpu:
        r = edgetpu.leave_one_out()
        if args.json:
            print(json.dumps(r))
        else:
            _print_edgetpu(r)
        return 0
    target = args.target
    if target.startswith("coral") and not edgetpu.is_edgetpu_target(target):
        raise edgetpu.EdgeTPUEstimateError(
            f"--target {target}: unknown Edge TPU target; known: {', '.join(edgetpu.targets())}"
        )
    if not edgetpu.is_edgetpu_target(target):
        target = resolve_target(args.target, args.threads, args.clock)
    progress = not args.json and sys.stderr.isatty()
    with LatencyDB(args.db) as db:
        if args.fit_kernels:
            from lucida.tools.latency.kernel_fit import KERNEL_DIR, fit_kernels

            _, rep = fit_kernels(db, out_dir=args.kernels_dir or KERNEL_DIR, progress=progress)
            print(json.dumps(rep) if args.json else _fit_line(rep))
        if args.evaluate:
            report = evaluate_all(db, target, progress)
            if args.json:
                print(json.dumps(report))
            else:
                _print_report(report)
        if args.model is None:
            if args.evaluate or args.fit_kernels:
                return 0
            raise PredictorError("name a model to predict (or --evaluate, --fit-kernels)")
        out = predict_model(db, target, args.model, args.compiler_log)
    if out["unknown_kernels"]:
        print(
            f"lucida predict: warning: kernels never measured on {target}: "
            f"{', '.join(out['unknown_kernels'])} (costed as element-wise ops)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['model']}: predicted p50 {out['p50_ms']:.3f} ms, p90 {out['p90_ms']:.3f} ms "
            f"(+{out['margin'] * 100:.0f}% margin: {out['p90_ms_with_margin']:.3f} ms) on {target} "
            f"[{out['predictor']}]"
        )
        for k, v in out["kernels_ms"].items():
            print(f"  {k:<22} {v:8.3f} ms")
    return 0


def evaluate_all(db: LatencyDB, target: str, progress: bool = False) -> dict:
    """The --evaluate report: whole-model predictor on held-out candidates; on the local CPU the
    kernel-level predictor on held-out real architectures (its margin is stored from them)."""
    local = target.startswith("local/")
    try:
        _, report = fit_and_store(db, target)
    except PredictorError as exc:
        if not local:
            raise
        report = {"target": target, "candidates_error": str(exc)}
    if local:
        try:
            pred = kernel_level(db, target)
        except PredictorError as exc:
            if "candidates_error" in report:
                raise PredictorError(f"{report['candidates_error']}; and {exc}") from None
            report["real_architectures_error"] = str(exc)
            return report
        real = evaluate_real(db, pred, progress)
        pred["margin"] = round(real["p90_abs_err_pct"] / 100, 4)
        pred["held_out_real"] = {k: real[k] for k in ("n", "within_10pct", "mape_pct", "spearman")}
        db.put_kernel_predictor(target, pred["backend"], pred)
        report["real_architectures"] = real
        cand = kernel_level_on_candidates(db, target, pred)
        if cand is not None:
            report["kernel_level_candidates_p50"] = cand
    return report


def kernel_level_on_candidates(db: LatencyDB, target: str, pred: dict) -> dict | None:
    """The kernel-level predictor on the held-out random candidates (None when none measured)."""
    from lucida.tools.latency.candidates import is_held_out
    from lucida.tools.latency.opkinds import model_kernels
    from lucida.tools.latency.whole_model import accuracy

    pairs = [
        (m, x)
        for m, x in db.measurements(target, kind="candidate")
        if m["seed"] is not None and is_held_out(int(m["seed"])) and Path(m["path"]).is_file()
    ]
    if len(pairs) < 3:
        return None
    p = [predict_kernels(pred, model_kernels(m["path"]))["p50_ms"] for m, _ in pairs]
    return accuracy(p, [x.p50_ms for _, x in pairs])


def _fit_line(rep: dict) -> str:
    return (
        f"kernel-level predictor for {rep['target']}: {rep['kernels_measured']} kernels "
        f"({rep['adaptive_added']} from adaptive sampling), {rep['kinds']} kinds, "
        f"{rep['seconds']} s at load {rep['load1']}"
    )


def _print_edgetpu(r: dict) -> None:
    print("Edge TPU estimate, leave-one-out on Coral's published figures (an estimate, not a")
    print("measurement: `lucida profile --target http://DEVICE:8080` on the device replaces it)")
    for tg, v in r["targets"].items():
        w = v["worst"]
        print(
            f"{tg:<22} n={v['n']:<3} median |err| {v['median_abs_err_pct']:5.1f}%  "
            f"within 25%: {v['within_25pct'] * 100:5.1f}%  worst {w['model']} {w['err_pct']:+.1f}%"
        )


def _print_report(r: dict) -> None:
    if "candidates_error" in r:
        print(f"random candidates: {r['candidates_error']}")
    else:
        _print_candidates(r)
    if "real_architectures_error" in r:
        print(f"real architectures: {r['real_architectures_error']}")
    real = r.get("real_architectures")
    if real:
        print(
            f"kernel-level predictor on {real['n']} held-out real architectures: "
            f"{real['within_10pct'] * 100:.1f}% within +/-10%, MAPE {real['mape_pct']:.2f}%, "
            f"Spearman {real['spearman']:.3f}, worst {real['worst_model']} "
            f"{real['worst_err_pct']:+.1f}% (load {real['load1_median']})"
        )
        for m in real["models"]:
            print(
                f"  {m['model']:<28} measured {m['measured_p50_ms']:9.3f} ms  predicted "
                f"{m['predicted_p50_ms']:9.3f} ms  {m['err_pct']:+6.1f}%"
            )
    if "kernel_level_candidates_p50" in r:
        _row("kernel_level_candidates_p50", r["kernel_level_candidates_p50"])


def _print_candidates(r: dict) -> None:
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
