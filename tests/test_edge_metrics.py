from __future__ import annotations

import numpy as np
import pytest

from edge.contract.labels import MARS
from edge.contract.metrics import confusion_matrix, iou_per_class, mean_iou, score


def test_perfect_prediction_scores_one(rng):
    y = rng.integers(0, 5, size=(4, 8, 8))
    assert score(y, y, MARS).mean_iou == 1.0


def test_disjoint_prediction_scores_zero():
    y = np.array([[1, 2], [3, 4]])
    assert score(y, np.array([[2, 3], [4, 1]]), MARS).mean_iou == 0.0


def test_background_truth_is_never_scored():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([1, 2, 1, 1])  # wrong only where the truth is background
    assert score(y_true, y_pred, MARS).mean_iou == 1.0


def test_hand_computed_case():
    y_true = np.array([1, 1, 1, 2, 2, 0])
    y_pred = np.array([1, 1, 2, 2, 0, 3])
    # soil: tp 2, fn 1 -> 2/3; bedrock: tp 1, fp 1, fn 1 -> 1/3; sand, big rock absent -> skipped
    ious = iou_per_class(confusion_matrix(y_true, y_pred))
    assert ious[1] == pytest.approx(2 / 3) and ious[2] == pytest.approx(1 / 3)
    assert np.isnan(ious[3]) and np.isnan(ious[4])
    assert mean_iou(confusion_matrix(y_true, y_pred), MARS) == pytest.approx(0.5)


def test_shape_mismatch_and_range_errors():
    with pytest.raises(ValueError, match="pixels"):
        confusion_matrix(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"outside 0\.\.4"):
        confusion_matrix(np.array([5]), np.array([1]))


def test_the_rover_safety_figures_by_hand():
    """Truth and prediction of 10 pixels, every figure counted by hand."""
    from edge.contract.metrics import class_fractions, hazard_report, score

    # truth:      0  0  0  1  1  2  4  4  4  3
    # prediction: 4  4  1  1  4  2  4  4  0  3
    truth = np.array([0, 0, 0, 1, 1, 2, 4, 4, 4, 3])
    predicted = np.array([4, 4, 1, 1, 4, 2, 4, 4, 0, 3])
    report = score(truth, predicted, MARS)
    # scored pixels (truth != 0): 7, of which correct: 1 (soil), 2 (bedrock), 3 (sand), two rocks
    assert report.pixel_accuracy == pytest.approx(5 / 7)
    rock = report.hazards["big_rock"]
    # predicted big rock: 5 pixels, 2 on unlabelled ground, 3 on labelled (2 right, 1 soil)
    assert rock == {
        "iou": pytest.approx(2 / 4),  # tp 2 / (truth 3 + predicted-on-labelled 3 - 2)
        "recall": pytest.approx(2 / 3),
        "precision": pytest.approx(2 / 3),
        "on_unlabelled": pytest.approx(2 / 5),
        "predicted_pixels": 5,
    }
    as_dict = report.as_dict()
    assert as_dict["pixel_accuracy"] == pytest.approx(5 / 7)
    assert (
        as_dict["confusion"][0][4] == 2 and as_dict["hazards"]["big_rock"]["predicted_pixels"] == 5
    )
    # nothing predicted: the ratios are None, not 0 or NaN
    nothing = hazard_report(np.diag([5, 1, 1, 1, 0]).astype(np.int64), MARS)["big_rock"]
    assert nothing["precision"] is None and nothing["iou"] is None
    assert class_fractions(np.array([[1, 1], [4, 0]])) == pytest.approx([0.25, 0.5, 0, 0, 0.25])
    only_background = score(np.zeros(4, int), np.zeros(4, int), MARS)
    assert (
        np.isnan(only_background.pixel_accuracy) and only_background.as_dict()["mean_iou"] is None
    )


def test_a_label_set_without_background_and_with_three_classes():
    from edge.contract.labels import LabelSet
    from edge.contract.metrics import class_fractions, hazard_report

    every = LabelSet(("flat", "rock", "sand"), ignore=None, hazards=("rock",))
    truth, predicted = np.array([0, 1, 1, 2]), np.array([1, 1, 1, 2])
    report = score(truth, predicted, every)
    assert report.confusion.shape == (3, 3) and report.pixel_accuracy == pytest.approx(3 / 4)
    rock = hazard_report(report.confusion, every)["rock"]
    assert rock["precision"] == pytest.approx(2 / 3) and rock["on_unlabelled"] is None
    assert rock["iou"] == pytest.approx(2 / 3)
    assert class_fractions(np.array([0, 1, 1, 1]), 5) == pytest.approx([0.25, 0.75, 0, 0, 0])
