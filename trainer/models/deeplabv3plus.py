"""DeepLabV3+ (Chen et al., ECCV 2018) with a small residual encoder trained from scratch.

No ImageNet backbone: nothing can be downloaded, and the course frames are grayscale. The encoder
reaches output stride 8 (H/8 x W/8 features); the decoder takes the low-level
features at stride 2.
"""

from __future__ import annotations

import keras
from keras import layers

from trainer.models.blocks import conv_bn_relu, image_pooling, residual_block, scaled, upsample_to


def build_deeplabv3plus(
    input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0
) -> keras.Model:
    """DeepLabV3+: residual encoder, ASPP (rates 1, 2, 3 at stride 8 + image pooling), decoder.

    Args:
        input_shape: (H, W, 1); H and W divisible by 8.
        num_classes: output channels (softmax).
        width: channel multiplier.

    Returns:
        A functional ``keras.Model`` named ``deeplabv3plus``.
    """
    h, w = input_shape[:2]
    # At least 16 channels: oneDNN (TF 2.21, CPU) crashes in the backward pass of this encoder
    # with 8-channel layers (seen at width 0.25).
    c = lambda n: scaled(n, width, minimum=16)  # noqa: E731
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn_relu(inputs, c(32), name="stem_conv1")
    low = residual_block(x, c(64), strides=2, name="enc1")  # (B, H/2, W/2, 64)
    x = residual_block(low, c(128), strides=2, name="enc2")  # (B, H/4, W/4, 128)
    x = residual_block(x, c(256), strides=2, name="enc3")  # (B, H/8, W/8, 256)
    x = residual_block(x, c(256), strides=1, name="enc4", dilation=2)
    aspp = [conv_bn_relu(x, c(128), 1, name="aspp_1x1")]
    aspp += [conv_bn_relu(x, c(128), 3, dilation=r, name=f"aspp_rate{r}") for r in (1, 2, 3)]
    aspp.append(image_pooling(x, c(128), name="aspp_image"))
    x = conv_bn_relu(layers.Concatenate(name="aspp_concat")(aspp), c(128), 1, name="aspp_fuse")
    x = upsample_to(x, low.shape[1:3], name="dec_up1")
    low = conv_bn_relu(low, c(48), 1, name="dec_low_proj")
    x = layers.Concatenate(name="dec_skip")([x, low])
    x = conv_bn_relu(x, c(128), name="dec_conv1")
    x = conv_bn_relu(x, c(128), name="dec_conv2")
    x = upsample_to(x, (h, w), name="dec_up2")
    logits = layers.Conv2D(num_classes, 1, name="head_conv")(x)
    outputs = layers.Softmax(name="head_softmax", dtype="float32")(logits)
    return keras.Model(inputs, outputs, name="deeplabv3plus")
