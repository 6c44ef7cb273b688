"""Tiny Keras models for tests and benchmarks (host side): fully-convolutional, Edge TPU-friendly ops."""

from __future__ import annotations


def tiny_fcn(size: tuple[int, int] | None = (64, 64), width: int = 8, seed: int = 0):
    """RGB pixels (0..255 float) -> tumour probability per 4x4 px cell (sigmoid), random weights.

    size None gives a model with a dynamic spatial size (for whole-frame reference runs).
    """
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    h, w = size if size else (None, None)
    x = inp = keras.Input((h, w, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(x)
    x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = layers.Conv2D(width * 2, 1, activation="relu")(x)
    x = layers.Conv2D(width * 2, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inp, x)
