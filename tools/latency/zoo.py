"""Held-out real architectures for scoring the latency predictor (host side, Keras + converter).

Real networks, built locally without downloading weights (`weights=None`; latency does not depend
on weight values): Keras applications (MobileNet v1/v2/v3, ResNet-50, DenseNet-121,
Inception v3) and our own code for an EfficientNet-Lite-like net (MBConv with ReLU6, no
squeeze-excite, as the Lite variants), a U-Net and a DeepLab v3-style segmenter (MobileNet v2
backbone at output stride 16, ASPP with atrous 3x3 convs and image pooling, bilinear upsampling,
arg-max), at several input sizes (px) and widths. Each is quantized to full int8 with uint8 I/O
on a few random calibration images (`convert.quantize_keras`) and written as
build/zoo/<name>.tflite. None of them is ever used for fitting: `lucida predict --evaluate`
scores the kernel predictor on them, separately from the random candidates.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("build") / "zoo"

# name -> (builder, input px (h, w), keyword arguments)
ZOO: dict[str, tuple[str, tuple[int, int], dict]] = {
    "mobilenet_v1_025_128": ("mobilenet_v1", (128, 128), {"alpha": 0.25}),
    "mobilenet_v1_050_160": ("mobilenet_v1", (160, 160), {"alpha": 0.5}),
    "mobilenet_v1_075_192": ("mobilenet_v1", (192, 192), {"alpha": 0.75}),
    "mobilenet_v1_100_224": ("mobilenet_v1", (224, 224), {"alpha": 1.0}),
    "mobilenet_v2_035_96": ("mobilenet_v2", (96, 96), {"alpha": 0.35}),
    "mobilenet_v2_050_160": ("mobilenet_v2", (160, 160), {"alpha": 0.5}),
    "mobilenet_v2_100_224": ("mobilenet_v2", (224, 224), {"alpha": 1.0}),
    "mobilenet_v2_140_224": ("mobilenet_v2", (224, 224), {"alpha": 1.4}),
    "mobilenet_v3_small_224": ("mobilenet_v3_small", (224, 224), {}),
    "mobilenet_v3_large_224": ("mobilenet_v3_large", (224, 224), {}),
    "mobilenet_v3_large_075_160": ("mobilenet_v3_large", (160, 160), {"alpha": 0.75}),
    "efficientnet_lite0_224": ("efficientnet_lite", (224, 224), {"width": 1.0, "depth": 1.0}),
    "efficientnet_lite2_260": ("efficientnet_lite", (260, 260), {"width": 1.1, "depth": 1.2}),
    "resnet50_224": ("resnet50", (224, 224), {}),
    "resnet50_160": ("resnet50", (160, 160), {}),
    "densenet121_224": ("densenet121", (224, 224), {}),
    "inception_v3_299": ("inception_v3", (299, 299), {}),
    "unet_256_w16": ("unet", (256, 256), {"width": 16}),
    "unet_320_w32": ("unet", (320, 320), {"width": 32}),
    "deeplab_v3_mnv2_257": ("deeplab_v3", (257, 257), {"alpha": 1.0}),
    "deeplab_v3_mnv2_050_513": ("deeplab_v3", (513, 513), {"alpha": 0.5}),
}


class ZooError(ValueError):
    """An unknown architecture name or a zoo folder that cannot be used."""

    exit_code = 2


def _apps_model(kind: str, shape: tuple[int, int, int], kw: dict):
    import keras

    apps = keras.applications
    common = {"input_shape": shape, "weights": None}
    if kind == "mobilenet_v1":
        return apps.MobileNet(alpha=kw["alpha"], **common)
    if kind == "mobilenet_v2":
        return apps.MobileNetV2(alpha=kw["alpha"], **common)
    if kind == "mobilenet_v3_small":
        return apps.MobileNetV3Small(include_preprocessing=False, **common, **kw)
    if kind == "mobilenet_v3_large":
        return apps.MobileNetV3Large(include_preprocessing=False, **common, **kw)
    if kind == "resnet50":
        return apps.ResNet50(**common)
    if kind == "densenet121":
        return apps.DenseNet121(**common)
    if kind == "inception_v3":
        return apps.InceptionV3(**common)
    raise ZooError(f"unknown Keras application {kind!r}")


def _round8(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


def _efficientnet_lite(shape, width: float, depth: float):
    """EfficientNet-Lite-like: the B0 stage table, ReLU6, no squeeze-excite, fixed stem/head."""
    import math

    import keras
    from keras import layers

    def cbr(x, c, k=1, s=1, act=True):
        x = layers.Conv2D(c, k, strides=s, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU(6.0)(x) if act else x

    stages = [  # expand, channels, repeats, stride, kernel
        (1, 16, 1, 1, 3),
        (6, 24, 2, 2, 3),
        (6, 40, 2, 2, 5),
        (6, 80, 3, 2, 3),
        (6, 112, 3, 1, 5),
        (6, 192, 4, 2, 5),
        (6, 320, 1, 1, 3),
    ]
    inp = keras.Input(shape)
    x = cbr(inp, 32, 3, 2)
    for i, (e, c, r, s, k) in enumerate(stages):
        c = _round8(c * width)
        reps = r if i in (0, len(stages) - 1) else int(math.ceil(r * depth))
        for j in range(reps):
            c_in = x.shape[-1]
            y = cbr(x, c_in * e, 1) if e != 1 else x
            y = layers.DepthwiseConv2D(k, strides=s if j == 0 else 1, padding="same")(y)
            y = layers.ReLU(6.0)(layers.BatchNormalization()(y))
            y = cbr(y, c, 1, act=False)
            x = layers.Add()([x, y]) if j > 0 and c_in == c else y
    x = cbr(x, 1280, 1)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(1000, activation="softmax")(x)
    return keras.Model(inp, x)


def _unet(shape, width: int):
    """U-Net: 4 down (2x conv3x3 + max-pool), bottleneck, 4 up (transposed conv, concat, 2x conv),
    a 1x1 conv to one logit per pixel."""
    import keras
    from keras import layers

    def block(x, c):
        x = layers.Conv2D(c, 3, padding="same", activation="relu")(x)
        return layers.Conv2D(c, 3, padding="same", activation="relu")(x)

    inp = keras.Input(shape)
    skips, x = [], inp
    for i in range(4):
        x = block(x, width * 2**i)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = block(x, width * 16)
    for i in reversed(range(4)):
        x = layers.Conv2DTranspose(width * 2**i, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[i]])
        x = block(x, width * 2**i)
    x = layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inp, x)


def _deeplab_v3(shape, alpha: float):
    """DeepLab v3-style: MobileNet v2 features at output stride 16, ASPP (1x1, three atrous 3x3 at
    rates 6/12/18, image pooling), 1x1 projection, 21-class logits, bilinear upsampling to the
    input size, per-pixel arg-max."""
    import keras
    import tensorflow as tf
    from keras import layers

    inp = keras.Input(shape)
    base = keras.applications.MobileNetV2(
        input_tensor=inp, alpha=alpha, include_top=False, weights=None
    )
    feat = base.get_layer("block_13_expand_relu").output  # stride 16

    def cbr(x, c, k=1, rate=1):
        x = layers.Conv2D(c, k, padding="same", dilation_rate=rate, use_bias=False)(x)
        return layers.ReLU()(layers.BatchNormalization()(x))

    h, w = feat.shape[1], feat.shape[2]
    pooled = layers.GlobalAveragePooling2D(keepdims=True)(feat)
    pooled = layers.UpSampling2D((h, w), interpolation="bilinear")(cbr(pooled, 256))
    branches = [cbr(feat, 256)] + [cbr(feat, 256, 3, r) for r in (6, 12, 18)] + [pooled]
    x = cbr(layers.Concatenate()(branches), 256)
    x = layers.Conv2D(21, 1)(x)
    x = layers.Resizing(shape[0], shape[1], interpolation="bilinear")(x)
    x = layers.Lambda(lambda t: tf.math.argmax(t, axis=-1))(x)
    return keras.Model(inp, x)


def build_keras(name: str):
    """The Keras model of a zoo entry (random weights)."""
    import keras

    if name not in ZOO:
        raise ZooError(f"unknown zoo architecture {name!r}; known: {', '.join(ZOO)}")
    kind, (h, w), kw = ZOO[name]
    keras.utils.set_random_seed(0)
    shape = (h, w, 3)
    if kind == "efficientnet_lite":
        return _efficientnet_lite(shape, **kw)
    if kind == "unet":
        return _unet(shape, **kw)
    if kind == "deeplab_v3":
        return _deeplab_v3(shape, **kw)
    return _apps_model(kind, shape, kw)


def quantize(name: str, n_calib: int = 3) -> bytes:
    """Full-int8 TFLite bytes (uint8 I/O) of a zoo entry, calibrated on random images."""
    from lucida.tools.toolchain.convert import quantize_keras

    h, w = ZOO[name][1]
    rng = np.random.default_rng(0)
    samples = [rng.uniform(-1, 1, (h, w, 3)).astype(np.float32) for _ in range(n_calib)]
    return quantize_keras(build_keras(name), samples)


def build_zoo(
    out_dir: str | os.PathLike = DEFAULT_DIR,
    names: list[str] | None = None,
    force: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Write build/zoo/<name>.tflite for each entry (existing files are kept unless force)."""
    from lucida.calibration.atomic import atomic_write_bytes
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in tqdm(names or list(ZOO), desc="zoo", unit="model", disable=not progress):
        if name not in ZOO:
            raise ZooError(f"unknown zoo architecture {name!r}; known: {', '.join(ZOO)}")
        path = out / f"{name}.tflite"
        if force or not path.is_file():
            atomic_write_bytes(path, quantize(name))
        paths.append(path)
    return paths
