"""`lucida select BUNDLES... --budget-ms X | --fps F`: the most accurate bundle that keeps up.

Per bundle: accuracy from its manifest metrics (`--metric`, per objective when the figure is a
dict like {"10x": .., "20x": ..}); per-invoke p90 latency on the target, measured (latency DB) or
else predicted (marked so) and inflated by the predictor's safety margin (the 90th percentile of
its held-out p90 error); tiles per frame from the engine's own tile plan for a 1920x1080 frame at
the objective's pixel size (nominal 10 um / magnification unless --um-per-px); per-frame latency
= tiles x per-invoke p90.

Budget arithmetic: --budget-ms is the inference time per frame; --fps F gives
1000 / F - overhead, overhead = capture + render ms per frame (--overhead-ms, else the latency DB's
figure for the target, else DEFAULT_OVERHEAD_MS, measured on the development host). The pick is
the most accurate bundle whose per-frame p90 fits (ties: the faster); with --mnas-w W the fitting
bundle with the best MNAS soft objective ACC x (LAT/T)^W. When none fits: a clear message naming
the closest bundle, exit code 1. A Pareto plot (accuracy vs per-frame latency, budget line,
chosen point) is written as PNG.

`--evaluate-regret`: 20 budgets spread (log-evenly) across the bundles' measured per-frame
latency range;
at each, the pick with predicted latencies (margin included) against the oracle pick with
measured ones: how often they agree, and whether a predicted pick ever misses the budget.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass

from lucida.tools.latency.db import LatencyDB, add_target_arguments, resolve_target

FRAME = (1920, 1080)  # px, the camera frame the budget is for
# Capture + render per frame (ms) when neither --overhead-ms nor the DB say: render_ms_p50 1.65 ms
# of `lucida bench pipeline --bundle models/lymph-m --threads 1 --json` on the development host
# (2-core Xeon, shared; render p99 was 13 ms), rounded up; capture is a buffer hand-over.
DEFAULT_OVERHEAD_MS = 2.0


class SelectError(ValueError):
    """Bad budget or bundles that cannot be compared."""

    exit_code = 2


class NothingFits(ValueError):
    """No bundle meets the budget (exit code 1)."""

    exit_code = 1


@dataclass
class Choice:
    """One bundle as `select` sees it. Latencies in ms; frame_* = tiles x per-invoke figure."""

    name: str
    path: str
    accuracy: float
    tiles: int
    invoke_p50_ms: float
    invoke_p90_ms: float
    frame_p50_ms: float
    frame_p90_ms: float
    source: str  # "measured" | "predicted"
    margin: float = 0.0  # predicted: the p90 safety margin already applied to invoke_p90_ms
    measured_frame_p90_ms: float | None = None  # known measurement (regret evaluation)
    predicted_frame_p90_ms: float | None = None  # predicted with margin (regret evaluation)
    predictor: str | None = None  # predicted: "kernel-level" | "whole-model" | "edgetpu-analytic"
    fits: bool = False
    score: float | None = None


# -- pieces ----------------------------------------------------------------------------------
def frame_budget_ms(budget_ms: float | None, fps: float | None, overhead_ms: float) -> float:
    """Inference budget per frame (ms): --budget-ms as given, or 1000/fps - overhead."""
    if (budget_ms is None) == (fps is None):
        raise SelectError("give exactly one of --budget-ms and --fps")
    if budget_ms is not None:
        if not budget_ms > 0:
            raise SelectError(f"--budget-ms {budget_ms}: must be > 0")
        return float(budget_ms)
    if not fps > 0:
        raise SelectError(f"--fps {fps}: must be > 0")
    if overhead_ms < 0:
        raise SelectError(f"overhead {overhead_ms} ms: must be >= 0")
    budget = 1000.0 / fps - overhead_ms
    if budget <= 0:
        raise NothingFits(
            f"{fps:g} fps leaves no time for inference: a frame lasts {1000 / fps:.1f} ms and "
            f"capture + render take {overhead_ms:.1f} ms"
        )
    return budget


def accuracy_of(bundle, metric: str, objective: str) -> float | None:
    """The bundle's accuracy figure for this objective (None when its manifest has none)."""
    v = bundle.manifest.metrics.get(metric)
    if isinstance(v, dict):
        v = v.get(objective)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def tiles_per_frame(bundle, objective: str, um_per_px: float | None = None, frame=FRAME) -> int:
    """Model invokes per camera frame at this objective: the engine's tile plan for the frame
    resampled to the model's pixel size (nominal 10 um / magnification unless um_per_px)."""
    from lucida.runtime.engine import Engine
    from lucida.runtime.pipeline import nominal_um_per_px

    um = um_per_px or nominal_um_per_px(objective)
    engine = Engine(bundle, device="cpu", num_threads=1)
    m = bundle.manifest
    mw, mh = engine.model_size(*frame, um)
    tw, th = m.input.width, m.input.height
    if m.output.kind == "class_scores":
        sx, sy = m.tiling.stride_x, m.tiling.stride_y
        return (1 + max(0, -(-(mw - tw) // sx))) * (1 + max(0, -(-(mh - th) // sy)))
    if (mw, mh) == (tw, th):
        return 1
    return len(engine.plan(mw, mh).tiles)


def pick(choices: list[Choice], budget: float, mnas_w: float | None = None) -> Choice | None:
    """The most accurate fitting choice (ties: faster); with mnas_w, the best soft objective."""
    for c in choices:
        c.fits = c.frame_p90_ms <= budget
        c.score = (
            c.accuracy * (c.frame_p90_ms / budget) ** mnas_w
            if mnas_w is not None and c.frame_p90_ms > 0
            else None
        )
    fitting = [c for c in choices if c.fits]
    if not fitting:
        return None
    if mnas_w is not None:
        return max(fitting, key=lambda c: (c.score, -c.frame_p90_ms))
    return max(fitting, key=lambda c: (c.accuracy, -c.frame_p90_ms))


# -- gathering -------------------------------------------------------------------------------
def gather(
    specs: list[str],
    db: LatencyDB,
    target: str,
    metric: str,
    objective: str,
    um_per_px: float | None = None,
    predicted_only: bool = False,
) -> tuple[list[Choice], list[str]]:
    """Choices for the bundles, and notes on those left out (no accuracy, no latency).

    Measured figures: the bundle's model measured on target (for an Edge TPU target such as
    coral-usb/rpi4: its edgetpu.tflite measured on any device with an Edge TPU delegate, i.e.
    `lucida profile --target http://DEVICE:8080`). Else predicted (`predict.predict_model`:
    the Edge TPU estimate, the kernel-level or the whole-model predictor), marked so, with the
    predictor's safety margin on p90."""
    from lucida.models import resolve_bundle
    from lucida.tools.latency import edgetpu
    from lucida.tools.latency.predict import predict_model

    tpu = edgetpu.is_edgetpu_target(target)
    choices, notes = [], []
    for spec in specs:
        bundle = resolve_bundle(spec)
        acc = accuracy_of(bundle, metric, objective)
        if acc is None:
            notes.append(f"{bundle.name}: no '{metric}' figure for {objective} in its manifest")
            continue
        if objective not in bundle.manifest.objectives:
            notes.append(
                f"{bundle.name}: not made for {objective} (objectives "
                f"{', '.join(bundle.manifest.objectives)})"
            )
            continue
        tiles = tiles_per_frame(bundle, objective, um_per_px)
        known = None
        if tpu:
            if "edgetpu.tflite" in bundle.manifest.files:
                known = db.on_delegate(bundle.sha256("edgetpu.tflite"), "edgetpu")
        else:
            for f in ("edgetpu.tflite", "cpu.tflite"):
                if f in bundle.manifest.files and known is None:
                    known = db.get(bundle.sha256(f), target)
        pred = None
        if predicted_only or known is None:
            try:
                pred = predict_model(db, target, str(bundle.path))
            except ValueError as exc:  # no predictor, unreadable model
                if known is None:
                    notes.append(
                        f"{bundle.name}: not measured on {target} and no predictor "
                        f"({str(exc).split(';')[0]}); measure it (seconds): "
                        f"{fill_in_command([_unmeasured(bundle)], target)}"
                    )
                    continue
        if known is not None and not predicted_only:
            p50, p90, source, margin = known.p50_ms, known.p90_ms, "measured", 0.0
        else:
            margin = pred["margin"]
            p50, p90, source = pred["p50_ms"], pred["p90_ms"] * (1 + margin), "predicted"
        c = Choice(
            name=bundle.name,
            path=str(bundle.path),
            accuracy=acc,
            tiles=tiles,
            invoke_p50_ms=round(p50, 4),
            invoke_p90_ms=round(p90, 4),
            frame_p50_ms=round(p50 * tiles, 3),
            frame_p90_ms=round(p90 * tiles, 3),
            source=source,
            margin=margin,
            predictor=pred["predictor"] if source == "predicted" else None,
        )
        if known is not None:
            c.measured_frame_p90_ms = round(known.p90_ms * tiles, 3)
        if pred is not None:
            c.predicted_frame_p90_ms = round(pred["p90_ms"] * (1 + pred["margin"]) * tiles, 3)
        choices.append(c)
    return choices, notes


def _unmeasured(bundle) -> Choice:
    return Choice(bundle.name, str(bundle.path), 0.0, 1, 0, 0, 0, 0, "predicted")


def fill_in_command(choices: list[Choice], target: str) -> str | None:
    """The one command that measures the bundles whose figures are predicted (None if none):
    local profiling takes seconds per bundle; an Edge TPU target needs the device's daemon."""
    from lucida.tools.latency import edgetpu

    paths = [c.path for c in choices if c.source == "predicted"]
    if not paths:
        return None
    if edgetpu.is_edgetpu_target(target):
        return "lucida profile --target http://DEVICE:8080 --token TOKEN " + " ".join(paths)
    if target.startswith(("http://", "https://")):
        return f"lucida profile --target {target} --token TOKEN " + " ".join(paths)
    return "lucida profile " + " ".join(paths)


def why(chosen: Choice, budget: float, metric: str) -> str:
    """One line: why this bundle (accuracy, its p90 against the budget, measured or predicted)."""
    spare = budget - chosen.frame_p90_ms
    src = (
        "measured"
        if chosen.source == "measured"
        else f"predicted by the {chosen.predictor} predictor, p90 +{chosen.margin * 100:.0f}% margin"
    )
    return (
        f"{chosen.name}: the most accurate that fits ({metric} {chosen.accuracy:.4f}); p90 "
        f"{chosen.frame_p90_ms:.2f} ms/frame ({src}) leaves {spare:.2f} ms "
        f"({spare / budget * 100:.0f}%) of the {budget:.2f} ms budget"
    )


def overhead_for(db: LatencyDB, target: str, explicit: float | None) -> tuple[float, str]:
    """Capture + render ms per frame and where the figure came from."""
    if explicit is not None:
        return float(explicit), "--overhead-ms"
    row = db.overhead(target)
    if row is not None:
        return row["capture_ms"] + row["render_ms"], f"latency DB ({row['source']})"
    return DEFAULT_OVERHEAD_MS, "default (development host)"


# -- CLI ---------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser(
        "select", help="pick the most accurate bundle whose p90 latency fits a budget"
    )
    p.add_argument("bundles", nargs="+", help="bundle folders, .tar.gz files or shipped names")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget-ms", type=float, default=None, help="inference ms per frame")
    g.add_argument("--fps", type=float, default=None, help="frames per second to sustain")
    p.add_argument("--objective", default="20x", help="objective the model runs at (20x)")
    p.add_argument("--metric", default="fov_auc", help="manifest metric to maximize (fov_auc)")
    add_target_arguments(p)
    p.add_argument("--overhead-ms", type=float, default=None, help="capture + render ms/frame")
    p.add_argument("--um-per-px", type=float, default=None, help="camera pixel size (um)")
    p.add_argument(
        "--mnas-w",
        type=float,
        default=None,
        help="pick the fitting bundle with the best ACC x (LAT/T)^W (MNAS soft objective, e.g. -0.07)",
    )
    p.add_argument("--predicted-only", action="store_true", help="ignore measured latencies")
    p.add_argument("--evaluate-regret", action="store_true", help="predicted vs measured picks")
    p.add_argument("--budgets", type=int, default=20, help="regret: number of budgets (20)")
    p.add_argument("--plot", default="select.png", help="Pareto plot PNG (select.png)")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    target = resolve_target(args.target, args.threads, args.clock)
    with LatencyDB(args.db) as db:
        choices, notes = gather(
            args.bundles,
            db,
            target,
            args.metric,
            args.objective,
            args.um_per_px,
            predicted_only=args.predicted_only or args.evaluate_regret,
        )
        overhead, overhead_src = overhead_for(db, target, args.overhead_ms)
    for n in notes:
        print(f"lucida select: note: {n}", file=sys.stderr)
    if not choices:
        from lucida.models import resolve_bundle

        cmd = fill_in_command([_unmeasured(resolve_bundle(b)) for b in args.bundles], target)
        raise SelectError(
            f"none of the {len(args.bundles)} bundles can be compared: "
            + "; ".join(n.split("; measure it")[0] for n in notes)
            + f". Measure them (a few seconds per bundle): {cmd}"
        )
    if args.evaluate_regret:
        from lucida.tools.latency.pareto import regret

        r = regret(choices, args.budgets, args.mnas_w)
        r.update(target=target, objective=args.objective, metric=args.metric)
        if args.json:
            print(json.dumps(r))
        else:
            for row in r["rows"]:
                print(
                    f"budget {row['budget_ms']:>10.3f} ms  oracle {row['oracle']!s:<14} "
                    f"predicted {row['predicted_pick']!s:<14} {'same' if row['same'] else 'DIFF'}"
                    f"{'  MISSES BUDGET' if row['misses_budget_when_measured'] else ''}"
                )
            print(
                f"{r['same_pick']}/{r['budgets']} budgets: same pick as the oracle; "
                f"{r['misses']} predicted picks miss the budget when measured"
            )
        return 0
    budget = frame_budget_ms(args.budget_ms, args.fps, overhead)
    chosen = pick(choices, budget, args.mnas_w)
    closest = None
    if chosen is None:
        closest = min(choices, key=lambda c: c.frame_p90_ms)
    plot_path = None
    if not args.no_plot:
        title = f"{target} | {args.objective} | budget {budget:.1f} ms/frame" + (
            f" ({args.fps:g} fps - {overhead:.1f} ms overhead)" if args.fps else ""
        )
        from lucida.tools.latency.pareto import plot

        plot_path = str(plot(choices, budget, chosen, args.plot, title, args.metric))
    result = {
        "target": target,
        "objective": args.objective,
        "metric": args.metric,
        "budget_ms": round(budget, 3),
        "fps": args.fps,
        "overhead_ms": overhead if args.fps else None,
        "overhead_source": overhead_src if args.fps else None,
        "chosen": chosen.name if chosen else None,
        "why": why(chosen, budget, args.metric) if chosen else None,
        "margin_ms": round(budget - chosen.frame_p90_ms, 3) if chosen else None,
        "chosen_source": chosen.source if chosen else None,
        "fill_in": fill_in_command(choices, target),
        "closest": closest.name if closest else None,
        "candidates": [asdict(c) for c in sorted(choices, key=lambda c: c.frame_p90_ms)],
        "left_out": notes,
        "plot": plot_path,
    }
    if args.json:
        print(json.dumps(result))
    else:
        _print(result, choices, chosen, closest, budget)
    return 0 if chosen is not None else 1


def _print(result, choices, chosen, closest, budget) -> None:
    head = f"budget {budget:.2f} ms/frame at {result['objective']} on {result['target']}"
    if result["fps"]:
        head += (
            f" ({result['fps']:g} fps: {1000 / result['fps']:.2f} ms - "
            f"{result['overhead_ms']:.2f} ms capture+render, {result['overhead_source']})"
        )
    print(head)
    print(
        f"{'bundle':<16} {result['metric']:>8} {'tiles':>5} {'p90/invoke':>11} "
        f"{'p90/frame':>10}  source"
    )
    for c in sorted(choices, key=lambda c: c.frame_p90_ms):
        mark = "*" if chosen is not None and c.name == chosen.name else " "
        src = c.source + (f" (+{c.margin * 100:.0f}% margin)" if c.source == "predicted" else "")
        print(
            f"{mark}{c.name:<15} {c.accuracy:>8.4f} {c.tiles:>5} {c.invoke_p90_ms:>11.3f} "
            f"{c.frame_p90_ms:>10.3f}  {src}{'' if c.fits else '  over budget'}"
        )
    if chosen is not None:
        print(f"chosen: {result['why']}")
    else:
        over = closest.frame_p90_ms - budget
        print(
            f"no bundle fits {budget:.2f} ms/frame; closest: {closest.name} at "
            f"{closest.frame_p90_ms:.2f} ms/frame ({over:.2f} ms, "
            f"{over / budget * 100:.0f}% over)"
        )
    if result["fill_in"]:
        print(f"predicted figures; measure them with: {result['fill_in']}")
    if result["plot"]:
        print(f"plot: {result['plot']}")
