"""Automatic camera -> display registration from a photo of the projected ChArUco pattern.

The camera photographs the micro-display's pattern added on top of the slide. The
ChArUco corners found in that photo (camera px) are matched by id to the pattern's
corners (display px); RANSAC (MAGSAC++) and least squares give a first homography
camera px -> display px. ECC area alignment of the whole pattern then refines it:
every pattern edge votes, not only the corners, which makes the fit accurate to about
0.1 display px over tissue, blur and noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .detect import Detection, _refine_corners, detect_pattern
from .errors import DegenerateHomographyError, TooFewPointsError
from .homography import apply_homography, check_homography, corner_error, local_scale
from .pattern import PatternSpec, render_pattern

MIN_POINTS = 8  # corners needed before a fit is attempted (4 is the bare minimum)
MIN_INLIER_FRACTION = 0.3
RANSAC_THRESHOLD_PX = 3.0  # display px: a corner further than this from the final fit is an outlier
COARSE_THRESHOLD_SQUARES = 0.08  # RANSAC threshold of the first, corner-only fit, in squares
MAX_ECC_SHIFT_PX = 8.0  # display px; a larger move by the area refinement is not trusted
MIN_ECC_RHO = 0.2  # correlation below this: keep the corner-only fit
MAX_TEMPLATE_PX = 400_000  # area matching runs at a scale that keeps the template this small


@dataclass
class RegistrationResult:
    """A fitted camera -> display homography and how well it fits.

    homography: 3x3 float64, display = H @ [x_cam, y_cam, 1] (normalised, H[2,2] = 1).
    rms_px: RMS distance (display px) between the inlier corners and where the
    homography maps them; residual_px: the same per corner. The corners scatter more
    than the homography errs: it is fitted to the whole pattern, not to the corners.
    """

    homography: np.ndarray
    rms_px: float
    inliers: int
    ids: np.ndarray
    camera_px: np.ndarray
    display_px: np.ndarray
    inlier_mask: np.ndarray
    residual_px: np.ndarray
    camera_size: tuple[int, int]
    display_size: tuple[int, int]
    markers: int = 0
    mirrored: bool = False
    extras: dict = field(default_factory=dict)

    def to_json(self, with_points: bool = True) -> dict:
        """JSON-able dict: homography, rms_px, inliers, points, sizes."""
        out = {
            "homography": [[float(v) for v in row] for row in self.homography],
            "rms_px": round(float(self.rms_px), 4),
            "inliers": int(self.inliers),
            "n_points": int(len(self.ids)),
            "markers": int(self.markers),
            "mirrored": bool(self.mirrored),
            "camera_size": list(self.camera_size),
            "display_size": list(self.display_size),
            **self.extras,
        }
        if with_points:
            out["points"] = [
                {
                    "id": int(i),
                    "camera": [round(float(c[0]), 3), round(float(c[1]), 3)],
                    "display": [round(float(d[0]), 3), round(float(d[1]), 3)],
                    "residual_px": round(float(r), 4),
                    "inlier": bool(m),
                }
                for i, c, d, r, m in zip(
                    self.ids, self.camera_px, self.display_px, self.residual_px, self.inlier_mask
                )
            ]
        return out


def _hull_area(pts: np.ndarray) -> float:
    if len(pts) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(pts.astype(np.float32))))


def fit_homography(
    detection: Detection,
    spec: PatternSpec,
    camera_size: tuple[int, int],
    ransac_px: float | None = None,
) -> RegistrationResult:
    """Fit camera px -> display px from detected corners (RANSAC, then least squares
    with Levenberg-Marquardt on the inliers).

    ransac_px: inlier threshold in display px; default max(3, 0.08 square): loose,
    because blurred corners over tissue scatter; the area refinement tightens the fit.
    """
    if ransac_px is None:
        ransac_px = max(RANSAC_THRESHOLD_PX, COARSE_THRESHOLD_SQUARES * spec.square_px)
    n = len(detection.ids)
    if n < MIN_POINTS:
        raise TooFewPointsError(
            f"found {n} pattern corner(s) ({detection.markers} marker(s)); need at least "
            f"{MIN_POINTS}: show more of the pattern to the camera, focus, or brighten the display"
        )
    cam = detection.camera_px
    disp = spec.corner_points()[detection.ids]
    eig = np.linalg.eigvalsh(np.cov(cam.T))
    if eig[0] < 1e-3 * eig[1] or _hull_area(cam) < 1e-3 * camera_size[0] * camera_size[1]:
        raise DegenerateHomographyError(
            f"the {n} pattern corners found lie on a line or in a tiny patch; "
            "a homography needs points spread over the field"
        )
    # mirrored optics: fit in the mirrored frame (RANSAC rejects orientation-reversing
    # models as degenerate), then compose with the mirror
    flip = np.eye(3)
    if detection.mirrored:
        flip = np.array([[-1.0, 0.0, camera_size[0] - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    cam_fit = apply_homography(flip, cam)
    h, mask = cv2.findHomography(
        cam_fit, disp, cv2.USAC_MAGSAC, ransac_px, maxIters=5000, confidence=0.9999
    )
    if h is None or mask is None:
        raise DegenerateHomographyError(f"no homography fits the {n} pattern corners found")
    inl = mask.reshape(-1).astype(bool)
    n_in = int(inl.sum())
    need = max(MIN_POINTS, int(np.ceil(MIN_INLIER_FRACTION * n)))
    if n_in < need:
        raise TooFewPointsError(
            f"only {n_in} of {n} pattern corners agree on one homography; need at least {need}"
        )
    h_ls, _ = cv2.findHomography(cam_fit[inl], disp[inl], 0)
    if h_ls is not None:
        h = h_ls
    h = h @ flip
    h = h / h[2, 2]
    check_homography(h, camera_size)
    resid = np.linalg.norm(apply_homography(h, cam) - disp, axis=1)
    rms = float(np.sqrt(np.mean(resid[inl] ** 2)))
    if rms > ransac_px:
        raise DegenerateHomographyError(
            f"homography fits the pattern corners with {rms:.2f} display px RMS; "
            f"expected < {ransac_px:.1f}"
        )
    return RegistrationResult(
        homography=h,
        rms_px=rms,
        inliers=n_in,
        ids=detection.ids,
        camera_px=cam,
        display_px=disp,
        inlier_mask=inl,
        residual_px=resid,
        camera_size=camera_size,
        display_size=tuple(spec.display),
        markers=detection.markers,
        mirrored=detection.mirrored,
    )


def lit_mask(gray: np.ndarray, dark_dn: float = 24.0) -> np.ndarray:
    """HxW uint8 mask (255 = use) of the camera pixels inside the lit field: the dark
    field stop around a round eyepiece field is left out, with a margin of a few px."""
    smooth = cv2.GaussianBlur(gray, (0, 0), 6)
    mask = np.where(smooth > dark_dn, 255, 0).astype(np.uint8)
    if mask.all():
        return mask
    return cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (25, 25)))


def refine_homography(
    gray: np.ndarray,
    spec: PatternSpec,
    h0: np.ndarray,
    visible_display_px: np.ndarray | None = None,
    circle: tuple[float, float, float] | None = None,
    lit: np.ndarray | None = None,
) -> tuple[np.ndarray, float, bool]:
    """Refine camera->display `h0` by ECC area alignment (8-parameter homography).

    The template is the pattern rendered at the camera's scale. The region it is
    matched over grows in stages: the convex hull of `visible_display_px` (display px,
    where corners were found) grown by one square, then by three, then the whole
    display, so a first fit from a few corners is not trusted far from them. Each
    stage keeps ECC's answer only if it correlates better than its start (ECC's
    Gauss-Newton steps can wander off over strong tissue texture). The eyepiece
    `circle` (cx, cy, r in display px) bounds the region when given; camera pixels
    outside `lit` (default: the dark field stop) are left out.
    Returns (h, correlation, improved). Raises cv2.error when ECC does not converge.
    """
    w_d, h_d = spec.display
    g0 = np.linalg.inv(h0)
    if visible_display_px is not None and len(visible_display_px):
        centre = np.mean(visible_display_px, axis=0)
    else:
        centre = np.array([w_d / 2.0, h_d / 2.0])
    k = float(np.clip(local_scale(g0, centre), 0.1, 1.0))  # camera px per display px
    # ECC costs ~0.1 us per template px and iteration: match at a reduced scale when the
    # pattern is big in the camera (accuracy stays well under 0.1 display px)
    f = max(1.0, float(np.sqrt(w_d * h_d * k * k / MAX_TEMPLATE_PX)))
    k /= f
    tw, th = max(32, int(round(w_d * k))), max(32, int(round(h_d * k)))
    kx, ky = tw / w_d, th / h_d
    # display px -> template px (INTER_AREA keeps pixel centres aligned this way)
    s = np.array([[kx, 0, 0.5 * kx - 0.5], [0, ky, 0.5 * ky - 0.5], [0, 0, 1.0]])
    pattern = cv2.cvtColor(render_pattern(spec), cv2.COLOR_RGB2GRAY)
    tmpl = cv2.resize(pattern, (tw, th), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    bound = np.full((th, tw), 255, np.uint8)
    if circle is not None:
        bound[:] = 0
        cx, cy = apply_homography(s, np.array([circle[:2]]))[0]
        cv2.circle(bound, (int(round(cx)), int(round(cy))), int(circle[2] * k * 0.98), 255, -1)
    masks = [bound]
    if visible_display_px is not None and len(visible_display_px) >= 3:
        hull = cv2.convexHull(apply_homography(s, visible_display_px).astype(np.float32))
        seed = np.zeros((th, tw), np.uint8)
        cv2.fillConvexPoly(seed, np.round(hull.reshape(-1, 2)).astype(np.int32), 255)
        square = max(1, int(round(spec.square_px * k)))
        # distance to the hull, px: growing by a distance threshold is O(N) at any radius
        dist = cv2.distanceTransform(cv2.bitwise_not(seed), cv2.DIST_L2, 3)
        masks = []
        for grow in (square, 3 * square):
            masks.append(cv2.bitwise_and(np.where(dist <= grow, 255, 0).astype(np.uint8), bound))
        if cv2.countNonZero(cv2.subtract(bound, masks[-1])) > 0:
            masks.append(bound)
    in_mask = lit_mask(gray) if lit is None else lit
    # camera px -> matching px (the camera image shrunk by f, pixel centres kept)
    ch_, cw_ = gray.shape[:2]
    sw, sh = max(16, int(round(cw_ / f))), max(16, int(round(ch_ / f)))
    fx, fy = sw / cw_, sh / ch_
    d = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])
    if (sw, sh) != (cw_, ch_):
        inp = cv2.resize(gray, (sw, sh), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        in_mask = cv2.resize(in_mask, (sw, sh), interpolation=cv2.INTER_NEAREST)
    else:
        inp = gray.astype(np.float32) / 255.0
    w = (d @ g0 @ np.linalg.inv(s)).astype(np.float64)  # template px -> matching px
    w = (w / w[2, 2]).astype(np.float32)
    # Gauss-Newton overshoots (and oscillates) when the sharp template is matched to a
    # blurred photo: blur the template like the optics blurred the pattern
    sigma = max(_SIGMAS, key=lambda sg: _ecc_score(_blur(tmpl, sg), masks[0], inp, in_mask, w))
    tmpl = _blur(tmpl, sigma)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 1e-5)
    improved, rho = False, float("nan")
    for mask in masks:
        rho = _ecc_score(tmpl, mask, inp, in_mask, w)
        try:
            _, w_new = cv2.findTransformECCWithMask(
                tmpl, inp, mask, in_mask, w.copy(), cv2.MOTION_HOMOGRAPHY, crit, 5
            )
        except cv2.error:
            continue
        rho_new = _ecc_score(tmpl, mask, inp, in_mask, w_new)
        if rho_new > rho:
            w, rho, improved = w_new, rho_new, True
    g = np.linalg.inv(d) @ w.astype(np.float64) @ s
    h = np.linalg.inv(g)
    return h / h[2, 2], rho, improved


_SIGMAS = (0.0, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)  # template px


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img


def _ecc_score(tmpl, tmpl_mask, inp, in_mask, w) -> float:
    """Correlation of the template with the input warped by w (template px -> input px),
    smoothed as ECC smooths, over the pixels valid in both."""
    size = (tmpl.shape[1], tmpl.shape[0])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(inp, np.asarray(w, np.float64), size, flags=flags)
    valid = cv2.warpPerspective(
        in_mask, np.asarray(w, np.float64), size, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    )
    both = cv2.bitwise_and(valid, tmpl_mask)
    if cv2.countNonZero(both) < 100:
        return -1.0
    a = cv2.GaussianBlur(tmpl, (5, 5), 0)
    b = cv2.GaussianBlur(warped, (5, 5), 0)
    return float(cv2.computeECC(a, b, both))


def register_display(
    image: np.ndarray,
    spec: PatternSpec,
    circle: tuple[float, float, float] | None = None,
    refine: bool = True,
) -> RegistrationResult:
    """Camera photo of the projected pattern -> camera px -> display px homography.

    image: HxWx3 uint8 RGB (or HxW). circle: the eyepiece field in display px, if known.
    refine=False skips the ECC area refinement. Raises PatternNotFoundError,
    TooFewPointsError or DegenerateHomographyError.
    """
    det = detect_pattern(image, spec)
    size = (image.shape[1], image.shape[0])
    res = fit_homography(det, spec, size)
    res.extras.update(channel=det.channel, refined=False)
    if not refine or det.gray is None:
        return res
    try:
        h, rho, improved = refine_homography(
            det.gray, spec, res.homography, res.display_px[res.inlier_mask], circle
        )
        check_homography(h, size, "refined homography")
    except (cv2.error, DegenerateHomographyError):
        return res
    shift = corner_error(h, res.homography, res.camera_px[res.inlier_mask]).max()
    res.extras["ecc_rho"] = round(rho, 4)
    if not improved or rho < MIN_ECC_RHO or shift > MAX_ECC_SHIFT_PX:
        return res
    # re-localise the corners from where the refined fit puts them
    g = np.linalg.inv(h)
    cam = _refine_corners(
        det.gray,
        apply_homography(g, res.display_px),
        spec,
        local_scale(g, res.display_px.mean(axis=0)),
    )
    resid = np.linalg.norm(apply_homography(h, cam) - res.display_px, axis=1)
    inl = resid <= RANSAC_THRESHOLD_PX
    res.camera_px = cam
    res.homography = h
    res.residual_px = resid
    res.inlier_mask = inl
    res.inliers = int(inl.sum())
    res.rms_px = float(np.sqrt(np.mean(resid[inl] ** 2))) if inl.any() else float("nan")
    res.extras["refined"] = True
    return res
