"""UNet (Ronneberger et al., 2015), four levels, trained from scratch: a baseline of the report."""

from __future__ import annotations

import keras
from keras import layers

from trainer.models.blocks import conv_bn_relu, scaled


def build_unet(
    input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0
) -> keras.Model:
    """UNet with 32-64-128-256 channels and a 512 bottleneck at ``width=1``.

    Args:
        input_shape: (H, W, 1); H and W divisible by 16.
        num_classes: output channels (softmax).
        width: channel multiplier.

    Returns:
        A functional ``keras.Model`` named ``unet``.
    """
    inputs = keras.Input(input_shape, name="image")
    x, skips = inputs, []
    for level, base in enumerate((32, 64, 128, 256), start=1):
        x = _double_conv(x, scaled(base, width), name=f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"enc{level}_pool")(x)
    x = _double_conv(x, scaled(512, width), name="bottleneck")  # (B, H/16, W/16, 512)
    for level, (base, skip) in enumerate(zip((256, 128, 64, 32), reversed(skips)), start=1):
        x = layers.Conv2DTranspose(scaled(base, width), 2, strides=2, name=f"dec{level}_upconv")(x)
        x = layers.Concatenate(name=f"dec{level}_skip")([x, skip])
        x = _double_conv(x, scaled(base, width), name=f"dec{level}")
    logits = layers.Conv2D(num_classes, 1, name="head_conv")(x)
    outputs = layers.Softmax(name="head_softmax", dtype="float32")(logits)
    return keras.Model(inputs, outputs, name="unet")


def _double_conv(x, filters: int, *, name: str):
    x = conv_bn_relu(x, filters, name=f"{name}_conv1")
    return conv_bn_relu(x, filters, name=f"{name}_conv2")
