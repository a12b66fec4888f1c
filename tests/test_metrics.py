"""The Keras metric and the numpy metric are one definition: they must agree."""

from __future__ import annotations

import numpy as np
import pytest

from edge.metrics import score
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
    metrics = segmentation_metrics()
    for start in range(0, 6, 2):  # streamed over three batches
        for m in metrics:
            m.update_state(y_true[start : start + 2], _probs(y_pred[start : start + 2]))
    expected = score(y_true, y_pred)
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
