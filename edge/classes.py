"""The label set of the Mars terrain data, shared by the trainer and the rover."""

from __future__ import annotations

import numpy as np

# Label 0 is background/unlabelled: sky, rover parts and what annotators left blank.
# It is never scored (the mean IoU is over classes 1-4).
CLASS_NAMES: tuple[str, ...] = ("background", "soil", "bedrock", "sand", "big_rock")
NUM_CLASSES = len(CLASS_NAMES)
SCORED_CLASSES: tuple[int, ...] = (1, 2, 3, 4)

# RGB, chosen to stay apart for colour-blind readers (Okabe-Ito based), background black.
CLASS_COLOURS = np.array(
    [
        (0, 0, 0),  # background
        (230, 159, 0),  # soil: orange
        (0, 114, 178),  # bedrock: blue
        (240, 228, 66),  # sand: yellow
        (213, 94, 0),  # big rock: vermilion
    ],
    dtype=np.uint8,
)


def colourise(labels: np.ndarray) -> np.ndarray:
    """Map a label map to RGB.

    Args:
        labels: integer labels in 0..4, any shape.

    Returns:
        uint8 array of shape ``labels.shape + (3,)``.

    Raises:
        ValueError: if a label is outside 0..4.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"expected labels in 0..{NUM_CLASSES - 1}, found {int(labels.min())}..{int(labels.max())}"
        )
    return CLASS_COLOURS[labels.astype(np.intp)]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the colourised labels over a grayscale frame; background stays uncoloured.

    Args:
        image: grayscale frame (H, W), uint8.
        labels: label map (H, W).
        alpha: weight of the label colour where a class is predicted.

    Returns:
        uint8 RGB array (H, W, 3).
    """
    weight = round(alpha * 256)  # integer blend: ~3x faster than float, off by at most 1
    grey = np.asarray(image, dtype=np.uint16)[..., None]
    tinted = (grey * (256 - weight) + colourise(labels).astype(np.uint16) * weight) >> 8
    return np.where(np.asarray(labels)[..., None] > 0, tinted, grey).astype(np.uint8)
