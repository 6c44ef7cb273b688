"""A synthetic H&E lymph-node slide with a pixel-exact tumour mask, rendered at any scale.

`SyntheticSlide(seed)` is a procedural slide: its geometry lives in slide micrometres
(tissue outline, tumour regions, follicles, sinuses, holes and glands on coarse lattices; nuclei
generated per 128 um cell from (seed, cell)), and `render` draws any region at any pixel size
with OpenCV, never building the whole slide at full resolution. Same seed and region give
identical pixels; different seeds give different slides (anatomy, stain, colour cast).

Look: pink eosin stroma and purple hematoxylin nuclei; the normal node is packed with small
dark round lymphocytes (follicles with paler germinal centres, sinuses with histiocytes, a
fibrous capsule); tumour (metastatic carcinoma) has crowded, enlarged, irregular nuclei,
hyperchromatic or vesicular with nucleoli, and glands (rings of nuclei around pale lumens);
glass is near white. Colour alone does not separate tumour: stain strength, hue and cast vary
per slide more than tumour and normal differ within one.

Below DETAIL_MAX_UM_PER_PX um/px each nucleus is drawn (outlined when its radius is >= 3 px,
splatted as a blurred dot below); above it, nuclear density is drawn statistically.

Look at it:  python -m lucida.runtime.virtual.tissue --seed 3 --objective 10x --out /tmp/x.png
"""

from __future__ import annotations

import argparse
import threading
from collections import OrderedDict

import cv2
import numpy as np

from .fields import Anatomy, SlideFields, regions, tumour_mask
from .nuclei import CELL_UM, Nuclei, draw, expected_ink, generate_cells
from .stain import LUT_SCALE, Stain, to_rgb

DETAIL_MAX_UM_PER_PX = 2.0  # finer than this, nuclei are drawn one by one
MARGIN_PX = 16  # rendered around each region so blurs do not show tile seams
MAX_SIDE_PX = 8192
NUCLEUS_PAD_UM = 12.0  # largest distance a nucleus outline reaches from its centre
OBJECTIVE_UM_PER_PX = {"2x": 5.0, "4x": 2.5, "10x": 1.0, "20x": 0.5, "40x": 0.25}

# Region ids and their background stain (hematoxylin, eosin) and texture amplitude.
GLASS, LYMPHOID, MANTLE, GC, SUBCAP, SINUS, CAPSULE, TUMOUR, STROMA = range(9)
_MASK_FIELDS = ("tissue", "tumour", "hole")
_LOOK_FIELDS = ("tissue", "tumour", "hole", "follicle", "band", "thick", "fibre")
_REGION_ORDER = ("lymphoid", "mantle", "gc", "subcap", "sinus", "capsule", "tumour", "stroma")


def _lut256(values) -> np.ndarray:
    """A 256-entry float32 cv2.LUT table indexed by region id."""
    out = np.zeros(256, np.float32)
    out[: len(values)] = values
    return out


#                    glass lymph mantle  gc  subcap sinus capsule tumour stroma
_BG_H = _lut256([0, 0.10, 0.10, 0.08, 0.05, 0.05, 0.03, 0.13, 0.03]) * np.float32(LUT_SCALE)
_BG_E = _lut256([0, 0.17, 0.15, 0.22, 0.22, 0.24, 0.48, 0.34, 0.42]) * np.float32(LUT_SCALE)
_FIBRE_AMP = _lut256([0, 0.08, 0.08, 0.08, 0.2, 0.25, 0.35, 0.1, 0.35])
_GRAIN_AMP = _lut256([0, 0.35, 0.35, 0.4, 0.6, 0.6, 0.6, 0.7, 0.6])


class TissueError(ValueError):
    """A slide or render request that cannot be honoured."""


TEX_PERIOD = 1024  # px; noise textures repeat with this period (invisible under the nuclei)
_TEX_UNIT = 32.0  # int8 texture units per standard deviation


class _Textures:
    """Seamless periodic noise textures of one slide at one scale, stored 2x2-tiled as int8.

    fib_h, fib_v: fibres (noise stretched along x or y, ~2.5 um long); grain: chromatin and
    cytoplasm granularity (~0.35 um); coarse: nucleus-sized blobs for coarse-scale tumour.
    Values are in _TEX_UNIT per standard deviation.
    """

    def __init__(self, seed: int, s: float, tumour_r_um: float, coarse: bool):
        rng = np.random.default_rng([seed, int(round(s * 1e6)), 5])
        noise = rng.uniform(-1.0, 1.0, (TEX_PERIOD, TEX_PERIOD)).astype(np.float32)
        specs = {
            "fib_h": (min(5.0, 2.5 / s), min(1.5, 0.6 / s)),
            "fib_v": (min(1.5, 0.6 / s), min(5.0, 2.5 / s)),
            "grain": (0.35 / s, 0.35 / s),
        }
        if coarse:
            r = max(0.5, 0.45 * tumour_r_um / s)
            specs["coarse"] = (r, r)
            specs["grain"] = (0.7, 0.7)
        self.tex: dict[str, np.ndarray] = {}
        for name, (sx, sy) in specs.items():
            sx, sy = max(sx, 0.3), max(sy, 0.3)
            pad = int(4 * max(sx, sy)) + 2
            big = np.pad(noise, pad, mode="wrap")
            out = cv2.GaussianBlur(big, (0, 0), sigmaX=sx, sigmaY=sy)[pad:-pad, pad:-pad]
            out *= np.float32(_TEX_UNIT / max(float(out.std()), 1e-6))
            t8 = np.clip(np.rint(out), -127, 127).astype(np.int8)
            self.tex[name] = np.tile(t8, (2, 2))

    def window(self, name: str, ix0: int, iy0: int, w: int, h: int) -> np.ndarray:
        """(h, w) float32 texture at absolute pixel-lattice position (ix0, iy0)."""
        t = self.tex[name]
        ox, oy = ix0 % TEX_PERIOD, iy0 % TEX_PERIOD
        if w <= TEX_PERIOD and h <= TEX_PERIOD:
            return t[oy : oy + h, ox : ox + w].astype(np.float32)
        ix = (np.arange(w) + ox) % TEX_PERIOD
        iy = (np.arange(h) + oy) % TEX_PERIOD
        return np.take(np.take(t, iy, axis=0), ix, axis=1).astype(np.float32, order="C")


class SyntheticSlide:
    """A seeded synthetic lymph-node slide of size_um (width, height) micrometres.

    tumour_fraction: fraction of the node that is tumour (random 0.1-0.3 when None).
    cache_cells: how many 128 um cells of nuclei to keep (LRU).
    Thread-safe: renders from several threads share the nucleus cache.
    """

    def __init__(
        self,
        seed: int,
        size_um: tuple[float, float] = (8000.0, 6000.0),
        *,
        tumour_fraction: float | None = None,
        cache_cells: int = 4096,
    ):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TissueError(f"slide seed must be a non-negative integer, got {seed!r}")
        try:
            w, h = (float(v) for v in size_um)
        except (TypeError, ValueError):
            raise TissueError(
                f"slide size_um must be (width, height) in um, got {size_um!r}"
            ) from None
        if not (500 <= w <= 40000 and 500 <= h <= 40000):
            raise TissueError(f"slide size_um must be 500..40000 um per side, got {size_um!r}")
        if tumour_fraction is not None and not 0.0 < tumour_fraction < 0.9:
            raise TissueError(f"tumour_fraction must be in (0, 0.9), got {tumour_fraction!r}")
        self.seed = int(seed)
        self.size_um = (w, h)
        rng = np.random.default_rng([self.seed, 0])
        self.stain = Stain.random(rng)
        self.anatomy = Anatomy.random(rng, tumour_fraction)
        self.fields = SlideFields(np.random.default_rng([self.seed, 1]), self.size_um, self.anatomy)
        self._lut = self.stain.lut_image()
        self._cells: OrderedDict[tuple[int, int], Nuclei] = OrderedDict()
        self._cache_cells = max(16, int(cache_cells))
        self._n_cells = (int(np.ceil(w / CELL_UM)), int(np.ceil(h / CELL_UM)))
        self._tex: OrderedDict[float, _Textures] = OrderedDict()
        self._lock = threading.Lock()

    def set_stain(self, stain: Stain) -> None:
        """Stain this slide's tissue differently (a held-out stain protocol): same anatomy
        and cells, other colours."""
        with self._lock:
            self.stain = stain
            self._lut = stain.lut_image()

    def __repr__(self) -> str:
        return f"SyntheticSlide(seed={self.seed}, size_um={self.size_um})"

    # -- geometry queries ----------------------------------------------------------------------
    def region_at(self, x_um, y_um) -> np.ndarray:
        """Per point: 0 = glass or hole, 1 = normal tissue, 2 = tumour (int8 array)."""
        reg = regions(self.fields.sample_points(x_um, y_um), self.anatomy)
        return np.where(reg["tumour"], 2, np.where(reg["tissue"], 1, 0)).astype(np.int8)

    def random_point(self, rng: np.random.Generator, where: str = "tissue") -> tuple[float, float]:
        """A random slide point (um): uniform in 'tissue', 'tumour', 'normal' or 'any', or
        'boundary': on the edge between tumour and normal tissue (both in one view)."""
        want = {"any": None, "tissue": (1, 2), "tumour": (2,), "normal": (1,), "boundary": (2,)}
        if where not in want:
            raise TissueError(f"random_point where must be one of {sorted(want)}, got {where!r}")
        for _ in range(50):
            x = rng.uniform(0, self.size_um[0], 1024)
            y = rng.uniform(0, self.size_um[1], 1024)
            if want[where] is None:
                return float(x[0]), float(y[0])
            ok = np.flatnonzero(np.isin(self.region_at(x, y), want[where]))
            if where == "boundary":
                for k in ok[:20]:  # walk from a tumour point until normal tissue starts
                    ang = rng.uniform(0, 2 * np.pi)
                    d = np.arange(0, 1500, 10.0)
                    px, py = x[k] + d * np.cos(ang), y[k] + d * np.sin(ang)
                    out = np.flatnonzero(self.region_at(px, py) == 1)
                    if len(out):
                        return float(px[out[0]]), float(py[out[0]])
            elif len(ok):
                return float(x[ok[0]]), float(y[ok[0]])
        raise TissueError(f"slide {self.seed} has no {where} region to sample")

    def nuclei_in(self, x0: float, y0: float, x1: float, y1: float) -> Nuclei:
        """All nuclei of the cells that can reach the box [x0, x1) x [y0, y1) (um)."""
        p = NUCLEUS_PAD_UM
        nx, ny = self._n_cells
        i0, i1 = (
            max(0, int(np.floor((x0 - p) / CELL_UM))),
            min(nx - 1, int(np.floor((x1 + p) / CELL_UM))),
        )
        j0, j1 = (
            max(0, int(np.floor((y0 - p) / CELL_UM))),
            min(ny - 1, int(np.floor((y1 + p) / CELL_UM))),
        )
        keys = [(i, j) for j in range(j0, j1 + 1) for i in range(i0, i1 + 1)]
        with self._lock:
            missing = [k for k in keys if k not in self._cells]
        made = generate_cells(self.seed, self.fields, missing) if missing else []
        with self._lock:
            for k, nuc in zip(missing, made):
                self._cells[k] = nuc
            parts = []
            for k in keys:
                self._cells.move_to_end(k)
                parts.append(self._cells[k])
            while len(self._cells) > max(self._cache_cells, len(keys)):
                self._cells.popitem(last=False)
        return Nuclei.concat(parts)

    # -- rendering ----------------------------------------------------------------------------
    def truth_mask(
        self, x_um: float, y_um: float, w_px: int, h_px: int, um_per_px: float
    ) -> np.ndarray:
        """HxW bool: True where the pixel centre lies in tumour tissue (same grid as render)."""
        self._check(w_px, h_px, um_per_px)
        f = self.fields.sample_grid(
            x_um, y_um, int(w_px), int(h_px), float(um_per_px), _MASK_FIELDS
        )
        return tumour_mask(f)[1]

    def render(
        self, x_um: float, y_um: float, w_px: int, h_px: int, um_per_px: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Render the region whose top-left corner is (x_um, y_um) at um_per_px.

        Pixel (row i, column j) covers [x_um + j * s, x_um + (j + 1) * s) x [y_um + i * s, ...)
        with s = um_per_px. Returns (rgb HxWx3 uint8, mask HxW bool: tumour tissue at the
        pixel centre). Anything beyond the slide is glass.
        """
        self._check(w_px, h_px, um_per_px)
        s = float(um_per_px)
        w_px, h_px = int(w_px), int(h_px)
        m = MARGIN_PX
        ww, hh = w_px + 2 * m, h_px + 2 * m
        ww, hh = ww + ww % 2, hh + hh % 2  # even, for the half-resolution maps
        x0, y0 = float(x_um) - m * s, float(y_um) - m * s
        an = self.anatomy
        detail = s <= DETAIL_MAX_UM_PER_PX
        tex = self._textures(s)
        ix0, iy0 = int(round(x_um / s)) - m, int(round(y_um / s)) - m

        f = self.fields.sample_grid(x0, y0, ww, hh, s, _MASK_FIELDS)
        tissue, tumour = tumour_mask(f)

        # Compartment appearance varies slowly: computed at half resolution and upsampled.
        # All concentration maps are in stain LUT units (concentration * LUT_SCALE).
        fh = self.fields.sample_grid(x0, y0, ww // 2, hh // 2, 2 * s, _LOOK_FIELDS)
        reg = regions(fh, an)
        rid = np.zeros(reg["tissue"].shape, np.uint8)
        for i, name in enumerate(_REGION_ORDER, start=1):
            rid[reg[name]] = i
        thick = fh["thick"]
        bg_h = cv2.LUT(rid, _BG_H) * thick
        bg_e = cv2.LUT(rid, _BG_E) * thick
        fib_a = bg_e * (cv2.LUT(rid, _FIBRE_AMP) * np.float32(1 / _TEX_UNIT))  # vertical fibres
        fib_b = fib_a * fh["fibre"]  # extra weight of horizontal minus vertical
        planes = [bg_h, bg_e, fib_a, fib_b]
        if not detail:
            ink = expected_ink(reg, an) * np.float32(LUT_SCALE)
            planes += [ink, ink * cv2.LUT(rid, _GRAIN_AMP)]
        up = [cv2.resize(p, (ww, hh), interpolation=cv2.INTER_LINEAR) for p in planes]

        fib_h = tex.window("fib_h", ix0, iy0, ww, hh)
        fib_v = tex.window("fib_v", ix0, iy0, ww, hh)
        fib_h -= fib_v
        fib_h *= up[3]
        fib_v *= up[2]
        c_e = up[1]
        c_e += fib_v
        c_e += fib_h

        if detail:
            nuc = self.nuclei_in(x0, y0, x0 + ww * s, y0 + hh * s)
            outlined, splat = draw(nuc, x0, y0, s, (hh, ww))
            c_h = tex.window("grain", ix0, iy0, ww, hh)
            c_h *= np.float32(0.22 / _TEX_UNIT)
            c_h += 1
            c_h *= outlined
            c_h += splat
        else:
            c_h = np.where(
                tumour,
                tex.window("coarse", ix0, iy0, ww, hh),
                tex.window("grain", ix0, iy0, ww, hh),
            )
            c_h *= up[5]
            c_h *= np.float32(1 / _TEX_UNIT)
            c_h += up[4]
            np.maximum(c_h, 0, out=c_h)
        glands = self.fields.glands_in(x0, y0, x0 + ww * s, y0 + hh * s, pad=14.0)
        if len(glands) and not detail:  # epithelial rings, drawn nucleus by nucleus when finer
            cv2.fillPoly(c_h, _ellipses(glands, 11.0, x0, y0, s), 0.75 * LUT_SCALE, cv2.LINE_8, 4)
        c_h += up[0]
        if len(glands):  # pale lumens
            lumen = _ellipses(glands, 0.0, x0, y0, s)
            cv2.fillPoly(c_h, lumen, 0.01 * LUT_SCALE, cv2.LINE_8, 4)
            cv2.fillPoly(c_e, lumen, 0.04 * LUT_SCALE, cv2.LINE_8, 4)

        # Soft (1 px) tissue and hole edges; the mask itself stays hard.
        alpha = np.minimum(f["tissue"], f["hole"] * -1)
        alpha *= np.float32(1 / s)
        alpha += 0.5
        np.clip(alpha, 0, 1, out=alpha)
        c_h *= alpha
        c_e *= alpha
        rgb = to_rgb(self._lut, c_h, c_e)
        sigma = self.stain.blur_um / s
        if sigma >= 0.3:
            rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
        return (
            np.ascontiguousarray(rgb[m : m + h_px, m : m + w_px]),
            np.ascontiguousarray(tumour[m : m + h_px, m : m + w_px]),
        )

    def _textures(self, s: float) -> _Textures:
        key = round(s, 9)
        with self._lock:
            t = self._tex.get(key)
            if t is not None:
                self._tex.move_to_end(key)
                return t
        t = _Textures(self.seed, s, self.anatomy.tumour_r_um, coarse=s > DETAIL_MAX_UM_PER_PX)
        with self._lock:
            self._tex[key] = t
            while len(self._tex) > 6:
                self._tex.popitem(last=False)
        return t

    @staticmethod
    def _check(w_px, h_px, um_per_px) -> None:
        for name, v in (("w_px", w_px), ("h_px", h_px)):
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, np.integer))
                or not 0 < v <= MAX_SIDE_PX
            ):
                raise TissueError(f"render {name} must be an integer 1..{MAX_SIDE_PX}, got {v!r}")
        if (
            not isinstance(um_per_px, (int, float, np.floating))
            or not 0.05 <= float(um_per_px) <= 100
        ):
            raise TissueError(f"render um_per_px must be 0.05..100, got {um_per_px!r}")


def _ellipses(g: np.ndarray, extra_um: float, x0: float, y0: float, s: float) -> np.ndarray:
    """(G, 24, 2) cv2 fixed-point (4 bits) polygons of gland ellipses grown by extra_um."""
    lx = (g[:, 2:3] + extra_um) * _COS24
    ly = (g[:, 3:4] + extra_um) * _SIN24
    c, sn = g[:, 4:5], g[:, 5:6]
    px = (g[:, 0:1] + lx * c - ly * sn - x0) / s - 0.5
    py = (g[:, 1:2] + lx * sn + ly * c - y0) / s - 0.5
    return np.rint(np.stack([px, py], -1) * 16).astype(np.int32)


_COS24 = np.cos(2 * np.pi * np.arange(24) / 24)
_SIN24 = np.sin(2 * np.pi * np.arange(24) / 24)


def outline(
    rgb: np.ndarray, mask: np.ndarray, colour=(0, 255, 0), thickness: int = 2
) -> np.ndarray:
    """A copy of rgb with the mask's outline drawn on it (for looking, not for the pipeline)."""
    out = rgb.copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, colour, thickness, cv2.LINE_AA)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lucida.runtime.virtual.tissue", description="Render a synthetic H&E slide."
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", default="10x", help="2x 4x 10x 20x 40x (sets um/px)")
    p.add_argument("--um-per-px", type=float, default=None, help="overrides --objective")
    p.add_argument("--x", type=float, default=None, help="centre x, um (default: a tumour edge)")
    p.add_argument("--y", type=float, default=None, help="centre y, um")
    p.add_argument("--width", type=int, default=1280, help="px")
    p.add_argument("--height", type=int, default=720, help="px")
    p.add_argument("--outline", action="store_true", help="draw the tumour mask outline")
    p.add_argument("--out", help="PNG path")
    p.add_argument("--bench", action="store_true", help="time renders (one OpenCV thread)")
    a = p.parse_args(argv)
    s = a.um_per_px if a.um_per_px else OBJECTIVE_UM_PER_PX[a.objective]
    if a.bench:
        return _bench(s, a.width, a.height)
    if not a.out:
        p.error("give --out PATH or --bench")
    slide = SyntheticSlide(a.seed)
    if a.x is None or a.y is None:
        a.x, a.y = slide.random_point(np.random.default_rng(a.seed), "boundary")
    x0, y0 = a.x - a.width * s / 2, a.y - a.height * s / 2
    rgb, mask = slide.render(x0, y0, a.width, a.height, s)
    if a.outline:
        rgb = outline(rgb, mask)
    if not cv2.imwrite(a.out, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {a.out}")
    print(
        f"{a.out}: seed {a.seed}, centre ({a.x:.0f}, {a.y:.0f}) um, {s} um/px, tumour {mask.mean():.1%}"
    )
    return 0


def _bench(s: float, w: int, h: int) -> int:
    """Render time of w x h px at s um/px, cold (new cells) and warm (cached): wall-clock and
    process CPU time (the CPU time is what one uncontended core needs), p50/p90/p99."""
    import time

    cv2.setNumThreads(1)
    times: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    for seed in (1, 2, 3):
        slide = SyntheticSlide(seed)
        rng = np.random.default_rng(seed)
        for _ in range(5):
            x, y = slide.random_point(rng, "tissue")
            for name in ("cold", "warm"):
                t0, c0 = time.perf_counter(), time.process_time()
                slide.render(x - w * s / 2, y - h * s / 2, w, h, s)
                times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    for name, d in times.items():
        wall, cpu = (np.percentile(np.array(d)[:, i] * 1e3, [50, 90, 99]) for i in (0, 1))
        print(
            f"render {w}x{h} px at {s} um/px, {name} (n={len(d)}): wall p50 {wall[0]:.1f} / "
            f"p90 {wall[1]:.1f} / p99 {wall[2]:.1f} ms; CPU p50 {cpu[0]:.1f} / p90 {cpu[1]:.1f} / "
            f"p99 {cpu[2]:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
