"""The frames of one data set as the trainer holds them, and the checks every loader applies."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from edge.contract.labels import MARS, LabelSet
from edge.contract.preprocess import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class MarsData:
    """Frames of one data set, ready for training.

    Attributes:
        images: float32 (N, H, W) in [0, 1].
        labels: uint8 (N, H, W), values of ``label_set``.
        test_images: float32 (M, H, W) in [0, 1], or None.
        test_labels: uint8 (M, H, W), or None (the course file has none).
        source: where the frames came from.
        index: position of each frame in the source (kept through outlier removal).
        label_set: the classes.
        layout: ``npz`` (course layout) or ``ai4mars``.
        preprocessing: how the frames were brought to their size (the rover repeats it).
        names: per training frame, its id in the source (AI4Mars file stem), or None.
        test_names: the same for the test frames.
        groups: per training frame, the rover position it was taken at (AI4Mars: site and
            drive); frames of one group stay on one side of a split. None: no groups.
        files: AI4Mars: frame id -> its files (frame, label, masks), training and test alike;
            what native-resolution scoring and the export read back.
    """

    images: np.ndarray
    labels: np.ndarray
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    source: str = ""
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    label_set: LabelSet = MARS
    layout: str = "npz"
    preprocessing: Preprocessing | None = None
    names: list[str] | None = None
    test_names: list[str] | None = None
    groups: np.ndarray | None = None
    files: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.index) != len(self.images):
            self.index = np.arange(len(self.images))
        if self.preprocessing is None:
            self.preprocessing = Preprocessing(*self.images.shape[1:3])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.images.shape[1:3])

    def subset(self, idx: np.ndarray) -> MarsData:
        """The frames at ``idx`` (test frames kept as they are)."""
        idx = np.asarray(idx, dtype=np.int64)
        return replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            index=self.index[idx],
            names=None if self.names is None else [self.names[i] for i in idx],
            groups=None if self.groups is None else self.groups[idx],
        )


def validate_images(images: np.ndarray, name: str) -> np.ndarray:
    """Check grayscale frames and scale them to float32 [0, 1].

    Values are expected in 0..255 (the course images span 2..254). A set whose values all lie in
    [0, 1] is taken as already scaled.

    Raises:
        ValueError: for a non-numeric dtype, NaN or infinite pixels, or values outside 0..255.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"{name} has shape {images.shape}; expected (N, H, W) grayscale frames")
    if not (np.issubdtype(images.dtype, np.number) or images.dtype == bool):
        raise ValueError(f"{name} has dtype {images.dtype}; expected numbers (uint8 or float)")
    if min(images.shape[1:]) < 16:
        raise ValueError(
            f"{name} frames are {images.shape[1]}x{images.shape[2]}; expected at least 16x16"
        )
    if len(images) == 0:
        return np.zeros(images.shape, np.float32)
    finite = np.isfinite(images).all(axis=(1, 2))
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{name} has NaN or infinite pixels in {int((~finite).sum())} frame(s), the first is "
            f"frame {bad}; repair or drop those frames"
        )
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{name} values span {lo:g}..{hi:g}; expected grayscale 0..255")
    scale = 1.0 if hi <= 1.0 and images.dtype.kind == "f" else 255.0
    if scale == 1.0:
        log.warning("%s values lie within [0, 1]; taking them as already scaled", name)
    return (images.astype(np.float32) / np.float32(scale)).astype(np.float32)


def validate_labels(labels: np.ndarray, name: str, label_set: LabelSet = MARS) -> np.ndarray:
    """Check that labels are whole numbers of ``label_set`` (0..4 for Mars); return them as uint8.

    Raises:
        ValueError: naming the first offending frame and value.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"{name} has shape {labels.shape}; expected (N, H, W) label maps")
    if not np.issubdtype(labels.dtype, np.number):
        raise ValueError(
            f"{name} has dtype {labels.dtype}; expected integer class labels "
            f"0..{label_set.num_classes - 1}"
        )
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            frame = int(np.flatnonzero(bad.any(axis=(1, 2)))[0])
            value = labels[frame][bad[frame]][0]
            raise ValueError(
                f"{name} labels must be whole numbers 0..{label_set.num_classes - 1}, found {value} "
                f"in frame {frame}; "
                "were the masks resized with interpolation?"
            )
    out_of_range = (labels < 0) | (labels >= label_set.num_classes)
    if out_of_range.any():
        frame = int(np.flatnonzero(out_of_range.any(axis=(1, 2)))[0])
        value = labels[frame][out_of_range[frame]][0]
        raise ValueError(
            f"expected labels in 0..{label_set.num_classes - 1} ({', '.join(label_set.names)}), "
            "found "
            f"{value:g} in frame {frame} of {name}; is this the right file?"
        )
    return labels.astype(np.uint8)
