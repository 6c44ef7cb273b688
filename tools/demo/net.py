"""The demo tumour-heatmap family (host side, Keras): one fully-convolutional net at three sizes.

Compound scaling in the spirit of EfficientNet-EdgeTPU: each step up (S -> M -> L) halves the
model's pixel size (4 -> 2 -> 1 um/px, so the same 1024x576 um tile holds 4x the pixels) and
widens every layer. Only Edge TPU-friendly ops: Conv2D, DepthwiseConv2D, ReLU6, Add, no swish,
no squeeze-excitation. Early stages use fused (regular 3x3) convolutions, later ones
inverted-residual blocks with depthwise 3x3, as EfficientNet-EdgeTPU does.

Input: raw RGB pixels 0..255 (float, rescaled inside the graph, so the uint8 input quantization
of the int8 model is the identity). Output: one logit per 16x16 input-px cell (tumour vs not);
the bundle's manifest applies the sigmoid after dequantization.
"""

from __future__ import annotations

from dataclasses import dataclass

CELL_PX = 16  # input px per output cell (four stride-2 stages)


@dataclass(frozen=True)
class Variant:
    """One member of the family.

    um_per_px: the model's pixel size (frames are resampled to it by the engine).
    tile: (width, height) of the model input in px: 1024x576 um at every size.
    stride: tile stride (x, y) in px: 2x2 tiles cover a 10x frame (1920x1080 px at 1 um/px) and
        one tile a 20x frame, with a padded area ~1.14x the resampled frame.
    width: channel multiplier applied to BASE_CHANNELS.
    """

    name: str
    um_per_px: float
    tile: tuple[int, int]
    stride: tuple[int, int]
    width: float


BASE_CHANNELS = (16, 24, 40, 64)
VARIANTS = {
    "s": Variant("s", 4.0, (256, 144), (224, 128), 0.5),
    "m": Variant("m", 2.0, (512, 288), (448, 256), 0.75),
    "l": Variant("l", 1.0, (1024, 576), (896, 512), 1.0),
}


def _ch(c: float) -> int:
    """Round channels to a multiple of 8 (at least 8), like the MobileNet/EfficientNet rule."""
    return max(8, int(c + 4) // 8 * 8)


def build(variant: Variant | str, size: tuple[int, int] | None = None, seed: int = 0):
    """The Keras model for a variant; size (width, height) px, None for a dynamic size."""
    import keras
    from keras import layers

    v = VARIANTS[variant] if isinstance(variant, str) else variant
    keras.utils.set_random_seed(seed)
    c0, c1, c2, c3 = (_ch(c * v.width) for c in BASE_CHANNELS)
    w, h = size if size else (None, None)
    inp = keras.Input((h, w, 3), name="image")

    def conv(x, c, k=3, s=1, act=True, name=None):
        x = layers.Conv2D(c, k, strides=s, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(momentum=0.9, name=None if name is None else name + "_bn")(x)
        return layers.ReLU(6.0)(x) if act else x

    def mbconv(x, c_out, s=1, expand=3):
        c_in = x.shape[-1]
        y = conv(x, c_in * expand, k=1)
        y = layers.DepthwiseConv2D(3, strides=s, padding="same", use_bias=False)(y)
        y = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9)(y))
        y = conv(y, c_out, k=1, act=False)
        return layers.Add()([x, y]) if s == 1 and c_in == c_out else y

    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = conv(x, c0, s=2)  # /2
    x = conv(x, c1, s=2)  # /4, fused stage
    x = mbconv(x, c2, s=2)  # /8
    x = mbconv(x, c2)
    x = mbconv(x, c3, s=2)  # /16
    x = mbconv(x, c3)
    x = mbconv(x, c3)
    x = layers.Conv2D(1, 1, name="logits")(x)
    return keras.Model(inp, x, name=f"lymph_{v.name}")
