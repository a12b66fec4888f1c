"""Streaming Keras metrics: mean IoU over classes 1-4 and per-class IoU.

Same definition as ``edge.metrics`` (tested to agree to 1e-6): pixels whose true label is
background are left out; a class absent from both truth and prediction is skipped in the mean.
"""

from __future__ import annotations

import keras
from keras import ops

from edge.classes import CLASS_NAMES, NUM_CLASSES


@keras.saving.register_keras_serializable(package="marsseg")
class MeanIoU(keras.metrics.Metric):
    """Mean IoU over the scored classes from a running confusion matrix.

    Args:
        num_classes: size of the label set.
        class_id: report this one class's IoU instead of the mean.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        class_id: int | None = None,
        name: str | None = None,
        **kwargs,
    ):
        if name is None:
            name = "miou" if class_id is None else f"iou_{CLASS_NAMES[class_id]}"
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.class_id = class_id
        # float64: counts pass 2^24 after ~2,000 frames, where float32 stops counting exactly
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", dtype="float64", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        predicted = ops.reshape(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), (-1,))
        scored = ops.cast(labels > 0, "float64")  # true background is never scored
        index = labels * self.num_classes + predicted
        counts = ops.segment_sum(scored, index, num_segments=self.num_classes**2)
        self.confusion.assign_add(ops.reshape(counts, (self.num_classes, self.num_classes)))

    def iou(self):
        cm = self.confusion
        tp = ops.diagonal(cm)
        union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - tp
        return tp / ops.maximum(union, 1.0), union > 0

    def result(self):
        iou, valid = self.iou()
        if self.class_id is not None:
            return ops.cast(iou[self.class_id], "float32")
        valid = ops.cast(valid, "float64")[1:]
        return ops.cast(ops.sum(iou[1:] * valid) / ops.maximum(ops.sum(valid), 1.0), "float32")

    def reset_state(self):
        self.confusion.assign(ops.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "class_id": self.class_id}


def segmentation_metrics(num_classes: int = NUM_CLASSES) -> list[MeanIoU]:
    """The mean IoU and one IoU per scored class, for ``model.compile``."""
    return [MeanIoU(num_classes)] + [
        MeanIoU(num_classes, class_id=c) for c in range(1, num_classes)
    ]
