"""`lucida calibrate bench-charuco`: our ChArUco detection against OpenCV's own
CharucoDetector on the same photos of a printed board, in one run.

Per photo: corners found by each, their mean disagreement (px), the RMS of our corners
about a flat-board homography after undistortion with the camera's intrinsics (an
OpenCV calibration YAML; px), and detection time p50/p90/p99 of each (ms, `repeats` runs,
interleaved) with the ratio ours / OpenCV's p50. Shared cores make times noisy: the
machine's load is printed too.
"""

from __future__ import annotations

import os
import time

import cv2
import numpy as np


def printed_board(squares=(5, 7), marker_ratio=0.5, dictionary="DICT_6X6_250"):
    """A PatternSpec for a printed ChArUco board (lengths in arbitrary px units)."""
    from lucida.calibration import PatternSpec

    side = 100
    return PatternSpec(
        display=(squares[0] * side, squares[1] * side),
        squares=squares,
        square_px=side,
        marker_px=int(side * marker_ratio),
        origin=(0, 0),
        dictionary=dictionary,
    )


def read_intrinsics(path) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 camera matrix, distortion coefficients) from an OpenCV calibration YAML."""
    from lucida.calibration import ImageReadError

    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    k, d = fs.getNode("camera_matrix").mat(), fs.getNode("distortion_coefficients").mat()
    if k is None or d is None:
        raise ImageReadError(f"{path}: no camera_matrix / distortion_coefficients")
    return k, d


def flat_board_rms(ids, pts, spec, k=None, d=None) -> float:
    """RMS (px) of corners about the best homography from the flat board (undistorted)."""
    obj = spec.corner_points()[ids]
    und = pts if k is None else cv2.undistortPoints(pts.reshape(-1, 1, 2), k, d, P=k).reshape(-1, 2)
    h, _ = cv2.findHomography(obj, und, 0)
    pr = cv2.perspectiveTransform(obj.reshape(-1, 1, 2), h).reshape(-1, 2)
    return float(np.sqrt(np.mean(np.sum((pr - und) ** 2, axis=1))))


def bench_charuco(images, intrinsics=None, repeats: int = 15) -> dict:
    from lucida.calibration import detect_pattern
    from lucida.calibration.imageio import read_image
    from lucida.runtime.stats import percentiles

    spec = printed_board()
    k, d = read_intrinsics(intrinsics) if intrinsics else (None, None)
    peer = cv2.aruco.CharucoDetector(spec.board())
    rows, ours_all, cv_all = [], [], []
    for path in images:
        rgb = read_image(path, "ChArUco photo")
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        t_ours, t_cv = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            det = detect_pattern(rgb, spec)
            t_ours.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            cc, ci, _, _ = peer.detectBoard(gray)
            t_cv.append((time.perf_counter() - t0) * 1e3)
        theirs = {} if ci is None else dict(zip(ci.ravel().tolist(), cc.reshape(-1, 2)))
        agree = [
            float(np.linalg.norm(theirs[i] - p))
            for i, p in zip(det.ids, det.camera_px)
            if i in theirs
        ]
        rows.append(
            {
                "image": str(path),
                "corners": int(len(det.ids)),
                "opencv_corners": len(theirs),
                "mean_disagreement_px": round(float(np.mean(agree)), 3) if agree else None,
                "flat_board_rms_px": round(flat_board_rms(det.ids, det.camera_px, spec, k, d), 3),
                "ours_ms": percentiles(t_ours, ndigits=1),
                "opencv_ms": percentiles(t_cv, ndigits=1),
                "ratio_p50": round(float(np.median(t_ours) / np.median(t_cv)), 2),
            }
        )
        ours_all += t_ours
        cv_all += t_cv
    ratio = float(np.median(ours_all) / np.median(cv_all))
    return {
        "loadavg": os.getloadavg()[0],
        "photos": rows,
        "ratio_p50_all": round(ratio, 2),
        "limit_ratio": 1.5,
        "pass": bool(ratio <= 1.5 and all(r["flat_board_rms_px"] <= 0.35 for r in rows)),
    }
