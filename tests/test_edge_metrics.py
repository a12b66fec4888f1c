from __future__ import annotations

import numpy as np
import pytest

from edge.metrics import confusion_matrix, iou_per_class, mean_iou, score


def test_perfect_prediction_scores_one(rng):
    y = rng.integers(0, 5, size=(4, 8, 8))
    assert score(y, y).mean_iou == 1.0


def test_disjoint_prediction_scores_zero():
    y = np.array([[1, 2], [3, 4]])
    assert score(y, np.array([[2, 3], [4, 1]])).mean_iou == 0.0


def test_background_truth_is_never_scored():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([1, 2, 1, 1])  # wrong only where the truth is background
    assert score(y_true, y_pred).mean_iou == 1.0


def test_hand_computed_case():
    y_true = np.array([1, 1, 1, 2, 2, 0])
    y_pred = np.array([1, 1, 2, 2, 0, 3])
    # soil: tp 2, fn 1 -> 2/3; bedrock: tp 1, fp 1, fn 1 -> 1/3; sand, big rock absent -> skipped
    ious = iou_per_class(confusion_matrix(y_true, y_pred))
    assert ious[1] == pytest.approx(2 / 3) and ious[2] == pytest.approx(1 / 3)
    assert np.isnan(ious[3]) and np.isnan(ious[4])
    assert mean_iou(confusion_matrix(y_true, y_pred)) == pytest.approx(0.5)


def test_shape_mismatch_and_range_errors():
    with pytest.raises(ValueError, match="pixels"):
        confusion_matrix(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"outside 0\.\.4"):
        confusion_matrix(np.array([5]), np.array([1]))
