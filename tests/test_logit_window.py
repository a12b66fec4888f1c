"""The logit window (trainer/logit_window.py): the head conv folded into relu6 of a window of the
logits keeps every pixel's class whose top two logits lie in the window, and the window is chosen
from the logits' own quantiles."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from trainer.export_graph import HeadLogits
from trainer.logit_window import apply_window, choose_window, head_conv


def _head_model(rng, features=6, classes=5):
    inputs = keras.Input((8, 8, features))
    conv = keras.layers.Conv2D(classes, 1, name="head_conv")
    model = keras.Model(inputs, HeadLogits(name="head_softmax_dropped")(conv(inputs)))
    conv.kernel.assign(rng.normal(0, 2.0, conv.kernel.shape).astype(np.float32))
    conv.bias.assign(rng.normal(0, 1.0, conv.bias.shape).astype(np.float32))
    return model


def test_the_window_keeps_each_class_decided_inside_it_and_clips_the_rest(rng):
    model = _head_model(rng)
    x = rng.normal(0, 1, (20, 8, 8, 6)).astype(np.float32)
    logits = keras.ops.convert_to_numpy(model(x))
    low, high = -1.0, 3.0
    apply_window(head_conv(model), low, high)
    y = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(y, np.clip(6 * (logits - low) / (high - low), 0, 6), atol=1e-4)
    top2 = np.sort(logits, -1)[..., -2:]
    inside = (top2[..., 1] > low) & (top2[..., 0] < high)
    assert 0.2 < inside.mean() < 1.0  # both kinds of pixel are there
    np.testing.assert_array_equal(y.argmax(-1)[inside], logits.argmax(-1)[inside])


def test_the_window_spans_the_top_two_logits_and_what_the_confidence_needs(rng):
    logits = rng.normal(0, 3.0, (200, 16, 16, 5)).astype(np.float32)
    low, high = choose_window(logits, tail=0.01, confidence=0.9)
    ordered = np.sort(logits.reshape(-1, 5), -1)
    assert (ordered[:, -1] < low).mean() <= 0.01 + 1e-3  # the top logit is above it
    assert (ordered[:, -2] > high).mean() <= 0.01 + 1e-3  # the second below it
    # a narrow band: the confidence the window must say widens it downwards
    narrow_low, narrow_high = choose_window(logits, tail=0.01, confidence=0.5)
    wide_low, wide_high = choose_window(logits, tail=0.01, confidence=0.9999)
    assert wide_high == narrow_high and wide_low < narrow_low
    assert wide_high - wide_low >= math.log(4 * 0.9999 / 0.0001) - 1e-6
    with pytest.raises(ValueError, match="tail must be in"):
        choose_window(logits, tail=0.0)


def test_only_a_linear_conv_before_the_logits_head_takes_a_window(rng):
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(5, 1)(inputs))
    with pytest.raises(ValueError, match="needs the rover graph's logits head"):
        head_conv(plain)
    relu = keras.layers.Conv2D(5, 1, activation="relu", name="head_conv")
    model = keras.Model(inputs, HeadLogits()(relu(inputs)))
    with pytest.raises(ValueError, match=r"head_conv .*relu.*only into a linear Conv2D"):
        head_conv(model)
    with pytest.raises(ValueError, match="empty logit window"):
        apply_window(head_conv(_head_model(rng)), 2.0, 2.0)
