"""Confusion matrix and mean IoU in numpy; the one definition of the score.

The score of the Mars terrain task is the mean IoU over classes 1-4: background (label 0) is
never scored. Pixels whose *true* label is background are left out of the confusion matrix
entirely, so predicting anything there costs nothing. ``trainer.metrics`` implements the same
definition as a streaming Keras metric and is tested against this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.classes import CLASS_NAMES, NUM_CLASSES, SCORED_CLASSES


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """Count (true, predicted) label pairs.

    Args:
        y_true: true labels, any shape.
        y_pred: predicted labels, the same shape.
        num_classes: size of the matrix.

    Returns:
        int64 matrix (num_classes, num_classes), rows true, columns predicted.

    Raises:
        ValueError: if the shapes differ or a label is out of range.
    """
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_pred = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} pixels but y_pred has {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def iou_per_class(cm: np.ndarray, ignore_background: bool = True) -> np.ndarray:
    """IoU of every class from a confusion matrix.

    Args:
        cm: confusion matrix, rows true, columns predicted.
        ignore_background: drop the row of true background first (the task's definition).

    Returns:
        float64 array (num_classes,); NaN where a class is absent from both truth and prediction.
    """
    cm = np.asarray(cm, dtype=np.float64).copy()
    if ignore_background:
        cm[0, :] = 0.0
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(cm: np.ndarray, classes: tuple[int, ...] = SCORED_CLASSES) -> float:
    """Mean IoU over ``classes`` (1-4 by default), skipping classes absent from truth and prediction.

    Returns NaN when none of them occurs.
    """
    ious = iou_per_class(cm)[list(classes)]
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


@dataclass
class IoUReport:
    """Scores of one set of predictions."""

    mean_iou: float
    per_class: dict[str, float]
    confusion: np.ndarray
    pixel_accuracy: float

    def as_dict(self) -> dict:
        return {
            "mean_iou": self.mean_iou,
            "per_class_iou": self.per_class,
            "pixel_accuracy": self.pixel_accuracy,
            "confusion": self.confusion.tolist(),
        }


def score(y_true: np.ndarray, y_pred: np.ndarray) -> IoUReport:
    """Mean IoU (classes 1-4), per-class IoU and pixel accuracy on non-background pixels."""
    cm = confusion_matrix(y_true, y_pred)
    ious = iou_per_class(cm)
    scored = cm[1:, :]
    accuracy = float(np.trace(cm[1:, 1:]) / scored.sum()) if scored.sum() else float("nan")
    return IoUReport(
        mean_iou=mean_iou(cm),
        per_class={CLASS_NAMES[c]: float(ious[c]) for c in SCORED_CLASSES},
        confusion=cm,
        pixel_accuracy=accuracy,
    )


def class_fractions(labels: np.ndarray) -> np.ndarray:
    """Pixel fraction of every class, (NUM_CLASSES,); labels of any shape."""
    labels = np.asarray(labels)
    return np.bincount(labels.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES] / max(labels.size, 1)
