from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.losses import LOSSES, class_weights_from_labels, make_loss, parse_loss_spec


def _onehot(labels, p_true=1.0, num_classes=5):
    off = (1.0 - p_true) / (num_classes - 1)
    probs = np.full((*labels.shape, num_classes), off, np.float32)
    np.put_along_axis(probs, labels[..., None], p_true, axis=-1)
    return probs


@pytest.fixture
def labels():
    return np.random.default_rng(0).integers(0, 5, size=(2, 8, 8)).astype(np.int32)


def test_uniform_prediction_costs_log_five(labels):
    probs = np.full((*labels.shape, 5), 0.2, np.float32)
    assert float(make_loss("ce", ignore=0)(labels, probs)) == pytest.approx(math.log(5), rel=1e-5)


def test_perfect_prediction_costs_nothing(labels):
    probs = _onehot(labels)
    for name in ("ce", "dice", "focal", "boundary", "plain_ce"):
        assert float(make_loss(name, ignore=0)(labels, probs)) == pytest.approx(0.0, abs=1e-4), name


def test_background_pixels_are_ignored(labels):
    probs = _onehot(labels, 0.6)
    worse = probs.copy()
    worse[labels == 0] = np.array([0.0, 0.0, 0.0, 0.0, 1.0])  # confidently wrong on background only
    assert float(make_loss("ce", ignore=0)(labels, worse)) == pytest.approx(
        float(make_loss("ce", ignore=0)(labels, probs)), rel=1e-6
    )
    assert (
        float(make_loss("plain_ce", ignore=0)(labels, worse))
        > float(make_loss("plain_ce", ignore=0)(labels, probs)) + 1
    )


def test_hand_computed_weighted_ce():
    labels = np.array([[[1, 2]]], np.int32)
    probs = np.array([[[[0, 0.5, 0.5, 0, 0], [0, 0.25, 0.75, 0, 0]]]], np.float32)
    weights = np.array([0, 1.0, 3.0, 1, 1])
    expected = (1.0 * -math.log(0.5) + 3.0 * -math.log(0.75)) / 4.0
    assert float(make_loss("weighted_ce", weights, ignore=0)(labels, probs)) == pytest.approx(
        expected, rel=1e-5
    )


def test_focal_is_below_ce_and_boundary_above(labels):
    probs = _onehot(labels, 0.7)
    ce, focal, bound = (
        float(make_loss(n, ignore=0)(labels, probs)) for n in ("ce", "focal", "boundary")
    )
    assert focal < ce < bound


def test_dice_of_disjoint_prediction_hand_computed():
    labels = np.ones((1, 4, 4), np.int32)
    # soil and bedrock: (0 + 1) / (16 + 1); sand and big rock absent everywhere: (0 + 1) / (0 + 1)
    expected = 1 - np.mean([1 / 17, 1 / 17, 1.0, 1.0])
    assert float(
        make_loss("dice", ignore=0)(labels, _onehot(np.full((1, 4, 4), 2, np.int32)))
    ) == pytest.approx(expected, rel=1e-5)


def test_spec_parsing_and_errors():
    assert parse_loss_spec("ce+0.5*dice") == {"ce": 1.0, "dice": 0.5}
    with pytest.raises(ValueError, match="valid names: " + ", ".join(LOSSES)):
        parse_loss_spec("ce+lovasz")
    with pytest.raises(ValueError, match="bad weight"):
        parse_loss_spec("x*ce")
    with pytest.raises(ValueError, match="needs class weights"):
        make_loss("weighted_ce", ignore=0)


def test_class_weights_favour_rare_classes():
    labels = np.array([0] * 50 + [1] * 40 + [2] * 40 + [3] * 15 + [4] * 5)
    w = class_weights_from_labels(labels, 5, 0)
    assert w[0] == 0 and w[4] > w[3] > w[1] == w[2]
    assert class_weights_from_labels(np.array([1, 1, 2]), 5, 0)[4] == pytest.approx(
        1.5
    )  # absent: the largest weight


def test_per_frame_keeps_the_mean():
    from trainer.losses import per_frame

    labels = np.array([[[1, 2], [3, 0]], [[4, 4], [1, 1]]], np.int32)
    probs = _onehot(np.array([[[1, 1], [1, 1]], [[4, 2], [1, 3]]], np.int32)) * 0.9 + 0.02
    batch = float(make_loss("ce+dice", ignore=0)(labels, probs))
    values = np.asarray(per_frame(make_loss("ce+dice", ignore=0))(labels, probs))
    assert values.shape == (2,) and values == pytest.approx([batch, batch], rel=1e-6)


def test_the_ignored_label_comes_from_the_label_set():
    """A label set whose ignored label is its last class: the losses leave that label out, and
    every class counts where nothing is ignored."""
    labels = np.array([[[0, 1], [2, 2]]], np.int32)  # class 2 is this set's "unlabelled"
    probs = _onehot(np.array([[[0, 1], [0, 0]]], np.int32), 1.0, 3)  # right on 0 and 1, wrong on 2
    for name in ("ce", "dice", "focal", "boundary", "afd"):
        assert float(make_loss(name, ignore=2)(labels, probs)) == pytest.approx(0.0, abs=1e-4)
        assert float(make_loss(name, ignore=None)(labels, probs)) > 0.1, name
    assert float(make_loss("background", ignore=2)(labels, probs)) > 5  # 2 never predicted
    with pytest.raises(ValueError, match="needs a label set with an ignored label"):
        make_loss("background", ignore=None)(labels, probs)
    w = class_weights_from_labels(np.array([0, 0, 1, 2, 2, 2]), 3, 2)
    assert w[2] == 0 and w[0] == pytest.approx(0.75) and w[1] == pytest.approx(1.5)
