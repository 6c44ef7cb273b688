"""Output post-processing: one tile's raw output tensor -> class probabilities.

`OutputDecoder(manifest.output, manifest.quantization.output)` turns what the interpreter
returned (batch dimension removed) into:
- `positive(raw)`: the positive map (sum of the positive classes' probabilities, ARM's rule),
  float32 HxW for heatmaps and class maps, a scalar for class scores; and, when there is more
  than one positive class, their stack HxWxK (K = len(positives)), so per-class contours and
  run-time toggles need no second pass;
- `scores(raw)`: every class's probability (..., C), for `lucida infer` top-k;
- `class_index(raw)`: the most likely class per position (..., ) int32.

The per-frame paths work on the 8-bit codes: dequantize and sigmoid fused in one 256-entry
table; softmax as exp-table lookups (shift-invariant, so no per-position max) and one matrix
product that sums the positive set and the normalizer together. A class map's positive set is
a table over class indices. Pure NumPy/OpenCV, no interpreter: the engine and other runners
(multi-device) share it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from .quant import dequantize

_EXP_SAFE = 80.0  # |x| below this keeps exp(x) finite in float32 for sums of many classes
_EXP_SAFE64 = 700.0  # the same for float64; wider code ranges take the exact float path
_POOL: ThreadPoolExecutor | None = None  # shared by every decoder: bands of one output in parallel


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="decode")
    return _POOL


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    """Float logits (..., C) -> probabilities (..., C) float32."""
    x = np.asarray(x, np.float32)
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return x


class OutputDecoder:
    """Decodes one bundle's output tensor. spec: manifest OutputSpec; quant: its TensorQuant."""

    def __init__(self, spec, quant, threads: int = 1):
        self.threads = max(1, int(threads))  # workers for large softmax outputs (the engine's)
        self.kind, self.activation = spec.kind, spec.activation
        self.channels = spec.channels
        self.positives = tuple(spec.positives)
        self.dtype = quant.dtype
        self.eight_bit = quant.dtype in ("uint8", "int8") and spec.kind != "class_map"
        self.q = (quant.scale, quant.zero_point) if self.eight_bit else None
        self._lut = self._exp = None
        if self.eight_bit and self.activation != "softmax":
            codes = np.arange(256, dtype=np.uint8).view(
                np.int8 if self.dtype == "int8" else np.uint8
            )
            self._lut = _activate(dequantize(codes, *self.q), self.activation)
        elif self.eight_bit and self.q[0] * 255 < _EXP_SAFE64:
            # softmax: exp over monotone uint8 indices (int8 codes xor 0x80), shifted by the
            # global bound (code 255) instead of a per-position max: finite while s*255 is small
            scale = self.q[0]
            dt = np.float32 if scale * 255 < _EXP_SAFE else np.float64
            self._exp = np.exp(scale * (np.arange(256) - 255.0)).astype(dt)
            pos = set(self.positives)
            self._neg = tuple(c for c in range(self.channels) if c not in pos)
            self._ones = np.ones((self.channels, 1), dt)
        if spec.kind == "class_map":  # tables over class index; the last row: out of range
            onehot = np.zeros((self.channels + 1, len(self.positives)), np.float32)
            onehot[list(self.positives), np.arange(len(self.positives))] = 1.0
            self._onehot = onehot
            self._pos_table = onehot.sum(axis=1)

    # -- the per-frame path ----------------------------------------------------------------------
    def positive(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw output of one tile -> (positive map float32, per-positive-class stack or None)."""
        if self.kind == "class_map":
            return self._positive_map(raw)
        if self._exp is not None:
            return self._positive_softmax(raw)
        k = self.positives
        if self._lut is not None:
            codes = raw.view(np.uint8)
            if len(k) == 1:
                return self._lut[codes[..., k[0]]], None
            stack = self._lut[codes[..., list(k)]]
        else:
            stack = self.scores(raw)[..., list(k)]
            if len(k) == 1:
                return np.ascontiguousarray(stack[..., 0]), None
        return np.minimum(stack.sum(axis=-1), 1.0, dtype=np.float32), stack

    def _positive_softmax(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """exp table on the codes (OpenCV), one row-sum for the normalizer (BLAS), then only the
        positive columns (or the fewer negative ones); in bands of rows whose float block stays
        in cache (~1 MB): the work is memory-bound, and this keeps it out of DRAM."""
        codes = raw.view(np.uint8)
        if self.dtype == "int8":
            codes = codes ^ np.uint8(0x80)
        if codes.ndim < 3:  # class scores: one vector
            probs, stack = self._softmax_rows(codes.reshape(1, -1))
            shape = codes.shape[:-1]
            return probs.reshape(shape), None if stack is None else stack.reshape(*shape, -1)
        h, w, c = codes.shape
        k = len(self.positives)
        probs = np.empty((h, w), np.float32)
        stack = np.empty((h, w, k), np.float32) if k > 1 else None
        band = max(1, (1 << 18) // max(1, w * c))

        def rows(y0: int, y1: int) -> None:  # cv2.LUT, BLAS and NumPy release the GIL
            for y in range(y0, y1, band):
                p, st = self._softmax_rows(codes[y : min(y1, y + band)].reshape(-1, w * c))
                probs[y : min(y1, y + band)] = p.reshape(-1, w)
                if stack is not None:
                    stack[y : min(y1, y + band)] = st.reshape(-1, w, k)

        workers = min(self.threads, -(-h // band))
        if workers <= 1:
            rows(0, h)
        else:  # one contiguous share of bands per worker
            step = -(-h // workers)
            jobs = [_pool().submit(rows, y, min(h, y + step)) for y in range(0, h, step)]
            for job in jobs:
                job.result()
        return probs, stack

    def _softmax_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """rows: r x (n * C) uint8 codes -> (positive sum (r*n,), per-positive (r*n, K) or None)."""
        c = self.channels
        e = cv2.LUT(np.ascontiguousarray(rows), self._exp).reshape(-1, c)
        norm = (e @ self._ones)[:, 0]  # BLAS matrix-vector: the fastest row sum measured
        k = self.positives
        if len(k) == 1:
            return (e[:, k[0]] / norm).astype(np.float32, copy=False), None
        stack = e[:, list(k)] / norm[:, None]
        if len(k) <= len(self._neg) + 1:
            probs = stack.sum(axis=1)
        else:
            probs = 1.0 - sum(e[:, j] for j in self._neg) / norm
        return probs.astype(np.float32, copy=False), stack.astype(np.float32, copy=False)

    def _positive_map(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One gather per output: indices >= C clip onto the table's "no class" row (an ArgMax
        never gives negative indices; _indices handles them where exactness matters)."""
        idx = raw[..., 0] if raw.ndim == 3 else raw
        probs = np.take(self._pos_table, idx, mode="clip")
        if len(self.positives) == 1:
            return probs, None
        return probs, np.take(self._onehot, idx, axis=0, mode="clip")

    # -- whole-class views (lucida infer, class-map PNGs) -----------------------------------------
    def _indices(self, raw: np.ndarray) -> np.ndarray:
        """A class map's indices (h x w), out-of-range values mapped to `channels`."""
        idx = raw[..., 0] if raw.ndim == 3 else raw
        idx = idx.astype(np.int64, copy=False)
        return np.where((idx < 0) | (idx >= self.channels), self.channels, idx)

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """Every class's probability (..., C) float32 (one-hot for a class map)."""
        if self.kind == "class_map":
            idx = self._indices(raw)
            return (idx[..., None] == np.arange(self.channels)).astype(np.float32)
        if self._lut is not None:
            return self._lut[raw.view(np.uint8)]
        x = dequantize(raw, *self.q) if self.q else raw.astype(np.float32)
        return _activate(x, self.activation)

    def class_index(self, raw: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Most likely class per position (..., ) int32. `channels` stands for no class: a class
        map's out-of-range indices, and a one-channel output below `threshold`."""
        if self.kind == "class_map":
            return self._indices(raw).astype(np.int32)
        if self.channels == 1:
            return np.where(self.scores(raw)[..., 0] >= threshold, 0, 1).astype(np.int32)
        if self.eight_bit:  # dequantize and the activations are monotone: argmax of the codes
            return np.argmax(raw, axis=-1).astype(np.int32)
        return np.argmax(self.scores(raw), axis=-1).astype(np.int32)

    def golden_values(self, raw: np.ndarray) -> np.ndarray:
        """What a golden output records, float32: every class's score for class scores, the
        class index per cell for class maps, the positive map for heatmaps."""
        if self.kind == "class_scores":
            return self.scores(raw).astype(np.float32)
        if self.kind == "class_map":
            return self.class_index(raw).astype(np.float32)
        return self.positive(raw)[0].astype(np.float32)

    def quanta_error(self, raw: np.ndarray, n: int = 3) -> float:
        """Largest change of the golden values when output codes move by up to n quanta (up for
        the positive classes and the top class, down for the rest, and the other way round):
        the tolerance that output quantization alone justifies, in probability units."""
        if not self.eight_bit:
            return 0.0
        info = np.iinfo(np.dtype(self.dtype))
        base = self.golden_values(raw)
        top = np.zeros(raw.shape[-1], bool)
        top[int(np.argmax(raw.reshape(-1, raw.shape[-1]).max(axis=0)))] = True
        pos = np.zeros(raw.shape[-1], bool)
        pos[list(self.positives)] = True
        worst = 0.0
        for up in (pos, top):
            for sign in (1, -1):
                shift = np.where(up, sign * n, -sign * n)
                moved = np.clip(raw.astype(np.int32) + shift, info.min, info.max).astype(raw.dtype)
                worst = max(worst, float(np.max(np.abs(self.golden_values(moved) - base))))
        return worst
