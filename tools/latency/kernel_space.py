"""Sampled kernels: one-op int8 .tflite files to measure (host side, TensorFlow).

A `KernelSpec` is one kernel kind with its shape (px, channels, kernel size, stride, fused
activation). `sample(kind, n, rng)` draws shapes from a prior that covers real networks: feature
maps from 1 to 257 px on a side (513 px inputs at stride 2), channels 3..2048 from the values
real networks use, 1x1 / 3x3 / 5x5 / 7x7 kernels at stride 1 or 2, the interpreter's fusions
(conv + ReLU / ReLU6). `neighbours(spec, n, rng)` perturbs one shape dimension at a time
(adaptive sampling: more samples where the fit is poor). `build(spec)` converts the kernel with
the TFLite converter to full int8 with int8 I/O, so the file holds that one op (and nothing
else); "quantize" kernels have uint8 I/O around a ReLU6 (uint8->int8 and int8->uint8
requantization, as at a uint8 model's ends) and "dequantize" kernels a float output.
Kernels whose work is too large to time quickly (> MAX_MACS) are drawn again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

MAX_MACS = 700e6  # MAC, the largest kernel sampled (a few ms on one core)
MAX_ELEMENTS = 8e6  # activation elements per tensor
HW = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 16, 17, 19, 20, 24, 28, 32, 33, 35, 38, 40)
HW = HW + (48, 56, 60, 64, 65, 71, 73, 80, 96, 112, 120, 128, 129, 147, 149, 160, 192, 224, 257)
CH = (3, 8, 12, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 112, 120, 128, 144, 160, 192, 200)
CH = CH + (240, 256, 288, 320, 384, 448, 480, 512, 576, 672, 768, 960, 1024, 1152, 1280, 2048)

KINDS = (
    "conv1x1",
    "convKxK",
    "dwconv",
    "fc",
    "tconv",
    "maxpool",
    "avgpool",
    "mean",
    "add",
    "mul",
    "mul_bcast",
    "add_c",
    "mul_c",
    "concat",
    "resize_bilinear",
    "resize_nearest",
    "reshape",
    "softmax",
    "argmax",
    "quantize",
    "dequantize",
    "pad",
    "hardswish",
    "logistic",
    "relu",
)


class KernelSpaceError(ValueError):
    """An unknown kernel kind or a spec that cannot be built."""

    exit_code = 2


@dataclass(frozen=True)
class KernelSpec:
    """One sampled kernel: kind and shape. h, w: input px; c: input channels; co: output
    channels (conv, fc, tconv); k: kernel/pool size; s: stride; act: fused activation
    ('', 'relu', 'relu6'); n: number of inputs (concat); up: upsampling factor (resize)."""

    kind: str
    h: int = 1
    w: int = 1
    c: int = 8
    co: int = 8
    k: int = 1
    s: int = 1
    act: str = ""
    n: int = 2
    up: int = 2

    @property
    def name(self) -> str:
        d = json.dumps(self.to_dict(), sort_keys=True)
        return f"k-{self.kind}-{hashlib.sha1(d.encode()).hexdigest()[:10]}"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> KernelSpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind in ("conv1x1", "convKxK", "dwconv", "maxpool", "avgpool"):
            return -(-self.h // self.s), -(-self.w // self.s)
        if self.kind in ("tconv", "resize_bilinear", "resize_nearest"):
            return self.h * self.up, self.w * self.up
        return self.h, self.w

    @property
    def macs(self) -> float:
        ho, wo = self.out_hw
        if self.kind in ("conv1x1", "convKxK", "tconv"):
            return ho * wo * self.k * self.k * self.c * self.co
        if self.kind == "dwconv":
            return ho * wo * self.k * self.k * self.c
        if self.kind == "fc":
            return self.c * self.co
        return ho * wo * self.c * max(self.k * self.k, self.n)

    def ok(self) -> bool:
        ho, wo = self.out_hw
        big = max(self.h * self.w * self.c * self.n, ho * wo * max(self.co, self.c))
        return self.macs <= MAX_MACS and big <= MAX_ELEMENTS and min(ho, wo) >= 1


def _pick(rng, values, lo=None, hi=None):
    vals = [v for v in values if (lo is None or v >= lo) and (hi is None or v <= hi)]
    return int(vals[int(rng.integers(len(vals)))])


def _draw(kind: str, rng) -> KernelSpec:
    hw = _pick(rng, HW, 2)
    c = _pick(rng, CH, 8)
    act = ("", "relu", "relu6")[int(rng.integers(3))]
    if kind == "conv1x1":
        return KernelSpec(kind, hw, hw, c, _pick(rng, CH, 8), 1, 1 + int(rng.random() < 0.1), act)
    if kind == "convKxK":
        k = int(rng.choice([3, 3, 3, 5, 7, 3]))
        cin = 3 if rng.random() < 0.15 else c
        return KernelSpec(kind, hw, hw, cin, _pick(rng, CH, 8), k, 1 + int(rng.random() < 0.4), act)
    if kind == "dwconv":
        k = int(rng.choice([3, 3, 5]))
        return KernelSpec(kind, hw, hw, c, c, k, 1 + int(rng.random() < 0.3), act)
    if kind == "fc":
        return KernelSpec(kind, 1, 1, _pick(rng, CH, 16), _pick(rng, CH + (1000, 1001), 8))
    if kind == "tconv":
        return KernelSpec(
            kind, _pick(rng, HW, 2, 129), 0, c, _pick(rng, CH, 8, 512), 2, 2, "", 2, 2
        )
    if kind in ("maxpool", "avgpool"):
        k, s = [(2, 2), (3, 2), (3, 1)][int(rng.integers(3))]
        return KernelSpec(kind, hw, hw, c, c, k, s)
    if kind in ("resize_bilinear", "resize_nearest"):
        up = int(rng.choice([2, 2, 4, 8, 16]))
        return KernelSpec(kind, _pick(rng, HW, 1, 129), 0, _pick(rng, CH, 1, 512), up=up)
    if kind == "concat":
        return KernelSpec(kind, hw, hw, _pick(rng, CH, 8, 512), n=int(rng.integers(2, 6)))
    if kind == "softmax":
        return KernelSpec(kind, 1 if rng.random() < 0.5 else hw, 0, _pick(rng, CH + (1000, 21)))
    if kind == "argmax":
        return KernelSpec(kind, hw, 0, _pick(rng, (2, 3, 8, 21, 32, 150, 1000)))
    return KernelSpec(kind, hw, hw, c)


def sample(kind: str, n: int, rng: np.random.Generator) -> list[KernelSpec]:
    """n distinct kernels of one kind drawn from the prior (module docstring)."""
    if kind not in KINDS:
        raise KernelSpaceError(f"unknown kernel kind {kind!r}; known: {', '.join(KINDS)}")
    out: dict[str, KernelSpec] = {}
    for _ in range(n * 50):
        spec = _square(_draw(kind, rng))
        if spec.ok():
            out.setdefault(spec.name, spec)
        if len(out) >= n:
            break
    return list(out.values())


def _square(spec: KernelSpec) -> KernelSpec:
    d = spec.to_dict()
    if d["w"] == 0:
        d["w"] = d["h"]
    return KernelSpec(**d)


def neighbours(spec: KernelSpec, n: int, rng: np.random.Generator) -> list[KernelSpec]:
    """Up to n kernels next to spec: one of h=w, c, co scaled by 0.5..2 (adaptive sampling)."""
    out: dict[str, KernelSpec] = {}
    for _ in range(n * 20):
        d = spec.to_dict()
        f = float(np.exp(rng.uniform(-0.7, 0.7)))
        dim = ("hw", "c", "co")[int(rng.integers(3))]
        if dim == "hw":
            d["h"] = max(1, round(d["h"] * f))
            d["w"] = d["h"] if spec.w == spec.h else max(1, round(d["w"] * f))
        elif dim == "c" or spec.kind in ("dwconv",):
            d["c"] = max(3 if spec.kind == "convKxK" else 1, round(d["c"] * f))
            if spec.kind == "dwconv":
                d["co"] = d["c"]
        else:
            d["co"] = max(1, round(d["co"] * f))
        s = KernelSpec(**d)
        if s.ok() and s != spec:
            out.setdefault(s.name, s)
        if len(out) >= n:
            break
    return list(out.values())


# -- building --------------------------------------------------------------------------------
def _keras_kernel(spec: KernelSpec):
    """(Keras model, input shapes) of one kernel."""
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(0)
    act = {"": None, "relu": "relu", "relu6": keras.activations.relu6}[spec.act]
    hwc = (spec.h, spec.w, spec.c)
    shapes = [hwc]
    k = spec.kind
    if k == "fc":
        shapes = [(spec.c,)]
    elif k == "concat":
        shapes = [hwc] * spec.n
    elif k in ("add", "mul"):
        shapes = [hwc, hwc]
    elif k == "mul_bcast":
        shapes = [hwc, (1, 1, spec.c)]
    elif k == "softmax" and spec.h == 1:
        shapes = [(spec.c,)]
    ins = [keras.Input(s, batch_size=1) for s in shapes]
    x = ins[0]
    if k in ("conv1x1", "convKxK"):
        y = layers.Conv2D(spec.co, spec.k, strides=spec.s, padding="same", activation=act)(x)
    elif k == "dwconv":
        y = layers.DepthwiseConv2D(spec.k, strides=spec.s, padding="same", activation=act)(x)
    elif k == "fc":
        y = layers.Dense(spec.co)(x)
    elif k == "tconv":
        y = layers.Conv2DTranspose(spec.co, spec.k, strides=spec.s, padding="same")(x)
    elif k == "maxpool":
        y = layers.MaxPooling2D(spec.k, strides=spec.s, padding="same")(x)
    elif k == "avgpool":
        y = layers.AveragePooling2D(spec.k, strides=spec.s, padding="same")(x)
    elif k == "mean":
        y = layers.GlobalAveragePooling2D()(x)
    elif k == "add":
        y = layers.Add()(ins)
    elif k in ("mul", "mul_bcast"):
        y = layers.Multiply()(ins)
    elif k == "concat":
        y = layers.Concatenate()(ins)
    elif k in ("resize_bilinear", "resize_nearest"):
        interp = "bilinear" if k == "resize_bilinear" else "nearest"
        y = layers.Resizing(spec.h * spec.up, spec.w * spec.up, interpolation=interp)(x)
    elif k == "reshape":
        y = layers.Reshape((spec.h * spec.w, spec.c))(x)
    elif k == "softmax":
        y = layers.Softmax()(x)
    elif k == "argmax":
        y = layers.Lambda(lambda t: tf.math.argmax(t, axis=-1))(x)
    elif k in ("quantize", "dequantize", "relu"):
        y = layers.ReLU(6.0)(x)
    elif k == "add_c":
        y = layers.Lambda(lambda t: t + 3.0)(x)
    elif k == "mul_c":
        y = layers.Lambda(lambda t: t * 0.1667)(x)
    elif k == "pad":
        y = layers.ZeroPadding2D(1)(x)
    elif k == "hardswish":
        y = layers.Activation("hard_swish")(x)
    elif k == "logistic":
        y = layers.Activation("sigmoid")(x)
    else:
        raise KernelSpaceError(f"unknown kernel kind {k!r}")
    return keras.Model(ins, y), shapes


def build(spec: KernelSpec) -> bytes:
    """The kernel as full-int8 .tflite bytes (module docstring), calibrated on random inputs."""
    import tensorflow as tf

    model, shapes = _keras_kernel(spec)
    sig = [tf.TensorSpec([1, *s], tf.float32) for s in shapes]

    @tf.function(input_signature=sig, autograph=False)
    def serve(*xs):
        return model(list(xs) if len(xs) > 1 else xs[0], training=False)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], serve)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)

    def data():
        for _ in range(2):
            yield [rng.uniform(-1, 1, (1, *s)).astype(np.float32) for s in shapes]

    conv.representative_dataset = data
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io = {"quantize": tf.uint8, "dequantize": tf.int8}.get(spec.kind, tf.int8)
    conv.inference_input_type = io
    conv.inference_output_type = tf.float32 if spec.kind == "dequantize" else io
    try:
        return conv.convert()
    except Exception as exc:  # the converter's own error types
        raise KernelSpaceError(
            f"{spec.name} {spec.to_dict()}: {str(exc).splitlines()[0]}"
        ) from None
