"""A two-branch network for the rover's budget: a detail branch at stride 4, a semantic branch to
stride 32, fused by a light pyramid decoder.

Made for this regime (a few GMAC per frame, int8 on one ARM core, trained from scratch on a few
thousand frames), after BiSeNet (C. Yu et al., ECCV 2018; BiSeNet V2, IJCV 2021): MarsSeg keeps
its whole encoder at output stride 4, so its receptive field is a few dozen pixels and most of its
MACs are spent at full resolution; telling sand from soil and bedrock needs context from much of
the frame. Here a shared stem brings the frame to stride 4 in two strided convs; a shallow detail
branch stays there (edges of rocks); a residual semantic branch goes to stride 32 with global
pooling on top (what kind of terrain this is); a feature-pyramid decoder adds the semantic
features back at strides 16 and 8 and meets the detail branch at stride 4, and the logits are
resized bilinearly to the frame.

Choices where the references leave a detail open:
    - plain 3x3 residual blocks instead of depthwise ones: on the CPUs this project trains on,
      depthwise convs train slowly in TensorFlow, and XNNPACK's int8 3x3 convs are fast;
    - two blocks a stage, the last stage dilated 2 in its second block;
    - the context is a global-pooling branch added to the stride-32 features (BiSeNet's context
      embedding), not a full PPM;
    - no auxiliary heads (the trainer has one loss a model).
"""

from __future__ import annotations

import keras
from keras import layers

from trainer.models.blocks import conv_bn_relu, image_pooling, residual_block, scaled, upsample_to


def build_twobranch(
    input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0
) -> keras.Model:
    """Two-branch segmenter: stem to stride 4, detail branch, semantic branch to stride 32.

    Args:
        input_shape: (H, W, 1); H and W divisible by 32.
        num_classes: output channels (softmax).
        width: channel multiplier (1.0: ~1.2 GMAC and ~1.6 M parameters at 256x256).

    Returns:
        A functional ``keras.Model`` named ``twobranch``.
    """
    h, w = input_shape[:2]
    # At least 16 channels: oneDNN's backward pass is unstable with 8-channel convs (deeplabv3plus)
    c = lambda n: scaled(n, width, minimum=16)  # noqa: E731
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn_relu(inputs, c(32), strides=2, name="stem_conv1")  # (B, H/2, W/2, 32)
    s4 = conv_bn_relu(x, c(48), strides=2, name="stem_conv2")  # (B, H/4, W/4, 48)
    detail = conv_bn_relu(s4, c(48), name="detail_conv1")
    detail = conv_bn_relu(detail, c(48), name="detail_conv2")  # (B, H/4, W/4, 48)
    s8 = _stage(s4, c(96), name="sem8")  # (B, H/8, W/8, 96)
    s16 = _stage(s8, c(128), name="sem16")  # (B, H/16, W/16, 128)
    s32 = _stage(s16, c(192), name="sem32", dilation=2)  # (B, H/32, W/32, 192)
    context = image_pooling(s32, c(192), name="context_image")
    x = layers.Add(name="context_add")([s32, context])
    x = _merge(x, s16, c(128), name="dec16")  # (B, H/16, W/16, 128)
    x = _merge(x, s8, c(96), name="dec8")  # (B, H/8, W/8, 96)
    x = upsample_to(x, detail.shape[1:3], name="dec4_up")
    x = layers.Concatenate(name="dec4_concat")([x, detail])
    x = conv_bn_relu(x, c(64), name="dec4_conv")  # (B, H/4, W/4, 64)
    logits = layers.Conv2D(num_classes, 1, name="head_conv")(x)
    logits = upsample_to(logits, (h, w), name="head_up")  # (B, H, W, classes)
    outputs = layers.Softmax(name="head_softmax", dtype="float32")(logits)
    return keras.Model(inputs, outputs, name="twobranch")


def _stage(x, filters: int, *, name: str, dilation: int = 1):
    """A strided residual block, then one at stride 1 (dilated in the last stage)."""
    x = residual_block(x, filters, strides=2, name=f"{name}_block1")
    return residual_block(x, filters, strides=1, dilation=dilation, name=f"{name}_block2")


def _merge(deep, skip, filters: int, *, name: str):
    """Upsample the deeper features x2, add the skip's 1x1 projection, refine with a 3x3 conv."""
    up = upsample_to(deep, skip.shape[1:3], name=f"{name}_up")
    up = conv_bn_relu(up, filters, 1, name=f"{name}_reduce")
    lateral = conv_bn_relu(skip, filters, 1, name=f"{name}_lateral")
    x = layers.Add(name=f"{name}_add")([up, lateral])
    return conv_bn_relu(x, filters, name=f"{name}_conv")
