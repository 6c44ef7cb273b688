"""Small homography helpers: map points, local scale, sanity checks."""

from __future__ import annotations

import numpy as np

from .errors import DegenerateHomographyError


def apply_homography(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map Nx2 points (x, y) through a 3x3 homography; returns Nx2 float64."""
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    q = np.c_[pts, np.ones(len(pts))] @ np.asarray(h, np.float64).T
    return q[:, :2] / q[:, 2:3]


def local_scale(h: np.ndarray, at: np.ndarray) -> float:
    """Length scale of the map `h` at point `at` (output px per input px)."""
    at = np.asarray(at, np.float64).reshape(2)
    p = apply_homography(h, np.array([at, at + [1.0, 0.0], at + [0.0, 1.0]]))
    return float(np.sqrt(abs(np.linalg.det(np.array([p[1] - p[0], p[2] - p[0]])))))


def corner_error(h_est: np.ndarray, h_true: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance (output px) between where h_est and h_true put each of the Nx2 points."""
    return np.linalg.norm(apply_homography(h_est, pts) - apply_homography(h_true, pts), axis=1)


def check_homography(h: np.ndarray, camera_size: tuple[int, int], what: str = "homography") -> None:
    """Raise DegenerateHomographyError unless `h` maps the camera frame sanely.

    Rejects non-finite or singular matrices, a horizon (w = 0) inside the frame, a fold
    (the Jacobian changes sign), and local scale varying more than 4x across the frame.
    A mirror (negative Jacobian everywhere) is allowed: some optics flip the display.
    """
    h = np.asarray(h, np.float64)
    if h.shape != (3, 3) or not np.all(np.isfinite(h)):
        raise DegenerateHomographyError(f"{what} must be a finite 3x3 matrix")
    scale = float(np.abs(h).max())
    if scale == 0 or abs(np.linalg.det(h / scale)) < 1e-12:
        raise DegenerateHomographyError(f"{what} is singular (determinant ~ 0)")
    w, hgt = camera_size
    xs, ys = np.meshgrid(np.linspace(0, w - 1, 9), np.linspace(0, hgt - 1, 9))
    pts = np.c_[xs.ravel(), ys.ravel(), np.ones(xs.size)]
    den = pts @ h[2]
    if not (np.all(den > 0) or np.all(den < 0)):
        raise DegenerateHomographyError(f"{what} puts the horizon inside the camera frame")
    jac = np.linalg.det(h) / den**3  # Jacobian determinant of the projective map
    if not (np.all(jac > 0) or np.all(jac < 0)):
        raise DegenerateHomographyError(f"{what} folds the camera frame")
    ratio = np.abs(jac).max() / max(np.abs(jac).min(), 1e-300)
    if ratio > 16.0:  # area scale 16x = length scale 4x
        raise DegenerateHomographyError(
            f"{what} scales the camera frame by {np.sqrt(ratio):.1f}x between its corners; "
            "expected a near-affine map"
        )
