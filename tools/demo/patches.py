"""Training patches for the demo models, rendered from synthetic training slides (host side).

A *scene* is a square region of a training slide rendered as the camera would see it at 10x
(1.0 um/px) or 20x (0.5 um/px), with a camera-like augmentation (exposure, white balance,
vignetting, defocus blur, sensor noise) applied at camera resolution. Each scene is then
resampled with INTER_AREA to each model's pixel size, exactly as the engine resamples frames,
and cut into patches; the target of a patch is the tumour fraction of each output cell.

Patches are cached per (variant, recipe) in build/demo_data/ (gitignored): rendering is the
slow part and is the same on every run. Everything is seeded: (slide seed, scene index) fixes
the region and its augmentation.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

CAMERA_UM_PER_PX = {"10x": 1.0, "20x": 0.5}
SCENE_PX = 1024  # scene side in camera px
FRAME_PX = (1920, 1080)  # the camera sensor the vignetting is modelled on


@dataclass(frozen=True)
class DataRecipe:
    """What is rendered: slides, scenes per slide and objective, patches per scene and variant."""

    seeds: tuple[int, ...] = tuple(range(16))
    scenes_per_objective: int = 5
    patch_px: int = 128
    patches_per_scene: int = 8
    cell_px: int = 16

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _scene_centre(slide, rng: np.random.Generator) -> tuple[float, float]:
    """A scene centre (um): on tumour, near a tumour edge, on normal tissue, or anywhere."""
    kind = rng.choice(["tumour", "edge", "normal", "any"], p=[0.3, 0.35, 0.25, 0.1])
    if kind == "edge":
        x, y = slide.random_point(rng, "tumour")
        ang = rng.uniform(0, 2 * np.pi)
        d = np.arange(0.0, 1200.0, 20.0)
        r = slide.region_at(x + d * np.cos(ang), y + d * np.sin(ang))
        out = np.flatnonzero(r != 2)
        if len(out):
            return x + d[out[0]] * np.cos(ang), y + d[out[0]] * np.sin(ang)
        return x, y
    return slide.random_point(rng, str(kind))


def camera_augment(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera's view of a rendered region (HxWx3 uint8 -> same): exposure and white balance,
    vignetting of a 1920x1080 sensor (the region at a random place on it), defocus, noise."""
    h, w = rgb.shape[:2]
    img = rgb.astype(np.float32)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    gain = rng.uniform(0.8, 1.15) * rng.uniform(0.85, 1.08, 3)
    fw, fh = FRAME_PX
    ox, oy = rng.uniform(0, max(1, fw - w)), rng.uniform(0, max(1, fh - h))
    dx = ((np.arange(w, dtype=np.float32) + ox - fw / 2) / (fw / 2)) ** 2
    dy = ((np.arange(h, dtype=np.float32) + oy - fh / 2) / (fh / 2)) ** 2
    vig = 1 - rng.uniform(0.0, 0.3) * (dy[:, None] + dx[None, :]) / 2
    img *= vig[..., None]
    img *= gain.astype(np.float32)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1.0, 6.0))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _render_scene(slide, objective: str, rng: np.random.Generator):
    """(rgb uint8, mask bool) of one augmented scene at the objective's camera pixel size."""
    s = CAMERA_UM_PER_PX[objective]
    cx, cy = _scene_centre(slide, rng)
    half = SCENE_PX * s / 2
    rgb, mask = slide.render(cx - half, cy - half, SCENE_PX, SCENE_PX, s)
    return camera_augment(rgb, rng), mask


def _patches(rgb, mask, cam_um, model_um, recipe: DataRecipe, rng):
    """Resample a scene to the model's pixel size and cut random cell-aligned patches.

    Returns (patches N x P x P x 3 uint8, targets N x P/cell x P/cell float16 tumour fraction).
    """
    f = cam_um / model_um
    side = int(round(rgb.shape[0] * f))
    img = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    frac = cv2.resize(mask.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    c, p = recipe.cell_px, recipe.patch_px
    cells = cv2.resize(frac, (side // c, side // c), interpolation=cv2.INTER_AREA)
    free = (side - p) // c
    n = recipe.patches_per_scene if free > 0 else 1
    xs, ys = [], []
    for _ in range(n):
        ci, cj = (
            (int(rng.integers(0, free + 1)), int(rng.integers(0, free + 1))) if free else (0, 0)
        )
        xs.append(img[cj * c : cj * c + p, ci * c : ci * c + p])
        ys.append(cells[cj : cj + p // c, ci : ci + p // c])
    return np.stack(xs), np.stack(ys).astype(np.float16)


def render_patches(
    model_ums: dict[str, float], recipe: DataRecipe, progress: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{variant: (patches, targets)} for every variant's pixel size, from the same scenes."""
    from lucida.runtime.virtual.tissue import SyntheticSlide
    from tqdm import tqdm

    out = {k: ([], []) for k in model_ums}
    jobs = [(seed, obj) for seed in recipe.seeds for obj in CAMERA_UM_PER_PX]
    for seed, obj in tqdm(jobs, desc="rendering", unit="slide-obj", disable=not progress):
        slide = SyntheticSlide(seed)
        for i in range(recipe.scenes_per_objective):
            rng = np.random.default_rng([seed, 10 if obj == "10x" else 20, i])
            rgb, mask = _render_scene(slide, obj, rng)
            for k, um in model_ums.items():
                x, y = _patches(rgb, mask, CAMERA_UM_PER_PX[obj], um, recipe, rng)
                out[k][0].append(x)
                out[k][1].append(y)
    return {k: (np.concatenate(xs), np.concatenate(ys)) for k, (xs, ys) in out.items()}


def cached_patches(
    model_ums: dict[str, float], recipe: DataRecipe, cache_dir: str | os.PathLike, progress=False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """render_patches, cached as build/demo_data/<variant>-<um>-<recipe key>.npz."""
    cache = Path(cache_dir)
    paths = {k: cache / f"{k}-{um:g}um-{recipe.key()}.npz" for k, um in model_ums.items()}
    if all(p.is_file() for p in paths.values()):
        loaded = {}
        for k, p in paths.items():
            with np.load(p) as z:
                loaded[k] = (z["x"], z["y"])
        return loaded
    data = render_patches(model_ums, recipe, progress)
    cache.mkdir(parents=True, exist_ok=True)
    for k, (x, y) in data.items():
        tmp = paths[k].with_name(paths[k].name + ".tmp.npz")
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, paths[k])
    return data


def stain_jitter(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-image random flips, 90-degree turns and optical-density scaling (N x P x P x 3 uint8
    -> float32 0..255): a cheap stand-in for slide-to-slide stain variation."""
    x = batch.astype(np.float32)
    n = len(x)
    od = -np.log((x + 1.0) / 256.0)
    od *= rng.uniform(0.8, 1.2, (n, 1, 1, 1)) * rng.uniform(0.92, 1.08, (n, 1, 1, 3))
    x = 256.0 * np.exp(-od) - 1.0
    x *= rng.uniform(0.9, 1.1, (n, 1, 1, 1))
    return np.clip(x, 0, 255)


def flip_rot(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    """The same random flip and 90-degree turn of a batch of images and its cell targets."""
    k = int(rng.integers(0, 4))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)
