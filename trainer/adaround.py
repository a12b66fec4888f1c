"""Adaptive rounding of the int8 kernels: each weight rounded up or down as suits the layer's
output, not to the nearest grid point.

On the rover model the kernels' rounding alone (activations in float) flips about 1.2 % of the
pixels against float32: as much as the activations' rounding. Rounding to nearest minimises
each weight's own error, not the error of the conv's output; AdaRound (Nagel et al., "Up or
Down? Adaptive Rounding for Post-Training Quantization", ICML 2020) learns, per weight, whether
to round up or down so that the conv's output on calibration frames stays the float model's:

- the kernel is ``scale * clip(floor(w / scale) + h(v), -127, 127)`` with ``h`` a rectified
  sigmoid in [0, 1] (started at the weight's fractional part: rounding to nearest, softened),
  ``scale`` the converter's per-channel ``max|w| / 127``, kept fixed (the weight at the channel's
  extreme keeps its grid point, so the converter finds the same scale);
- ``v`` minimises the squared error of the conv's output after its activation against the float
  model's same output, computed from the *int8 student's* input to the conv (every earlier conv
  rounded already, activations fake-quantized), so that each conv also absorbs what the layers
  above it lost; plus a term that pushes ``h`` to 0 or 1, weighted in after a fifth of the
  iterations, its exponent annealed from 20 to 2;
- then each weight takes ``h >= 0.5`` (up) or not, conv after conv in graph order, and the
  activation ranges are calibrated again for the next conv.

No label and no training frame beyond the calibration set: a few minutes on a CPU.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np
from keras import ops

from trainer.fake_quant import QuantKernel, conv_with_kernel

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's values)
WARMUP = 0.2  # share of the iterations before the rounding term counts
BETA = (20.0, 2.0)  # the rounding term's exponent, annealed from the first to the second


def _activate(name: str, y):
    if name in ("relu", "relu6"):
        return getattr(ops, name)(y)
    if name == "sigmoid":
        return ops.sigmoid(y)
    return y


def _collect(model: keras.Model, frames: np.ndarray, batch_size: int = 16) -> np.ndarray:
    parts = []
    for start in range(0, len(frames), batch_size):
        parts.append(keras.ops.convert_to_numpy(model(frames[start : start + batch_size, ..., None],
                                                      training=False)))  # fmt: skip
    return np.concatenate(parts)


def round_layer(
    inner, activation: str, inputs: np.ndarray, targets: np.ndarray, *, iterations: int = 1000,
    batch_size: int = 8, learning_rate: float = 1e-2, weight: float = 0.01, seed: int = 0,
) -> dict:  # fmt: skip
    """Learn the rounding of one conv's kernel and set the kernel to it (on its int8 grid).

    Args:
        inner: the folded graph's conv (``kernel`` and ``bias`` variables).
        activation: ``linear``, ``relu`` or ``sigmoid``: what follows the conv in ``targets``.
        inputs: (N, h, w, cin) the int8 student's input to the conv on calibration frames.
        targets: (N, h', w', cout) the float model's output of the conv, activation applied.

    Returns:
        The output error (mean square) with rounding to nearest and with the learned rounding,
        on the same frames, and the share of weights rounded the other way.
    """
    import tensorflow as tf

    w = np.asarray(inner.kernel.numpy(), np.float32)
    axes = tuple(range(w.ndim - 1))
    scale = np.maximum(np.abs(w).max(axis=axes, keepdims=True) / 127.0, 1e-12).astype(np.float32)
    steps = w / scale
    floor = np.floor(steps)
    nearest = np.clip(np.round(steps), -127, 127)
    extreme = np.abs(nearest) == 127  # keeps its grid point: the per-channel scale stays
    rest = np.clip(steps - floor, 1e-4, 1 - 1e-4)
    v = tf.Variable(-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0), dtype=tf.float32)
    fixed = tf.constant(extreme.astype(np.float32))
    base = tf.constant(floor.astype(np.float32))
    grid = tf.constant(scale)
    nearest_t = tf.constant(nearest.astype(np.float32))
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build([v])

    def kernel_of(h):
        q = tf.clip_by_value(base + h, -127.0, 127.0)
        return grid * (fixed * nearest_t + (1.0 - fixed) * q)

    def soft():
        return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    @tf.function
    def step(x, y, beta, reg):
        with tf.GradientTape() as tape:
            h = soft()
            out = _activate(activation, conv_with_kernel(inner, x, kernel_of(h)))
            error = tf.reduce_mean(tf.reduce_sum(tf.square(out - y), axis=-1))
            rounding = tf.reduce_sum((1.0 - fixed) * (1.0 - tf.abs(2.0 * h - 1.0) ** beta))
            loss = error + reg * rounding
        optimizer.apply([tape.gradient(loss, v)], [v])
        return error

    def output_error(kernel) -> float:
        total = 0.0
        for start in range(0, len(inputs), 16):
            out = _activate(activation, conv_with_kernel(inner, inputs[start : start + 16], kernel))
            total += float(tf.reduce_sum(tf.reduce_mean(tf.square(out - targets[start : start + 16]),
                                                        axis=(1, 2, 3))))  # fmt: skip
        return total / len(inputs)

    before = output_error(tf.constant(nearest * scale))
    rng = np.random.default_rng(seed)
    for i in range(iterations):
        pick = rng.integers(0, len(inputs), batch_size)
        progress = max(0.0, (i - WARMUP * iterations) / ((1 - WARMUP) * iterations))
        beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - progress)
        reg = 0.0 if i < WARMUP * iterations else weight
        step(tf.constant(inputs[pick]), tf.constant(targets[pick]), tf.constant(beta),
             tf.constant(reg))  # fmt: skip
    up = (soft().numpy() >= 0.5).astype(np.float32)
    chosen = np.where(extreme, nearest, np.clip(floor + up, -127, 127))
    kernel = (chosen * scale).astype(np.float32)
    after = output_error(tf.constant(kernel))
    if after > before:  # never worse than rounding to nearest on these frames
        kernel, chosen = (nearest * scale).astype(np.float32), nearest
    inner.kernel.assign(kernel)
    return {
        "conv": inner.name,
        "error_nearest": before,
        "error_adaptive": min(after, before),
        "flipped": float((chosen != nearest).mean()),
    }


def adaround(
    reference: keras.Model, convs: list, student: keras.Model, frames: np.ndarray, *,
    calibrate, activation_of, iterations: int = 1000, seed: int = 0,
) -> list[dict]:  # fmt: skip
    """Round every kernel of ``folded`` adaptively (see the module), conv after conv in graph
    order; the activation ranges are calibrated again after each.

    Args:
        reference: the float folded graph (:func:`trainer.qat.export_graph` of the teacher).
        convs: the folded graph's convs (:func:`trainer.qat.kernel_layers`), rounded in place.
        student: :func:`trainer.qat.quantized_student` of the folded graph.
        frames: calibration frames (N, H, W) in [0, 1].
        calibrate: sets the student's activation ranges on frames (given by trainer.qat, which
            imports this module).
        activation_of: a conv's activation name.

    Returns:
        Per conv: output errors with rounding to nearest and adaptive, weights flipped.
    """
    by_inner = {
        layer.inner.name: layer for layer in student.layers if isinstance(layer, QuantKernel)
    }
    record = []
    for n, conv in enumerate(convs):
        t0 = time.perf_counter()
        calibrate(frames)  # the ranges of the kernels rounded so far
        inputs = _collect(keras.Model(student.input, by_inner[conv.name].input), frames)
        targets = _collect(keras.Model(reference.input, reference.get_layer(conv.name).output),
                           frames)  # fmt: skip
        entry = round_layer(conv, activation_of(conv), inputs, targets, iterations=iterations,
                            seed=seed + n)  # fmt: skip
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        record.append(entry)
        log.info("adaround %d/%d %s: output error %.3g -> %.3g (%.1f %% of weights flipped, %.0f s)",
                 n + 1, len(convs), conv.name, entry["error_nearest"], entry["error_adaptive"],
                 100 * entry["flipped"], entry["seconds"])  # fmt: skip
    calibrate(frames)
    return record


__all__ = ["adaround", "round_layer"]
