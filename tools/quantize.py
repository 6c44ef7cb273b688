"""Post-training full-integer quantization with the TFLite converter (host side, needs TensorFlow).

`quantize_keras(model, samples)` -> int8 TFLite flatbuffer bytes: TFLITE_BUILTINS_INT8 only,
uint8 (or int8) input and output, per-channel weights, batch 1, static shapes. The representative
dataset is the calibration images after exactly the bundle's preprocessing (here: raw RGB pixels
as float32, the model normalizes inside its graph unless the manifest says otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

log = logging.getLogger(__name__)


class QuantizeError(ValueError):
    """The model cannot be converted to a full-integer TFLite model."""


def _fixed_batch_function(model, input_shape):
    """A concrete function with batch 1 and a static input shape (avoids Keras 3 converter pitfalls)."""
    import tensorflow as tf

    spec = tf.TensorSpec([1, *input_shape], tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def serve(x):
        return model(x, training=False)

    return serve.get_concrete_function(), serve


def quantize_keras(
    model,
    samples: Iterable[np.ndarray],
    io_dtype: str = "uint8",
    float_fallback: bool = False,
) -> bytes:
    """Keras model + representative inputs (HxWx3 float32, already preprocessed) -> TFLite bytes."""
    import tensorflow as tf

    samples = [np.asarray(s, np.float32) for s in samples]
    if not samples:
        raise QuantizeError("no calibration samples")
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    concrete, trackable = _fixed_batch_function(model, input_shape)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], trackable)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative():
        for s in samples:
            yield [s[None]]

    converter.representative_dataset = representative
    if not float_fallback:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = {"uint8": tf.uint8, "int8": tf.int8}[io_dtype]
        converter.inference_input_type = io
        converter.inference_output_type = io
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and friends
        first = str(exc).strip().splitlines()
        raise QuantizeError(
            "full-integer conversion failed (an op with no int8 kernel?): "
            + (first[0] if first else type(exc).__name__)
        ) from None


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


def convert_float(model, input_shape: tuple[int, int, int]) -> bytes:
    """Keras model -> float32 TFLite bytes at a fixed input shape (HxWxC), batch 1."""
    import tensorflow as tf

    concrete, trackable = _fixed_batch_function(model, tuple(input_shape))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], trackable).convert()
