"""The rover graph: exact rewrites of a trained Keras model that make its int8 TFLite faster.

Applied at export (``trainer convert --graph rover``, the default), never at training; the
weights come from the trained model, nothing is retrained:

- **sub-pixel decoder**: a stride-s ``Conv2DTranspose`` (TFLite's TRANSPOSE_CONV, slow in int8)
  becomes a pad, a stride-1 conv with s*s times the channels and DEPTH_TO_SPACE. Every output
  pixel of a transposed conv is a sum over a few input pixels whose weights depend only on the
  pixel's phase (its position modulo s); the conv computes all s*s phases at once, one per
  channel group, and DEPTH_TO_SPACE interleaves them. Same arithmetic, same results (float32 to
  rounding).
- **logits head**: the final softmax is dropped; the rover needs the argmax, which the logits
  give, and computes probabilities in NumPy only where asked (confidence, parity). The model's
  metadata says ``output: logits``.
- **foldable dilated convs**: a dilated ``Conv2D`` is emitted as one Conv2D op with its dilation
  attribute. Keras emits SPACE_TO_BATCH_ND -> conv -> BATCH_TO_SPACE_ND; the converter folds
  that back into a dilated CONV_2D only when the SPACE_TO_BATCH_ND has one reader, and MarsSeg's
  two rate-2 convs read the same features, so they shared one and their BatchNorms stayed
  unfolded MUL/ADD ops.

``trainer convert --graph keras`` exports the model as trained (the comparison baseline).
"""

from __future__ import annotations

import math

import keras
import numpy as np

GRAPHS = ("rover", "keras")


def subpixel_kernel(kernel: np.ndarray, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A ``Conv2DTranspose`` kernel (kh, kw, out, in), 'same' padding, as a sub-pixel conv.

    TensorFlow's transposed conv is the gradient of a 'same' forward conv:
    ``out[o] = sum_i x[i] * w[o + p - s*i]`` per axis, with ``p`` the forward conv's padding
    before (``max(k - s, 0) // 2``). For the output ``o = s*m + a`` (phase ``a``), the input rows
    ``i = m - d`` contribute with ``w[s*d + a + p]`` wherever that index is inside the kernel.

    Returns:
        The conv kernel (K, K', in, s*s*out) with output channels ordered (phase_y, phase_x, out)
        as DEPTH_TO_SPACE expects, and the padding ``(before, after)`` to apply to both spatial
        axes before a 'valid' conv.
    """
    kh, kw, out_ch, in_ch = kernel.shape
    if kh != kw:
        raise ValueError(f"only square transposed-conv kernels are rewritten, got {kh}x{kw}")
    k, s = kh, stride
    pad = max(k - s, 0) // 2
    d_min = math.ceil(-(s - 1 + pad) / s)
    d_max = (k - 1 - pad) // s
    size = d_max - d_min + 1
    taps = np.zeros((size, size, in_ch, s, s, out_ch), kernel.dtype)
    for jy in range(size):
        for ay in range(s):
            ky = s * (d_max - jy) + ay + pad  # tap jy reads input row m - d_max + jy
            if not 0 <= ky < k:
                continue
            for jx in range(size):
                for ax in range(s):
                    kx = s * (d_max - jx) + ax + pad
                    if 0 <= kx < k:
                        taps[jy, jx, :, ay, ax, :] = kernel[ky, kx].T  # (out, in) -> (in, out)
    return taps.reshape(size, size, in_ch, s * s * out_ch), (d_max, -d_min)


class SubPixelUpsample(keras.layers.Layer):
    """Pad -> conv (stride 1, s*s*C outputs) -> DEPTH_TO_SPACE: a transposed conv's exact twin."""

    def __init__(self, kernel, bias, stride: int, padding: tuple[int, int], **kwargs):
        super().__init__(**kwargs)
        self.stride, self.padding = stride, padding
        self.kernel = self.add_weight(
            shape=kernel.shape, initializer=keras.initializers.Constant(kernel), name="kernel"
        )
        self.bias = None
        if bias is not None:
            tiled = np.tile(bias, stride * stride)  # one copy per phase
            self.bias = self.add_weight(
                shape=tiled.shape, initializer=keras.initializers.Constant(tiled), name="bias"
            )

    def call(self, x):
        import tensorflow as tf

        before, after = self.padding
        x = tf.pad(x, [[0, 0], [before, after], [before, after], [0, 0]])
        y = tf.nn.conv2d(x, self.kernel, strides=1, padding="VALID")
        if self.bias is not None:
            y = tf.nn.bias_add(y, self.bias)
        return tf.nn.depth_to_space(y, self.stride)


class DilatedConv(keras.layers.Layer):
    """A dilated ``Conv2D`` as one TensorFlow Conv2D op (stride 1, 'same')."""

    def __init__(self, kernel, bias, dilation: tuple[int, int], activation, **kwargs):
        super().__init__(**kwargs)
        self.dilation = dilation
        self.activation = keras.activations.get(activation)
        self.kernel = self.add_weight(
            shape=kernel.shape, initializer=keras.initializers.Constant(kernel), name="kernel"
        )
        self.bias = None
        if bias is not None:
            self.bias = self.add_weight(
                shape=bias.shape, initializer=keras.initializers.Constant(bias), name="bias"
            )

    def call(self, x):
        import tensorflow as tf

        y = tf.nn.conv2d(x, self.kernel, strides=1, padding="SAME", dilations=list(self.dilation))
        if self.bias is not None:
            y = tf.nn.bias_add(y, self.bias)
        return self.activation(y)


class HeadLogits(keras.layers.Layer):
    """Where the softmax was: passes the logits through (the call signature of ``Softmax``)."""

    def call(self, inputs, mask=None):
        return inputs


def _weights(layer) -> tuple[np.ndarray, np.ndarray | None]:
    kernel = np.asarray(layer.kernel.numpy(), np.float32)
    bias = np.asarray(layer.bias.numpy(), np.float32) if layer.use_bias else None
    return kernel, bias


def _rewrite(layer, counts: dict[str, int]):
    """The export-time replacement of one layer (the layer itself when it stays)."""
    layers = keras.layers
    if isinstance(layer, layers.Conv2DTranspose):
        strides, padding = tuple(layer.strides), layer.padding
        activation = keras.activations.serialize(layer.activation)
        linear = activation in ("linear", None) or activation.get("config") == "linear"
        if strides[0] == strides[1] > 1 and linear and layer.built:
            kernel, bias = _weights(layer)
            # 'valid' with kernel == stride pads nothing either: the same sums as 'same'
            same = padding == "same" or kernel.shape[0] == strides[0]
            if kernel.shape[0] == kernel.shape[1] and same:
                taps, pads = subpixel_kernel(kernel, strides[0])
                counts["subpixel"] += 1
                return SubPixelUpsample(taps, bias, strides[0], pads, name=f"{layer.name}_subpixel")
    if isinstance(layer, layers.Conv2D) and not isinstance(layer, layers.Conv2DTranspose):
        dilation = tuple(layer.dilation_rate)
        if max(dilation) > 1 and tuple(layer.strides) == (1, 1) and layer.padding == "same":
            kernel, bias = _weights(layer)
            counts["dilated"] += 1
            return DilatedConv(kernel, bias, dilation, layer.activation, name=f"{layer.name}_dil")
    if isinstance(layer, layers.Softmax) and layer.name == "head_softmax":
        counts["logits"] += 1
        return HeadLogits(name="head_softmax_dropped")
    return layer


def rover_graph(model: keras.Model) -> tuple[keras.Model, dict[str, int]]:
    """The trained model with the export-time rewrites (module docstring).

    Returns:
        The new model (sharing the other layers and their weights with ``model``) and the count of
        each rewrite: ``subpixel``, ``dilated``, ``logits``.
    """
    counts = {"subpixel": 0, "dilated": 0, "logits": 0}
    rewritten = keras.models.clone_model(
        model, clone_function=lambda layer: _rewrite(layer, counts)
    )
    return rewritten, counts


__all__ = ["GRAPHS", "DilatedConv", "SubPixelUpsample", "rover_graph", "subpixel_kernel"]
