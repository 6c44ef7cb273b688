"""`lucida train-demo --out models`: the demo bundles lymph-s/-m/-l, rebuilt from the recipe.

Recipe (seeded; `make models` runs it):
1. render training patches from synthetic slides 0..15 through a camera-like augmentation at
   10x and 20x, resampled to each model's pixel size (cached in build/demo_data/);
2. train the S/M/L heatmap nets (tools/demo_net.py) on the CPU;
3. quantize each to full-integer int8 with uint8 I/O (calibration: tiles of training patches)
   and convert a float twin (kept in build/demo_models/, not shipped);
4. bundle: models/lymph-<s|m|l>/ with golden I/O computed by the engine;
5. evaluate int8 and float on the same held-out frames (slides >= 1000, virtual microscope at
   10x and 20x), time one 1080p frame per objective, and write both into the manifests.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TASK = "lymph"
OBJECTIVES = ["10x", "20x"]
TRAIN_SEEDS = tuple(range(16))
CONTOURS = {"threshold": 0.5, "threshold_low": 0.4, "blur_sigma_px": 12.0, "min_area_um2": 2000.0}


class TrainDemoError(ValueError):
    """A train-demo request that cannot be honoured (unknown variant, bad counts)."""


def build_variant_bundles(variant, model, calib, out_dir: Path, work_dir: Path, history: dict):
    """Quantize, convert and bundle one trained variant: (int8 Bundle, float Bundle)."""
    from lucida.tools.toolchain.bundle import build_bundle
    from lucida.tools.toolchain.convert import convert_float, quantize_keras, tensor_quant

    v = variant
    name = f"{TASK}-{v.name}"
    int8 = quantize_keras(model, calib, io_dtype="uint8")
    q = tensor_quant(int8)["input"]
    if (q["dtype"], q["scale"], q["zero_point"]) != ("uint8", 1.0, 0):
        raise TrainDemoError(
            f"{name}: uint8 input quantization is (scale {q['scale']}, zero point "
            f"{q['zero_point']}), expected the identity (1, 0)"
        )
    golden = np.clip(calib[0], 0, 255).astype(np.uint8)
    cw, ch = v.tile
    common = dict(
        task=TASK,
        objectives=OBJECTIVES,
        golden_input=golden,
        um_per_px=v.um_per_px,
        stride=v.stride,
        output={"kind": "heatmap", "channels": 1, "activation": "sigmoid"},
        contours=CONTOURS,
    )
    desc = (
        f"Demo tumour heatmap for synthetic H&E lymph node, size {v.name.upper()}: "
        f"{v.um_per_px:g} um/px, {cw}x{ch} px tiles, one logit per 16x16 px cell; trained by "
        f"`lucida train-demo` on synthetic slides {TRAIN_SEEDS[0]}..{TRAIN_SEEDS[-1]} "
        f"({history['patches']} patches, {len(history['loss'])} epochs). Not for clinical use."
    )
    bundle = build_bundle(out_dir / name, name=name, cpu_tflite=int8, description=desc, **common)
    twin = build_bundle(
        work_dir / f"{name}-float",
        name=f"{name}-float",
        cpu_tflite=convert_float(model),
        description=f"Float twin of {name} (evaluation only, not shipped).",
        **common,
    )
    return bundle, twin


def register(sub) -> None:
    p = sub.add_parser(
        "train-demo", help="train, quantize, bundle and evaluate the demo models lymph-s/m/l"
    )
    p.add_argument("--out", default="models", help="where the bundles go (default models/)")
    p.add_argument("--variants", default="s,m,l", help="comma list of s, m, l")
    p.add_argument("--epochs", type=int, default=6, help="training epochs per model")
    p.add_argument(
        "--scenes", type=int, default=5, help="rendered scenes per training slide and objective"
    )
    p.add_argument("--fovs", type=int, default=10, help="eval fields of view per slide/objective")
    p.add_argument("--cache", default="build/demo_data", help="rendered patch cache")
    p.add_argument("--work", default="build/demo_models", help="float models and twins")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eval", action="store_true", help="skip evaluation and latency")
    p.set_defaults(func=run)


def run(args) -> int:
    from lucida.tools.cli import require_host

    require_host("tensorflow", "keras")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lucida.models.bundle import update_manifest
    from lucida.tools.demo.evaluate import HELD_OUT_SEEDS, evaluate, latency, metrics_for_manifest
    from lucida.tools.demo.fit import mosaics, train
    from lucida.tools.demo.net import VARIANTS
    from lucida.tools.demo.patches import DataRecipe, cached_patches

    names = [n.strip().lower() for n in args.variants.split(",") if n.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        raise TrainDemoError(f"--variants must be a comma list of s, m, l; got {args.variants!r}")
    if args.epochs < 1 or args.scenes < 1 or args.fovs < 1:
        raise TrainDemoError("--epochs, --scenes and --fovs must be >= 1")
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    recipe = DataRecipe(seeds=TRAIN_SEEDS, scenes_per_objective=args.scenes)
    ums = {n: VARIANTS[n].um_per_px for n in names}
    print(f"training data: slides {TRAIN_SEEDS[0]}..{TRAIN_SEEDS[-1]} (cache {args.cache})")
    data = cached_patches(ums, recipe, args.cache, progress=True)
    bundles, twins, histories = {}, {}, {}
    for n in names:
        v = VARIANTS[n]
        x, y = data[n]
        t0 = time.perf_counter()
        model, hist = train(v, x, y, epochs=args.epochs, seed=args.seed, progress=True)
        hist["patches"] = int(len(x))
        hist["train_seconds"] = round(time.perf_counter() - t0, 1)
        model.save(work / f"{TASK}-{n}.keras")
        calib = mosaics(x, v.tile, 48, seed=args.seed)
        bundles[n], twins[n] = build_variant_bundles(v, model, calib, out, work, hist)
        histories[n] = hist
        size = bundles[n].manifest.files["cpu.tflite"].bytes
        print(f"{TASK}-{n}: trained in {hist['train_seconds']} s, int8 cpu.tflite {size} bytes")
    if not args.no_eval:
        both = {
            **{f"{n}": b for n, b in bundles.items()},
            **{f"{n}-float": t for n, t in twins.items()},
        }
        t0 = time.perf_counter()
        res = evaluate(both, OBJECTIVES, HELD_OUT_SEEDS, args.fovs, seed=args.seed, progress=True)
        print(f"evaluated in {time.perf_counter() - t0:.0f} s")
        for n, b in bundles.items():
            cmd = f"lucida eval {b.name} --fovs {args.fovs} --json"
            metrics = metrics_for_manifest(
                res[n], res.get(f"{n}-float"), HELD_OUT_SEEDS, args.fovs, cmd
            )
            metrics["training"] = {
                "slides": list(TRAIN_SEEDS),
                "loss": histories[n]["loss"],
                "patches": histories[n]["patches"],
                "command": f"lucida train-demo --out {args.out}",
            }
            lat = latency(b, OBJECTIVES)
            update_manifest(b.path, metrics=metrics, latency=lat)
            print(
                f"{b.name}: {json.dumps({'fov_auc': metrics['fov_auc'], 'p50_ms': {o: lat[o]['p50_ms'] for o in lat}})}"
            )
    print(f"train-demo done in {time.perf_counter() - t_start:.0f} s on {platform.node()}")
    return 0
