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


def tiny_classifier(size: int = 96, classes: int = 1000, width: int = 8, seed: int = 0):
    """An image classifier: RGB pixels (0..255 float) -> softmax over `classes`, random weights
    (a MobileNet-style stem, average pooling over the whole map as MobileNet's AVERAGE_POOL_2D,
    a 1x1 convolution with large weights so that the top class stands out)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(x)
    x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu6")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6")(x)
    x = layers.Conv2D(width * 4, 1, activation="relu6")(x)
    x = layers.AveragePooling2D(x.shape[1])(x)
    init = keras.initializers.RandomNormal(stddev=30.0)
    x = layers.Conv2D(classes, 1, kernel_initializer=init)(x)  # MobileNet's 1x1 "Logits"
    x = layers.Reshape((classes,))(x)
    x = layers.Softmax()(x)
    return keras.Model(inp, x)


def tiny_segmenter(size: int = 129, classes: int = 21, width: int = 8, seed: int = 0):
    """A DeepLab-style segmenter: logits at 1/8 resolution, bilinear upsampling back to the
    input size, ArgMax -> int64 class index per pixel [1, H, W]. Random weights."""
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(x)
    for _ in range(3):
        x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(classes, 1)(x)
    x = layers.Resizing(size, size, interpolation="bilinear")(x)
    # tf.argmax (TFLite ARG_MAX, int64); keras.ops.argmax adds NaN handling TFLite lacks
    x = layers.Lambda(lambda t: tf.argmax(t, axis=-1), output_shape=(size, size))(x)
    return keras.Model(inp, x)


def tiny_multiclass(size: int = 64, classes: int = 4, width: int = 8, seed: int = 0):
    """A multi-class tumour heatmap (e.g. benign, GP3, GP4, GP5): RGB pixels -> softmax over
    `classes` per 4x4 px cell. Random weights, biased so every class wins somewhere."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(x)
    x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(classes, 1)(x)
    x = layers.Softmax()(x)
    return keras.Model(inp, x)


def deeplab_like(size: int = 513, classes: int = 21, head: str = "softmax", alpha: float = 0.5):
    """A DeepLab-style segmenter at full size: Keras MobileNetV2 features (random weights, output
    stride 32), 1x1 class logits, bilinear upsampling to the input size, then `head`: "logits"
    (a [1, H, W, C] heatmap of logits: the engine applies the softmax), "softmax" (in the model)
    or "argmax" (an int64 [1, H, W] class map). For benchmarks."""
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    backbone = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None
    )
    x = backbone(x)
    x = layers.Conv2D(classes, 1)(x)
    x = layers.Resizing(size, size, interpolation="bilinear")(x)
    if head == "argmax":
        x = layers.Lambda(lambda t: tf.argmax(t, axis=-1), output_shape=(size, size))(x)
    elif head == "softmax":
        x = layers.Softmax()(x)
    return keras.Model(inp, x)


def mobilenet_classifier(size: int = 224, classes: int = 1000, alpha: float = 1.0):
    """Keras MobileNetV2 image classifier (random weights, softmax over `classes`)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=alpha, include_top=True, weights=None, classes=classes
    )(x)
    return keras.Model(inp, x)


def gleason_like(size: int = 512, classes: int = 4, alpha: float = 0.35):
    """A multi-class tumour heatmap (benign, GP3, GP4, GP5): MobileNetV2 features (random
    weights), softmax over `classes` per 32x32 px cell. For benchmarks."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None
    )(x)
    x = layers.Conv2D(classes, 1)(x)
    x = layers.Softmax()(x)
    return keras.Model(inp, x)
