"""`lucida infer BUNDLE IMAGE... [--json] [--out DIR]`: run a bundle on image files.

What pycoral's example scripts do, for any output kind, through the daemon's engine path:
- class_scores (a classifier): the image resized to the model input, top-k labels and scores;
  with --tiles, the classifier over the frame's tiles at the bundle's tile stride instead (as the
  daemon runs it): per-tile top class and score, per-class patch areas, the positive set's
  contours, and with --out a patch-map PNG (one colour per class);
- heatmap / class_map (segmenters, tumour heatmaps): the frame tiled at its pixel size, per-class
  areas (px2, um2 when the pixel size is known), the overlay's per-class contours, and with
  --out a class-map PNG (one colour per class) and a JSON of the contours.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


class InferError(ValueError):
    """An image or option `lucida infer` cannot use."""


def voc_colors(n: int) -> np.ndarray:
    """n x 3 uint8 RGB: PASCAL VOC's class colours (the DeepLab demos' palette); 0 is black."""
    out = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[k] = (r, g, b)
    return out


def class_palette(manifest) -> np.ndarray:
    """(C + 1) x 3 uint8 RGB per class index: the label's colour, the overlay's colour for
    positive classes, else VOC's; the last row (no class) black."""
    from lucida.overlay.classes import class_styles

    o = manifest.output
    pal = np.vstack([voc_colors(o.channels), np.zeros((1, 3), np.uint8)])
    names = [o.label(k) for k in range(o.channels)]
    for s in class_styles(o.positives, names, [lab.color for lab in o.labels]):
        pal[s.index] = s.color
    return pal


def class_map_picture(idx: np.ndarray, affine: np.ndarray, frame_size, palette) -> np.ndarray:
    """Class index per cell -> RGB uint8 picture at frame size (nearest cell, exact affine)."""
    fw, fh = frame_size
    src = idx.astype(np.uint16 if palette.shape[0] > 255 else np.uint8)
    m = cv2.invertAffineTransform(np.asarray(affine, np.float64))  # frame px -> cell
    flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP  # m maps destination px to source cells
    up = cv2.warpAffine(src, m, (fw, fh), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return palette[np.minimum(up, palette.shape[0] - 1)]


def classify(engine, rgb: np.ndarray, top_k: int) -> dict:
    scores = engine.classify(rgb)
    o = engine.manifest.output
    order = np.argsort(-scores, kind="stable")[:top_k]
    return {
        "top": [
            {"index": int(k), "label": o.label(int(k)), "score": round(float(scores[k]), 6)}
            for k in order
        ]
    }


def patches(
    engine, image: np.ndarray, um_per_px: float | None
) -> tuple[dict, np.ndarray, np.ndarray]:
    """A patch classifier over the frame's tiles -> ({"tiles": grid, tile and stride px, each
    tile's top class and score}, class index per tile rows x cols int32), and the affine."""
    m = engine.manifest
    scores, affine = engine.infer_patch_scores(image, um_per_px)
    idx = np.argmax(scores, axis=-1).astype(np.int32)
    top = np.take_along_axis(scores, idx[..., None], axis=-1)[..., 0]
    o = m.output
    grid = [
        [
            {"index": int(k), "label": o.label(int(k)), "score": round(float(p), 6)}
            for k, p in zip(row_k, row_p)
        ]
        for row_k, row_p in zip(idx, top)
    ]
    info = {
        "grid": list(idx.shape),
        "tile_px": [m.input.width, m.input.height],
        "stride_px": [m.tiling.stride_x, m.tiling.stride_y],
        "top": grid,
    }
    return info, idx, affine


def segment(
    active, rgb: np.ndarray, um_per_px: float | None, tiles: bool = False
) -> tuple[dict, tuple]:
    """Per-class areas and contours of one frame, and its class index map (cells, or a patch
    classifier's tiles with `tiles`) + affine."""
    from lucida.overlay.classes import ClassContours

    engine = active.engine
    o = engine.manifest.output
    image = active.normalize(rgb) if active.normalize else rgb
    hm = engine.infer(image, um_per_px)
    if tiles:
        tile_info, idx, affine = patches(engine, image, um_per_px)
    else:
        tile_info = None
        idx, affine = engine.infer_labels(image, um_per_px)
    cell_px2 = abs(float(np.linalg.det(np.asarray(affine)[:, :2])))
    counts = np.bincount(idx.ravel(), minlength=o.channels + 1)
    areas = []
    for k in range(o.channels):
        a = {"index": k, "label": o.label(k), "area_px2": round(float(counts[k]) * cell_px2, 1)}
        if um_per_px:
            a["area_um2"] = round(a["area_px2"] * um_per_px**2, 1)
        a["fraction"] = round(float(counts[k]) / idx.size, 6) if idx.size else 0.0
        areas.append(a)
    styles = active.class_styles()
    regions = ClassContours(active.contours).extract(
        hm.probs,
        hm.affine,
        um_per_px,
        classes=hm.classes,
        class_ids=hm.class_ids or tuple(o.positives[:1]),
    )
    names = {s.index: s.name for s in styles or ()}
    contours = []
    for i, poly in enumerate(regions.contours):
        k = regions.class_ids[i] if regions.class_ids else o.positives[0]
        item = {
            "class": int(k),
            "label": names.get(k, o.label(k)),
            "area_px2": round(regions.areas_px2[i], 1),
            "points": np.round(poly, 1).tolist(),
            "holes": [np.round(h, 1).tolist() for h in regions.holes[i]],
        }
        if regions.areas_um2 is not None:
            item["area_um2"] = round(regions.areas_um2[i], 1)
        contours.append(item)
    result = {
        "positive_fraction": round(float(np.mean(hm.probs >= active.contours.threshold)), 6),
        "areas": areas,
        "contours": contours,
    }
    if tile_info is not None:
        result["tiles"] = tile_info
    return result, (idx, affine, hm.frame_size)


def infer_images(
    bundle_path: str,
    images: list[str],
    *,
    out_dir: str | None = None,
    top_k: int = 5,
    um_per_px: float | None = None,
    device: str = "cpu",
    tiles: bool = False,
) -> list[dict]:
    """Run the bundle on each image; write pictures/JSON under out_dir when given. tiles: a
    classifier runs over the frame's tiles (a patch map) instead of the whole image resized."""
    from lucida.calibration.atomic import atomic_write_bytes, atomic_write_text
    from lucida.models import resolve_bundle
    from lucida.runtime.engine import Engine
    from lucida.runtime.models import ActiveModel
    from lucida.tools.toolchain.representative import load_rgb

    if top_k < 1:
        raise InferError(f"--top-k {top_k}: expected 1 or more")
    bundle = resolve_bundle(bundle_path)
    m = bundle.manifest
    if tiles and m.output.kind != "class_scores":
        raise InferError(
            f"--tiles: bundle {bundle.name} is a {m.output.kind} model, which is tiled already; "
            "--tiles is for classifiers (class_scores)"
        )
    engine = Engine(bundle, device=device)
    active = ActiveModel.of(engine, m.contours)
    um = um_per_px or m.input.um_per_px
    out = Path(out_dir) if out_dir else None
    results = []
    for path in images:
        rgb = load_rgb(path)
        item = {"image": str(path), "bundle": bundle.name, "kind": m.output.kind}
        if m.output.kind == "class_scores" and not tiles:
            item.update(classify(engine, rgb, top_k))
        else:
            seg, (idx, affine, size) = segment(active, rgb, um, tiles=tiles)
            item["um_per_px"] = um
            item.update(seg)
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                stem = Path(path).stem
                pic = class_map_picture(idx, affine, size, class_palette(m))
                ok, png = cv2.imencode(".png", cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
                atomic_write_bytes(out / f"{stem}.classes.png", png.tobytes())
                item["class_map_png"] = str(out / f"{stem}.classes.png")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            dest = out / f"{Path(path).stem}.json"
            atomic_write_text(dest, json.dumps(item, indent=1) + "\n")
        results.append(item)
    return results


def register(sub) -> None:
    p = sub.add_parser("infer", help="run a bundle on image files (top-k, class maps, contours)")
    p.add_argument("bundle", help="bundle folder, .tar.gz, or a shipped bundle's name")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="classes listed for a classifier")
    p.add_argument("--um-per-px", type=float, help="the images' pixel size (default: model's)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, or an Edge TPU spec")
    p.add_argument("--out", help="folder for <image>.json and <image>.classes.png")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--tiles",
        action="store_true",
        help="classifiers: run over the image's tiles at the bundle's tile stride (a patch map, "
        "as the daemon runs it) instead of once on the whole image resized",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    results = infer_images(
        args.bundle,
        args.images,
        out_dir=args.out,
        top_k=args.top_k,
        um_per_px=args.um_per_px,
        device=args.device,
        tiles=args.tiles,
    )
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=1))
        return 0
    for r in results:
        print(f"{r['image']}: {r['bundle']} ({r['kind']})")
        for t in r.get("top", []):
            print(f"  {t['score']:.4f}  {t['label']} [{t['index']}]")
        if "tiles" in r:
            rows, cols = r["tiles"]["grid"]
            print(f"  {rows} x {cols} tiles of {r['tiles']['tile_px'][0]} px")
        for a in r.get("areas", []):
            if a["fraction"] > 0:
                um2 = f", {a['area_um2']:.0f} um2" if "area_um2" in a else ""
                print(f"  {a['label']}: {a['fraction']:.1%} of the frame{um2}")
        if "contours" in r:
            print(f"  {len(r['contours'])} contour(s)" + (f" -> {args.out}" if args.out else ""))
    return 0
