"""Streaming Keras metrics: mean IoU over the scored classes and per-class IoU.

Same definition as ``edge.contract.metrics`` (tested to agree to 1e-6): pixels whose true label is the
ignored one (background) are left out; a class absent from both truth and prediction is skipped
in the mean.
"""

from __future__ import annotations

import keras
from keras import ops

from edge.contract.labels import MARS, LabelSet


def _count_dtype() -> str:
    """The confusion counts' type: float64 (float32 stops counting exactly past 2^24, ~2,000
    frames), or int32 under JAX, which has no 64-bit types unless ``jax_enable_x64`` (exact up
    to 2^31 pixels a cell: 32,768 frames of 256x256 all in one cell, per epoch)."""
    if keras.backend.backend() != "jax":
        return "float64"
    import jax

    return "float64" if jax.config.jax_enable_x64 else "int32"


@keras.saving.register_keras_serializable(package="marsseg")
class MeanIoU(keras.metrics.Metric):
    """Mean IoU over the scored classes from a running confusion matrix.

    Args:
        num_classes: size of the label set.
        class_id: report this one class's IoU instead of the mean.
        ignore: the true label left out of the matrix (None: every pixel counts).
    """

    def __init__(
        self,
        num_classes: int = MARS.num_classes,
        class_id: int | None = None,
        ignore: int | None = 0,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name or ("miou" if class_id is None else f"iou_{class_id}"), **kwargs)
        self.num_classes = num_classes
        self.class_id = class_id
        self.ignore = ignore
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype=_count_dtype(),
            name="confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        predicted = ops.reshape(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), (-1,))
        count = self.confusion.dtype
        if self.ignore is None:
            scored = ops.ones_like(labels, dtype=count)
        else:
            scored = ops.cast(labels != self.ignore, count)
        index = labels * self.num_classes + predicted
        counts = ops.segment_sum(scored, index, num_segments=self.num_classes**2)
        self.confusion.assign_add(ops.reshape(counts, (self.num_classes, self.num_classes)))

    def iou(self):
        cm = ops.cast(self.confusion, "float64" if _count_dtype() == "float64" else "float32")
        tp = ops.diagonal(cm)
        union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - tp
        return tp / ops.maximum(union, 1.0), union > 0

    def result(self):
        iou, valid = self.iou()
        if self.class_id is not None:
            return ops.cast(iou[self.class_id], "float32")
        keep = [c != self.ignore for c in range(self.num_classes)]
        valid = ops.cast(valid, iou.dtype) * ops.convert_to_tensor(keep, dtype=iou.dtype)
        return ops.cast(ops.sum(iou * valid) / ops.maximum(ops.sum(valid), 1.0), "float32")

    def reset_state(self):
        self.confusion.assign(ops.zeros(self.confusion.shape, self.confusion.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "class_id": self.class_id,
            "ignore": self.ignore,
        }


def segmentation_metrics(label_set: LabelSet) -> list[MeanIoU]:
    """The mean IoU (``miou``) and one IoU per scored class (``iou_<name>``) for ``compile``."""
    n, ignore = label_set.num_classes, label_set.ignore
    return [MeanIoU(n, ignore=ignore)] + [
        MeanIoU(n, class_id=c, ignore=ignore, name=f"iou_{label_set.names[c]}")
        for c in label_set.scored
    ]
