"""Domain shift, measured: `lucida eval BUNDLE --shift stain,camera`.

Held-out stain protocols (runtime.virtual.stain.STAIN_SHIFTS: hue, fading, over-staining,
H:E ratio, all beyond the training slides' range) and camera colour casts
(runtime.virtual.camera.CAMERA_SHIFTS: white-balance errors) are applied to the held-out
slides; every frame goes through the engine twice, as the camera gives it and after the
bundle's colour normalization (its manifest's color_norm), and FoV AUC is reported per
shift and objective for both. `--fit-color-target` measures that target on training slides.
"""

from __future__ import annotations

import numpy as np

TARGET_FOVS = 2  # fields of view per training slide and objective for the colour target


def conditions(kinds: list[str]) -> list[tuple[str, str | None, tuple | None]]:
    """(name, stain shift, camera colour gains) for each requested family, after the
    unshifted baseline."""
    from lucida.runtime.virtual.camera import CAMERA_SHIFTS
    from lucida.runtime.virtual.stain import STAIN_SHIFTS

    from .evaluate import EvalError

    out: list[tuple[str, str | None, tuple | None]] = [("none", None, None)]
    for k in kinds:
        if k == "stain":
            out += [(f"stain:{s}", s, None) for s in STAIN_SHIFTS]
        elif k == "camera":
            out += [(f"camera:{c}", None, g) for c, g in CAMERA_SHIFTS.items()]
        else:
            raise EvalError(f"--shift takes stain and/or camera, got {k!r}")
    return out


def _normalizer(bundle):
    from lucida.calibration.color_norm import normalizer_from_manifest

    from .evaluate import EvalError

    norm = normalizer_from_manifest(bundle.manifest.color_norm)
    if norm is None:
        raise EvalError(
            f"bundle {bundle.name} has no colour normalization target (manifest color_norm is "
            f"'none'); measure one with `lucida eval {bundle.name} --fit-color-target`"
        )
    norm.momentum = 0.0  # every FoV is another slide: no smoothing across them
    return norm


def evaluate_shift(bundle, objectives, kinds, seeds, per_slide, seed=0, threads=None) -> dict:
    """{condition: {objective: {"fov_auc_norm_off", "fov_auc_norm_on"}}} on the same frames."""
    from lucida.runtime.engine import Engine
    from lucida.runtime.virtual.camera import CameraConfig

    from .evaluate import _Tally, fov_frames

    norm = _normalizer(bundle)
    engine = Engine(bundle, device="cpu", num_threads=threads)
    out: dict = {}
    for name, stain, gains in conditions(kinds):
        camera = CameraConfig(colour_gains=gains) if gains else None
        out[name] = {}
        for obj in objectives:
            off, on = _Tally(), _Tally()
            for frame in fov_frames(seeds, obj, per_slide, seed, stain, camera):
                mask, um = frame.meta["truth_mask"], frame.meta["um_per_px"]
                for tally, img in ((off, frame.image), (on, norm(frame.image))):
                    hm = engine.infer(img, um_per_px=um)
                    tally.add_fov(hm.probs, hm.affine, mask)
            out[name][obj] = {
                "fov_auc_norm_off": off.fov_auc(),
                "fov_auc_norm_on": on.fov_auc(),
            }
    return out


def fit_color_target(bundle, objectives, per_slide: int = TARGET_FOVS, seed: int = 0) -> dict:
    """A Reinhard target (manifest color_norm) from FoVs of the bundle's training slides
    (metrics.training.slides) at its objectives, through the default virtual camera."""
    from lucida.calibration import fit_target

    from .evaluate import HELD_OUT_MIN_SEED, EvalError, fov_frames

    slides = (bundle.manifest.metrics or {}).get("training", {}).get("slides") or []
    slides = [int(s) for s in slides if int(s) < HELD_OUT_MIN_SEED]
    if not slides:
        raise EvalError(f"bundle {bundle.name} does not list its training slides in its metrics")
    images = [
        np.ascontiguousarray(f.image[::2, ::2])
        for obj in objectives
        for f in fov_frames(slides, obj, per_slide, seed + 7)
    ]
    t = fit_target(images)
    return {
        "method": "reinhard",
        "lab_mean": [round(v, 4) for v in t.mean],
        "lab_std": [round(v, 4) for v in t.std],
    }
