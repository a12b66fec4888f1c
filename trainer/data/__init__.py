"""Load, validate and clean the Mars terrain data; split it for training.

Two layouts are read:

- the Kaggle course npz (``training_set`` (N, 2, H, W): image and labels; ``test_set``
  (M, H, W) images; optionally ``test_labels``, which the synthetic stand-in writes). Its frames
  are used at their own size (64x128 in the course file).
- the AI4Mars release (NAVCAM frames with crowd-sourced labels), at a size the caller picks; see
  :func:`load_ai4mars` for the protocol.

Images come out as float32 in [0, 1] (the scaling the edge side applies), labels as uint8 in
0..4 of :data:`edge.contract.labels.MARS` (0 = background/unlabelled, never scored). Every check raises
``ValueError`` with a message that says what is wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

from trainer.data.ai4mars import (
    AI4MARS_AGREEMENTS,
    AI4MARS_DEFAULT_SIZE,
    AI4MarsLayout,
    ai4mars_files,
    find_ai4mars,
    load_ai4mars,
    native_labels,
    read_ai4mars_label,
    read_ai4mars_pair,
)
from trainer.data.dataset import MarsData, validate_images, validate_labels
from trainer.data.npz import is_course_file, load_npz
from trainer.data.split import (
    SPLIT_ANEW,
    OutlierReport,
    clean_and_split,
    clean_frames,
    default_min_repeats,
    drop_outliers,
    find_outliers,
    has_hazard,
    recorded_val_names,
    removes_outliers,
    split_frames,
    split_from_record,
    split_indices,
    split_source,
)

# ----------------------------------------------------------------------------------------------
# Loading.


def load_dataset(
    path: str | Path,
    size: tuple[int, int] | None = None,
    crop: str = "none",
    agreement: int = 3,
) -> MarsData:
    """Load a course-style npz or an AI4Mars folder, whichever ``path`` is.

    Args:
        path: the npz, or the AI4Mars root or any folder under it.
        size: (height, width) for folder data sets (default 128x128); an npz is used at its own
            size and refuses another.
        crop: ``none`` or ``centre`` (folder data sets; see :class:`edge.contract.preprocess.Preprocessing`).
        agreement: AI4Mars test labels: the ``masked-gold-min<N>-100agree`` set to use.

    Raises:
        ValueError: if the path is missing or its contents are not a valid data set.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"{path} does not exist; give the course npz (mars_for_students.npz), an AI4Mars "
            "folder, or make a synthetic set with `python tools/make_synthetic.py`"
        )
    if path.is_dir():
        return load_ai4mars(path, size or AI4MARS_DEFAULT_SIZE, crop=crop, agreement=agreement)
    data = load_npz(path)
    if size is not None and tuple(size) != data.frame_shape:
        h, w = data.frame_shape
        raise ValueError(
            f"{path.name} holds {h}x{w} frames but {size[0]}x{size[1]} was asked (by --size or "
            "the run's config.json); an npz is used at its own size, --size picks the size of "
            "folder data sets such as AI4Mars"
        )
    return data


def load_data(cfg) -> MarsData:
    """Load the data set a :class:`trainer.config.DataConfig` describes (path, size, crop,
    expert test set)."""
    return load_dataset(cfg.path, cfg.frame_size, cfg.crop, cfg.test_agreement)


__all__ = [
    "AI4MARS_AGREEMENTS",
    "AI4MARS_DEFAULT_SIZE",
    "SPLIT_ANEW",
    "AI4MarsLayout",
    "MarsData",
    "OutlierReport",
    "ai4mars_files",
    "clean_and_split",
    "clean_frames",
    "default_min_repeats",
    "drop_outliers",
    "find_ai4mars",
    "find_outliers",
    "has_hazard",
    "is_course_file",
    "load_ai4mars",
    "load_data",
    "load_dataset",
    "load_npz",
    "native_labels",
    "read_ai4mars_label",
    "read_ai4mars_pair",
    "recorded_val_names",
    "removes_outliers",
    "split_frames",
    "split_from_record",
    "split_indices",
    "split_source",
    "validate_images",
    "validate_labels",
]
