"""Host-side simulations for calibration: the camera's photo of the projected pattern
over tissue, stage micrometer images, and blank fields from a vignetted camera.

Every generator takes a seed or a numpy Generator and is deterministic. Tissue comes
from lucida.runtime.virtual (the virtual microscope's synthetic slide) when it is
installed, else from a small pink/purple H&E-like texture made here.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from lucida.calibration.pattern import PatternSpec, render_pattern

# Display geometries: name -> (display (w, h), camera (w, h), eyepiece circle in display px or None)
GEOMETRIES: dict[
    str, tuple[tuple[int, int], tuple[int, int], tuple[float, float, float] | None]
] = {
    "arm": ((1050, 1050), (1280, 1024), (524.5, 524.5, 510.0)),
    "hdmi720": ((1280, 720), (1920, 1080), None),
    "hdmi1080": ((1920, 1080), (1920, 1080), None),
}


# --------------------------------------------------------------------------- tissue


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """HxW float32 noise low-passed at `sigma` px, scaled to zero mean, unit std."""
    h, w = shape
    f = max(1, int(sigma // 4))
    small = rng.standard_normal((h // f + 2, w // f + 2)).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), sigma / f)
    big = cv2.resize(small, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_LINEAR)[:h, :w]
    return (big - big.mean()) / (big.std() + 1e-6)


def fallback_tissue(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """An H&E-like HxWx3 uint8 RGB texture: pink stroma, purple nuclei, white gaps."""
    w, h = size
    stroma = np.clip(0.55 + 0.25 * _smooth_noise(rng, (h, w), 40.0), 0, 1)
    gaps = _smooth_noise(rng, (h, w), 60.0) > 1.0
    fibre = 0.1 * _smooth_noise(rng, (h, w), 3.0)
    density = np.clip(stroma + fibre, 0, 1)
    density[gaps] *= 0.1
    nuclei = np.zeros((h, w), np.float32)
    n = int(w * h / 900)
    cx, cy = rng.uniform(0, w, n), rng.uniform(0, h, n)
    keep = _smooth_noise(rng, (h, w), 80.0)[
        cy.astype(int).clip(0, h - 1), cx.astype(int).clip(0, w - 1)
    ]
    for x, y, ax, ay, ang in zip(
        cx[keep > -0.3],
        cy[keep > -0.3],
        rng.uniform(3, 8, n),
        rng.uniform(2, 6, n),
        rng.uniform(0, 180, n),
    ):
        cv2.ellipse(nuclei, (int(x), int(y)), (int(ax), int(ay)), float(ang), 0, 360, 1.0, -1)
    nuclei = cv2.GaussianBlur(nuclei, (0, 0), 1.0)
    # optical density per stain (RGB absorbance), Beer-Lambert
    eosin = np.array([0.05, 0.55, 0.15], np.float32)
    hema = np.array([0.65, 0.75, 0.25], np.float32)
    od = density[..., None] * eosin + 1.3 * nuclei[..., None] * hema
    rgb = 245.0 * np.exp(-od)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def tissue_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Tissue as the camera sees it, HxWx3 uint8 RGB: the virtual slide, else the fallback."""
    try:
        from lucida.runtime.virtual.tissue import SyntheticSlide  # type: ignore
    except Exception:  # not installed (or not ready): use our own texture
        return fallback_tissue(rng, size)
    try:
        slide = SyntheticSlide(int(rng.integers(0, 2**31)))
        um_per_px = float(rng.uniform(0.4, 1.0))
        sw, sh = slide.size_um
        x = sw / 2 + rng.uniform(-0.25, 0.25) * sw - size[0] * um_per_px / 2
        y = sh / 2 + rng.uniform(-0.25, 0.25) * sh - size[1] * um_per_px / 2
        rgb, _ = slide.render(float(x), float(y), size[0], size[1], um_per_px)
        rgb = np.asarray(rgb)
        if rgb.shape[:2] != (size[1], size[0]) or rgb.dtype != np.uint8:
            raise ValueError("unexpected slide render")
        return rgb
    except Exception:
        return fallback_tissue(rng, size)


# --------------------------------------------------------------------------- camera


def vignette_map(
    size: tuple[int, int], strength: float, center: tuple[float, float] | None = None
) -> np.ndarray:
    """HxW float32 relative illumination: 1 at `center`, 1 - strength at the far corner
    (a cos^4-like radial fall-off)."""
    w, h = size
    cx, cy = center if center is not None else ((w - 1) / 2.0, (h - 1) / 2.0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / max((w / 2.0) ** 2 + (h / 2.0) ** 2, 1.0)
    r2 = r2 / max(r2.max(), 1e-6)
    return (1.0 - strength * (0.7 * r2 + 0.3 * r2**2)).astype(np.float32)


def camera_expose(
    linear: np.ndarray,
    rng: np.random.Generator,
    blur_sigma: float = 0.0,
    vignette: np.ndarray | None = None,
    noise_dn: float = 0.0,
    dark: np.ndarray | None = None,
) -> np.ndarray:
    """Light in DN (HxWx3 float32) -> camera image uint8: blur, vignetting, dark, noise, clip."""
    img = linear.astype(np.float32)
    if blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
    if vignette is not None:
        img = img * vignette[..., None]
    if dark is not None:
        img = img + dark
    if noise_dn > 0:
        shot = np.sqrt(np.maximum(img, 0) / 255.0)  # shot noise grows with signal
        img = img + rng.standard_normal(img.shape).astype(np.float32) * noise_dn * (0.5 + shot)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- homographies


def _t(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], np.float64)


def visible_corners(
    display: tuple[int, int], circle: tuple[float, float, float] | None
) -> np.ndarray:
    """4x2 display px: the corners of the usable overlay area (the display, or the square
    inscribed in the eyepiece circle)."""
    if circle is None:
        w, h = display
        return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    cx, cy, r = circle
    d = r / np.sqrt(2.0)
    return np.array([[cx - d, cy - d], [cx + d, cy - d], [cx + d, cy + d], [cx - d, cy + d]])


@dataclass
class Trial:
    """One seeded registration trial: the truth and the camera's photo."""

    seed: int
    geometry: str
    h_true: np.ndarray  # camera px -> display px
    eval_camera_px: np.ndarray  # 4x2 camera px where the corner error is measured
    captured: np.ndarray  # HxWx3 uint8 RGB camera image
    params: dict


def random_homography(
    rng: np.random.Generator,
    display: tuple[int, int],
    camera: tuple[int, int],
    circle: tuple[float, float, float] | None,
    cropped: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """A random camera->display homography (rotation, anisotropic scale, shear,
    perspective, offset) and the 4 camera points where its error is measured.

    cropped=False: the display's usable area lies inside the camera frame; error at its
    corners. cropped=True: the camera sees only part of the display; error at the
    camera frame's corners (inset 2%).
    """
    dw, dh = display
    cw, ch = camera
    region = visible_corners(display, circle)
    rc = region.mean(axis=0)
    for _ in range(2000):
        theta = rng.uniform(-np.pi, np.pi)
        base = rng.uniform(1.15, 1.7) if cropped else rng.uniform(0.5, 1.05)
        sx, sy = base * rng.uniform(0.93, 1.07, 2)
        shear = rng.uniform(-0.08, 0.08)
        px, py = rng.uniform(-6e-5, 6e-5, 2)
        # display -> camera
        a = np.array([[sx, shear * sx, 0], [0, sy, 0], [0, 0, 1]], np.float64)
        c, s = np.cos(theta), np.sin(theta)
        r = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)
        p = np.array([[1, 0, 0], [0, 1, 0], [px, py, 1]], np.float64)
        off = rng.uniform(-0.12, 0.12, 2) * np.array([cw, ch])
        g = _t((cw - 1) / 2 + off[0], (ch - 1) / 2 + off[1]) @ p @ r @ a @ _t(-rc[0], -rc[1])
        g /= g[2, 2]
        h = np.linalg.inv(g)
        h /= h[2, 2]
        if not cropped:
            cam_pts = _map(g, region)
            inside = np.all((cam_pts >= 2) & (cam_pts <= np.array([cw - 3, ch - 3])))
            if inside:
                return (
                    h,
                    cam_pts,
                    dict(theta_deg=np.degrees(theta), scale=base, shear=shear, persp=[px, py]),
                )
        else:
            inset = 0.02 * np.array([cw, ch])
            cam_pts = np.array(
                [
                    [inset[0], inset[1]],
                    [cw - 1 - inset[0], inset[1]],
                    [cw - 1 - inset[0], ch - 1 - inset[1]],
                    [inset[0], ch - 1 - inset[1]],
                ]
            )
            d = _map(h, cam_pts)
            if np.all((d >= 0) & (d <= np.array([dw - 1, dh - 1]))):
                return (
                    h,
                    cam_pts,
                    dict(theta_deg=np.degrees(theta), scale=base, shear=shear, persp=[px, py]),
                )
    raise RuntimeError("could not sample a homography for this geometry")


def _map(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.c_[pts, np.ones(len(pts))] @ h.T
    return q[:, :2] / q[:, 2:3]


def project_pattern(
    pattern_rgb: np.ndarray,
    h_cam_to_disp: np.ndarray,
    camera: tuple[int, int],
    circle: tuple[float, float, float] | None = None,
    supersample: int = 3,
) -> np.ndarray:
    """The display image as the camera sees it, HxWx3 float32 in [0, 1] (supersampled
    to avoid aliasing). Display pixels outside the eyepiece circle are not seen."""
    pat = pattern_rgb.astype(np.float32) / 255.0
    if circle is not None:
        mask = np.zeros(pat.shape[:2], np.float32)
        cv2.circle(
            mask,
            (int(round(circle[0])), int(round(circle[1]))),
            int(circle[2]),
            1.0,
            -1,
            cv2.LINE_AA,
        )
        pat = pat * mask[..., None]
    k = supersample
    # supersampled px u = k * x + (k - 1) / 2 for camera px x (INTER_AREA block centres)
    s_inv = np.array([[1 / k, 0, -(k - 1) / (2 * k)], [0, 1 / k, -(k - 1) / (2 * k)], [0, 0, 1]])
    m = h_cam_to_disp @ s_inv  # supersampled camera px -> display px
    big = cv2.warpPerspective(
        pat,
        m,
        (camera[0] * k, camera[1] * k),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return cv2.resize(big, camera, interpolation=cv2.INTER_AREA)


def simulate_capture(
    pattern_rgb: np.ndarray,
    h_cam_to_disp: np.ndarray,
    camera: tuple[int, int],
    rng: np.random.Generator,
    circle: tuple[float, float, float] | None = None,
    blur_sigma: float = 1.2,
    noise_dn: float = 3.0,
    vignette: float = 0.25,
    pattern_gain: float = 0.8,
    tissue_gain: float = 0.7,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """The camera's photo of the projected pattern over tissue, HxWx3 uint8 RGB.

    Light adds: tissue (transmitted, scaled by tissue_gain) + the pattern (white, times
    pattern_gain x 255 DN, slightly tinted); then blur, vignetting, noise, clipping. With
    an eyepiece circle the camera sees only inside it (the field stop).
    """
    proj = project_pattern(pattern_rgb, h_cam_to_disp, camera, circle)
    tint = rng.uniform(0.9, 1.0, 3).astype(np.float32)
    if tissue is None:
        tissue = tissue_image(rng, camera)
    light = tissue.astype(np.float32) * tissue_gain + proj * (255.0 * pattern_gain) * tint
    if circle is not None:
        stop = np.zeros(camera[::-1], np.float32)
        g = np.linalg.inv(h_cam_to_disp)
        t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
        ring = np.c_[circle[0] + circle[2] * np.cos(t), circle[1] + circle[2] * np.sin(t)]
        cv2.fillPoly(
            stop, [np.round(_map(g, ring) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4
        )
        light = light * stop[..., None] + 4.0
    return camera_expose(light, rng, blur_sigma, vignette_map(camera, vignette), noise_dn)


def registration_trial(seed: int, geometry: str | None = None) -> Trial:
    """One seeded trial: a random geometry (unless given), homography and camera photo."""
    rng = np.random.default_rng(seed)
    names = sorted(GEOMETRIES)
    geometry = geometry or names[seed % len(names)]
    display, camera, circle = GEOMETRIES[geometry]
    cropped = circle is None and rng.random() < 0.3
    h, cam_pts, params = random_homography(rng, display, camera, circle, cropped=cropped)
    params.update(
        blur_sigma=float(rng.uniform(0.6, 2.5)),
        noise_dn=float(rng.uniform(1.5, 6.0)),
        vignette=float(rng.uniform(0.1, 0.35)),
        pattern_gain=float(rng.uniform(0.35, 0.9)),
        tissue_gain=float(rng.uniform(0.55, 0.85)),
        cropped=cropped,
    )
    from lucida.calibration.pattern import make_pattern

    spec = make_pattern(display)
    img = simulate_capture(
        render_pattern(spec),
        h,
        camera,
        rng,
        circle,
        blur_sigma=params["blur_sigma"],
        noise_dn=params["noise_dn"],
        vignette=params["vignette"],
        pattern_gain=params["pattern_gain"],
        tissue_gain=params["tissue_gain"],
    )
    return Trial(seed, geometry, h, cam_pts, img, params)


def pattern_for(geometry: str) -> PatternSpec:
    """The default pattern for a named geometry."""
    from lucida.calibration.pattern import make_pattern

    return make_pattern(GEOMETRIES[geometry][0])


# --------------------------------------------------------------------------- micrometer


@dataclass
class MicrometerImage:
    """A simulated stage micrometer photo and its truth (period in px, angle)."""

    image: np.ndarray  # HxWx3 uint8 RGB
    period_px: float
    angle_deg: float
    params: dict


def micrometer_image(
    seed: int,
    size: tuple[int, int] = (1280, 960),
    period_px: float | None = None,
    numbers: bool = False,
    jpeg_quality: int | None = None,
    thin: bool = False,
    light_tilt: float = 0.25,
    bits: int = 8,
) -> MicrometerImage:
    """A stage micrometer (dark rulings, every 5th and 10th longer, on a baseline) at a
    random rotation and pitch, with blur, noise, uneven light and vignetting.

    numbers: print numbers at every 10th tick; jpeg_quality: JPEG round trip;
    thin: 1.2 px rulings (strong harmonics); light_tilt: strength of the light gradient
    across the field; bits: 12 or 16 gives uint16 HxW camera data at that depth (12-bit
    values in a 16-bit container), 8 the usual HxWx3 uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    period = float(
        period_px if period_px is not None else np.exp(rng.uniform(np.log(6.0), np.log(70.0)))
    )
    theta = float(rng.uniform(0, np.pi))  # direction of the scale (normal of the rulings)
    width = 1.2 if thin else max(1.2, period * rng.uniform(0.08, 0.2))
    tick = rng.uniform(0.12, 0.25) * min(w, h)
    n_ticks = int(rng.integers(40, 101))
    cx, cy = (w - 1) / 2 + rng.uniform(-0.1, 0.1) * w, (h - 1) / 2 + rng.uniform(-0.1, 0.1) * h
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
    v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
    u0 = -period * n_ticks / 2 + rng.uniform(0, period)
    k = np.clip(np.round((u - u0) / period), 0, n_ticks - 1)
    d = u - (u0 + k * period)
    cov_u = np.clip(width / 2 + 0.5 - np.abs(d), 0, 1)
    length = tick * np.where(k % 10 == 0, 2.0, np.where(k % 5 == 0, 1.5, 1.0))
    v0 = -tick * 0.6
    cov_v = np.clip(np.minimum(v - v0, v0 + length - v) + 0.5, 0, 1)
    ticks = cov_u * cov_v
    in_scale = np.clip(np.minimum(u - u0, u0 + (n_ticks - 1) * period - u) + width / 2 + 0.5, 0, 1)
    base = np.clip(width / 2 + 0.5 - np.abs(v - v0), 0, 1) * in_scale
    ink = np.maximum(ticks, base)
    if numbers:  # labels beyond the long ticks, every 10th, in the scale's frame
        text = np.zeros((h, w), np.uint8)
        for j in range(0, n_ticks, 10):
            pu = u0 + j * period
            pv = v0 + tick * 2.0 + 0.08 * min(w, h)
            x0 = cx + pu * np.cos(theta) - pv * np.sin(theta)
            y0 = cy + pu * np.sin(theta) + pv * np.cos(theta)
            scale = max(0.4, min(w, h) / 900)
            cv2.putText(text, str(j), (int(x0), int(y0)), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 2)
        ink = np.maximum(ink, text / 255.0)
    contrast = rng.uniform(0.5, 0.85)
    light = 1.0 - contrast * ink
    # uneven light: tilted plane + smooth blotches + vignetting
    gx, gy = rng.uniform(-light_tilt, light_tilt, 2)
    plane = 1.0 + gx * (x / w - 0.5) + gy * (y / h - 0.5)
    blotch = 1.0 + 0.08 * _smooth_noise(rng, (h, w), min(w, h) / 6.0)
    illum = plane * blotch * vignette_map(size, rng.uniform(0.1, 0.35))
    level = rng.uniform(150, 230)
    img = (light * illum * level).astype(np.float32)
    tint = np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.85, 1.0)], np.float32)
    rgb = img[..., None] * tint
    blur = float(rng.uniform(0.5, 1.0 if thin else 2.5))
    noise = float(rng.uniform(2.0, 8.0))
    if bits > 8:  # camera data at its own depth: grey, 12 or 16 bits
        top = float(2**bits - 1)
        g = cv2.GaussianBlur(img, (0, 0), blur) * (top / 255.0)
        g = g + rng.standard_normal(g.shape).astype(np.float32) * noise * top / 255.0
        out = np.clip(g + 0.5, 0, top).astype(np.uint16)
    else:
        out = camera_expose(rgb, rng, blur_sigma=blur, noise_dn=noise)
    if jpeg_quality is not None and out.dtype == np.uint8:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return MicrometerImage(
        out,
        period,
        float(np.degrees(theta)),
        dict(width_px=width, blur_sigma=blur, noise_dn=noise, ticks=n_ticks, contrast=contrast),
    )
