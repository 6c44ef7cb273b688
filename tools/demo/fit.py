"""Train one demo heatmap model on cached synthetic patches (host side, Keras, CPU, seeded).

`train(variant, patches, targets, epochs)` fits the fully-convolutional net on 128x128 px
patches (loss: binary cross-entropy of each output cell's logit against the cell's tumour
fraction) and returns it rebuilt at the variant's tile size, ready to quantize.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from lucida.tools.demo.net import VARIANTS, Variant, build
from lucida.tools.demo.patches import flip_rot, stain_jitter

log = logging.getLogger(__name__)


def _batches(x: np.ndarray, y: np.ndarray, batch: int, rng: np.random.Generator):
    """One epoch of augmented (float32 images 0..255, float32 N x h x w x 1 targets) batches."""
    order = rng.permutation(len(x))
    for i in range(0, len(order) - batch + 1, batch):
        idx = np.sort(order[i : i + batch])
        xb, yb = flip_rot(x[idx], y[idx].astype(np.float32), rng)
        yield stain_jitter(xb, rng), yb[..., None]


def train(
    variant: Variant | str,
    patches: np.ndarray,
    targets: np.ndarray,
    epochs: int = 6,
    batch: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
):
    """Fit a variant on patches (N x P x P x 3 uint8) and targets (N x P/16 x P/16 tumour
    fraction); returns (Keras model at the variant's tile size, history dict)."""
    import keras
    import tensorflow as tf

    v = VARIANTS[variant] if isinstance(variant, str) else variant
    keras.utils.set_random_seed(seed)
    net = build(v, None, seed=seed)
    steps = epochs * (len(patches) // batch)
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.02, warmup_target=None)
    opt = keras.optimizers.Adam(schedule)
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            logits = net(xb, training=True)
            loss = loss_fn(yb, logits)
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return loss

    rng = np.random.default_rng([seed, 7])
    history = {"loss": [], "seconds": []}
    for epoch in range(epochs):
        t0 = time.perf_counter()
        losses = [float(step(xb, yb)) for xb, yb in _batches(patches, targets, batch, rng)]
        history["loss"].append(round(float(np.mean(losses)), 5))
        history["seconds"].append(round(time.perf_counter() - t0, 1))
        msg = f"lymph-{v.name} epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}"
        log.info(msg)
        if progress:
            print(msg, flush=True)
        if not math.isfinite(history["loss"][-1]):
            raise RuntimeError(f"lymph-{v.name}: training diverged (loss {history['loss'][-1]})")
    fixed = build(v, v.tile, seed=seed)
    fixed.set_weights(net.get_weights())
    return fixed, history


def mosaics(patches: np.ndarray, tile: tuple[int, int], n: int, seed: int = 0) -> list[np.ndarray]:
    """n tile-sized (H x W x 3 float32) mosaics of random patches: calibration inputs for the
    int8 converter with the training data's pixel statistics."""
    rng = np.random.default_rng([seed, 11])
    w, h = tile
    p = patches.shape[1]
    gx, gy = -(-w // p), -(-h // p)
    out = []
    for _ in range(n):
        idx = rng.integers(0, len(patches), gx * gy)
        rows = [
            np.concatenate(list(patches[idx[r * gx : (r + 1) * gx]]), axis=1) for r in range(gy)
        ]
        out.append(np.concatenate(rows, axis=0)[:h, :w].astype(np.float32))
    return out
