"""The logit window: the int8 output's 256 levels spent where a pixel's class is decided.

The int8 file's output is its head conv's, rounded to 256 levels over the calibrated range of the
logits: about -15 to 19 on the rover model, steps of 0.13. Two classes closer than a step round to
one value or swap, and the boundaries between soil, sand and bedrock are full of near ties (2.3 %
of the validation pixels have their top two logits within 0.12): that rounding alone, applied to
the float logits, flips 0.65 % of the pixels (the whole int8 file flipped 1.15 %).

Only a pixel's top two logits decide its class, and they lie in a narrow band: the top one above
about 0.8 and the second below about 5.5 in all but 1e-4 of the pixels. So the head conv computes
``relu6(a * logits + b)`` instead: the affine that maps a window ``[low, high]`` onto ``[0, 6]``
is folded into its kernel and bias, and the clip is TFLite's fused RELU6, free. The arg max stays
the float model's wherever the top logit is above ``low`` and the second below ``high``, and the
steps shrink to ``(high - low) / 255``. On the shipped model that bought 0.11-0.15 points of
agreement, not 0.65: the near ties it saves are also the pixels the other convs' rounding flips.

The window also bounds what the confidence can say: a pixel whose other classes are all clipped to
``low`` and its own to ``high`` reads ``1 / (1 + (C - 1) exp(low - high))``. The window is made
wide enough for that to be at least :data:`CONFIDENCE` (0.999), at a small cost in steps.

The int8 file's metadata records ``logit_window: {low, high}``; the rover
(:class:`edge.segmenter.Segmenter`) maps the output back to logits, ``low + y (high - low) / 6``.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from trainer.export_graph import HeadLogits

TAIL = 1e-4  # share of pixels whose top logit may fall below the window, or second above it
CONFIDENCE = 0.999  # the highest top-class probability the window must still express
RELU6_TOP = 6.0


def head_conv(model: keras.Model) -> keras.layers.Conv2D:
    """The conv whose output are the logits (read by the rover graph's :class:`HeadLogits`).

    Raises:
        ValueError: the model has no logits head, or it is not a linear Conv2D.
    """
    heads = [layer for layer in model.layers if isinstance(layer, HeadLogits)]
    if len(heads) != 1:
        raise ValueError("the logit window needs the rover graph's logits head (one HeadLogits)")
    conv = heads[0].input._keras_history.operation
    activation = getattr(getattr(conv, "activation", None), "__name__", "linear")
    if type(conv) is not keras.layers.Conv2D or activation != "linear" or not conv.use_bias:
        raise ValueError(f"the logits come from {conv.name} ({type(conv).__name__}, "
                         f"{activation}): the window folds only into a linear Conv2D with a bias")  # fmt: skip
    return conv


def choose_window(
    logits: np.ndarray, tail: float = TAIL, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """``(low, high)`` for logits (..., C) of calibration frames: ``low`` the ``tail`` quantile of
    the top logit, ``high`` the ``1 - tail`` quantile of the second, then ``low`` lowered until
    the window can say ``confidence``."""
    if not 0 < tail < 0.5:
        raise ValueError(f"the window's tail must be in (0, 0.5), got {tail}")
    classes = logits.shape[-1]
    flat = logits.reshape(-1, classes)
    top2 = np.partition(flat, classes - 2, axis=-1)[:, -2:]  # (pixels, 2): second, top
    low = float(np.quantile(top2.max(-1), tail))
    high = float(np.quantile(top2.min(-1), 1.0 - tail))
    span = math.log((classes - 1) * confidence / (1.0 - confidence))
    low = min(low, high - span)
    return low, high


def apply_window(conv: keras.layers.Conv2D, low: float, high: float) -> None:
    """Fold ``relu6(6 (logits - low) / (high - low))`` into ``conv``, in place."""
    if not high > low:
        raise ValueError(f"an empty logit window [{low}, {high}]")
    gain = RELU6_TOP / (high - low)
    kernel, bias = (np.asarray(w.numpy(), np.float32) for w in (conv.kernel, conv.bias))
    conv.kernel.assign(kernel * np.float32(gain))
    conv.bias.assign((bias - np.float32(low)) * np.float32(gain))
    conv.activation = keras.activations.get("relu6")


__all__ = ["CONFIDENCE", "TAIL", "apply_window", "choose_window", "head_conv"]
