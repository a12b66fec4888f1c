"""Confusion matrix and mean IoU in numpy; the one definition of the score.

The score of the Mars terrain task is the mean IoU over the scored classes (1-4 of
:data:`edge.contract.labels.MARS`): the ignored label (background, 0) is never scored. Pixels whose *true*
label is ignored are left out of the IoU entirely, so predicting anything there costs nothing. ``trainer.metrics`` implements the same
definition as a streaming Keras metric and is tested against this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.contract.labels import MARS, LabelSet


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = MARS.num_classes
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


def iou_per_class(cm: np.ndarray, ignore: int | None = 0) -> np.ndarray:
    """IoU of every class from a confusion matrix.

    Args:
        cm: confusion matrix, rows true, columns predicted.
        ignore: drop the row of this true label first (the task's definition: background).

    Returns:
        float64 array (num_classes,); NaN where a class is absent from both truth and prediction.
    """
    cm = np.asarray(cm, dtype=np.float64).copy()
    if ignore is not None:
        cm[ignore, :] = 0.0
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(cm: np.ndarray, label_set: LabelSet) -> float:
    """Mean IoU over the scored classes, skipping classes absent from truth and prediction.

    Returns NaN when none of them occurs.
    """
    ious = iou_per_class(cm, label_set.ignore)[list(label_set.scored)]
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


@dataclass
class IoUReport:
    """Scores of one set of predictions."""

    mean_iou: float
    per_class: dict[str, float]
    confusion: np.ndarray
    pixel_accuracy: float
    hazards: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready: a NaN (class absent from truth and prediction) becomes None."""
        return {
            "mean_iou": _finite_or_none(self.mean_iou),
            "per_class_iou": {k: _finite_or_none(v) for k, v in self.per_class.items()},
            "pixel_accuracy": _finite_or_none(self.pixel_accuracy),
            "hazards": self.hazards,
            "confusion": self.confusion.tolist(),
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def report_from_confusion(cm: np.ndarray, label_set: LabelSet) -> IoUReport:
    """Mean IoU, per-class IoU and pixel accuracy (on scored pixels) of a confusion matrix."""
    cm = np.asarray(cm)
    ious = iou_per_class(cm, label_set.ignore)
    rows = list(label_set.scored)
    scored = cm[rows, :].sum()
    correct = sum(cm[c, c] for c in rows)
    return IoUReport(
        mean_iou=mean_iou(cm, label_set),
        per_class={label_set.names[c]: float(ious[c]) for c in label_set.scored},
        confusion=cm,
        pixel_accuracy=float(correct / scored) if scored else float("nan"),
        hazards=hazard_report(cm, label_set),
    )


def score(y_true: np.ndarray, y_pred: np.ndarray, label_set: LabelSet) -> IoUReport:
    """Mean IoU over the scored classes, per-class IoU and pixel accuracy on scored pixels."""
    return report_from_confusion(confusion_matrix(y_true, y_pred, label_set.num_classes), label_set)


def class_fractions(labels: np.ndarray, num_classes: int = MARS.num_classes) -> np.ndarray:
    """Pixel fraction of every class, (num_classes,); labels of any shape."""
    labels = np.asarray(labels)
    if labels.dtype == np.uint8 and num_classes <= 16:  # a rover's mask: no int64 copy of it
        counts = np.array([np.count_nonzero(labels == c) for c in range(num_classes)])
    else:
        counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(labels.size, 1)


def hazard_report(cm: np.ndarray, label_set: LabelSet) -> dict[str, dict]:
    """For every hazard class: IoU, recall, precision, and the share of its predicted pixels that
    lie on ignored (unlabelled) ground: sky, far field or rover hardware in AI4Mars, where a
    hazard report is always false.

    Returns:
        {class name: {"iou", "recall", "precision", "on_unlabelled", "predicted_pixels"}};
        a ratio without pixels to count is None.
    """
    cm = np.asarray(cm, dtype=np.float64)
    ious = iou_per_class(cm, label_set.ignore)
    out = {}
    for name in label_set.hazards:
        k = label_set.index(name)
        predicted = cm[:, k].sum()
        predicted_scored = predicted - (
            cm[label_set.ignore, k] if label_set.ignore is not None else 0
        )
        out[name] = {
            "iou": None if np.isnan(ious[k]) else float(ious[k]),
            "recall": _ratio(cm[k, k], cm[k, :].sum()),
            "precision": _ratio(cm[k, k], predicted_scored),
            "on_unlabelled": None
            if label_set.ignore is None
            else _ratio(cm[label_set.ignore, k], predicted),
            "predicted_pixels": int(predicted),
        }
    return out


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None
