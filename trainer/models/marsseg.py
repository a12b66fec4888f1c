"""MarsSeg for grayscale Mars terrain frames (sides multiples of 4), in two versions.

References:
    - ``marsseg``: the course report that this project implements (the seed's compact Keras
      MarsSeg; local test mIoU 0.6888, course test 0.69; public reconstruction 2,887,016
      parameters, ~3.2 GMAC per frame).
    - ``marsseg_paper``: J. Li, K. Chen, G. Tian, L. Li, Z. Shi, "MarsSeg: Mars Surface Semantic
      Segmentation with Multi-level Extractor and Connector", arXiv:2404.04155 (2024), IEEE TGRS
      63 (2025); with polarized self-attention (H. Liu et al., "Polarized Self-Attention", 2021)
      and strip pooling (Q. Hou et al., "Strip Pooling", CVPR 2020).

Choices where the references leave a detail open:
    - conv -> BatchNorm -> ReLU everywhere (the seed put ReLU before BatchNorm; this order folds
      BN into the conv on export and quantizes better);
    - both connectors read the encoder's last features (B, H/4, W/4, 256): the shallow connector
      with small dilations (local context), the deep one with pyramid pooling (global context),
      and their outputs are summed; this reproduces the seed's parameter count;
    - transposed convolutions are 3x3, stride 2;
    - the Keras model outputs softmax probabilities; the rover's .tflite outputs the logits
      (``trainer.export_graph``, which also turns the transposed convs into sub-pixel convs);
    - PSA uses mean instead of sum over pixels in its channel branch (the factor H*W is absorbed
      by the LayerNorm that follows) and the parallel layout (both rescalings summed);
    - the paper's optional deep supervision is not implemented.
"""

from __future__ import annotations

import keras
from keras import layers

from trainer.models.blocks import (
    ChannelDot,
    ChannelPool,
    LayerNorm,
    SpatialSoftmax,
    batch_norm,
    conv_bn_relu,
    image_pooling,
    scaled,
    upsample_to,
)


def build_marsseg(
    input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0
) -> keras.Model:
    """The seed's compact MarsSeg: encoder, Mini-ASPP + spatial attention, SPPM, decoder.

    Args:
        input_shape: (H, W, 1); H and W divisible by 4.
        num_classes: output channels (softmax).
        width: channel multiplier (1.0 reproduces the seed's ~2.89 M parameters).

    Returns:
        A functional ``keras.Model`` named ``marsseg``.
    """
    c = lambda n: scaled(n, width)  # noqa: E731
    inputs = keras.Input(input_shape, name="image")
    s1, s2, f = _encoder(inputs, c)
    shallow = layers.Add(name="shallow_sum")(
        [_mini_aspp(f, c(128), name="aspp"), _pixel_attention(f, c(128), name="pixattn")]
    )
    deep = _sppm(f, c(128), name="sppm")
    x = layers.Add(name="connector_sum")([shallow, deep])  # (B, H/4, W/4, 128)
    return _decoder(inputs, x, s2, s1, c, num_classes, name="marsseg")


def build_marsseg_paper(
    input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0
) -> keras.Model:
    """The paper's MarsSeg: the same encoder with polarized self-attention on the shallow path
    and strip pooling inside the deep pyramid pooling.

    Args:
        input_shape: (H, W, 1); H and W divisible by 4.
        num_classes: output channels (softmax).
        width: channel multiplier.

    Returns:
        A functional ``keras.Model`` named ``marsseg_paper``.
    """
    c = lambda n: scaled(n, width)  # noqa: E731
    inputs = keras.Input(input_shape, name="image")
    s1, s2, f = _encoder(inputs, c)
    attended = _polarized_self_attention(f, name="psa")
    shallow = _mini_aspp(attended, c(128), name="aspp")
    deep = _sppm(f, c(128), name="sppm", strip=True)
    x = layers.Add(name="connector_sum")([shallow, deep])
    return _decoder(inputs, x, s2, s1, c, num_classes, name="marsseg_paper")


# ----------------------------------------------------------------------------------------------


def _encoder(inputs, c):
    """Two downsamplings (output stride 4); returns the skips and the deep features."""
    x = conv_bn_relu(inputs, c(64), name="enc1_conv1")
    s1 = conv_bn_relu(x, c(64), name="enc1_conv2")  # (B, H, W, 64)
    x = layers.MaxPooling2D(name="enc1_pool")(s1)
    x = conv_bn_relu(x, c(128), name="enc2_conv1")
    s2 = conv_bn_relu(x, c(128), name="enc2_conv2")  # (B, H/2, W/2, 128)
    x = layers.MaxPooling2D(name="enc2_pool")(s2)
    f = conv_bn_relu(x, c(256), name="enc3_conv1")  # (B, H/4, W/4, 256)
    return s1, s2, f


def _mini_aspp(x, filters: int, *, name: str):
    """3x3 convs with dilation 1, 2, 3 and a 1x1 branch, concatenated, fused by a 1x1."""
    branches = [conv_bn_relu(x, filters, 1, name=f"{name}_1x1")]
    branches += [conv_bn_relu(x, filters, 3, dilation=r, name=f"{name}_rate{r}") for r in (1, 2, 3)]
    y = layers.Concatenate(name=f"{name}_concat")(branches)
    return conv_bn_relu(y, filters, 1, name=f"{name}_fuse")


def _pixel_attention(x, filters: int, *, name: str):
    """CBAM spatial attention: [mean_c, max_c] -> 7x7 conv -> sigmoid -> x * a -> 1x1 to ``filters``."""
    pooled = ChannelPool(name=f"{name}_pool")(x)  # (B, h, w, 2)
    attention = layers.Conv2D(1, 7, padding="same", activation="sigmoid", name=f"{name}_conv7")(
        pooled
    )
    y = layers.Multiply(name=f"{name}_scale")([x, attention])
    return conv_bn_relu(y, filters, 1, name=f"{name}_proj")


def _sppm(x, filters: int, *, name: str, strip: bool = False):
    """Semantic pyramid pooling: image pooling, 1x1, 3x3 dilation 2 and 4 (and strip pooling)."""
    branches = [
        image_pooling(x, filters, name=f"{name}_image"),
        conv_bn_relu(x, filters, 1, name=f"{name}_1x1"),
        conv_bn_relu(x, filters, 3, dilation=2, name=f"{name}_rate2"),
        conv_bn_relu(x, filters, 3, dilation=4, name=f"{name}_rate4"),
    ]
    if strip:
        branches.append(_strip_pooling(x, filters, name=f"{name}_strip"))
    y = layers.Concatenate(name=f"{name}_concat")(branches)
    return conv_bn_relu(y, filters, 1, name=f"{name}_fuse")


def _strip_pooling(x, filters: int, *, name: str):
    """Hou et al.: 1xW and Hx1 average pools, 3x1 and 1x3 convs, broadcast back, added, fused."""
    h, w = x.shape[1], x.shape[2]
    rows = layers.AveragePooling2D((1, w), name=f"{name}_pool_rows")(x)  # (B, h, 1, C)
    rows = layers.Conv2D(filters, (3, 1), padding="same", use_bias=False, name=f"{name}_conv_rows")(
        rows
    )
    rows = batch_norm(name=f"{name}_bn_rows")(rows)
    cols = layers.AveragePooling2D((h, 1), name=f"{name}_pool_cols")(x)  # (B, 1, w, C)
    cols = layers.Conv2D(filters, (1, 3), padding="same", use_bias=False, name=f"{name}_conv_cols")(
        cols
    )
    cols = batch_norm(name=f"{name}_bn_cols")(cols)
    rows = upsample_to(rows, (h, w), name=f"{name}_up_rows", interpolation="nearest")
    cols = upsample_to(cols, (h, w), name=f"{name}_up_cols", interpolation="nearest")
    y = layers.ReLU(name=f"{name}_relu")(layers.Add(name=f"{name}_add")([rows, cols]))
    return conv_bn_relu(y, filters, 1, name=f"{name}_fuse")


def _polarized_self_attention(x, *, name: str):
    """Polarized self-attention, parallel layout: x * channel weights + x * spatial weights."""
    channels = x.shape[-1]
    half = channels // 2
    # Channel-only branch: a softmax over pixels pools a half-width value into one vector.
    query = SpatialSoftmax(name=f"{name}_channel_softmax")(
        layers.Conv2D(1, 1, name=f"{name}_channel_query")(x)
    )  # (B, h, w, 1)
    value = layers.Conv2D(half, 1, name=f"{name}_channel_value")(x)  # (B, h, w, C/2)
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_channel_pool")(
        layers.Multiply(name=f"{name}_channel_weigh")([value, query])
    )  # (B, 1, 1, C/2)
    channel = layers.Conv2D(channels, 1, name=f"{name}_channel_up")(pooled)
    channel = LayerNorm(name=f"{name}_channel_norm")(channel)
    channel = layers.Activation("sigmoid", name=f"{name}_channel_sigmoid")(channel)  # (B, 1, 1, C)
    # Spatial-only branch: a pooled, channel-softmaxed query dotted with a value at every pixel.
    squery = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_spatial_pool")(
        layers.Conv2D(half, 1, name=f"{name}_spatial_query")(x)
    )
    squery = layers.Softmax(axis=-1, name=f"{name}_spatial_softmax")(squery)  # (B, 1, 1, C/2)
    svalue = layers.Conv2D(half, 1, name=f"{name}_spatial_value")(x)
    spatial = ChannelDot(name=f"{name}_spatial_dot")([squery, svalue])  # (B, h, w, 1)
    spatial = layers.Activation("sigmoid", name=f"{name}_spatial_sigmoid")(spatial)
    return layers.Add(name=f"{name}_sum")(
        [
            layers.Multiply(name=f"{name}_channel_scale")([x, channel]),
            layers.Multiply(name=f"{name}_spatial_scale")([x, spatial]),
        ]
    )


def _decoder(inputs, x, s2, s1, c, num_classes: int, *, name: str) -> keras.Model:
    """Two transposed-conv upsamplings with skips from the H/2 and H stages, softmax head."""
    x = layers.Conv2DTranspose(c(128), 3, strides=2, padding="same", name="dec1_upconv")(x)
    x = layers.Concatenate(name="dec1_skip")([x, s2])
    x = conv_bn_relu(x, c(128), name="dec1_conv")  # (B, H/2, W/2, 128)
    x = layers.Conv2DTranspose(c(64), 3, strides=2, padding="same", name="dec2_upconv")(x)
    x = layers.Concatenate(name="dec2_skip")([x, s1])
    x = conv_bn_relu(x, c(64), name="dec2_conv")  # (B, H, W, 64)
    logits = layers.Conv2D(num_classes, 1, name="head_conv")(x)
    outputs = layers.Softmax(name="head_softmax", dtype="float32")(
        logits
    )  # fp32 under mixed precision
    return keras.Model(inputs, outputs, name=name)
