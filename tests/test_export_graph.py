"""The rover graph's rewrites are exact: the same outputs as the trained Keras layers."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from trainer.export_graph import SubPixelUpsample, rover_graph, subpixel_kernel
from trainer.models import build_model


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [(3, 2, "same"), (2, 2, "valid"), (4, 2, "same"), (5, 2, "same"), (3, 3, "same")],
)
def test_subpixel_upsampling_equals_the_transposed_conv(kernel, stride, padding):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    layer = keras.layers.Conv2DTranspose(4, kernel, strides=stride, padding=padding)
    layer.build(x.shape)
    layer.bias.assign(rng.standard_normal(4).astype(np.float32))
    expected = np.asarray(layer(x))
    taps, pads = subpixel_kernel(np.asarray(layer.kernel), stride)
    twin = SubPixelUpsample(taps, np.asarray(layer.bias), stride, pads)
    got = np.asarray(twin(x))
    assert got.shape == expected.shape == (2, 5 * stride, 7 * stride, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_phases_take_the_kernel_taps_worked_out_by_hand():
    # 1-D along each axis, kernel 3, stride 2: out[2m] = w0 x[m] + w2 x[m-1], out[2m+1] = w1 x[m]
    w = np.zeros((3, 3, 1, 1), np.float32)
    w[:, :, 0, 0] = np.arange(9).reshape(3, 3)  # w[ky, kx] = 3 ky + kx
    taps, pads = subpixel_kernel(w, 2)
    assert pads == (1, 0) and taps.shape == (2, 2, 1, 4)
    by_phase = taps[:, :, 0, :].reshape(2, 2, 2, 2)  # (jy, jx, phase y, phase x)
    # phase (0, 0): rows (m-1 -> w2, m -> w0) x cols (n-1 -> w2, n -> w0)
    np.testing.assert_array_equal(by_phase[:, :, 0, 0], [[8, 6], [2, 0]])
    # phase (1, 1): only (m, n) with w[1, 1]
    np.testing.assert_array_equal(by_phase[:, :, 1, 1], [[0, 0], [0, 4]])
    # phase (0, 1): rows (m-1 -> w2, m -> w0), col n -> w1
    np.testing.assert_array_equal(by_phase[:, :, 0, 1], [[0, 7], [0, 1]])


def test_rover_graph_gives_the_logits_of_the_trained_model():
    keras.utils.set_random_seed(3)
    model = build_model("marsseg", (32, 32, 1), 5, width=0.25)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # BatchNorm statistics that are not the identity
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    rover, counts = rover_graph(model)
    assert counts == {"subpixel": 2, "dilated": 4, "logits": 1}
    kinds = {type(layer).__name__ for layer in rover.layers}
    assert "Conv2DTranspose" not in kinds and "Softmax" not in kinds
    x = rng.random((2, 32, 32, 1)).astype(np.float32)
    probs = model.predict(x, verbose=0)
    logits = rover.predict(x, verbose=0)
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    np.testing.assert_allclose(soft, probs, atol=1e-5)
    assert (soft.argmax(-1) == probs.argmax(-1)).all()
    # the rewrite shares the trained layers: nothing was re-initialized
    assert model.get_layer("enc1_conv1_conv") is rover.get_layer("enc1_conv1_conv")
