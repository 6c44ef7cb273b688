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
table; softmax as exp-table lookups (shift-invariant, so no per-position max), a BLAS
matrix-vector product for the normalizer and divides straight into the output, in bands of rows
that reuse per-thread scratch blocks (no allocation, hence no page faults, per band: that is what
lets two threads share the bands) and that the caller and the pool take from one counter.
Where the install compiled `softmax_kernel.c`, each band is one call to it instead (lookups, sums
and divides in one pass, about 1.9x less CPU); the NumPy path is the fallback. A class map's
positive set is a table over class indices. No interpreter here: the engine and other runners
(multi-device) share it. `raw` may be the interpreter's own output
buffer: nothing keeps a reference to it after a call returns.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from .quant import dequantize

# codes per band: OpenCV's LUT and OpenBLAS's gemm go multi-threaded
# from 2**18 on; below it each call stays on the thread that makes it (the bands are ours to
# share), and the float block (<= 1 MB float32) stays in the core's L2 cache
_BAND = 1 << 18
_EXP_SAFE = 80.0  # |x| below this keeps exp(x) finite in float32 for sums of many classes
_EXP_SAFE64 = 700.0  # the same for float64; wider code ranges take the exact float path
_POOL: ThreadPoolExecutor | None = None  # shared by every decoder: bands of one output in parallel


_KERNEL_OFF = "LUCIDA_NATIVE_DECODE"  # "0": always the NumPy path (A/B benches, ruling it out)


def _load_kernel():
    """The compiled softmax kernel (runtime/softmax_kernel.c, built by the install where a C
    compiler exists), or None: then the NumPy path decodes, to the same float32 rounding."""
    if os.environ.get(_KERNEL_OFF) == "0":
        return None
    try:  # NumPy finds the file by the interpreter's extension suffix
        fn = np.ctypeslib.load_library("_softmax_kernel", __file__).softmax_positive
    except (OSError, AttributeError):
        return None
    p, i32 = ctypes.c_void_p, ctypes.c_int32
    fn.argtypes = [p, ctypes.c_int64, i32, p, p, i32, p, p]
    fn.restype = None
    return fn


_KERNEL = _load_kernel()


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
        self._lut = self._exp = self._kernel = None
        if self.eight_bit and self.activation != "softmax":
            codes = np.arange(256, dtype=np.uint8).view(
                np.int8 if self.dtype == "int8" else np.uint8
            )
            self._lut = _activate(dequantize(codes, *self.q), self.activation)
        elif self.eight_bit and self.q[0] * 255 < _EXP_SAFE64:
            # softmax is shift-invariant: exp(s * (q - qmax)) with the type's largest code as a
            # global shift instead of a per-position max; finite while s * 255 is small. The
            # table is indexed by the code's bit pattern (uint8 view), so int8 needs no xor.
            scale = self.q[0]
            dt = np.float32 if scale * 255 < _EXP_SAFE else np.float64
            vals = np.arange(256, dtype=np.uint8).view(np.dtype(self.dtype)).astype(np.float64)
            self._exp = np.exp(scale * (vals - vals.max())).astype(dt)
            self._scratch = threading.local()
            self._ones = np.ones((self.channels, 1), dt)  # row sums as matrix-vector products
            # or two positions per row of a (n/2, 2C) view times this (2C, 2) block of ones
            self._pair = np.kron(np.eye(2, dtype=dt), self._ones)
            self._ones_k = np.ones((len(self.positives), 1), np.float32)
            # the compiled kernel takes the float32 table (every scale with s * 255 < 80)
            self._kernel = _KERNEL if dt is np.float32 else None
            self._pos32 = np.asarray(self.positives, np.int32)
        if spec.kind == "class_map":  # tables over class index; the last row: out of range
            onehot = np.zeros((self.channels + 1, len(self.positives)), np.float32)
            onehot[list(self.positives), np.arange(len(self.positives))] = 1.0
            self._onehot = onehot
            self._pos_table = onehot.sum(axis=1)

    @property
    def compiled(self) -> bool:
        """True when this softmax output decodes in the compiled kernel (softmax_kernel.c)."""
        return self._kernel is not None

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
        """Softmax over the codes, reduced to the positive set band by band: one exp-table
        lookup per code (cv2.LUT, into a per-thread scratch block), one matrix product for the
        normalizer and the positive sums, one divide into the output. No C-channel float stack
        is ever made for the whole output; bands are shared by the caller and the pool."""
        codes = raw.view(np.uint8)  # int8 codes index the table by their bit pattern
        if codes.ndim < 3:  # class scores: one vector
            shape = codes.shape[:-1]
            probs, stack = self._softmax_out(1, int(np.prod(shape, dtype=np.int64)))
            self._softmax_band(np.ascontiguousarray(codes.reshape(1, -1)), probs, stack)
            return probs.reshape(shape), None if stack is None else stack.reshape(*shape, -1)
        h, w, c = codes.shape
        codes = np.ascontiguousarray(codes).reshape(h, w * c)
        probs, stack = self._softmax_out(h, w)
        band = max(1, (_BAND - 1) // (w * c))
        # what the bands work on, emptied before returning: a helper called off before it
        # started stays queued in the pool for a while, and must not keep the output alive
        # (the engine passes the interpreter's own buffer, which blocks the next invoke)
        work = {"codes": codes, "probs": probs, "stack": stack, "starts": iter(range(0, h, band))}
        lock = threading.Lock()

        def bands() -> None:  # takes bands until none is left; cv2.LUT, BLAS, NumPy drop the GIL
            while True:
                with lock:
                    y = next(work["starts"], None) if work else None
                    if y is None:
                        return
                    cod, out, st = work["codes"], work["probs"], work["stack"]
                ye = min(h, y + band)
                self._softmax_band(
                    cod[y:ye],
                    out[y:ye].reshape(-1),
                    None if st is None else st[y:ye].reshape(-1, st.shape[-1]),
                )

        # the caller works too, and helpers that a loaded machine has not started yet when it
        # runs out of bands are called off instead of waited for
        helpers = [_pool().submit(bands) for _ in range(min(self.threads, -(-h // band)) - 1)]
        try:
            bands()
            for job in helpers:
                if not job.cancel():
                    job.result()
        finally:
            with lock:
                work.clear()
        return probs, stack

    def _softmax_out(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        k = len(self.positives)
        stack = np.empty((h, w, k), np.float32) if k > 1 else None
        return np.empty((h, w), np.float32), stack

    def _softmax_band(self, codes: np.ndarray, probs: np.ndarray, stack: np.ndarray | None):
        """codes: r x (n * C) uint8, contiguous -> probs (r*n,) float32 and, for K > 1 positive
        classes, stack (r*n, K) float32, written in place."""
        c = self.channels
        n = codes.size // c
        if self._kernel is not None:  # lookups, sums and divides in one pass, GIL released
            arrays = (codes, probs) if stack is None else (codes, probs, stack)
            if not all(a.flags.c_contiguous for a in arrays):  # the kernel walks raw memory
                raise ValueError("softmax kernel: bands must be C-contiguous")
            self._kernel(
                codes.ctypes.data,
                n,
                c,
                self._exp.ctypes.data,
                self._pos32.ctypes.data,
                len(self._pos32),
                probs.ctypes.data,
                None if stack is None else stack.ctypes.data,
            )
            return
        scratch = self._scratch.__dict__
        if scratch.get("size", 0) < n:  # one block per thread, reused: no page faults per call
            scratch["size"] = n
            scratch["e"] = np.empty(n * c, self._exp.dtype)
            scratch["norm"] = np.empty((n, 1), self._exp.dtype)
            scratch["pos"] = None
        e = cv2.LUT(codes, self._exp, dst=scratch["e"][: n * c].reshape(codes.shape))
        e = e.reshape(n, c)
        norm = scratch["norm"][:n]  # the row sums (normalizers), n x 1
        if n % 2:
            np.matmul(e, self._ones, out=norm)
        else:  # an sgemm with two columns beats the matrix-vector product (measured), in calls
            e2, n2 = e.reshape(n // 2, 2 * c), norm.reshape(n // 2, 2)  # small enough for
            step = max(1, (_BAND - 1) // (4 * c))  # OpenBLAS to keep each on this thread
            for i in range(0, n // 2, step):
                np.matmul(e2[i : i + step], self._pair, out=n2[i : i + step])
        if stack is None:  # one positive class: its column over the normalizer
            np.divide(e[:, self.positives[0]], norm[:, 0], out=probs)
            return
        if len(self.positives) <= 4:  # column by column (measured: faster than a gather)
            for j, k in enumerate(self.positives):
                np.divide(e[:, k], norm[:, 0], out=stack[:, j])
        else:  # many: one gather into scratch, one broadcast divide
            if scratch.get("pos") is None or scratch["pos"].shape[0] < n:
                scratch["pos"] = np.empty((scratch["size"], len(self.positives)), e.dtype)
            np.divide(np.take(e, self.positives, axis=1, out=scratch["pos"][:n]), norm, out=stack)
        np.matmul(stack, self._ones_k, out=probs[:, None])  # the positive set's sum
        np.minimum(probs, 1.0, out=probs)  # float32 rounding of a sum of many classes

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
