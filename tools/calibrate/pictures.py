"""Pictures for docs/calibration.md: the pattern, the camera's view of it over tissue,
and the overlay before and after registration, as the eye would see it.

    python -m lucida.tools.calibrate.pictures docs/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from lucida.calibration import make_pattern, register_display, render_pattern
from lucida.calibration.homography import corner_error
from lucida.calibration.imageio import write_image
from lucida.calibration.manual import nominal_homography
from lucida.tools.calibrate.simulate import random_homography, simulate_capture


def _tissue_with_tumour(size: tuple[int, int], seed: int):
    """(rgb, tumour mask) with a tumour border in view: the virtual slide, else a fallback."""
    try:
        from lucida.runtime.virtual.tissue import SyntheticSlide  # type: ignore

        slide = SyntheticSlide(seed)
        sw, sh = slide.size_um
        rng = np.random.default_rng(seed)
        best = None
        for _ in range(40):
            x, y = rng.uniform(0.2, 0.8) * sw, rng.uniform(0.2, 0.8) * sh
            _, m = slide.render(x, y, size[0] // 8, size[1] // 8, 8.0)
            score = abs(float(m.mean()) - 0.4)
            if best is None or score < best[0]:
                best = (score, x, y)
        return slide.render(best[1], best[2], size[0], size[1], 1.0)
    except Exception:
        from lucida.tools.calibrate.simulate import fallback_tissue

        rgb = fallback_tissue(np.random.default_rng(seed), size)
        return rgb, cv2.GaussianBlur(rgb[..., 1], (0, 0), 25) < 150


def _save_small(path: Path, rgb: np.ndarray) -> None:
    """PNG with a 128-colour palette (Pillow, a host dependency) to stay well under
    400 KB; plain PNG when Pillow is not installed."""
    try:
        from PIL import Image
    except ImportError:
        write_image(path, rgb)
        return
    img = Image.fromarray(rgb).quantize(
        colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    img.save(path, optimize=True)


def _eye_view(tissue, overlay_display, h_true, camera):
    """What the eye sees: the slide plus the display's light (display -> eye through the
    true optics, here the camera's frame)."""
    seen = cv2.warpPerspective(
        overlay_display, h_true, camera, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )
    return np.clip(tissue.astype(np.int16) + seen, 0, 255).astype(np.uint8)


def _overlay(contours_cam, h, display):
    img = np.zeros((display[1], display[0], 3), np.uint8)
    for c in contours_cam:
        d = cv2.perspectiveTransform(c.reshape(-1, 1, 2).astype(np.float64), h)
        cv2.polylines(img, [np.round(d * 4).astype(np.int32)], True, (0, 255, 0), 3, cv2.LINE_AA, 2)
    return img


def make_pictures(out: Path, seed: int = 4) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    display = camera = (1920, 1080)
    spec = make_pattern(display)
    pattern = render_pattern(spec)
    write_image(
        out / "calib_pattern.png", cv2.resize(pattern, (960, 540), interpolation=cv2.INTER_AREA)
    )

    rng = np.random.default_rng(seed)
    h_true, eval_pts, _ = random_homography(rng, display, camera, None)
    tissue, mask = _tissue_with_tumour(camera, seed)
    captured = simulate_capture(
        pattern,
        h_true,
        camera,
        rng,
        None,
        blur_sigma=1.3,
        noise_dn=3.0,
        pattern_gain=0.7,
        tissue_gain=0.8,
        tissue=tissue,
    )
    _save_small(
        out / "calib_captured.png", cv2.resize(captured, (960, 540), interpolation=cv2.INTER_AREA)
    )

    res = register_display(captured, spec)
    err = corner_error(res.homography, h_true, eval_pts)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contours = [c for c in contours if cv2.contourArea(c) > 400]
    h_nominal = nominal_homography(camera, display)
    panels = []
    for name, h in (("before: nominal", h_nominal), ("after: registered", res.homography)):
        eye = _eye_view(tissue, _overlay(contours, h, display), h_true, camera)
        x0, y0, w, h_ = 560, 290, 800, 500
        crop = eye[y0 : y0 + h_, x0 : x0 + w].copy()
        cv2.putText(
            crop, name, (12, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2, cv2.LINE_AA
        )
        panels.append(crop)
    both = np.concatenate([panels[0], np.full((500, 8, 3), 255, np.uint8), panels[1]], axis=1)
    _save_small(
        out / "calib_registered.png", cv2.resize(both, (1008, 312), interpolation=cv2.INTER_AREA)
    )
    info = {
        "mean_corner_error_px": round(float(err.mean()), 3),
        "worst_corner_error_px": round(float(err.max()), 3),
        "nominal_corner_error_px": round(
            float(corner_error(h_nominal, h_true, eval_pts).mean()), 1
        ),
        "rms_px": round(res.rms_px, 3),
        "inliers": res.inliers,
    }
    return info


if __name__ == "__main__":
    print(json.dumps(make_pictures(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")), indent=1))
