"""Post-training full-integer quantization with the TFLite converter (host side, needs TensorFlow).

`load_float_model(path)` wraps a Keras file (.keras/.h5) or a SavedModel folder as a `FloatModel`
with a batch-1, static-shape concrete function (Keras 3 / TF 2.16+ convert reliably only that
way). `convert_int8(model, samples)` -> TFLite flatbuffer bytes: TFLITE_BUILTINS_INT8 only, uint8
(or int8) input and output, per-channel weights, batch 1. The converter can silently keep an op in
float even then; the result is read back and any float op left is an error naming the op.

The representative dataset is the calibration images after exactly the bundle's preprocessing
(`representative.normalize`: raw RGB pixels as float32 unless the manifest has a mean/std).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)


class QuantizeError(ValueError):
    """The model cannot be loaded or converted to a full-integer TFLite model."""


def _fixed_batch_function(model, input_shape):
    """A concrete function with batch 1 and a static input shape (avoids Keras 3 converter pitfalls)."""
    import tensorflow as tf

    spec = tf.TensorSpec([1, *input_shape], tf.float32, name="image")

    @tf.function(
        input_signature=[spec], autograph=False
    )  # no source parsing (CPython 3.11 AST races)
    def serve(x):
        return model(x, training=False)

    return serve.get_concrete_function(), serve


class FloatModel:
    """A float model behind a batch-1 concrete function: float32 1xHxWx3 in, one tensor out.

    input_shape: (H, W, 3) in px; source: where it came from (for messages and the manifest).
    """

    def __init__(self, concrete, trackable, input_shape: tuple[int, int, int], source: str):
        self.concrete = concrete
        self.trackable = trackable
        self.input_shape = input_shape
        self.source = source
        out = concrete.structured_outputs
        if isinstance(out, dict):
            if len(out) != 1:
                raise QuantizeError(
                    f"{source}: {len(out)} outputs ({', '.join(sorted(out))}); one is supported"
                )
            out = next(iter(out.values()))
        elif isinstance(out, (list, tuple)):
            if len(out) != 1:
                raise QuantizeError(f"{source}: {len(out)} outputs; one is supported")
            out = out[0]
        self.output_shape = tuple(int(d) for d in out.shape[1:])

    @classmethod
    def from_keras(cls, model, input_shape=None, source: str = "keras model") -> FloatModel:
        shape = _static_input(tuple(model.inputs[0].shape[1:]), input_shape, source)
        concrete, trackable = _fixed_batch_function(model, shape)
        return cls(concrete, trackable, shape, source)

    @classmethod
    def from_saved_model(cls, path, input_shape=None) -> FloatModel:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        sigs = getattr(loaded, "signatures", {})
        if "serving_default" not in sigs:
            raise QuantizeError(f"{path}: SavedModel has no 'serving_default' signature")
        sig = sigs["serving_default"]
        specs = sig.structured_input_signature[1]
        if len(specs) != 1:
            raise QuantizeError(f"{path}: SavedModel signature has {len(specs)} inputs; need 1")
        name, spec = next(iter(specs.items()))
        shape = _static_input(tuple(spec.shape[1:]), input_shape, str(path))

        @tf.function(
            input_signature=[tf.TensorSpec([1, *shape], tf.float32, name="image")], autograph=False
        )
        def serve(x):
            out = sig(**{name: x})
            return out if not isinstance(out, dict) or len(out) != 1 else next(iter(out.values()))

        return cls(serve.get_concrete_function(), loaded, shape, str(path))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """One preprocessed input (HxWx3 float32) -> the float output without the batch axis."""
        y = self.concrete(np.asarray(x, np.float32)[None])
        if isinstance(y, dict):
            y = next(iter(y.values()))
        elif isinstance(y, (list, tuple)):
            y = y[0]
        return np.asarray(y)[0]

    def converter(
        self,
        samples: list[np.ndarray],
        io_dtype: str = "uint8",
        float_fallback: bool = False,
        progress: bool = False,
        desc: str = "calibrating",
    ):
        """A TFLiteConverter set up for full-integer quantization with these representative inputs."""
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_concrete_functions([self.concrete], self.trackable)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative():
            from tqdm import tqdm

            for s in tqdm(samples, desc=desc, unit="img", leave=False, disable=not progress):
                yield [np.asarray(s, np.float32)[None]]

        converter.representative_dataset = representative
        if not float_fallback:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io_dtype not in ("uint8", "int8"):
                raise QuantizeError(f"io dtype must be uint8 or int8, not {io_dtype!r}")
            io = {"uint8": tf.uint8, "int8": tf.int8}[io_dtype]
            converter.inference_input_type = io
            converter.inference_output_type = io
        return converter


def _static_input(shape: tuple, override, source: str) -> tuple[int, int, int]:
    """(H, W, 3) from the model's input shape, with None sizes filled from override (W, H)."""
    if len(shape) != 3:
        raise QuantizeError(f"{source}: input shape {shape} is not (height, width, channels)")
    h, w, c = shape
    if override is not None:
        ow, oh = override
        if (h is not None and h != oh) or (w is not None and w != ow):
            raise QuantizeError(f"{source}: input is {w}x{h} px, --input-size says {ow}x{oh}")
        h, w = oh, ow
    if h is None or w is None:
        raise QuantizeError(
            f"{source}: input size is dynamic ({w}x{h}); give --input-size WxH (the tile size)"
        )
    if c != 3:
        raise QuantizeError(f"{source}: input has {c} channels; RGB models (3) are supported")
    return int(h), int(w), 3


def load_float_model(path: str | os.PathLike, input_size=None) -> FloatModel:
    """A Keras file (.keras, .h5) or a SavedModel folder -> FloatModel. input_size: (W, H) px."""
    path = Path(path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise QuantizeError(f"{path}: folder is not a SavedModel (no saved_model.pb)")
        try:
            return FloatModel.from_saved_model(path, input_size)
        except QuantizeError:
            raise
        except Exception as exc:  # TF raises many types for a broken SavedModel
            raise QuantizeError(f"{path}: cannot load SavedModel: {_first_line(exc)}") from None
    if not path.is_file():
        raise QuantizeError(f"{path}: no such model file or SavedModel folder")
    if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        raise QuantizeError(f"{path}: expected a .keras / .h5 file or a SavedModel folder")
    try:
        import keras

        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise QuantizeError(f"{path}: cannot load Keras model: {_first_line(exc)}") from None
    return FloatModel.from_keras(model, input_size, source=str(path))


def _first_line(exc: BaseException) -> str:
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    return lines[0] if lines else type(exc).__name__


def float_ops(tflite: bytes) -> list[str]:
    """Ops of a converted model that still compute in float, e.g. 'op 1 FLOOR_MOD (float32 ...)'.

    The culprits come first; the (DE)QUANTIZE ops that the converter wraps around them follow.
    """
    from lucida.tools.toolchain.tflite_reader import read_tflite

    found, wrappers = [], []
    for op in read_tflite(tflite).ops:
        for t in (*op.inputs, *op.outputs):
            if not t.constant and t.dtype.startswith(("float", "bfloat")):
                text = f"op {op.index} {op.opcode} ({t.dtype} tensor '{t.name}')"
                (wrappers if op.opcode in ("QUANTIZE", "DEQUANTIZE") else found).append(text)
                break
    return found + wrappers


def run_converter(converter, source: str = "model") -> bytes:
    """converter.convert() with its errors turned into one QuantizeError naming the op."""
    try:
        return converter.convert()
    except Exception as exc:  # ConverterError and friends
        text = str(exc)
        ops = re.findall(r"'(?:tf|tfl)\.(\w+)'", text) or re.findall(r"op: '?(\w+)'?", text)
        named = f" (op {', '.join(dict.fromkeys(ops))})" if ops else ""
        raise QuantizeError(
            f"{source}: full-integer conversion failed{named}: {_first_line(exc)}"
        ) from None


def convert_int8(
    model: FloatModel,
    samples: list[np.ndarray],
    io_dtype: str = "uint8",
    progress: bool = False,
) -> bytes:
    """Full-integer TFLite bytes; QuantizeError when an op has no int8 kernel or stays float."""
    if not samples:
        raise QuantizeError("no calibration samples")
    tflite = run_converter(model.converter(samples, io_dtype, progress=progress), model.source)
    left = float_ops(tflite)
    if left:
        raise QuantizeError(
            f"{model.source}: float op(s) left in the int8 graph: {'; '.join(left[:3])}"
            f"{' ...' if len(left) > 3 else ''}: TFLite has no int8 kernel for it; replace it "
            "in the model (no silent float fallback)"
        )
    return tflite


def quantize_keras(
    model,
    samples: Iterable[np.ndarray],
    io_dtype: str = "uint8",
    float_fallback: bool = False,
) -> bytes:
    """Keras model + representative inputs (HxWx3 float32, already preprocessed) -> TFLite bytes."""
    samples = [np.asarray(s, np.float32) for s in samples]
    if not samples:
        raise QuantizeError("no calibration samples")
    fm = FloatModel.from_keras(model)
    if float_fallback:
        return run_converter(fm.converter(samples, io_dtype, float_fallback=True), fm.source)
    return convert_int8(fm, samples, io_dtype)


def tensor_quant(tflite: bytes) -> dict:
    """Input/output dtype, shape, scale and zero point of a TFLite model (via the LiteRT interpreter)."""
    from lucida.runtime.backends import select_backend

    it = select_backend().Interpreter(model_content=tflite)
    out = {}
    for which, det in (
        ("input", it.get_input_details()[0]),
        ("output", it.get_output_details()[0]),
    ):
        scale, zp = det["quantization"]
        out[which] = {
            "dtype": np.dtype(det["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zp),
            "shape": [int(s) for s in det["shape"]],
        }
    return out


def convert_float(model, input_shape: tuple[int, int, int] | None = None) -> bytes:
    """Keras model -> float32 TFLite bytes (batch 1, static shape; the float twin of a bundle).

    input_shape: (H, W, C) for a model with a dynamic spatial size."""
    import tensorflow as tf

    size = None if input_shape is None else (input_shape[1], input_shape[0])
    fm = FloatModel.from_keras(model, size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fm.concrete], fm.trackable)
    return run_converter(converter, fm.source)
