"""Find the ChArUco pattern in the camera's photo of it, over tissue.

The projected pattern is white light added to a coloured (stained) slide. Markers
are searched in a few grey conversions (luminance, darkest channel, and colour
differences that cancel typical H&E stain); once a few markers agree on a homography,
a Fisher (LDA) colour projection that best separates lit from unlit squares *in this
image* is computed and the board is searched again in it. Tissue that happens to
decode as a marker is dropped when its corners disagree with the other markers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import PatternNotFoundError
from .homography import apply_homography, local_scale
from .pattern import PatternSpec, render_pattern

# Fixed colour weights (R, G, B) tried before the image-specific one.
_CHANNELS = {
    "gray": (0.299, 0.587, 0.114),
    "blue-red": (-0.4, 0.0, 0.6),
    "green-red": (-0.45, 0.5, 0.05),
    "blue-green": (0.0, -0.3, 0.7),
}


MIN_MARKERS = 2  # markers that must agree before the pattern counts as found
ENOUGH_MARKERS = 6  # stop trying other colour conversions once this many are found


@dataclass
class Detection:
    """ChArUco corners found in a camera image.

    ids: N int corner ids; camera_px: Nx2 float64 (x, y) camera px, pixel centres at
    integers; markers: ArUco markers used; mirrored: found in the left-right mirrored
    image (optics with an odd number of mirrors); gray: the HxW uint8 image searched,
    in the camera's orientation; channel: how it was made from the colours.
    """

    ids: np.ndarray
    camera_px: np.ndarray
    markers: int
    mirrored: bool = False
    channel: str = "gray"
    gray: np.ndarray | None = field(default=None, repr=False)


def _params() -> cv2.aruco.DetectorParameters:
    params = cv2.aruco.DetectorParameters()
    params.adaptiveThreshWinSizeMin = 5
    params.adaptiveThreshWinSizeMax = 45
    params.adaptiveThreshWinSizeStep = 8
    params.adaptiveThreshConstant = 5
    params.minMarkerPerimeterRate = 0.01
    params.polygonalApproxAccuracyRate = 0.05
    params.errorCorrectionRate = 0.6
    params.minOtsuStdDev = 3.0
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_NONE
    return params


def to_channel(rgb: np.ndarray, weights) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW uint8: rgb @ weights, stretched over its 0.5..99.5 percentiles."""
    if rgb.ndim == 2:
        return rgb
    w = np.asarray(weights, np.float32).reshape(1, 3)
    flat = cv2.transform(rgb.astype(np.float32), w)
    lo, hi = np.percentile(flat[::4, ::4], [0.5, 99.5])
    if hi - lo < 1e-3:
        return np.zeros(rgb.shape[:2], np.uint8)
    return cv2.convertScaleAbs(flat, alpha=255.0 / (hi - lo), beta=-lo * 255.0 / (hi - lo))


class PatternFinder:
    """Markers, then ChArUco corners, for one pattern."""

    def __init__(self, spec: PatternSpec):
        self.spec = spec
        board = spec.board()
        params = _params()
        self._markers = cv2.aruco.ArucoDetector(board.getDictionary(), params)
        charuco = cv2.aruco.CharucoParameters()
        charuco.tryRefineMarkers = False
        charuco.minMarkers = 1
        self._charuco = cv2.aruco.CharucoDetector(board, charuco, params)
        ox, oy = spec.origin
        # marker id -> 4x2 display px of its corners (pixel centres at integers)
        self.marker_display = {
            int(i): np.asarray(obj, np.float64)[:, :2] + [ox - 0.5, oy - 0.5]
            for i, obj in zip(board.getIds().ravel(), board.getObjPoints())
        }
        self._pattern_gray = None
        self._board = board
        self._quick = None

    def quick_detector(self) -> cv2.aruco.CharucoDetector:
        """OpenCV's CharucoDetector with its default parameters (built on first use)."""
        if self._quick is None:
            self._quick = cv2.aruco.CharucoDetector(self._board)
        return self._quick

    def markers(self, gray: np.ndarray) -> tuple[list, np.ndarray, np.ndarray | None]:
        """Consistent markers in `gray`: (corners list, Mx1 int32 ids, camera->display
        homography from their corners or None when fewer than 2 markers)."""
        corners, ids, _ = self._markers.detectMarkers(gray)
        if ids is None or len(ids) == 0:
            return [], np.zeros((0, 1), np.int32), None
        ids = ids.ravel()
        keep = [k for k, i in enumerate(ids) if int(i) in self.marker_display]
        h = None
        if len(keep) >= 2:
            cam = np.concatenate([corners[k].reshape(4, 2) for k in keep]).astype(np.float64)
            disp = np.concatenate([self.marker_display[int(ids[k])] for k in keep])
            tol = 0.15 * self.spec.square_px
            h, _ = cv2.findHomography(
                cam, disp, cv2.USAC_MAGSAC, tol, maxIters=3000, confidence=0.999
            )
            if h is not None:
                err = np.linalg.norm(apply_homography(h, cam) - disp, axis=1).reshape(-1, 4)
                keep = [k for k, e in zip(keep, err) if e.max() <= 1.5 * tol]
                if len(keep) < 2:
                    h = None
        kept = [int(ids[k]) for k in keep]
        keep = [k for k in keep if kept.count(int(ids[k])) == 1]  # ambiguous duplicates
        return [corners[k] for k in keep], ids[keep].reshape(-1, 1).astype(np.int32), h

    def corners(self, gray: np.ndarray, marker_corners: list, marker_ids: np.ndarray):
        """ChArUco corners interpolated from given markers: (ids, Nx2 camera px)."""
        if len(marker_ids) == 0:
            return np.zeros(0, int), np.zeros((0, 2))
        ch_corners, ch_ids, _, _ = self._charuco.detectBoard(
            gray, markerCorners=marker_corners, markerIds=marker_ids
        )
        if ch_ids is None or ch_corners is None or len(ch_ids) == 0:
            return np.zeros(0, int), np.zeros((0, 2))
        return ch_ids.reshape(-1).astype(int), ch_corners.reshape(-1, 2).astype(np.float64)

    def lda_weights(
        self, rgb: np.ndarray, h: np.ndarray, marker_corners: list
    ) -> np.ndarray | None:
        """RGB weights that best separate lit from unlit pattern squares in `rgb`, using
        the rough camera->display homography `h` to know which pixel is which."""
        size = (rgb.shape[1], rgb.shape[0])
        if self._pattern_gray is None:
            self._pattern_gray = cv2.cvtColor(render_pattern(self.spec), cv2.COLOR_RGB2GRAY)
        proj = cv2.warpPerspective(
            self._pattern_gray, h, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        )
        near = np.zeros(rgb.shape[:2], np.uint8)
        hull = cv2.convexHull(
            np.concatenate([c.reshape(-1, 2) for c in marker_corners]).astype(np.float32)
        )
        cv2.fillConvexPoly(near, np.round(hull.reshape(-1, 2)).astype(np.int32), 1)
        k = local_scale(np.linalg.inv(h), np.mean(hull.reshape(-1, 2), axis=0))
        edge = max(2, int(round(0.06 * self.spec.square_px * k)))
        kernel = np.ones((2 * edge + 1, 2 * edge + 1), np.uint8)
        lit = cv2.erode((proj > 200).astype(np.uint8), kernel) & near
        dark = cv2.erode((proj < 55).astype(np.uint8), kernel) & near
        if lit.sum() < 200 or dark.sum() < 200:
            return None
        px = rgb.reshape(-1, 3).astype(np.float64)
        a, b = px[lit.ravel() > 0], px[dark.ravel() > 0]
        within = np.cov(a.T) + np.cov(b.T) + np.eye(3) * 1e-3
        w = np.linalg.solve(within, a.mean(0) - b.mean(0))
        n = np.abs(w).sum()
        return w / n if n > 0 else None


def _refine_corners(
    gray: np.ndarray, pts: np.ndarray, spec: PatternSpec, scale: float
) -> np.ndarray:
    """cornerSubPix with a small window (0.08 square): the marker edges and most of the
    tissue around a corner stay outside it. `scale`: camera px per display px. Points
    too near the image border are returned unchanged."""
    if len(pts) == 0:
        return pts
    half = int(np.clip(round(0.08 * spec.square_px * scale), 3, 15))
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 60, 0.005)
    h, w = gray.shape[:2]
    m = half + 2
    ok = (pts[:, 0] >= m) & (pts[:, 0] <= w - 1 - m) & (pts[:, 1] >= m) & (pts[:, 1] <= h - 1 - m)
    out = np.asarray(pts, np.float64).copy()
    if ok.any():
        p = out[ok].reshape(-1, 1, 2).astype(np.float32)
        cv2.cornerSubPix(gray, p, (half, half), (-1, -1), crit)
        out[ok] = p.reshape(-1, 2)
    return out


WHOLE_BOARD = 0.8  # share of the board's markers that makes the quick search enough
NEIGHBOUR_SQUARES = 1.5  # corners within this many squares are a corner's neighbours
OUTLIER_PX = 1.0  # a corner this far (px) from its neighbours' homography is dropped
OUTLIER_MAD = 5.0  # ... or this many robust sigmas of all corners' deviations


def neighbour_deviation(ids: np.ndarray, pts: np.ndarray, spec: PatternSpec) -> np.ndarray:
    """Per corner: distance (px) from where the homography of its neighbours on the board
    (within NEIGHBOUR_SQUARES, itself left out; at least 4) puts it; nan with fewer."""
    board = spec.corner_points()[ids]
    out = np.full(len(ids), np.nan)
    for i in range(len(ids)):
        d = np.linalg.norm(board - board[i], axis=1)
        nb = (d > 0) & (d <= NEIGHBOUR_SQUARES * spec.square_px)
        if nb.sum() < 4:
            continue
        h, _ = cv2.findHomography(board[nb], pts[nb], 0)
        if h is None:
            continue
        out[i] = float(np.linalg.norm(apply_homography(h, board[i : i + 1])[0] - pts[i]))
    return out


def reject_outliers(ids: np.ndarray, pts: np.ndarray, spec: PatternSpec):
    """(ids, pts) without the corners inconsistent with their neighbours' local
    homography (a corner pulled by occlusion, glare or tissue is dropped, not trusted)."""
    # one at a time, worst first: a bad corner also skews its neighbours' homographies
    while len(ids) >= 6:
        dev = neighbour_deviation(ids, pts, spec)
        ok = np.isfinite(dev)
        if ok.sum() < 4:
            break
        med = float(np.median(dev[ok]))
        mad = 1.4826 * float(np.median(np.abs(dev[ok] - med)))
        worst = int(np.nanargmax(dev))
        if dev[worst] <= max(OUTLIER_PX, med + OUTLIER_MAD * mad):
            break
        ids, pts = np.delete(ids, worst), np.delete(pts, worst, axis=0)
    return ids, pts


def _quick(finder: PatternFinder, gray: np.ndarray):
    """OpenCV's own CharucoDetector (default parameters) on the grey image: enough when it
    sees (nearly) the whole board, e.g. a printed board photographed. (ids, pts, n markers,
    camera->display homography) or None."""
    pts, ids, mc, mi = finder.quick_detector().detectBoard(gray)
    n_board = len(finder.marker_display)
    if mi is None or len(mi) < max(ENOUGH_MARKERS, WHOLE_BOARD * n_board) or ids is None:
        return None
    mi = mi.ravel()
    keep = [k for k, i in enumerate(mi) if int(i) in finder.marker_display]
    cam = np.concatenate([mc[k].reshape(4, 2) for k in keep]).astype(np.float64)
    disp = np.concatenate([finder.marker_display[int(mi[k])] for k in keep])
    h, _ = cv2.findHomography(cam, disp, cv2.RANSAC, 0.15 * finder.spec.square_px)
    if h is None:
        return None
    return ids.reshape(-1).astype(int), pts.reshape(-1, 2).astype(np.float64), len(keep), h


def detect_pattern(image: np.ndarray, spec: PatternSpec) -> Detection:
    """Find the pattern's ChArUco corners in a camera image (HxWx3 RGB or HxW uint8).

    First OpenCV's own detector on the grey image; when that does not see the whole
    board, the colour searches below. Corners inconsistent with their neighbours are
    dropped (reject_outliers). Raises PatternNotFoundError when no marker is found.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise PatternNotFoundError(
            f"camera image must be uint8 grey or RGB, got {image.dtype} {image.shape}"
        )
    finder = PatternFinder(spec)
    h_img, w_img = image.shape[:2]
    plain = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    quick = _quick(finder, plain)
    if quick is not None:
        ids, pts, n, h = quick
        pts = _refine_corners(
            plain, pts, spec, local_scale(np.linalg.inv(h), spec.corner_points()[ids].mean(0))
        )
        ids, pts = reject_outliers(ids, pts, spec)
        return Detection(ids, pts, n, False, "gray-quick", plain)
    rgb = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    best = None  # (n markers, mirrored, name, gray, corners, ids, h, src)
    for mirrored in (False, True):
        src = np.ascontiguousarray(rgb[:, ::-1]) if mirrored else rgb
        for name, weights in _CHANNELS.items():
            gray = to_channel(src, weights)
            mc, mi, h = finder.markers(gray)
            if best is None or len(mi) > best[0]:
                best = (len(mi), mirrored, name, gray, mc, mi, h, src)
            if best[0] >= ENOUGH_MARKERS:
                break
        if best[0] >= ENOUGH_MARKERS:
            break  # else the optics may mirror the display: try the mirrored image too
    n_markers, mirrored, name, gray, mc, mi, h, src = best
    if n_markers < MIN_MARKERS:
        raise PatternNotFoundError(
            f"the pattern was not found in the {w_img}x{h_img} camera image ({n_markers} marker(s) "
            f"seen, {MIN_MARKERS} needed); is it shown on the display, in focus, and bright "
            "enough to see over the slide?"
        )
    ids, pts = finder.corners(gray, mc, mi)
    if h is not None and src.ndim == 3:
        w = finder.lda_weights(src, h, mc)
        if w is not None:
            gray2 = to_channel(src, w)
            mc2, mi2, h2 = finder.markers(gray2)
            ids2, pts2 = finder.corners(gray2, mc2, mi2)
            if len(ids2) >= len(ids):
                name, gray, mc, mi, ids, pts = "lda", gray2, mc2, mi2, ids2, pts2
                h = h2 if h2 is not None else h
    if len(ids) >= 4 and h is not None:
        pts = _refine_corners(
            gray, pts, spec, local_scale(np.linalg.inv(h), spec.corner_points()[ids].mean(0))
        )
    if len(ids):
        ids, pts = reject_outliers(ids, pts, spec)
    if mirrored:
        gray = np.ascontiguousarray(gray[:, ::-1])
        if len(pts):
            pts = pts.copy()
            pts[:, 0] = (w_img - 1) - pts[:, 0]
    return Detection(ids, pts, len(mi), mirrored, name, gray)
