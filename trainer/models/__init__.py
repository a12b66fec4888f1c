"""The model registry: every trainable architecture, by name."""

from __future__ import annotations

from collections.abc import Callable

import keras

from trainer.models.deeplabv3plus import build_deeplabv3plus
from trainer.models.marsseg import build_marsseg, build_marsseg_paper
from trainer.models.segformer import build_segformer
from trainer.models.twobranch import build_twobranch
from trainer.models.unet import build_unet

MODELS: dict[str, Callable[..., keras.Model]] = {
    "marsseg": build_marsseg,
    "marsseg_paper": build_marsseg_paper,
    "unet": build_unet,
    "deeplabv3plus": build_deeplabv3plus,
    "segformer": build_segformer,
    "twobranch": build_twobranch,
}
# Total downsampling of each model: the frame's sides must be multiples of it.
STRIDES = {
    "marsseg": 4,
    "marsseg_paper": 4,
    "unet": 16,
    "deeplabv3plus": 8,
    "segformer": 32,
    "twobranch": 32,
}


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: float = 1.0,
) -> keras.Model:
    """Build a registered model for frames of ``input_shape`` (H, W, 1) and ``num_classes``.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), a bad width, or a
            frame size the model cannot take.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    if not 0.0 < width <= 4.0:
        raise ValueError(f"width must be in (0, 4], got {width}")
    h, w = int(input_shape[0]), int(input_shape[1])
    stride = STRIDES[name]
    if h % stride or w % stride:
        fit = "{}x{}".format(*(max(stride, round(v / stride) * stride) for v in (h, w)))
        raise ValueError(
            f"{name} takes frames whose sides are multiples of {stride}; {h}x{w} is not "
            f"(e.g. {fit})"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return MODELS[name]((h, w, int(input_shape[2])), int(num_classes), width=width)


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass (batch 1), counted over conv and dense layers.

    Elementwise ops, pooling and normalization are left out (they are a small share); attention
    matmuls are counted.
    """
    from keras import layers

    from trainer.models.segformer import MatMul

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2DTranspose):
            kh, kw = layer.kernel_size
            total += _numel(layer.input.shape) * kh * kw * layer.filters
        elif isinstance(layer, layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += _numel(layer.output.shape) * kh * kw
        elif isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            total += _numel(layer.output.shape) * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            total += _numel(layer.output.shape) * layer.input.shape[-1]
        elif isinstance(layer, MatMul):
            a = layer.input[0].shape
            total += _numel(layer.output.shape) * a[-1]
    return int(total)


def _numel(shape) -> int:
    n = 1
    for d in shape[1:]:
        n *= int(d)
    return n


__all__ = ["MODELS", "STRIDES", "build_model", "count_macs"]
