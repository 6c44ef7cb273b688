"""`lucida eval BUNDLE`: a heatmap bundle's accuracy on held-out synthetic slides, per objective.

Fields of view come from the virtual microscope (the full camera model: 1920x1080, noise,
vignetting, colour cast) with the stage at seeded random positions on tissue of slides whose
seeds were never used in training (HELD_OUT_SEEDS, >= 1000), at every objective the bundle
claims. Each frame goes through the real engine (resampling, tiling, int8) as on a device.

Per objective:
- fov_auc: ROC AUC of "tumour in the field of view" (the ARM paper's metric). A FoV is
  positive when tumour covers >= FOV_TUMOUR_FRACTION (1 %) of it in the ground truth; its score
  is the FOV_SCORE_PERCENTILE (99th) percentile of the heatmap (about the top 1 % of cells).
- pixel_auc: ROC AUC over heatmap cells, pooled over FoVs; a cell is positive when >= half
  of its frame pixels are tumour.
- contour_iou: the bundle's contours (its manifest's contour parameters) rasterized at frame
  resolution against the truth mask, pooled over FoVs: sum(intersection) / sum(union).
With a float twin of the model (a bundle holding the float TFLite), the same frames give its
figures and the int8-minus-float deltas.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

HELD_OUT_MIN_SEED = 1000  # training slides use seeds below this, evaluation slides from it
HELD_OUT_SEEDS = (1000, 1001, 1002, 1003, 1004, 1005)
FOV_TUMOUR_FRACTION = 0.01  # a FoV "has tumour" when >= 1 % of its area is tumour
FOV_SCORE_PERCENTILE = 99  # a FoV's score: this percentile of its heatmap
CELL_POSITIVE_FRACTION = 0.5  # a heatmap cell is tumour when >= half its pixels are


class EvalError(ValueError):
    """An evaluation that cannot be run as asked (no objective to evaluate, bad slide seeds)."""


@dataclass
class _Tally:
    """What one model saw at one objective, accumulated over FoVs."""

    fov_labels: list = field(default_factory=list)
    fov_scores: list = field(default_factory=list)
    cell_labels: list = field(default_factory=list)
    cell_scores: list = field(default_factory=list)
    inter: int = 0
    union: int = 0

    def add(self, probs: np.ndarray, affine: np.ndarray, mask: np.ndarray, contour: np.ndarray):
        self.fov_labels.append(bool(mask.mean() >= FOV_TUMOUR_FRACTION))
        self.fov_scores.append(float(np.percentile(probs, FOV_SCORE_PERCENTILE)))
        frac = cell_fractions(mask, affine, probs.shape)
        self.cell_labels.append((frac >= CELL_POSITIVE_FRACTION).ravel())
        self.cell_scores.append(probs.ravel().astype(np.float32))
        self.inter += int(np.count_nonzero(contour & mask))
        self.union += int(np.count_nonzero(contour | mask))

    def add_fov(self, probs: np.ndarray, affine: np.ndarray, mask: np.ndarray) -> None:
        """Only the FoV label and score (domain-shift runs report FoV AUC only)."""
        self.fov_labels.append(bool(mask.mean() >= FOV_TUMOUR_FRACTION))
        self.fov_scores.append(float(np.percentile(probs, FOV_SCORE_PERCENTILE)))

    def fov_auc(self) -> float | None:
        from lucida.runtime.stats import roc_auc

        v = roc_auc(np.asarray(self.fov_labels), self.fov_scores)
        return None if v is None else round(float(v), 4)

    def summary(self) -> dict:
        from lucida.runtime.stats import roc_auc

        def r(v):
            return None if v is None else round(float(v), 4)

        labels = np.asarray(self.fov_labels)
        return {
            "fov_auc": r(roc_auc(labels, self.fov_scores)),
            "pixel_auc": r(
                roc_auc(np.concatenate(self.cell_labels), np.concatenate(self.cell_scores))
            ),
            "contour_iou": r(self.inter / self.union) if self.union else None,
            "fovs": int(len(labels)),
            "fovs_with_tumour": int(labels.sum()),
        }


def cell_fractions(mask: np.ndarray, affine: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Tumour fraction of each heatmap cell (HxW float32) from the frame's truth mask.

    Cells are affine[0,0] x affine[1,1] frame px; the last row/column may hang over the frame
    edge, where the mask is extended by replication (as the engine pads the frame).
    """
    hh, hw = shape
    sx, sy = float(affine[0, 0]), float(affine[1, 1])
    fh, fw = mask.shape
    pw, ph = max(fw, int(round(hw * sx))), max(fh, int(round(hh * sy)))
    m = mask.astype(np.float32)
    if (pw, ph) != (fw, fh):
        m = cv2.copyMakeBorder(m, 0, ph - fh, 0, pw - fw, cv2.BORDER_REPLICATE)
    return cv2.resize(m, (hw, hh), interpolation=cv2.INTER_AREA)


def fov_positions(slide, objective: str, n: int, rng: np.random.Generator) -> list:
    """n stage positions (um) on tissue, about half of them with a tumour-bearing FoV.

    Candidates are random tissue points; each one's tumour fraction is estimated on a coarse
    grid of its FoV (slide.region_at), and candidates are taken alternately from those
    estimated >= FOV_TUMOUR_FRACTION and below, so both classes occur (borderline FoVs
    included). The label used for scoring is always the frame's exact truth mask.
    """
    from lucida.runtime.virtual.scope import OBJECTIVES

    fw, fh = 1920 * OBJECTIVES[objective], 1080 * OBJECTIVES[objective]
    gx, gy = np.meshgrid(np.linspace(-0.48, 0.48, 32) * fw, np.linspace(-0.48, 0.48, 18) * fh)
    gx, gy = gx.ravel(), gy.ravel()
    want = {True: (n + 1) // 2, False: n // 2}
    picked = {True: [], False: []}
    for _ in range(100 * n):
        x, y = slide.random_point(rng, "tissue")
        pos = bool((slide.region_at(x + gx, y + gy) == 2).mean() >= FOV_TUMOUR_FRACTION)
        if len(picked[pos]) < want[pos]:
            picked[pos].append((x, y))
        if all(len(picked[k]) >= want[k] for k in picked):
            break
    pos, neg = picked[True], picked[False]
    out = [p for pair in zip(pos, neg) for p in pair] + pos[len(neg) :] + neg[len(pos) :]
    return out[:n]


def fov_frames(
    slides,
    objective: str,
    per_slide: int,
    seed: int = 0,
    stain_shift: str | None = None,
    camera=None,
):
    """Frames of the virtual microscope at `objective`, `per_slide` per held-out slide (a seed or
    a SyntheticSlide), with the stage at seeded random positions on tissue (fov_positions).

    stain_shift: a held-out stain protocol (runtime.virtual.stain.STAIN_SHIFTS) applied to
    each slide; camera: a CameraConfig (e.g. with a colour cast) instead of the default."""
    from lucida.runtime.virtual.scope import VirtualMicroscope
    from lucida.runtime.virtual.stage import StagePath
    from lucida.runtime.virtual.stain import shifted_stain
    from lucida.runtime.virtual.tissue import SyntheticSlide

    for s in slides:
        slide = s if isinstance(s, SyntheticSlide) else SyntheticSlide(int(s))
        if stain_shift:
            slide.set_stain(shifted_stain(slide.stain, stain_shift))
        rng = np.random.default_rng([slide.seed, seed, 4242])
        points = fov_positions(slide, objective, per_slide, rng)
        scope = VirtualMicroscope(
            slide,
            path=StagePath.still(*points[0]),
            camera=camera,
            objective=objective,
            realtime=False,
            turret_move_s=0.0,
            settle_s=0.0,
            cache_tiles=48,
        )
        with scope:
            for x, y in points:
                scope.set_path(StagePath.still(x, y))
                yield scope.read()


def evaluate(
    bundles: dict,
    objectives: list[str],
    seeds=HELD_OUT_SEEDS,
    per_slide: int = 10,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = False,
    on_frame=None,
) -> dict:
    """{bundle key: {objective: metrics}} for several bundles run on the very same frames.

    bundles: {key: Bundle}; each is evaluated at the objectives it claims among `objectives`.
    on_frame(objective, frame, {key: (heatmap, regions)}): optional hook (pictures).
    """
    from lucida.overlay.contours import ContourExtractor, ContourParams
    from lucida.runtime.engine import Engine
    from tqdm import tqdm

    seeds = list(seeds)
    ids = [getattr(s, "seed", s) for s in seeds]
    if not ids or any(not isinstance(i, (int, np.integer)) or i < HELD_OUT_MIN_SEED for i in ids):
        raise EvalError(
            f"held-out slides must have seeds >= {HELD_OUT_MIN_SEED} (never used in training), "
            f"got {ids}"
        )
    engines = {k: Engine(b, device="cpu", num_threads=threads) for k, b in bundles.items()}
    params = {k: ContourParams.from_mapping(b.manifest.contours) for k, b in bundles.items()}
    out: dict = {k: {} for k in bundles}
    for obj in objectives:
        users = [k for k, b in bundles.items() if obj in b.manifest.objectives]
        if not users:
            continue
        tallies = {k: _Tally() for k in users}
        frames = fov_frames(seeds, obj, per_slide, seed)
        total = len(seeds) * per_slide
        for frame in tqdm(frames, total=total, desc=f"eval {obj}", disable=not progress):
            mask = frame.meta["truth_mask"]
            um = frame.meta["um_per_px"]
            fw, fh = frame.size
            seen = {}
            for k in users:
                hm = engines[k].infer(frame.image, um_per_px=um)
                regions = ContourExtractor(params[k]).extract(hm.probs, hm.affine, um)
                tallies[k].add(hm.probs, hm.affine, mask, regions.rasterize(fw, fh))
                seen[k] = (hm, regions)
            if on_frame is not None:
                on_frame(obj, frame, seen)
        for k in users:
            out[k][obj] = tallies[k].summary()
    return out


def latency(bundle, objectives: list[str], runs: int = 30, threads: int | None = None) -> dict:
    """p50/p90/p99 (ms) of Engine.infer on one 1920x1080 frame per objective (first run
    discarded), on this machine's CPU."""
    import platform

    from lucida.runtime.engine import Engine
    from lucida.runtime.stats import percentiles_ms
    from lucida.runtime.virtual.scope import OBJECTIVES

    engine = Engine(bundle, device="cpu", num_threads=threads)
    frame = next(fov_frames([HELD_OUT_SEEDS[0]], objectives[0], 1))
    out = {}
    for obj in objectives:
        um = OBJECTIVES[obj]
        engine.infer(frame.image, um_per_px=um)  # first inference discarded
        times = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            engine.infer(frame.image, um_per_px=um)
            times.append(time.perf_counter_ns() - t0)
        p = percentiles_ms(times)
        out[obj] = {
            "p50_ms": p["ms_p50"],
            "p90_ms": p["ms_p90"],
            "p99_ms": p["ms_p99"],
            "backend": f"{engine.info.backend} {engine.info.backend_version}",
            "delegate": engine.info.delegate,
            "host": f"{platform.machine()} {engine.num_threads} threads",
            "command": f"lucida eval {bundle.name} --latency",
        }
    return out


def metrics_for_manifest(
    int8: dict, float_: dict | None, seeds, per_slide: int, command: str
) -> dict:
    """The manifest's `metrics` section from evaluate() results for one bundle (and its twin)."""
    objs = list(int8)
    m = {
        "fov_auc": {o: int8[o]["fov_auc"] for o in objs},
        "pixel_auc": {o: int8[o]["pixel_auc"] for o in objs},
        "contour_iou": {o: int8[o]["contour_iou"] for o in objs},
    }
    if float_:
        for key in ("fov_auc", "pixel_auc", "contour_iou"):
            m[f"float_{key}"] = {o: float_[o][key] for o in objs}
        m["int8_minus_float_fov_auc"] = {
            o: _delta(int8[o]["fov_auc"], float_[o]["fov_auc"]) for o in objs
        }
        m["int8_minus_float_pixel_auc"] = {
            o: _delta(int8[o]["pixel_auc"], float_[o]["pixel_auc"]) for o in objs
        }
    m["eval"] = {
        "slides": [int(s) for s in seeds],
        "fovs_per_objective": {o: int8[o]["fovs"] for o in objs},
        "fovs_with_tumour": {o: int8[o]["fovs_with_tumour"] for o in objs},
        "fov_label": f"tumour >= {FOV_TUMOUR_FRACTION:.0%} of the FoV",
        "fov_score": f"p{FOV_SCORE_PERCENTILE} of the heatmap",
        "camera": "virtual microscope 1920x1080, default camera model",
        "command": command,
    }
    return m


def _delta(a, b):
    return None if a is None or b is None else round(float(a) - float(b), 4)


def float_twin_path(bundle) -> Path | None:
    """Where `lucida train-demo` keeps a shipped bundle's float twin (build/demo_models/)."""
    p = Path("build") / "demo_models" / f"{bundle.name}-float"
    return p if (p / "manifest.json").is_file() else None


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="accuracy of a heatmap bundle on held-out synthetic slides, per objective"
    )
    p.add_argument("bundle", help="bundle folder, .tar.gz or shipped name (lymph-m)")
    p.add_argument(
        "--float",
        dest="float_bundle",
        default=None,
        help="the float twin bundle (default: build/demo_models/NAME-float when it exists)",
    )
    p.add_argument("--objectives", default=None, help="comma list (default: the bundle's)")
    p.add_argument(
        "--slides",
        default=",".join(str(s) for s in HELD_OUT_SEEDS),
        help="held-out slide seeds, comma list",
    )
    p.add_argument("--fovs", type=int, default=10, help="fields of view per slide and objective")
    p.add_argument("--seed", type=int, default=0, help="seed of the stage positions")
    p.add_argument("--latency", action="store_true", help="also time one 1080p frame per objective")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads")
    p.add_argument(
        "--write", action="store_true", help="write the figures into the bundle's manifest"
    )
    p.add_argument(
        "--picture",
        default=None,
        metavar="PNG",
        help="save one illustrative FoV (frame, truth outline, model contours) as PNG",
    )
    p.add_argument(
        "--shift",
        help="domain shift: 'stain', 'camera' or 'stain,camera'; FoV AUC per held-out stain "
        "protocol / camera cast with the bundle's colour normalization on and off",
    )
    p.add_argument(
        "--fit-color-target",
        action="store_true",
        help="measure the bundle's colour normalization target on its training slides "
        "(with --write: store it in the manifest's color_norm)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


class _PictureKeeper:
    """on_frame hook: keeps the FoV at the first objective whose tumour fraction is closest to
    a third (both tissues and a long boundary in view)."""

    def __init__(self, objective: str, key: str = "int8"):
        self.objective, self.key = objective, key
        self.best = None
        self.best_gap = np.inf

    def __call__(self, objective, frame, seen) -> None:
        if objective != self.objective or self.key not in seen:
            return
        gap = abs(float(frame.meta["truth_mask"].mean()) - 1 / 3)
        if gap < self.best_gap:
            self.best_gap = gap
            self.best = (frame, seen[self.key][1])

    def save(self, path, bundle_name: str) -> int:
        from lucida.tools.demo.fov_picture import fov_picture, save_png

        frame, regions = self.best
        um = frame.meta["um_per_px"]
        sx, sy = frame.meta["stage_um"]
        title = (
            f"{bundle_name} (int8) on held-out slide {frame.meta['slide_seed']}, "
            f"{frame.objective}, stage ({sx:.0f}, {sy:.0f}) um"
        )
        pic = fov_picture(frame.image, frame.meta["truth_mask"], regions, um, title)
        return save_png(pic, path)


def run(args) -> int:
    from lucida.models import load_bundle, resolve_bundle
    from lucida.models.bundle import update_manifest

    bundle = resolve_bundle(args.bundle)
    objectives = (
        [o.strip() for o in args.objectives.split(",") if o.strip()]
        if args.objectives
        else list(bundle.manifest.objectives)
    )
    missing = [o for o in objectives if o not in bundle.manifest.objectives]
    if missing:
        raise EvalError(
            f"bundle {bundle.name} claims {bundle.manifest.objectives}, not {', '.join(missing)}"
        )
    try:
        seeds = [int(s) for s in args.slides.split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"--slides must be comma-separated integers, got {args.slides!r}") from None
    if args.fovs < 1:
        raise EvalError(f"--fovs must be >= 1, got {args.fovs}")
    if args.fit_color_target or args.shift:
        return _run_colour(args, bundle, objectives, seeds)
    twin_path = args.float_bundle or float_twin_path(bundle)
    bundles = {"int8": bundle}
    if twin_path:
        bundles["float"] = load_bundle(twin_path)
    keeper = _PictureKeeper(objectives[0]) if args.picture else None
    t0 = time.perf_counter()
    res = evaluate(
        bundles,
        objectives,
        seeds,
        args.fovs,
        args.seed,
        args.threads,
        progress=not args.json,
        on_frame=keeper,
    )
    command = f"lucida eval {args.bundle} --slides {','.join(map(str, seeds))} --fovs {args.fovs}"
    metrics = metrics_for_manifest(res["int8"], res.get("float"), seeds, args.fovs, command)
    result = {
        "bundle": bundle.name,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.latency:
        result["latency"] = latency(bundle, objectives, threads=args.threads)
    if keeper is not None and keeper.best is not None:
        result["picture"] = {
            "path": str(args.picture),
            "bytes": keeper.save(args.picture, bundle.name),
        }
    if args.write:
        fields = {"metrics": {**bundle.manifest.metrics, **metrics}}
        if args.latency:
            fields["latency"] = {
                **bundle.manifest.model_dump(mode="json")["latency"],
                **result["latency"],
            }
        update_manifest(bundle.path, **fields)
    if args.json:
        print(json.dumps(result))
    else:
        print(_table(bundle.name, metrics, result.get("latency")))
    return 0


def _run_colour(args, bundle, objectives, seeds) -> int:
    """--fit-color-target and --shift (see tools.demo.shift)."""
    from lucida.models.bundle import update_manifest

    from .shift import evaluate_shift, fit_color_target

    result: dict = {"bundle": bundle.name}
    t0 = time.perf_counter()
    if args.fit_color_target:
        target = fit_color_target(bundle, objectives)
        result["color_norm"] = target
        if args.write:
            update_manifest(bundle.path, color_norm=target)
    if args.shift:
        from lucida.models import load_bundle

        bundle = load_bundle(bundle.path)  # with the target just written, if any
        kinds = [k.strip() for k in args.shift.split(",") if k.strip()]
        res = evaluate_shift(bundle, objectives, kinds, seeds, args.fovs, args.seed, args.threads)
        result["shift"] = res
        result["command"] = (
            f"lucida eval {args.bundle} --shift {args.shift} --fovs {args.fovs} --json"
        )
        if args.write:
            metrics = {
                **bundle.manifest.metrics,
                "domain_shift": {
                    "fov_auc": res,
                    "slides": seeds,
                    "fovs_per_slide": args.fovs,
                    "command": result["command"],
                },
            }
            update_manifest(bundle.path, metrics=metrics)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result))
    else:
        if "color_norm" in result:
            print(f"{bundle.name}: colour target {json.dumps(result['color_norm'])}")
        for name, per in result.get("shift", {}).items():
            cells = "  ".join(
                f"{o}: off {_f(v['fov_auc_norm_off'])} on {_f(v['fov_auc_norm_on'])}"
                for o, v in per.items()
            )
            print(f"  {name:>14}  {cells}")
    return 0


def _table(name: str, m: dict, lat: dict | None) -> str:
    rows = [f"{name}: objective  fov_auc  float   delta   pixel_auc  contour_iou  p50/p99 ms"]
    for o in m["fov_auc"]:
        f = m.get("float_fov_auc", {}).get(o)
        d = m.get("int8_minus_float_fov_auc", {}).get(o)
        la = lat.get(o) if lat else None
        rows.append(
            f"  {o:>9}  {_f(m['fov_auc'][o])}  {_f(f)}  {_f(d)}  {_f(m['pixel_auc'][o])}    "
            f"{_f(m['contour_iou'][o])}       "
            + (f"{la['p50_ms']:.0f}/{la['p99_ms']:.0f}" if la else "-")
        )
    return "\n".join(rows)


def _f(v) -> str:
    return "   -  " if v is None else f"{v:+.3f}" if v < 0 else f"{v:.4f}"
