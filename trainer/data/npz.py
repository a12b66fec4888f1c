"""The course npz (and the synthetic stand-in in its layout)."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from edge.contract.labels import MARS, LabelSet
from edge.run.telemetry import file_sha256
from trainer.data.dataset import MarsData, validate_images, validate_labels

log = logging.getLogger(__name__)

# The official course file, so that `trainer inspect` can say it is looking at exactly that.
COURSE_FILE_SHA256 = "70498488de0e67d414c4b8f983e6d5f342761a02690db42dee6c006262ef7f09"
COURSE_FILE_BYTES = 75_001_810


def load_npz(path: str | Path) -> MarsData:
    """Load and validate the Kaggle course layout.

    Args:
        path: an ``.npz`` with ``training_set`` (N, 2, H, W) and optionally ``test_set`` (M, H, W)
            and ``test_labels`` (M, H, W). Any numeric dtype is accepted. A label set other
            than Mars' comes as ``class_names`` (C,) strings (label 0 is the ignored one,
            unlabelled) and optionally ``hazard_classes`` (names among them).

    Returns:
        The validated frames, images scaled to [0, 1].

    Raises:
        ValueError: naming the key, frame and value that is wrong.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(
            f"could not read {path} as an npz archive ({err}); is the file complete?"
        ) from err
    with archive:
        keys = list(archive.files)
        if "training_set" not in keys:
            raise ValueError(
                f"{path.name} has no key 'training_set' (found {keys}); expected the course layout "
                "'training_set' (N, 2, H, W) and 'test_set' (M, H, W)"
            )
        try:
            train = archive["training_set"]
            test = archive["test_set"] if "test_set" in keys else None
            test_labels = archive["test_labels"] if "test_labels" in keys else None
            label_set = _label_set(archive, path)
        except (ValueError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise ValueError(
                f"could not read the arrays of {path} ({err}); is the file complete?"
            ) from err

    if train.ndim != 4 or train.shape[1] != 2:
        raise ValueError(
            f"training_set has shape {train.shape}; expected (N, 2, H, W): N frames, each an image "
            "([:, 0]) and its labels ([:, 1])"
        )
    images = validate_images(train[:, 0], "training_set[:, 0]")
    labels = validate_labels(train[:, 1], "training_set[:, 1]", label_set)
    test_images = None
    if test is not None:
        if test.ndim != 3 or test.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"test_set has shape {test.shape}; expected (M, {images.shape[1]}, {images.shape[2]}) "
                "like the training images"
            )
        test_images = validate_images(test, "test_set")
    if test_labels is not None:
        if test_images is None or test_labels.shape != test_images.shape:
            raise ValueError(
                f"test_labels has shape {test_labels.shape} but test_set has "
                f"{None if test is None else test.shape}; they must match"
            )
        test_labels = validate_labels(test_labels, "test_labels", label_set)
    return MarsData(images, labels, test_images, test_labels, source=str(path), label_set=label_set)


def _label_set(archive, path: Path) -> LabelSet:
    """The npz's own label set (``class_names``, ``hazard_classes``), else Mars'."""
    if "class_names" not in archive.files:
        return MARS
    names = tuple(str(n) for n in np.asarray(archive["class_names"]).ravel())
    hazards = ()
    if "hazard_classes" in archive.files:
        hazards = tuple(str(n) for n in np.asarray(archive["hazard_classes"]).ravel())
    try:
        return LabelSet(names, ignore=0, hazards=hazards)
    except ValueError as err:
        raise ValueError(f"{path.name}: class_names/hazard_classes: {err}") from err


def is_course_file(path: str | Path) -> bool:
    """True when ``path`` is byte for byte the official course npz."""
    path = Path(path)
    return (
        path.is_file()
        and path.stat().st_size == COURSE_FILE_BYTES
        and file_sha256(path) == COURSE_FILE_SHA256
    )
