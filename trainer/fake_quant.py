"""int8 rounding as TFLite does it, in keras.ops (so that it trains): per-channel symmetric
kernels, per-tensor asymmetric activations with straight-through gradients, and a conv of the
rover graph computed with its kernel rounded (:mod:`trainer.qat` uses them)."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from trainer.export_graph import DilatedConv, SubPixelUpsample


def fake_quant_kernel(kernel):
    """Per-output-channel (last axis) symmetric int8 rounding, straight-through gradient."""
    axes = tuple(range(len(kernel.shape) - 1))
    scale = ops.maximum(ops.max(ops.abs(kernel), axis=axes, keepdims=True) / 127.0, 1e-12)
    snapped = ops.clip(ops.round(kernel / scale), -127.0, 127.0) * scale
    return kernel + ops.stop_gradient(snapped - kernel)


def snap_kernel(kernel: np.ndarray) -> np.ndarray:
    """:func:`fake_quant_kernel` in NumPy: the kernel on its int8 grid, as exported."""
    axes = tuple(range(kernel.ndim - 1))
    scale = np.maximum(np.abs(kernel).max(axis=axes, keepdims=True) / 127.0, 1e-12)
    return (np.clip(np.round(kernel / scale), -127, 127) * scale).astype(np.float32)


def fake_quant(x, lo, hi):
    """Asymmetric int8 rounding over ``[lo, hi]`` (widened to hold 0, as TFLite does)."""
    lo, hi = ops.minimum(lo, 0.0), ops.maximum(hi, 0.0)
    scale = ops.maximum((hi - lo) / 255.0, 1e-8)
    zero = ops.clip(ops.round(-128.0 - lo / scale), -128.0, 127.0)
    rounded = (ops.clip(ops.round(x / scale) + zero, -128.0, 127.0) - zero) * scale
    inside = ops.clip(x, (-128.0 - zero) * scale, (127.0 - zero) * scale)
    return inside + ops.stop_gradient(rounded - inside)


class ActivationQuant(layers.Layer):
    """One int8 tensor of the graph: its calibrated range and an on/off switch (off while the
    ranges are measured, as the converter measures them, in float)."""

    def __init__(self, fixed: tuple[float, float] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.fixed = fixed

    def build(self, input_shape):
        lo, hi = self.fixed or (0.0, 1.0)
        const = keras.initializers.Constant
        self.lo = self.add_weight(shape=(), initializer=const(lo), trainable=False, name="lo")
        self.hi = self.add_weight(shape=(), initializer=const(hi), trainable=False, name="hi")
        self.on = self.add_weight(shape=(), initializer=const(1.0), trainable=False, name="on")

    def call(self, x):
        return x + self.on * (fake_quant(x, self.lo, self.hi) - x)


class QuantKernel(layers.Layer):
    """A conv of the folded graph computed with its kernel fake-quantized (no activation: the
    caller applies it, so that the ranges fall where TFLite's tensors are)."""

    def __init__(self, inner, **kwargs):
        super().__init__(name=f"{inner.name}_qkernel", **kwargs)
        self.inner = inner

    def call(self, x):
        return conv_with_kernel(self.inner, x, fake_quant_kernel(self.inner.kernel))


def conv_with_kernel(inner, x, kernel):
    """The conv ``inner`` of the folded graph (bias included, no activation) with ``kernel``
    in place of its own."""
    if isinstance(inner, SubPixelUpsample):
        before, after = inner.padding
        x = ops.pad(x, [[0, 0], [before, after], [before, after], [0, 0]])
        y = ops.conv(x, kernel, strides=1, padding="valid")
    elif isinstance(inner, DilatedConv):
        y = ops.conv(x, kernel, strides=1, padding="same", dilation_rate=inner.dilation)
    else:
        y = ops.conv(x, kernel, strides=inner.strides, padding=inner.padding,
                     dilation_rate=inner.dilation_rate)  # fmt: skip
    if inner.bias is not None:
        y = y + inner.bias
    if isinstance(inner, SubPixelUpsample):
        y = _depth_to_space(y, inner.stride)
    return y


def _depth_to_space(x, s: int):
    """TensorFlow's DEPTH_TO_SPACE (NHWC, channels ordered phase_y, phase_x, c) in keras.ops."""
    _, h, w, c = x.shape
    out = c // (s * s)
    x = ops.reshape(x, (-1, h, w, s, s, out))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, h, s, w, s, C)
    return ops.reshape(x, (-1, h * s, w * s, out))


__all__ = [
    "ActivationQuant",
    "QuantKernel",
    "conv_with_kernel",
    "fake_quant",
    "fake_quant_kernel",
    "snap_kernel",
]
