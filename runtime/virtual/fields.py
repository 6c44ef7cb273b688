"""Slide-scale geometry of a synthetic lymph node, in slide micrometres (um).

Everything larger than a cell lives on two regular lattices over the slide, built once per
slide from smooth seeded noise (a few tens of MB, never the slide at full resolution):

- fine lattice, one node every FINE_UM: signed distances (um, positive inside) to the node
  outline, to the tumour boundary and to holes, and the gland exclusion zone (0..1);
- coarse lattice, one node every COARSE_UM: follicle radial distance (0 at a follicle centre,
  1 at its rim), a sinus/stroma band noise, section thickness, fibre direction weight.

Both are sampled bilinearly, either at scattered points (nuclei) or on a pixel grid (render);
node k sits at slide coordinate k * lattice step. Glands are a global list of ellipses.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FINE_UM = 5.0
COARSE_UM = 20.0

FINE_CHANNELS = ("tissue", "tumour", "hole", "gland")
COARSE_CHANNELS = ("follicle", "band", "thick", "fibre")


@dataclass(frozen=True)
class Anatomy:
    """Per-slide random anatomy and cytology parameters (lengths in um)."""

    tumour_fraction: float  # fraction of the node's area that is tumour
    capsule_um: float  # fibrous capsule thickness
    subcap_um: float  # subcapsular sinus width
    medulla_um: float  # depth below which the node is medulla (cords and sinuses)
    sinus_w: float  # |band| below this is a medullary sinus
    stroma_w: float  # |band| below this is a desmoplastic stroma band inside tumour
    gland_prob: float  # probability that a gland site in tumour holds a gland
    vesicular_frac: float  # fraction of tumour nuclei that are vesicular (else hyperchromatic)
    tumour_r_um: float  # mean tumour nucleus radius
    lymph_density: float  # lymphocyte packing multiplier

    @classmethod
    def random(cls, rng: np.random.Generator, tumour_fraction: float | None = None) -> Anatomy:
        return cls(
            tumour_fraction=float(
                rng.uniform(0.1, 0.3) if tumour_fraction is None else tumour_fraction
            ),
            capsule_um=float(rng.uniform(15.0, 35.0)),
            subcap_um=float(rng.uniform(15.0, 40.0)),
            medulla_um=float(rng.uniform(700.0, 1100.0)),
            sinus_w=float(rng.uniform(0.2, 0.35)),
            stroma_w=float(rng.uniform(0.08, 0.18)),
            gland_prob=float(rng.uniform(0.15, 0.85)),
            vesicular_frac=float(rng.uniform(0.2, 0.8)),
            tumour_r_um=float(rng.uniform(5.5, 7.0)),
            lymph_density=float(rng.uniform(0.88, 1.0)),
        )


def _fbm(
    rng: np.random.Generator, shape: tuple[int, int], size_um: tuple[float, float], octaves
) -> np.ndarray:
    """Smooth noise of `shape` (ny, nx) over the slide, zero mean, unit std.

    octaves: (feature size um, weight) pairs; each is white noise on a grid of that pitch,
    upsampled bicubically to the lattice.
    """
    ny, nx = shape
    out = np.zeros(shape, np.float32)
    for scale_um, weight in octaves:
        gx = max(3, int(round(size_um[0] / scale_um)) + 3)
        gy = max(3, int(round(size_um[1] / scale_um)) + 3)
        g = rng.standard_normal((gy, gx)).astype(np.float32)
        out += np.float32(weight) * cv2.resize(g, (nx, ny), interpolation=cv2.INTER_CUBIC)
    out -= out.mean()
    out /= max(float(out.std()), 1e-6)
    return out


def _distance(f: np.ndarray, step_um: float, clip_um: float = 3000.0) -> np.ndarray:
    """Approximate signed distance (um) to the zero level of smooth field f: f / |grad f|."""
    gy, gx = np.gradient(f, step_um)
    g = np.sqrt(gx * gx + gy * gy)
    return np.clip(f / np.maximum(g, 1e-9), -clip_um, clip_um).astype(np.float32)


class SlideFields:
    """The lattices and the gland list of one slide; read-only after construction."""

    def __init__(self, rng: np.random.Generator, size_um: tuple[float, float], anatomy: Anatomy):
        self.size_um = size_um
        self.anatomy = anatomy
        w, h = size_um
        nx, ny = int(np.ceil(w / FINE_UM)) + 1, int(np.ceil(h / FINE_UM)) + 1
        cnx, cny = int(np.ceil(w / COARSE_UM)) + 1, int(np.ceil(h / COARSE_UM)) + 1
        shape = (cny, cnx)
        # Smooth fields are built on the coarse lattice; the boundary-defining ones are then
        # upsampled bicubically to the fine lattice so outlines stay smooth at 40x.
        xs = (np.arange(cnx, dtype=np.float32) * COARSE_UM)[None, :]
        ys = (np.arange(cny, dtype=np.float32) * COARSE_UM)[:, None]

        # Node outline: a rotated ellipse, wobbly, with a hilum notch, clear of the slide edge.
        cx, cy = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55)
        ax, ay = w * rng.uniform(0.34, 0.42), h * rng.uniform(0.33, 0.41)
        phi = rng.uniform(-0.3, 0.3)
        c, s = np.float32(np.cos(phi)), np.float32(np.sin(phi))
        u = ((xs - np.float32(cx)) * c + (ys - np.float32(cy)) * s) / np.float32(ax)
        v = (-(xs - np.float32(cx)) * s + (ys - np.float32(cy)) * c) / np.float32(ay)
        f = 1.0 - np.sqrt(u * u + v * v)
        f += 0.13 * _fbm(rng, shape, size_um, [(2500, 1.0), (1200, 0.5), (600, 0.2)])
        ha = rng.uniform(0, 2 * np.pi)
        hx, hy = (
            cx + ax * np.cos(ha) * c - ay * np.sin(ha) * s,
            cy + ax * np.cos(ha) * s + ay * np.sin(ha) * c,
        )
        f -= 0.35 * np.exp(-((xs - hx) ** 2 + (ys - hy) ** 2) / (2 * (0.15 * ax) ** 2))
        edge = np.minimum(np.minimum(xs, w - xs), np.minimum(ys, h - ys))
        f = np.minimum(f, (edge - 150.0) / ax)
        tissue = _distance(f, COARSE_UM)

        # Tumour: thresholded low-frequency noise, slightly favouring the subcapsular region.
        ft = _fbm(rng, shape, size_um, [(1800, 1.0), (900, 0.6), (450, 0.35), (220, 0.12)])
        ft += 0.8 * np.exp(-np.clip(tissue, 0, None) / 700.0)
        inside = tissue > anatomy.capsule_um
        thr = np.quantile(ft[inside], 1.0 - anatomy.tumour_fraction) if inside.any() else 9.0
        tumour = _distance(ft - np.float32(thr), COARSE_UM)

        # Holes: small tears, the top ~1.5 % of a medium-frequency noise inside the tissue.
        fh = _fbm(rng, shape, size_um, [(350, 1.0), (170, 0.5), (80, 0.2)])
        thr_h = np.quantile(fh[inside], 0.985) if inside.any() else 9.0
        hole = _distance(fh - np.float32(thr_h), COARSE_UM)

        k = FINE_UM / COARSE_UM
        up = np.array([[k, 0.0, 0.0], [0.0, k, 0.0]])
        self.fine: dict[str, np.ndarray] = {
            name: cv2.warpAffine(
                lat,
                up,
                (nx, ny),
                flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
            for name, lat in (("tissue", tissue), ("tumour", tumour), ("hole", hole))
        }
        self.coarse: dict[str, np.ndarray] = {
            "follicle": np.full(shape, 9.0, np.float32),
            "band": _fbm(rng, shape, size_um, [(500, 1.0), (250, 0.6), (120, 0.3)]),
            "thick": 1.0 + 0.1 * _fbm(rng, shape, size_um, [(3000, 1.0), (1500, 0.5)]),
            "fibre": 0.5 + 0.5 * np.tanh(2.0 * _fbm(rng, shape, size_um, [(600, 1.0)])),
        }
        self._place_follicles(rng)
        self.glands = self._place_glands(rng)
        self._draw_gland_exclusion()

    # -- construction helpers -------------------------------------------------------------
    def _place_follicles(self, rng: np.random.Generator) -> None:
        """Round lymphoid follicles in the cortex; about a third are primary (no germinal centre)."""
        w, h = self.size_um
        n_try = int(w * h / 40000)
        px = rng.uniform(0, w, n_try)
        py = rng.uniform(0, h, n_try)
        radius = rng.uniform(110, 260, n_try)
        primary = rng.random(n_try) < 0.35
        f = self.sample_points(px, py)
        ok = (f["tissue"] > radius * 0.8 + 60) & (f["tissue"] < 600) & (f["tumour"] < -radius)
        centres: list[tuple[float, float, float]] = []
        fol = self.coarse["follicle"]
        cny, cnx = fol.shape
        for i in np.flatnonzero(ok):
            x, y, r = float(px[i]), float(py[i]), float(radius[i])
            if any((x - a) ** 2 + (y - b) ** 2 < (r + rb + 40) ** 2 for a, b, rb in centres):
                continue
            centres.append((x, y, r))
            i0, i1 = max(0, int((x - r) / COARSE_UM) - 1), min(cnx, int((x + r) / COARSE_UM) + 3)
            j0, j1 = max(0, int((y - r) / COARSE_UM) - 1), min(cny, int((y + r) / COARSE_UM) + 3)
            gx = np.arange(i0, i1, dtype=np.float32)[None, :] * COARSE_UM
            gy = np.arange(j0, j1, dtype=np.float32)[:, None] * COARSE_UM
            d = np.sqrt((gx - x) ** 2 + (gy - y) ** 2) / r
            if primary[i]:
                d = 0.62 + 0.38 * d
            fol[j0:j1, i0:i1] = np.minimum(fol[j0:j1, i0:i1], d)

    def _place_glands(self, rng: np.random.Generator) -> np.ndarray:
        """Gland lumens in tumour: (G, 6) float32 rows x, y, a, b, cos(theta), sin(theta) in um."""
        w, h = self.size_um
        pitch = 70.0
        gx, gy = np.meshgrid(np.arange(0, w, pitch), np.arange(0, h, pitch))
        n = gx.size
        x = gx.ravel() + rng.uniform(0, pitch, n)
        y = gy.ravel() + rng.uniform(0, pitch, n)
        a = rng.uniform(6.0, 20.0, n)
        b = a * rng.uniform(0.5, 1.0, n)
        rot = rng.standard_normal((n, 2))
        rot /= np.linalg.norm(rot, axis=1, keepdims=True) + 1e-12
        keep = rng.random(n) < self.anatomy.gland_prob
        f = self.sample_points(x, y)
        keep &= (f["tumour"] > a + 16.0) & (f["hole"] < -a - 10.0) & (f["tissue"] > a + 40.0)
        keep &= np.abs(f["band"]) > self.anatomy.stroma_w + 0.05
        g = np.stack([x, y, a, b, rot[:, 0], rot[:, 1]], axis=1)[keep]
        return g.astype(np.float32)

    def _draw_gland_exclusion(self) -> None:
        """Mark lumen + epithelium zones (axes + 13 um) on the fine lattice, channel 3."""
        ex = np.zeros(self.fine["tissue"].shape, np.float32)
        sh = 4
        for x, y, a, b, c, s in self.glands:
            cv2.ellipse(
                ex,
                (int(x / FINE_UM * 16), int(y / FINE_UM * 16)),
                (int((a + 13) / FINE_UM * 16), int((b + 13) / FINE_UM * 16)),
                float(np.degrees(np.arctan2(s, c))),
                0,
                360,
                1.0,
                -1,
                cv2.LINE_8,
                sh,
            )
        self.fine["gland"] = ex

    # -- sampling ---------------------------------------------------------------------------
    @staticmethod
    def _maps(x: np.ndarray, y: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
        """cv2.remap maps (lattice coordinates) for N points, padded to whole rows."""
        n = len(x)
        cols = 1024
        rows = max(1, -(-n // cols))
        mx = np.zeros(rows * cols, np.float32)
        my = np.zeros(rows * cols, np.float32)
        mx[:n] = x / step
        my[:n] = y / step
        return mx.reshape(rows, cols), my.reshape(rows, cols)

    def sample_points(self, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """All fields at slide points (um), bilinear, as 1-D float32 arrays keyed by name."""
        x = np.atleast_1d(np.asarray(x, np.float64))
        y = np.atleast_1d(np.asarray(y, np.float64))
        n = len(x)
        out: dict[str, np.ndarray] = {}
        for lattices, step in ((self.fine, FINE_UM), (self.coarse, COARSE_UM)):
            mx, my = self._maps(x, y, step)
            for name, lat in lattices.items():
                v = cv2.remap(lat, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                out[name] = v.ravel()[:n]
        return out

    def sample_grid(
        self,
        x0_um: float,
        y0_um: float,
        w_px: int,
        h_px: int,
        um_per_px: float,
        names: tuple[str, ...] = FINE_CHANNELS + COARSE_CHANNELS,
    ) -> dict[str, np.ndarray]:
        """Fields `names` at the centres of a w_px x h_px pixel grid whose top-left corner is
        at (x0_um, y0_um), as HxW float32 arrays keyed by name."""
        out: dict[str, np.ndarray] = {}
        for name in names:
            lat, step = (
                (self.fine[name], FINE_UM) if name in self.fine else (self.coarse[name], COARSE_UM)
            )
            k = um_per_px / step
            m = np.array(
                [
                    [k, 0.0, (x0_um + 0.5 * um_per_px) / step],
                    [0.0, k, (y0_um + 0.5 * um_per_px) / step],
                ]
            )
            out[name] = cv2.warpAffine(
                lat,
                m,
                (w_px, h_px),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
        return out

    def glands_in(self, x0: float, y0: float, x1: float, y1: float, pad: float = 0.0) -> np.ndarray:
        """Rows of self.glands whose lumen may reach the box [x0, x1) x [y0, y1) (um)."""
        g = self.glands
        r = g[:, 2] + pad
        sel = (g[:, 0] + r > x0) & (g[:, 0] - r < x1) & (g[:, 1] + r > y0) & (g[:, 1] - r < y1)
        return g[sel]


def tumour_mask(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(tissue, tumour) booleans from sampled fine fields: the section, and tumour tissue."""
    tissue = f["tissue"] > 0
    tissue &= f["hole"] <= 0
    tumour = f["tumour"] > 0
    tumour &= tissue
    return tissue, tumour


def regions(f: dict[str, np.ndarray], an: Anatomy) -> dict[str, np.ndarray]:
    """Boolean tissue compartments from sampled fields (points or pixel grids alike).

    tissue: section present (not glass, not a hole); tumour: tumour tissue (the truth mask);
    capsule, subcap (subcapsular sinus), sinus (medullary sinus), gc (germinal centre),
    mantle, stroma (desmoplastic band inside tumour), lymphoid (the rest of the normal node).
    Every tissue point is in exactly one of capsule, subcap, sinus, gc, mantle, lymphoid,
    tumour (stroma is a part of tumour).
    """
    tissue, tumour = tumour_mask(f)
    td = f["tissue"]
    normal = tissue & ~tumour
    capsule = normal & (td < an.capsule_um)
    rest = normal & ~capsule
    subcap = rest & (td < an.capsule_um + an.subcap_um)
    rest &= ~subcap
    band = np.abs(f["band"])
    fol = f["follicle"]
    in_fol = rest & (fol < 1.0)
    gc = in_fol & (fol < 0.62)
    mantle = in_fol & ~gc
    rest &= ~in_fol
    sinus = rest & (td > an.medulla_um)
    sinus &= band < an.sinus_w
    rest &= ~sinus
    stroma = tumour & (band < an.stroma_w)
    return {
        "tissue": tissue,
        "tumour": tumour,
        "capsule": capsule,
        "subcap": subcap,
        "sinus": sinus,
        "gc": gc,
        "mantle": mantle,
        "stroma": stroma,
        "lymphoid": rest,
    }
