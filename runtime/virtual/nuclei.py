"""Cell nuclei of a synthetic slide: generated per fixed-size slide cell, drawn at any scale.

The slide is divided into CELL_UM x CELL_UM cells. A cell's nuclei depend only on
(slide seed, cell index) and the slide's fields, so any region at any scale shows the same
nuclei. Candidates sit on jittered grids (lymphocytes, tumour cells) or are scattered
(spindle cells); the fields decide which survive and what kind they become. Gland rings
belong to the cell holding the gland centre.

Only +, -, *, / and sqrt touch the random numbers in batch code, so a cell's geometry is
bit-identical whichever cells are generated alongside it.
"""

from __future__ import annotations

import cv2
import numpy as np

from .fields import Anatomy, SlideFields, regions
from .stain import LUT_SCALE

CELL_UM = 128.0
K = 12  # outline vertices per nucleus
LYMPH_N = 16  # lymphoid candidate grid per cell side (pitch 8 um)
TUMOUR_N = 9  # tumour candidate grid per cell side (pitch 14.2 um)
SCATTER_N = 48  # scattered (spindle) candidates per cell
SPLAT_BELOW_PX = 3.0  # nuclei smaller than this radius (px) are splatted, not outlined
SHIFT = 4  # fixed-point bits for cv2 polygon vertices

LYMPH, CENTROBLAST, HISTIO, TUMOUR, GLAND, SPINDLE = 1, 2, 3, 4, 5, 6
INNER_SCALE = 0.65  # vesicular nuclei: pale interior at this fraction of the outline

_PHI = 2 * np.pi * np.arange(K) / K
_C1, _S1 = np.cos(_PHI).astype(np.float32), np.sin(_PHI).astype(np.float32)
_C2, _S2 = np.cos(2 * _PHI).astype(np.float32), np.sin(2 * _PHI).astype(np.float32)
_C3, _S3 = np.cos(3 * _PHI).astype(np.float32), np.sin(3 * _PHI).astype(np.float32)

# Size/ink ranges per kind (um, concentration), shared by generation and the coarse-scale
# statistics: r (radius), aspect (minor/major), ink (outer), inner (vesicular interior).
LYMPH_R, LYMPH_ASPECT, LYMPH_INK = (3.2, 4.1), (0.85, 1.0), (1.05, 1.35)
CB_R, CB_ASPECT, CB_INK, CB_INNER = (4.2, 5.4), (0.75, 1.0), (0.75, 0.95), (0.3, 0.42)
HISTIO_R, HISTIO_ASPECT, HISTIO_INK, HISTIO_INNER = (4.5, 6.0), (0.55, 0.8), (0.6, 0.8), (0.3, 0.4)
TUMOUR_RF, TUMOUR_ASPECT = (0.75, 1.3), (0.6, 0.95)
HYPER_INK, VESIC_INK, VESIC_INNER = (1.15, 1.55), (0.95, 1.2), (0.3, 0.5)
SPINDLE_A, SPINDLE_B, SPINDLE_INK = (5.0, 8.0), (1.0, 1.6), (0.85, 1.1)


# Columns of Nuclei.data.
_COLS = {
    "xy": slice(0, 2), "shape": slice(2, 10), "r": 10, "area": 11, "ink": 12, "inner": 13,
    "nucl": 14, "nucl_xy": slice(15, 17), "nucl_r": 17, "group": 18, "kind": 19,
}  # fmt: skip
_NCOLS = 20


class Nuclei:
    """A bag of nuclei, one row each of a float32 matrix `data` (one array: cheap to gather).

    Lengths in slide um, concentrations in hematoxylin units. Column views:
    xy: (N, 2) centres; shape: (N, 8) outline parameters (semi-axes a, b; direction of a
    (cos, sin); 2nd and 3rd harmonic wobble as (amp * cos, amp * sin) pairs), see outlines();
    r: equivalent radius sqrt(a*b); area: um^2; ink: outline concentration; inner:
    pale-interior concentration of vesicular nuclei (0 = solid); nucl: nucleolus
    concentration (0 = none); nucl_xy: (N, 2) nucleolus centres; nucl_r: nucleolus radius;
    group: drawing group (nuclei in one group never overlap); kind: LYMPH ... SPINDLE.
    """

    __slots__ = ("data",)

    def __init__(self, data: np.ndarray):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            col = _COLS[name]
        except KeyError:
            raise AttributeError(name) from None
        return self.data[:, col]

    def outlines(self) -> np.ndarray:
        """(N, K, 2) float32 outline vertices, um."""
        d = self.data
        a, b, rc, rs, h2c, h2s, h3c, h3s = (d[:, i : i + 1] for i in range(2, 10))
        wobble = 1.0 + (_C2 * h2c - _S2 * h2s) + (_C3 * h3c - _S3 * h3s)
        lx = a * wobble * _C1
        ly = b * wobble * _S1
        out = np.empty((len(d), K, 2), np.float32)
        out[..., 0] = d[:, 0:1] + lx * rc - ly * rs
        out[..., 1] = d[:, 1:2] + lx * rs + ly * rc
        return out

    def take(self, idx: np.ndarray) -> Nuclei:
        return Nuclei(self.data[idx])

    @staticmethod
    def concat(parts: list[Nuclei]) -> Nuclei:
        if not parts:
            return _empty()
        return Nuclei(np.concatenate([p.data for p in parts]))


def _empty() -> Nuclei:
    return Nuclei(np.zeros((0, _NCOLS), np.float32))


def _none() -> tuple[np.ndarray, Nuclei]:
    return np.zeros(0, np.int64), _empty()


def _lerp(u: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    return lo_hi[0] + u * (lo_hi[1] - lo_hi[0])


def _unit2(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (cos, sin) from pairs of normal deviates, trig-free."""
    norm = np.sqrt(n[:, 0] * n[:, 0] + n[:, 1] * n[:, 1]) + 1e-12
    return n[:, 0] / norm, n[:, 1] / norm


def _build(
    cell, cx, cy, a, b, rot, h2, a2, h3, a3, ink, inner, nucl, nucl_off, nucl_r, group, kind
):
    """One family of kept nuclei as (cell id array, Nuclei)."""
    n = len(cx)
    d = np.empty((n, _NCOLS), np.float32)
    d[:, 0], d[:, 1] = cx, cy
    d[:, 2], d[:, 3], d[:, 4], d[:, 5] = a, b, rot[0], rot[1]
    d[:, 6], d[:, 7], d[:, 8], d[:, 9] = a2 * h2[0], a2 * h2[1], a3 * h3[0], a3 * h3[1]
    d[:, 10] = np.sqrt(a * b)
    d[:, 11] = np.pi * a * b
    d[:, 12], d[:, 13], d[:, 14] = ink, inner, nucl
    d[:, 15:17] = d[:, 0:2] + np.asarray(nucl_off, np.float32).reshape(n, 2)
    d[:, 17], d[:, 18], d[:, 19] = nucl_r, group, kind
    return cell, Nuclei(d)


def generate_cells(seed: int, sf: SlideFields, cells: list[tuple[int, int]]) -> list[Nuclei]:
    """Nuclei of each cell (cx, cy) (cell indices, >= 0), in the order given."""
    an: Anatomy = sf.anatomy
    n_cells = len(cells)
    ln, tn, sn = LYMPH_N * LYMPH_N, TUMOUR_N * TUMOUR_N, SCATTER_N
    ul = np.empty((n_cells, ln, 10))
    nl = np.empty((n_cells, ln, 6))
    ut = np.empty((n_cells, tn, 12))
    nt = np.empty((n_cells, tn, 8))
    us = np.empty((n_cells, sn, 8))
    rng_after = []
    for i, (cx, cy) in enumerate(cells):
        rng = np.random.default_rng([seed, cx, cy, 17])
        uni = rng.random(ln * 10 + tn * 12 + sn * 8)
        nrm = rng.standard_normal(ln * 6 + tn * 8)
        ul[i] = uni[: ln * 10].reshape(ln, 10)
        ut[i] = uni[ln * 10 : ln * 10 + tn * 12].reshape(tn, 12)
        us[i] = uni[ln * 10 + tn * 12 :].reshape(sn, 8)
        nl[i] = nrm[: ln * 6].reshape(ln, 6)
        nt[i] = nrm[ln * 6 :].reshape(tn, 8)
        rng_after.append(rng)
    cell_x = np.array([c[0] for c in cells], np.float64)
    cell_y = np.array([c[1] for c in cells], np.float64)
    parts = [
        _lymphoid(sf, an, cell_x, cell_y, ul, nl),
        _tumour(sf, an, cell_x, cell_y, ut, nt),
        _spindles(sf, an, cell_x, cell_y, us),
        _glands(sf, an, cells, rng_after),
    ]
    cell_id = np.concatenate([p[0] for p in parts])
    allnuc = Nuclei.concat([p[1] for p in parts])
    order = np.argsort(cell_id, kind="stable")
    counts = np.bincount(cell_id, minlength=n_cells)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [allnuc.take(order[bounds[i] : bounds[i + 1]]) for i in range(n_cells)]


def _grid(cell_x, cell_y, n: int, u: np.ndarray, jitter: float):
    """Jittered grid positions (um) and global grid parity group (0..3) for each candidate."""
    pitch = CELL_UM / n
    j, i = np.divmod(np.arange(n * n), n)
    gi = cell_x[:, None] * n + i[None, :]
    gj = cell_y[:, None] * n + j[None, :]
    x = (gi + 0.5 + (u[..., 0] - 0.5) * jitter) * pitch
    y = (gj + 0.5 + (u[..., 1] - 0.5) * jitter) * pitch
    group = (gi.astype(np.int64) % 2) * 2 + (gj.astype(np.int64) % 2)
    return x.ravel(), y.ravel(), group.ravel()


def _lymphoid(sf, an, cell_x, cell_y, u, nrm):
    n_cells = len(cell_x)
    x, y, group = _grid(cell_x, cell_y, LYMPH_N, u, 0.7)
    u = u.reshape(-1, u.shape[-1])
    nrm = nrm.reshape(-1, nrm.shape[-1])
    cell = np.repeat(np.arange(n_cells), LYMPH_N * LYMPH_N)
    f = sf.sample_points(x, y)
    reg = regions(f, an)
    p = np.zeros(len(x))
    p[reg["lymphoid"]] = 0.95
    p[reg["mantle"]] = 0.98
    p[reg["gc"]] = 0.62
    p[reg["subcap"] | reg["sinus"]] = 0.3
    p *= an.lymph_density
    cb = reg["gc"] & (u[:, 3] < 0.5)
    histio = (reg["subcap"] | reg["sinus"]) & (u[:, 3] < 0.45)
    kind = np.where(cb, CENTROBLAST, np.where(histio, HISTIO, LYMPH))
    r = np.where(
        cb,
        _lerp(u[:, 4], CB_R),
        np.where(histio, _lerp(u[:, 4], HISTIO_R), _lerp(u[:, 4], LYMPH_R)),
    )
    asp = np.where(
        cb, _lerp(u[:, 5], CB_ASPECT),
        np.where(histio, _lerp(u[:, 5], HISTIO_ASPECT), _lerp(u[:, 5], LYMPH_ASPECT)),
    )  # fmt: skip
    keep = (u[:, 2] < p) & (f["tumour"] < -1.05 * r) & (f["hole"] < 0)
    irregular = reg["gc"] & ~cb  # centrocytes: cleaved, irregular small nuclei
    a2 = np.where(
        irregular,
        0.05 + 0.1 * u[:, 6],
        np.where(cb | histio, 0.02 + 0.06 * u[:, 6], 0.05 * u[:, 6]),
    )
    a3 = 0.03 * u[:, 7]
    ink = np.where(
        cb, _lerp(u[:, 8], CB_INK),
        np.where(histio, _lerp(u[:, 8], HISTIO_INK), _lerp(u[:, 8], LYMPH_INK)),
    )  # fmt: skip
    inner = np.where(
        cb, _lerp(u[:, 9], CB_INNER), np.where(histio, _lerp(u[:, 9], HISTIO_INNER), 0.0)
    )
    nucl = np.where(cb, 1.1, 0.0)
    a = r / np.sqrt(asp)
    b = r * np.sqrt(asp)
    off = np.stack([0.4 * a * nrm[:, 0] / 2, 0.4 * b * nrm[:, 1] / 2], axis=1)
    k = np.flatnonzero(keep)
    return _build(
        cell[k], x[k], y[k], a[k], b[k], _unit2(nrm[k, 0:2]), _unit2(nrm[k, 2:4]), a2[k],
        _unit2(nrm[k, 4:6]), a3[k], ink[k], inner[k], nucl[k], off[k], 0.35 * r[k],
        group[k], kind[k],
    )  # fmt: skip


def _tumour(sf, an, cell_x, cell_y, u, nrm):
    n_cells = len(cell_x)
    x, y, group = _grid(cell_x, cell_y, TUMOUR_N, u, 0.6)
    u = u.reshape(-1, u.shape[-1])
    nrm = nrm.reshape(-1, nrm.shape[-1])
    cell = np.repeat(np.arange(n_cells), TUMOUR_N * TUMOUR_N)
    f = sf.sample_points(x, y)
    reg = regions(f, an)
    r = an.tumour_r_um * _lerp(u[:, 4], TUMOUR_RF)
    asp = _lerp(u[:, 5], TUMOUR_ASPECT)
    keep = reg["tumour"] & ~reg["stroma"] & (f["gland"] < 0.5) & (u[:, 2] < 0.88)
    keep &= (f["tumour"] > 1.1 * r) & (f["hole"] < -r)
    ves = u[:, 3] < an.vesicular_frac
    ink = np.where(ves, _lerp(u[:, 8], VESIC_INK), _lerp(u[:, 8], HYPER_INK))
    inner = np.where(ves, _lerp(u[:, 9], VESIC_INNER), 0.0)
    nucl = np.where(ves, 1.3 + 0.4 * u[:, 10], 0.0)
    a = r / np.sqrt(asp)
    b = r * np.sqrt(asp)
    off = np.stack([0.3 * a * nrm[:, 6] / 2, 0.3 * b * nrm[:, 7] / 2], axis=1)
    k = np.flatnonzero(keep)
    return _build(
        cell[k], x[k], y[k], a[k], b[k], _unit2(nrm[k, 0:2]), _unit2(nrm[k, 2:4]),
        0.05 + 0.13 * u[k, 6], _unit2(nrm[k, 4:6]), 0.03 + 0.09 * u[k, 7], ink[k], inner[k],
        nucl[k], off[k], (0.8 + 0.6 * u[k, 11]) * np.minimum(1.0, r[k] / 6.0),
        4 + group[k], np.full(len(k), TUMOUR),
    )  # fmt: skip


def _spindles(sf, an, cell_x, cell_y, u):
    n_cells = len(cell_x)
    u = u.reshape(-1, u.shape[-1])
    cell = np.repeat(np.arange(n_cells), SCATTER_N)
    x = (np.repeat(cell_x, SCATTER_N) + u[:, 0]) * CELL_UM
    y = (np.repeat(cell_y, SCATTER_N) + u[:, 1]) * CELL_UM
    f = sf.sample_points(x, y)
    reg = regions(f, an)
    a = _lerp(u[:, 3], SPINDLE_A)
    b = _lerp(u[:, 4], SPINDLE_B)
    p = np.zeros(len(x))
    p[reg["capsule"]] = 0.85
    p[reg["stroma"]] = 0.6
    p[reg["sinus"]] = 0.12
    p[reg["lymphoid"]] = 0.03
    keep = u[:, 2] < p
    keep &= np.where(reg["tumour"], f["tumour"] > a + 0.5, f["tumour"] < -a - 0.5)
    k = np.flatnonzero(keep)
    if len(k) == 0:
        return _none()
    # Long axis along the local structure: the capsule's outline or the stroma band.
    x, y, cell, u, a, b = x[k], y[k], cell[k], u[k], a[k], b[k]
    d = 2.0
    fx0, fx1 = sf.sample_points(x - d, y), sf.sample_points(x + d, y)
    fy0, fy1 = sf.sample_points(x, y - d), sf.sample_points(x, y + d)
    in_caps = reg["capsule"][k]
    key = np.where(in_caps, 0, 1)
    gx = np.where(key == 0, fx1["tissue"] - fx0["tissue"], fx1["band"] - fx0["band"])
    gy = np.where(key == 0, fy1["tissue"] - fy0["tissue"], fy1["band"] - fy0["band"])
    jitter = (u[:, 7] - 0.5) * 0.4
    rot = _unit2(np.stack([-gy + jitter * gx, gx + jitter * gy], axis=1))
    zero = np.zeros(len(k))
    return _build(
        cell, x, y, a, b, rot, (zero + 1, zero), zero, _unit2(np.stack([u[:, 5] - 0.5, u[:, 6] - 0.5], 1)),
        0.05 * u[:, 5], _lerp(u[:, 6], SPINDLE_INK), zero, zero, np.zeros((len(k), 2)), zero,
        np.full(len(k), 8), np.full(len(k), SPINDLE),
    )  # fmt: skip


def _glands(sf, an, cells, rngs):
    """Epithelial rings around the lumens of glands centred in each cell."""
    g = sf.glands
    if len(g) == 0 or not cells:
        return _none()
    gkey = np.floor(g[:, 0] / CELL_UM).astype(np.int64) * 1_000_003 + np.floor(
        g[:, 1] / CELL_UM
    ).astype(np.int64)
    ckey = np.array([cx * 1_000_003 + cy for cx, cy in cells], np.int64)
    order = np.argsort(ckey, kind="stable")
    pos = np.searchsorted(ckey[order], gkey).clip(0, len(ckey) - 1)
    hit = ckey[order][pos] == gkey
    gi = np.flatnonzero(hit)
    if len(gi) == 0:
        return _none()
    gcell = order[pos[gi]]
    srt = np.argsort(gcell, kind="stable")
    gi, gcell = gi[srt], gcell[srt]
    x, y, a, b, c, s = (g[gi, k].astype(np.float64) for k in range(6))
    big_a, big_b = a + 5.5, b + 5.5
    n = np.maximum(6, np.rint(2 * np.pi * np.sqrt((big_a**2 + big_b**2) / 2) / 7.5)).astype(
        np.int64
    )
    # Per-cell draws, in gland order, after the cell's fixed draws.
    offs, us, ns = [], [], []
    bounds = np.flatnonzero(np.diff(np.concatenate([[-1], gcell, [len(cells)]])))
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        rng = rngs[gcell[b0]]
        m = int(n[b0:b1].sum())
        offs.append(rng.random(b1 - b0))
        us.append(rng.random((m, 8)))
        ns.append(rng.standard_normal((m, 4)))
    off = np.concatenate(offs)
    u, nrm = np.concatenate(us), np.concatenate(ns)
    rep = np.repeat(np.arange(len(gi)), n)
    k = np.arange(len(rep)) - np.repeat(np.cumsum(n) - n, n)
    phi = 2 * np.pi * (k + off[rep]) / n[rep]
    cphi, sphi = np.cos(phi), np.sin(phi)
    ba, bb, c, s = big_a[rep], big_b[rep], c[rep], s[rep]
    lx, ly = ba * cphi, bb * sphi
    nx_, ny_ = cphi / ba, sphi / bb
    nn = np.sqrt(nx_ * nx_ + ny_ * ny_)
    nx_, ny_ = nx_ / nn, ny_ / nn
    px, py = x[rep] + lx * c - ly * s, y[rep] + lx * s + ly * c
    rc, rs = nx_ * c - ny_ * s, nx_ * s + ny_ * c
    rows_a = np.stack([px, py, rc, rs, k % 2], axis=1)
    cell = gcell[rep]
    keep = u[:, 0] < 0.93
    ves = u[:, 3] < an.vesicular_frac
    a = 5.0 + 2.0 * u[:, 1]
    b = 2.8 + 0.8 * u[:, 2]
    ink = np.where(ves, _lerp(u[:, 4], VESIC_INK), _lerp(u[:, 4], HYPER_INK))
    inner = np.where(ves, _lerp(u[:, 5], VESIC_INNER), 0.0)
    nucl = np.where(ves & (u[:, 6] < 0.6), 1.4, 0.0)
    off = np.zeros((len(u), 2))
    k = np.flatnonzero(keep)
    return _build(
        cell[k], rows_a[k, 0], rows_a[k, 1], a[k], b[k], (rows_a[k, 2], rows_a[k, 3]),
        _unit2(nrm[k, 0:2]), 0.02 + 0.06 * u[k, 7], _unit2(nrm[k, 2:4]), 0.03 * u[k, 7],
        ink[k], inner[k], nucl[k], off[k], np.full(len(k), 0.8), 9 + rows_a[k, 4].astype(np.int64),
        np.full(len(k), GLAND),
    )  # fmt: skip


# -- drawing -------------------------------------------------------------------------------


def _fill_grouped(
    canvas: np.ndarray, pts: np.ndarray, group: np.ndarray, value: np.ndarray
) -> None:
    """fillPoly per (group, value): one call per distinct pair, so no overlaps within a call."""
    if len(pts) == 0:
        return
    key = group.astype(np.int32) * 256 + value.astype(np.int32)
    order = np.argsort(key, kind="stable")
    key = key[order]
    cuts = np.flatnonzero(np.diff(key)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(key)]])
    for s0, s1 in zip(starts, ends):
        sel = order[s0:s1]
        cv2.fillPoly(canvas, pts[sel], int(key[s0] % 256), cv2.LINE_AA, SHIFT)


def _to_px(verts: np.ndarray, x0: float, y0: float, s: float) -> np.ndarray:
    """Slide um -> cv2 fixed-point px (pixel j's centre at x0 + (j + 0.5) * s)."""
    k = (1 << SHIFT) / s
    out = np.empty(verts.shape, np.int32)
    out[..., 0] = np.rint((verts[..., 0] - x0) * k - 0.5 * (1 << SHIFT))
    out[..., 1] = np.rint((verts[..., 1] - y0) * k - 0.5 * (1 << SHIFT))
    return out


INK_LEVELS = LUT_SCALE  # canvas units per unit concentration (the stain LUT's units)
INK_STEP = 4  # quantisation of ink values (canvas units) to bound the number of fill calls


def draw(
    nuc: Nuclei, x0: float, y0: float, s: float, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Draw nuclei on a (h, w) grid whose top-left corner is (x0, y0) um at s um/px.

    Returns (outlined, splat), hematoxylin concentration * INK_LEVELS: outlined (uint8) of
    nuclei drawn as polygons (radius >= SPLAT_BELOW_PX), splat (float32) of the smaller ones,
    already blurred to their size.
    """
    h, w = shape
    canvas = np.zeros((h, w), np.uint8)
    splat = np.zeros((h, w), np.float32)
    if len(nuc) == 0:
        return canvas, splat
    r_px = nuc.r / s
    big = r_px >= SPLAT_BELOW_PX
    if big.any():
        p = nuc.take(np.flatnonzero(big))
        step = 2 if s >= 0.8 else 1
        verts = p.outlines()
        pts = _to_px(verts[:, ::step], x0, y0, s)
        q = lambda v: (np.clip(v * INK_LEVELS, 0, 255) // INK_STEP * INK_STEP).astype(np.int32)  # noqa: E731
        _fill_grouped(canvas, pts, p.group, q(p.ink))
        ves = np.flatnonzero((p.inner > 0) & (p.r * INNER_SCALE / s >= 1.2))
        if len(ves):
            c = p.xy[ves][:, None, :]
            inner = c + (verts[ves] - c) * INNER_SCALE
            _fill_grouped(
                canvas, _to_px(inner[:, ::step], x0, y0, s), p.group[ves], q(p.inner[ves])
            )
        nl = np.flatnonzero((p.nucl > 0) & (p.nucl_r / s >= 0.7))
        if len(nl):
            circ = np.stack([_C1[::2], _S1[::2]], axis=-1)[None] * p.nucl_r[nl][:, None, None]
            dots = p.nucl_xy[nl][:, None, :] + circ
            _fill_grouped(canvas, _to_px(dots, x0, y0, s), np.zeros(len(nl)), q(p.nucl[nl]))
    small = np.flatnonzero(~big)
    if len(small):
        p = nuc.take(small)
        frac = INNER_SCALE**2
        ink = np.where(p.inner > 0, p.ink * (1 - frac) + p.inner * frac, p.ink)
        weight = ink * INK_LEVELS * p.area / (s * s)
        size_class = np.digitize(p.r / s, SPLAT_CLASSES_PX)
        for c in np.unique(size_class):
            sel = size_class == c
            sigma = 0.7 * float(np.sqrt(np.mean(p.area[sel]) / np.pi)) / s
            layer = _splat(p.xy[sel], weight[sel], x0, y0, s, (h, w))
            splat += cv2.GaussianBlur(layer, (0, 0), max(0.5, sigma))
    return canvas, splat


SPLAT_CLASSES_PX = (1.25, 2.0)  # splatted nuclei are blurred per radius class (px)


def _splat(xy: np.ndarray, weight: np.ndarray, x0: float, y0: float, s: float, shape) -> np.ndarray:
    """(h, w) float32: `weight` deposited bilinearly at the points xy (um)."""
    h, w = shape
    u = (xy[:, 0] - x0) / s - 0.5
    v = (xy[:, 1] - y0) / s - 0.5
    i0, j0 = np.floor(u), np.floor(v)
    fu, fv = u - i0, v - j0
    ii = (i0.astype(np.int64)[None, :] + np.array([[0], [1], [0], [1]])).ravel()
    jj = (j0.astype(np.int64)[None, :] + np.array([[0], [0], [1], [1]])).ravel()
    wgt = (np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv]) * weight).ravel()
    ok = (ii >= 0) & (ii < w) & (jj >= 0) & (jj < h)
    out = np.bincount(jj[ok] * w + ii[ok], weights=wgt[ok], minlength=h * w)
    return out.reshape(h, w).astype(np.float32)


def _mean_area(r: tuple[float, float], aspect: tuple[float, float]) -> float:
    """Mean pi * r^2 over r uniform in r (the aspect only redistributes the area)."""
    lo, hi = r
    return float(np.pi * (hi**3 - lo**3) / (3 * (hi - lo)))


def expected_ink(reg: dict[str, np.ndarray], an: Anatomy) -> np.ndarray:
    """Mean nuclear hematoxylin per unit area (concentration) for coarse-scale rendering."""
    frac = INNER_SCALE**2
    mid = lambda rng: 0.5 * (rng[0] + rng[1])  # noqa: E731
    lp = (CELL_UM / LYMPH_N) ** 2
    tp = (CELL_UM / TUMOUR_N) ** 2
    lym = _mean_area(LYMPH_R, LYMPH_ASPECT) * mid(LYMPH_INK) / lp
    cb = _mean_area(CB_R, CB_ASPECT) * (mid(CB_INK) * (1 - frac) + mid(CB_INNER) * frac) / lp
    hi = (
        _mean_area(HISTIO_R, HISTIO_ASPECT)
        * (mid(HISTIO_INK) * (1 - frac) + mid(HISTIO_INNER) * frac)
        / lp
    )
    tr = (an.tumour_r_um * TUMOUR_RF[0], an.tumour_r_um * TUMOUR_RF[1])
    ves = mid(VESIC_INK) * (1 - frac) + mid(VESIC_INNER) * frac
    tum_ink = an.vesicular_frac * ves + (1 - an.vesicular_frac) * mid(HYPER_INK)
    tum = 0.88 * _mean_area(tr, TUMOUR_ASPECT) * tum_ink / tp
    spin = (
        0.25 * np.pi * mid(SPINDLE_A) * mid(SPINDLE_B) * mid(SPINDLE_INK) / (CELL_UM**2 / SCATTER_N)
    )
    d = an.lymph_density
    out = np.zeros(reg["tissue"].shape, np.float32)
    out[reg["lymphoid"]] = 0.95 * d * lym
    out[reg["mantle"]] = 0.98 * d * lym
    out[reg["gc"]] = 0.62 * d * 0.5 * (cb + lym)
    out[reg["subcap"] | reg["sinus"]] = 0.3 * d * (0.45 * hi + 0.55 * lym)
    out[reg["tumour"]] = tum
    out[reg["stroma"]] = 2.4 * spin
    out[reg["capsule"]] = 3.4 * spin
    return out
