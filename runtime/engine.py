"""The inference engine: a bundle's model on an interpreter, run over whole camera frames.

`Engine(bundle).infer(rgb)` resamples the frame to the model's pixel size, covers it with tiles,
runs each (normalization and quantization fused in a lookup table), decodes the outputs of any
kind (heatmap, class scores, class map: runtime.outputs) into the positive map and, for several
positive classes, their stack, and stitches one Heatmap with its affine back to frame px. The
interpreter is built once.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from lucida.models import Bundle

from .backends import Backend, select_backend
from .edgetpu import DelegateError, load_edgetpu_delegate
from .frame import Heatmap
from .outputs import OutputDecoder
from .quant import input_lut, is_identity, saturated_fraction
from .tiling import TilePlan, plan_tiles, stitch_into

log = logging.getLogger(__name__)
TFLITE_MAGIC = b"TFL3"
# Interpreter kernels: "default" (LiteRT: XNNPACK), "builtin" (optimized builtin kernels, no
# XNNPACK), "reference" (the reference kernels, as older tflite-runtime builds round).
KERNELS = {
    "default": None,
    "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
    "reference": "BUILTIN_REF",
}
SATURATED_FRACTION = 0.5  # more input codes than this at the range's ends: a broken normalization


@functools.cache
def _memmove_keeping_gil():
    """memmove called through ctypes' PYFUNCTYPE, which keeps the GIL: numpy's copy, like any
    CFUNCTYPE call, lets it go and must then win it back from the capture and render threads
    (that wait, not the copy, cost the inference thread about 0.1 ms a tile). Made on first use."""
    import ctypes

    kind = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    return kind(ctypes.cast(ctypes.memmove, ctypes.c_void_p).value)


class EngineError(ValueError):
    """A model that cannot be run as its bundle describes it."""


class HealthCheckError(EngineError):
    """The model's output on its golden input is not the golden output."""


@dataclass(frozen=True)
class ModelInput:
    """A frame resampled to the model's pixel size and padded so whole tiles fit.

    image: model px, RGB uint8; size: (w, h) before padding; frame_size: (w, h) of the frame;
    tensors: each tile's input tensor in plan order, when made ahead (Engine.input_tensors).
    """

    image: np.ndarray
    size: tuple
    frame_size: tuple
    tensors: tuple | None = None


@dataclass
class EngineInfo:
    """What is actually running, for logs, /status and reports."""

    bundle: str
    model_file: str
    model_sha256: str
    backend: str
    backend_version: str
    delegate: str = "cpu"  # "cpu" or "edgetpu:<device>"
    delegate_library: str = ""
    fallback_reason: str = ""
    num_threads: int = 1
    extra: dict = field(default_factory=dict)


def _check_tflite_file(path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise EngineError(f"{path}: cannot read model ({exc.strerror})") from None
    if len(head) < 8 or head[4:8] != TFLITE_MAGIC:
        raise EngineError(f"{path}: not a TFLite model (no 'TFL3' identifier)")


class Engine:
    """Runs one bundle. device: "auto" (Edge TPU if the bundle has one and it loads, else CPU),
    "cpu", or an Edge TPU spec ("usb:0", "pci:0", "edgetpu" for any)."""

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        backend: str | Backend | None = None,
        num_threads: int | None = None,
        kernels: str = "default",
    ):
        if kernels not in KERNELS:
            raise EngineError(f"kernels {kernels!r}: expected one of {', '.join(KERNELS)}")
        self.kernels = kernels
        self.bundle = bundle
        self.manifest = m = bundle.manifest
        self.backend = backend if isinstance(backend, Backend) else select_backend(backend)
        self.num_threads = num_threads or os.cpu_count() or 1
        self.interpreter, self.info = self._open(device)
        try:
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"bundle {bundle.name}: model does not allocate: {exc}") from None
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self._out_view = self.interpreter.tensor(self._out["index"])  # () -> a view, in place
        self._check_against_manifest()
        q = m.quantization.input
        lut = input_lut(m.normalization.mean, m.normalization.std, q.scale, q.zero_point, q.dtype)
        self._lut = None if is_identity(lut) else lut
        if self._lut is not None and q.dtype != "float32":
            self._lut_cv = lut.view(np.uint8).reshape(256, 1, 3)  # cv2.LUT wants 8-bit tables
        self._bgr = m.input.color_order == "BGR"
        self.decoder = OutputDecoder(m.output, m.quantization.output, threads=self.num_threads)
        self._small_logged = False
        self._plans: dict[tuple, TilePlan] = {}
        self._affines: dict[tuple, np.ndarray] = {}
        self.invoke_ns: deque[int] = deque(
            maxlen=4096
        )  # recent invoke() times: the model's own cost
        self.invoke_cpu_ns = 0  # CPU time (thread clock) spent inside invoke(), cumulative

    # -- loading ---------------------------------------------------------------------------------
    def _interpreter(self, model_path, delegates=None):
        _check_tflite_file(model_path)
        kwargs = {}
        if KERNELS[self.kernels] is not None:
            import sys

            module = sys.modules[self.backend.Interpreter.__module__]
            kind = getattr(getattr(module, "OpResolverType", None), KERNELS[self.kernels], None)
            if kind is None:
                raise EngineError(
                    f"backend {self.backend.name} {self.backend.version} cannot choose kernels "
                    f"({self.kernels!r} asked for)"
                )
            kwargs["experimental_op_resolver_type"] = kind
        try:
            return self.backend.Interpreter(
                model_path=str(model_path),
                experimental_delegates=delegates or None,
                num_threads=self.num_threads,
                **kwargs,
            )
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"{model_path}: not a loadable TFLite model: {exc}") from None

    def _open(self, device: str):
        b = self.bundle
        info = dict(
            bundle=b.name,
            backend=self.backend.name,
            backend_version=self.backend.version,
            num_threads=self.num_threads,
        )
        want_tpu = device != "cpu" and (b.has_edgetpu or device != "auto")
        fallback = ""
        if want_tpu and not b.has_edgetpu:
            fallback = f"bundle {b.name} has no edgetpu.tflite"
        elif want_tpu:
            spec = None if device in ("auto", "edgetpu") else device
            try:
                delegate = load_edgetpu_delegate(self.backend, spec)
            except DelegateError as exc:
                fallback = str(exc)
            else:
                from .edgetpu import library_path

                path = b.file("edgetpu.tflite")
                interp = self._interpreter(path, [delegate])
                return interp, EngineInfo(
                    model_file="edgetpu.tflite",
                    model_sha256=b.sha256("edgetpu.tflite"),
                    delegate=f"edgetpu:{spec or 'auto'}",
                    delegate_library=library_path(),
                    **info,
                )
        if fallback:
            log.warning("running %s on the CPU (cpu.tflite): %s", b.name, fallback)
        interp = self._interpreter(b.file("cpu.tflite"))
        return interp, EngineInfo(
            model_file="cpu.tflite",
            model_sha256=b.sha256("cpu.tflite"),
            fallback_reason=fallback,
            **info,
        )

    def _check_against_manifest(self) -> None:
        m, name = self.manifest, self.bundle.name
        shape = tuple(int(s) for s in self._in["shape"])
        want = (1, m.input.height, m.input.width, m.input.channels)
        if shape != want:
            raise EngineError(f"bundle {name}: model input shape {shape}, manifest says {want}")
        dt = np.dtype(self._in["dtype"]).name
        if dt != m.quantization.input.dtype:
            raise EngineError(
                f"bundle {name}: model input dtype {dt}, manifest says {m.quantization.input.dtype}"
            )
        for which, det, spec in (
            ("input", self._in, m.quantization.input),
            ("output", self._out, m.quantization.output),
        ):
            if spec.dtype == "float32":
                continue
            scale, zp = det["quantization"]
            if not np.isclose(scale, spec.scale, rtol=1e-5) or int(zp) != spec.zero_point:
                raise EngineError(
                    f"bundle {name}: model {which} quantization (scale {scale:g}, zero point {zp}), "
                    f"manifest says (scale {spec.scale:g}, zero point {spec.zero_point})"
                )
        out_shape = tuple(int(s) for s in self._out["shape"])
        odt = np.dtype(self._out["dtype"]).name
        if odt != m.quantization.output.dtype:
            raise EngineError(
                f"bundle {name}: model output dtype {odt}, manifest says {m.quantization.output.dtype}"
            )
        kind, c = m.output.kind, m.output.channels
        if kind == "heatmap":
            ok = len(out_shape) == 4 and out_shape[-1] == c
        elif kind == "class_map":
            ok = len(out_shape) == 3 or (len(out_shape) == 4 and out_shape[-1] == 1)
            ok = ok and odt.startswith(("int", "uint"))
        else:
            ok = len(out_shape) == 2 and out_shape[-1] == c
        if ok and kind != "class_scores":
            ok = m.input.width % out_shape[2] == 0 and (
                m.input.width // out_shape[2] == m.input.height // out_shape[1]
            )
        if not ok:
            raise EngineError(
                f"bundle {name}: model output shape {out_shape} ({odt}) does not fit manifest "
                f"output {kind} with {c} class(es)"
            )
        self.cell = m.input.width // out_shape[2] if kind != "class_scores" else m.tiling.stride_x

    # -- running ---------------------------------------------------------------------------------
    def _prepare(self, tile: np.ndarray) -> np.ndarray:
        """RGB uint8 tile -> the model's input tensor (1xHxWx3), normalized and quantized."""
        if self._bgr:
            tile = tile[..., ::-1]
        if self._lut is None:
            x = tile
        elif self._lut.dtype == np.float32:
            x = self._lut[tile, np.arange(3)]
        else:
            x = cv2.LUT(np.ascontiguousarray(tile), self._lut_cv).view(self._lut.dtype)
        return x[None]

    def _feed(self, tile: np.ndarray) -> None:
        """Write one RGB uint8 tile, normalized and quantized, straight into the interpreter's
        input tensor: one pass over the tile (its rows may be a strided view of the frame), no
        temporary; or a tile's ready input tensor (1xHxWxC, from input_tensors), copied in whole
        while holding the GIL. The view of the tensor is dropped before invoke(), as the
        interpreter needs."""
        if tile.ndim == 4:
            dst = self.interpreter.tensor(self._in["index"])()
            if tile.dtype != dst.dtype or tile.shape != dst.shape or not tile.flags.c_contiguous:
                raise EngineError(
                    f"bundle {self.bundle.name}: an input tensor {tile.dtype} {tile.shape} for "
                    f"a model input {dst.dtype} {dst.shape}"
                )
            _memmove_keeping_gil()(dst.ctypes.data, tile.ctypes.data, tile.nbytes)
            del dst
            return
        if self._lut is not None and self._lut.dtype == np.float32:
            self.interpreter.set_tensor(self._in["index"], self._prepare(tile))
            return
        if self._bgr:
            tile = tile[..., ::-1]
        dst = self.interpreter.tensor(self._in["index"])()[0]
        if self._lut is None:
            np.copyto(dst, tile)
        else:
            cv2.LUT(tile, self._lut_cv, dst=dst.view(np.uint8))
        del dst

    def _invoke(self, tile: np.ndarray) -> None:
        it = self.interpreter
        self._feed(tile)
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        it.invoke()
        self.invoke_cpu_ns += time.thread_time_ns() - c0
        self.invoke_ns.append(time.perf_counter_ns() - t0)

    def raw_tile(self, tile: np.ndarray) -> np.ndarray:
        """One model-sized RGB uint8 tile -> the raw output tensor (batch dimension removed)."""
        self._invoke(tile)
        return self.interpreter.get_tensor(self._out["index"])[0]

    def infer_tile_classes(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One tile -> (positive map h x w float32, per-positive-class stack h x w x K or None).

        The output tensor is decoded where the interpreter keeps it (no copy: 5.5 MB for a
        513x513x21 output); the view is gone before the next invoke, which the interpreter
        would otherwise refuse, and no result shares its memory."""
        self._invoke(tile)
        view = self._out_view()[0]
        probs, classes = self.decoder.positive(view)
        if np.may_share_memory(probs, view):
            probs = probs.copy()
        if classes is not None and np.may_share_memory(classes, view):
            classes = classes.copy()
        return probs, classes

    def infer_tile(self, tile: np.ndarray) -> np.ndarray:
        """One model-sized RGB uint8 tile -> positive-class probabilities (h x w cells, float32)."""
        return self.infer_tile_classes(tile)[0]

    def host_cpu_offset_ns(self) -> int:
        """Cumulative ns to add to the calling thread's CPU time to get the engine's host-side CPU
        (outside the model): minus what invoke() took on the caller (devices.py adds its workers)."""
        return -self.invoke_cpu_ns

    def model_size(self, frame_w: int, frame_h: int, um_per_px: float | None) -> tuple[int, int]:
        """Frame size after resampling to the model's pixel size (unchanged when either is unknown)."""
        model_um = self.manifest.input.um_per_px
        if not um_per_px or not model_um or abs(um_per_px - model_um) / model_um < 1e-3:
            return frame_w, frame_h
        f = um_per_px / model_um
        return max(1, round(frame_w * f)), max(1, round(frame_h * f))

    def plan(self, w: int, h: int) -> TilePlan:
        key = (w, h)
        if key not in self._plans:
            m = self.manifest
            self._plans[key] = plan_tiles(
                w, h, m.input.width, m.input.height, m.tiling.stride_x, m.tiling.stride_y, self.cell
            )
        return self._plans[key]

    def resample(self, rgb: np.ndarray, um_per_px: float | None = None, correct=None) -> ModelInput:
        """RGB uint8 frame at `um_per_px` -> the model's pixel size, corrected and padded so its
        tiles fit: `finish(resize(rgb, um_per_px), correct)`."""
        return self.finish(self.resize(rgb, um_per_px), correct)

    def resize(self, rgb: np.ndarray, um_per_px: float | None = None) -> ModelInput:
        """RGB uint8 frame at `um_per_px` -> the model's pixel size, not yet corrected or padded
        (the frame itself when the sizes agree). A patch classifier's frame smaller than its tile
        is scaled up to cover the tile. (The pipeline also measures motion on it: the camera
        frame is then read from memory once.)"""
        fh, fw = rgb.shape[:2]
        mw, mh = self.model_size(fw, fh, um_per_px)
        m = self.manifest
        tw, th = m.input.width, m.input.height
        if m.output.kind == "class_scores" and (mw < tw or mh < th):
            f = max(tw / mw, th / mh)
            mw, mh = max(tw, round(mw * f)), max(th, round(mh * f))
            self._log_small(fw, fh, f"scaled to {mw}x{mh} px to cover one tile")
        elif mw < tw or mh < th:
            self._log_small(fw, fh, "padded with black; the output is cropped back")
        interp = cv2.INTER_AREA if mw * mh < fw * fh else cv2.INTER_LINEAR
        img = rgb if (mw, mh) == (fw, fh) else cv2.resize(rgb, (mw, mh), interpolation=interp)
        return ModelInput(img, (mw, mh), (fw, fh))

    def finish(self, x: ModelInput, correct=None) -> ModelInput:
        """A resized frame (resize) corrected and padded so its tiles fit.

        correct: RGB uint8 -> RGB uint8 (flat-field, colour normalization), applied after
        resampling, before padding: at 10x on a 2 um/px model it touches 4x fewer px.
        Padding is a constant (black) border, cropped off the output again: never a mirror of
        the tissue (a frame smaller than a tile would become a mosaic of itself).
        """
        img = x.image if correct is None else correct(x.image)
        m = self.manifest
        (mw, mh), tw, th = x.size, m.input.width, m.input.height
        if m.output.kind != "class_scores" and (mw, mh) != (tw, th):
            plan = self.plan(mw, mh)
            if (plan.padded_w, plan.padded_h) != (mw, mh):
                img = cv2.copyMakeBorder(
                    img, 0, plan.padded_h - mh, 0, plan.padded_w - mw, cv2.BORDER_CONSTANT, value=0
                )
        return replace(x, image=img)

    def _log_small(self, fw: int, fh: int, what: str) -> None:
        if not self._small_logged:
            self._small_logged = True
            m = self.manifest
            log.info(
                "bundle %s: a %dx%d px frame is smaller than one %dx%d px tile: %s",
                self.bundle.name,
                fw,
                fh,
                m.input.width,
                m.input.height,
                what,
            )

    def input_tensors(self, x: ModelInput) -> ModelInput:
        """x with every tile's input tensor made now (normalized, quantized, contiguous, in plan
        order), so that inference only copies each one in: the pipeline calls this on its
        capture thread, beside the previous frame's inference. Patch classifiers' tiles are cut
        as they run (their frame is padded there)."""
        m = self.manifest
        if m.output.kind == "class_scores":
            return x
        (mw, mh), tw, th = x.size, m.input.width, m.input.height
        corners = [(0, 0)] if (mw, mh) == (tw, th) else self.plan(mw, mh).tiles
        tensors = tuple(
            np.ascontiguousarray(self._prepare(x.image[y0 : y0 + th, x0 : x0 + tw]))
            for x0, y0, *_ in corners
        )
        return replace(x, tensors=tensors)

    def infer_input(self, x: ModelInput) -> Heatmap:
        """Tiles of a resampled frame (or their input tensors, when made ahead) -> stitched
        Heatmap over the original frame."""
        (mw, mh), (fw, fh) = x.size, x.frame_size
        m = self.manifest
        single = len(m.output.positives) == 1
        if (mw, mh) == (m.input.width, m.input.height) and m.output.kind != "class_scores":
            # infer_tile for one positive class: what runtime.devices spreads over its devices
            tile = x.image if x.tensors is None else x.tensors[0]
            probs, classes = (
                (self.infer_tile(tile), None) if single else (self.infer_tile_classes(tile))
            )
        elif m.output.kind == "class_scores":
            probs, classes = self._infer_classes(x.image, mw, mh)
        else:
            probs, classes = self._infer_tiled(x.image, mw, mh, x.tensors)
        affine = self._affines.get((fw, fh, mw, mh))
        if affine is None:
            affine = self._affines[(fw, fh, mw, mh)] = self._affine(fw, fh, mw, mh)
        ids = tuple(m.output.positives) if classes is not None else ()
        return Heatmap(
            probs=probs, affine=affine, frame_size=(fw, fh), classes=classes, class_ids=ids
        )

    def infer(self, rgb: np.ndarray, um_per_px: float | None = None) -> Heatmap:
        """Whole-frame inference: RGB uint8 HxWx3 at `um_per_px` -> Heatmap over the frame."""
        return self.infer_input(self.resample(rgb, um_per_px))

    def infer_labels(self, rgb: np.ndarray, um_per_px: float | None = None):
        """Whole frame -> (most likely class per cell, h x w int32; its 2x3 cell -> frame px affine),
        through the same resampling and tiling as `infer` (for class-map pictures)."""
        x = self.resample(rgb, um_per_px)
        (mw, mh), (fw, fh) = x.size, x.frame_size
        if self.manifest.output.kind == "class_scores":
            idx = self._tile_grid(
                x.image, mw, mh, lambda t: self.decoder.class_index(self.raw_tile(t))
            )
        else:
            idx = self._stitched(
                x.image, mw, mh, lambda t: self.decoder.class_index(self.raw_tile(t))
            )
        return idx, self._affine(fw, fh, mw, mh)

    def infer_patch_scores(self, rgb: np.ndarray, um_per_px: float | None = None):
        """A patch classifier over a whole frame, tile by tile (stride apart, as `infer` runs it)
        -> (every class's probability per tile, rows x cols x C float32; its 2x3 tile -> frame
        px affine, tile centres)."""
        if self.manifest.output.kind != "class_scores":
            raise EngineError(f"bundle {self.bundle.name}: patch scores need a class_scores model")
        x = self.resample(rgb, um_per_px)
        (mw, mh), (fw, fh) = x.size, x.frame_size
        grid = self._tile_grid(x.image, mw, mh, lambda t: self.decoder.scores(self.raw_tile(t)))
        return grid.astype(np.float32, copy=False), self._affine(fw, fh, mw, mh)

    def classify(self, rgb: np.ndarray) -> np.ndarray:
        """A whole image fitted to one tile (resized, as pycoral's classify example) -> every
        class's probability (C,) float32. For class_scores bundles."""
        m = self.manifest
        tile = cv2.resize(rgb, (m.input.width, m.input.height), interpolation=cv2.INTER_AREA)
        return self.decoder.scores(self.raw_tile(tile))

    def _affine(self, fw: int, fh: int, mw: int, mh: int) -> np.ndarray:
        """2x3 map: heatmap cell (centres at integers) -> frame px, for a frame resampled to mw x mh."""
        m = self.manifest
        cell_y = m.tiling.stride_y if m.output.kind == "class_scores" else self.cell
        sx, sy = self.cell * fw / mw, cell_y * fh / mh
        if m.output.kind == "class_scores":  # one score per tile, centred on the tile
            off_x, off_y = (m.input.width / 2) * fw / mw - 0.5, (m.input.height / 2) * fh / mh - 0.5
        else:
            off_x, off_y = 0.5 * sx - 0.5, 0.5 * sy - 0.5
        affine = np.array([[sx, 0.0, off_x], [0.0, sy, off_y]])
        affine.flags.writeable = False  # shared by every heatmap of this frame size
        return affine

    def _stitched(self, img: np.ndarray, w: int, h: int, run, tensors=None) -> np.ndarray:
        """run(tile) -> h x w (x K) per tile, stitched over the padded frame and cropped;
        tensors: the tiles' input tensors, run instead of the tiles of img when given."""
        plan = self.plan(w, h)  # img is already padded to the plan (resample)
        out = None
        for i, (x0, y0, *_rest) in enumerate(plan.tiles):
            if tensors is not None:
                part = run(tensors[i])
            else:
                part = run(img[y0 : y0 + plan.tile_h, x0 : x0 + plan.tile_w])
            if out is None:
                shape = (plan.padded_h // plan.cell, plan.padded_w // plan.cell, *part.shape[2:])
                out = np.empty(shape, part.dtype)
            stitch_into(out, plan, i, part)
        return out[: plan.out_h, : plan.out_w]

    def _infer_tiled(self, img: np.ndarray, w: int, h: int, tensors=None):
        """Tiles of a padded frame (or their input tensors) -> (positive map, per-positive-class
        stack or None)."""
        k = len(self.manifest.output.positives)
        if k == 1:
            return self._stitched(img, w, h, self.infer_tile, tensors), None

        def both(tile):
            probs, classes = self.infer_tile_classes(tile)
            return np.concatenate([probs[..., None], classes], axis=-1)

        out = self._stitched(img, w, h, both, tensors)
        return np.ascontiguousarray(out[..., 0]), np.ascontiguousarray(out[..., 1:])

    def _tile_grid(self, img: np.ndarray, w: int, h: int, run) -> np.ndarray:
        """run(tile) for each patch-classifier tile (stride apart) -> a grid of its results."""
        m = self.manifest
        tw, th, sx, sy = m.input.width, m.input.height, m.tiling.stride_x, m.tiling.stride_y
        pw = tw + max(0, -(-(w - tw) // sx)) * sx
        ph = th + max(0, -(-(h - th) // sy)) * sy
        if (pw, ph) != (w, h):
            img = cv2.copyMakeBorder(img, 0, ph - h, 0, pw - w, cv2.BORDER_CONSTANT, value=0)
        ys, xs = range(0, ph - th + 1, sy), range(0, pw - tw + 1, sx)
        rows = [[run(img[y0 : y0 + th, x0 : x0 + tw]) for x0 in xs] for y0 in ys]
        return np.asarray(rows)

    def _infer_classes(self, img: np.ndarray, w: int, h: int):
        if len(self.manifest.output.positives) == 1:
            return self._tile_grid(img, w, h, self.infer_tile).astype(np.float32), None

        def both(tile):
            probs, classes = self.infer_tile_classes(tile)
            return np.concatenate([np.atleast_1d(probs), classes])

        grid = self._tile_grid(img, w, h, both).astype(np.float32)
        return np.ascontiguousarray(grid[..., 0]), np.ascontiguousarray(grid[..., 1:])

    def close(self) -> None:
        """Release what the engine holds besides its interpreter (devices.MultiEngine: threads)."""

    # -- health ----------------------------------------------------------------------------------
    def input_saturation(self, tile: np.ndarray) -> float:
        """Fraction of this tile's input codes at the quantized input range's ends (0..1)."""
        q = self.manifest.quantization.input
        if q.dtype == "float32":
            return 0.0
        lut = input_lut(
            self.manifest.normalization.mean,
            self.manifest.normalization.std,
            q.scale,
            q.zero_point,
            q.dtype,
        )
        return saturated_fraction(np.asarray(tile, np.uint8), lut)

    def health_check(self, raise_on_fail: bool = True) -> dict:
        """Run the golden input; compare with this model file's golden output.

        Positive maps: max abs error against the manifest's atol (probability units); class maps:
        the fraction of cells whose class changed against max_mismatch. A golden input whose codes
        mostly sit at the input range's ends proves nothing and fails the check.
        """
        pair = self.bundle.golden(self.info.model_file)
        if pair is None:
            return {"ok": True, "skipped": "bundle has no golden I/O"}
        x, want = pair
        g = self.manifest.golden
        sat = self.input_saturation(x)
        raw = self.raw_tile(x)
        got = self.decoder.golden_values(raw)
        if got.shape != want.shape and self.decoder.kind == "class_scores" and want.ndim == 0:
            got = self.decoder.positive(raw)[0]  # a bundle from before goldens held every class
        if sat > SATURATED_FRACTION:
            result = {
                "ok": False,
                "error": f"golden input is saturated ({sat:.0%} of input codes at the range's "
                "ends): the normalization does not fit the model; rebuild the bundle with the "
                "right --normalization or --mean/--std",
            }
        elif got.shape != want.shape:
            result = {"ok": False, "error": f"output shape {got.shape}, golden {want.shape}"}
        elif g.max_mismatch is not None:
            changed = float(np.mean(got != want)) if got.size else 0.0
            result = {
                "ok": changed <= g.max_mismatch,
                "mismatch": changed,
                "max_mismatch": g.max_mismatch,
            }
        else:
            err = float(np.max(np.abs(got - want))) if got.size else 0.0
            result = {"ok": err <= g.atol, "max_abs_error": err, "atol": g.atol}
        result["model_file"] = self.info.model_file
        if raise_on_fail and not result["ok"]:
            raise HealthCheckError(f"bundle {self.bundle.name}: golden check failed: {result}")
        return result
