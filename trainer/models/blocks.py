"""Small building blocks shared by the models: functions from tensor to tensor, plus the few
custom layers that Keras lacks. Every op here quantizes to int8 in TFLite builtins."""

from __future__ import annotations

import keras
from keras import layers, ops

# Keras' default BN momentum (0.99) needs thousands of steps before the moving statistics match
# the weights; the short CPU budgets of this project have hundreds. 0.9 is PyTorch's default.
BN_MOMENTUM = 0.9


def batch_norm(*, name: str):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


def scaled(channels: int, width: float, minimum: int = 8) -> int:
    """Channel count under a width multiplier, rounded to a multiple of 8 (SIMD-friendly)."""
    return max(minimum, round(channels * width / 8.0) * 8)


def conv_bn_relu(
    x,
    filters: int,
    kernel: int | tuple[int, int] = 3,
    *,
    name: str,
    dilation: int = 1,
    strides: int = 1,
):
    """Conv (no bias) -> BatchNorm -> ReLU; the BN folds into the conv when exported."""
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        dilation_rate=dilation,
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = batch_norm(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def residual_block(x, filters: int, *, strides: int, name: str, dilation: int = 1):
    """Basic residual block (He et al. 2016): two 3x3 convs (the second dilated by ``dilation``),
    a strided 1x1 projection on the shortcut where the shape changes."""
    y = conv_bn_relu(x, filters, strides=strides, name=f"{name}_conv1")
    y = layers.Conv2D(
        filters, 3, padding="same", dilation_rate=dilation, use_bias=False, name=f"{name}_conv2"
    )(y)
    y = batch_norm(name=f"{name}_bn2")(y)
    if strides != 1 or x.shape[-1] != filters:
        x = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_proj")(x)
        x = batch_norm(name=f"{name}_proj_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(layers.Add(name=f"{name}_add")([x, y]))


def upsample_to(x, size: tuple[int, int], *, name: str, interpolation: str = "bilinear"):
    """Resize a (B, h, w, C) tensor to ``size`` by an integer factor (static shapes only)."""
    h, w = x.shape[1], x.shape[2]
    if (h, w) == tuple(size):
        return x
    if size[0] % h or size[1] % w:
        raise ValueError(
            f"{name}: cannot upsample {h}x{w} to {size[0]}x{size[1]} by an integer factor"
        )
    return layers.UpSampling2D(
        (size[0] // h, size[1] // w), interpolation=interpolation, name=name
    )(x)


def image_pooling(x, filters: int, *, name: str):
    """Global average pool -> 1x1 conv-BN-ReLU -> broadcast back to (h, w): the image-level branch."""
    h, w = x.shape[1], x.shape[2]
    y = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_gap")(x)  # (B, 1, 1, C)
    y = conv_bn_relu(y, filters, 1, name=name)
    return upsample_to(y, (h, w), name=f"{name}_up", interpolation="nearest")


@keras.saving.register_keras_serializable(package="marsseg")
class ChannelPool(layers.Layer):
    """Channel mean and channel max stacked: (B, H, W, C) -> (B, H, W, 2) (CBAM spatial attention)."""

    def call(self, x):
        return ops.concatenate(
            [ops.mean(x, axis=-1, keepdims=True), ops.max(x, axis=-1, keepdims=True)], axis=-1
        )

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2)


@keras.saving.register_keras_serializable(package="marsseg")
class SpatialSoftmax(layers.Layer):
    """Softmax over all pixels of a single-channel map: (B, H, W, 1) -> (B, H, W, 1), sums to 1.

    Flattened to (B, 1, H*W) so that TFLite sees a plain last-axis SOFTMAX.
    """

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        flat = ops.reshape(x, (-1, 1, h * w))
        return ops.reshape(ops.softmax(flat, axis=-1), (-1, h, w, 1))


@keras.saving.register_keras_serializable(package="marsseg")
class ChannelDot(layers.Layer):
    """Per-pixel dot product of a (B, 1, 1, C) query with a (B, H, W, C) value: -> (B, H, W, 1)."""

    def call(self, inputs):
        query, value = inputs
        return ops.sum(query * value, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shapes):
        return (*input_shapes[1][:-1], 1)


@keras.saving.register_keras_serializable(package="marsseg")
class LayerNorm(layers.Layer):
    """Layer normalization over the last axis, written with ops that TFLite quantizes to int8.

    Keras' own LayerNormalization computes ``-mean * inv + beta``, and the NEG op has no int8
    kernel, which leaves a float island in an int8 model; this one only subtracts and multiplies.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        dim = input_shape[-1]
        self.gamma = self.add_weight(shape=(dim,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(dim,), initializer="zeros", name="beta")

    def call(self, x):
        dtype = x.dtype
        x = ops.cast(x, "float32")  # statistics in float32 under mixed precision
        centered = x - ops.mean(x, axis=-1, keepdims=True)
        variance = ops.mean(centered * centered, axis=-1, keepdims=True)
        y = centered * ops.rsqrt(variance + self.epsilon)
        return ops.cast(y * self.gamma + self.beta, dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
