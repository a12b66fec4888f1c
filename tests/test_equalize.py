"""Cross-layer equalization (trainer/equalize.py): exact in float, fairer int8 activation grids."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from tests.test_qat import _marsseg
from trainer import qat
from trainer.equalize import apply_scales, channel_ranges, equalize, find_groups


def _kwargs(model):
    return {
        "readers": qat._consumers(model),
        "passthrough": (qat.FoldedNorm, layers.ReLU, layers.UpSampling2D),
        "kernels": qat.KERNEL_LAYERS,
    }


def test_equalization_leaves_the_float_model_as_it_was_and_evens_the_channels(rng):
    folded, _ = qat.export_graph(_marsseg(rng))
    twin, _ = qat.export_graph(_marsseg(np.random.default_rng(0)))  # another graph, same names
    twin.set_weights(folded.get_weights())
    frames = rng.random((6, 32, 64), dtype=np.float32)
    want = qat.predict_logits(folded, frames)
    record = equalize([folded, twin], frames, **_kwargs(folded))
    tensors = {r["tensor"] for r in record}
    # the plain conv -> ReLU -> conv chains and the concatenations read by one conv
    assert {"enc1_conv1_relu", "dec2_conv_relu", "aspp_concat", "sppm_concat"} <= tensors
    assert all(r["median_share_after"] > r["median_share_before"] for r in record)
    got = qat.predict_logits(folded, frames)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    # the second graph took the same scales
    for a, b in zip(folded.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_capped_relu_or_a_second_reader_is_not_equalized(rng):
    inputs = keras.Input((8, 8, 1))
    a = layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    capped = layers.ReLU(max_value=6.0, name="capped")(a)  # relu6 does not commute with a scale
    b = layers.Conv2D(4, 1, name="b")(capped)
    c = layers.Conv2D(4, 3, padding="same", name="c")(b)
    plain = layers.ReLU(name="plain")(c)
    d = layers.Conv2D(4, 1, name="d")(plain)
    e = layers.Conv2D(4, 1, name="e")(plain)  # a second reader of the same activation
    model = keras.Model(inputs, layers.Add()([d, e]))
    assert find_groups(model, **_kwargs(model)) == []

    single = keras.Model(inputs, layers.Conv2D(2, 1, name="f")(layers.ReLU(name="r")(a)))
    (group,) = find_groups(single, **_kwargs(single))
    assert group.tensor == "r" and group.reader.name == "f"
    x = rng.random((2, 8, 8, 1), dtype=np.float32)
    want = keras.ops.convert_to_numpy(single(x))
    (ranges,) = channel_ranges(single, [group], x[..., 0])
    apply_scales(single, group, np.array([2.0, 0.5, 4.0, 1.0], np.float32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(single(x)), want, rtol=1e-5, atol=1e-6)
    assert ranges.shape == (4,) and (ranges >= 0).all()
