"""The Keras metric and the numpy metric are one definition: they must agree."""

from __future__ import annotations

import numpy as np
import pytest

from edge.contract.labels import MARS
from edge.contract.metrics import score
from trainer.metrics import MeanIoU, segmentation_metrics


def _probs(pred, num_classes=5):
    return np.eye(num_classes, dtype=np.float32)[pred]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_keras_metric_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, size=(6, 16, 32))
    y_pred = np.where(rng.random(y_true.shape) < 0.6, y_true, rng.integers(0, 5, size=y_true.shape))
    if seed == 2:
        y_true[y_true == 4] = 3  # big rock absent from the truth
        y_pred[y_pred == 4] = 1  # and from the prediction: skipped, not counted as 0
    metrics = segmentation_metrics(MARS)
    for start in range(0, 6, 2):  # streamed over three batches
        for m in metrics:
            m.update_state(y_true[start : start + 2], _probs(y_pred[start : start + 2]))
    expected = score(y_true, y_pred, MARS)
    assert float(metrics[0].result()) == pytest.approx(expected.mean_iou, abs=1e-6)
    for m, (name, value) in zip(metrics[1:], expected.per_class.items()):
        assert m.name == f"iou_{name}"
        if np.isnan(value):
            assert float(m.result()) == 0.0
        else:
            assert float(m.result()) == pytest.approx(value, abs=1e-6)


def test_perfect_and_reset():
    y = np.random.default_rng(3).integers(0, 5, size=(2, 8, 8))
    m = MeanIoU()
    m.update_state(y, _probs(y))
    assert float(m.result()) == pytest.approx(1.0)
    m.reset_state()
    m.update_state(y, _probs((y % 4) + 1))  # every scored pixel wrong
    assert float(m.result()) == pytest.approx(0.0)
    assert MeanIoU.from_config(m.get_config()).class_id is None


def test_hand_computed_small_cases():
    """Values worked out by hand: a one-pixel class, one valid class, the defaults' names."""
    assert MeanIoU().name == "miou" and MeanIoU(class_id=2).name == "iou_2"
    # truth [0, 1, 2, 2], prediction [1, 1, 2, 0]: the background pixel is ignored by default
    truth = np.array([[[0, 1, 2, 2]]])
    m, every_pixel = MeanIoU(3), MeanIoU(3, ignore=None)
    for metric in (m, every_pixel):
        metric.update_state(truth, _probs(np.array([[[1, 1, 2, 0]]]), 3))
    # class 1: tp 1, union 1 (a single pixel) -> 1.0; class 2: tp 1, union 2 -> 0.5
    assert float(m.result()) == pytest.approx(0.75)
    # every pixel: class 0 tp 0 / union 2; class 1 tp 1 / union 2; class 2 tp 1 / union 2
    assert float(every_pixel.result()) == pytest.approx((0 + 0.5 + 0.5) / 3)
    only_one = MeanIoU(3)
    only_one.update_state(np.array([[[1, 1]]]), _probs(np.array([[[1, 1]]]), 3))
    assert float(only_one.result()) == pytest.approx(1.0)  # one valid class: its IoU, not half


def test_a_label_set_of_its_own_is_followed():
    """Four classes, the ignored one last: the metrics take both from the label set."""
    from edge.contract.labels import LabelSet

    labels = LabelSet(("soil", "rock", "sand", "unlabelled"), ignore=3)
    truth = np.array([[[0, 1, 2, 3, 3]]])
    metrics = segmentation_metrics(labels)
    for metric in metrics:
        metric.update_state(truth, _probs(np.array([[[0, 1, 1, 0, 1]]]), 4))
    # soil 1/1, rock 1/2, sand 0/1; the unlabelled pixels are not scored
    assert float(metrics[0].result()) == pytest.approx((1 + 0.5 + 0) / 3)
    assert [m.name for m in metrics[1:]] == ["iou_soil", "iou_rock", "iou_sand"]
