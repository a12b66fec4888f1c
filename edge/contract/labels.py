"""Label sets: class names, colours and which label is never scored.

A label set belongs to the data and travels with the model (in its metadata), so the rover never
assumes how many classes there are or what they are called. :data:`MARS` is the set of both data
sets this project reads (the course npz and AI4Mars after mapping): 0 background/unlabelled,
1 soil, 2 bedrock, 3 sand, 4 big rock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Colour-blind-safe (Okabe-Ito based) colours for up to 8 classes, background black; a label set
# with more classes cycles through them.
_PALETTE = (
    (0, 0, 0),
    (230, 159, 0),  # orange
    (0, 114, 178),  # blue
    (240, 228, 66),  # yellow
    (213, 94, 0),  # vermilion
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (204, 121, 167),  # reddish purple
)


@dataclass(frozen=True)
class LabelSet:
    """The classes a model predicts.

    Attributes:
        names: one name per label value, in order.
        colours: one RGB triple per label value.
        ignore: the label that is never scored (background/unlabelled: sky, rover parts, what
            annotators left blank), or None when every label is scored.
        hazards: names of the classes a rover treats as obstacles.
    """

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] = ()
    ignore: int | None = 0
    hazards: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.names) < 2:
            raise ValueError(f"a label set needs at least 2 classes, got {list(self.names)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class names must be unique, got {list(self.names)}")
        if not self.colours:
            colours = tuple(_PALETTE[i % len(_PALETTE)] for i in range(len(self.names)))
            object.__setattr__(self, "colours", colours)
        if len(self.colours) != len(self.names):
            raise ValueError(f"{len(self.names)} classes but {len(self.colours)} colours")
        if self.ignore is not None and not 0 <= self.ignore < len(self.names):
            raise ValueError(f"ignore label {self.ignore} is not a class of {list(self.names)}")
        unknown = set(self.hazards) - set(self.names)
        if unknown:
            raise ValueError(f"hazard classes {sorted(unknown)} are not in {list(self.names)}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def scored(self) -> tuple[int, ...]:
        """The label values the mean IoU averages over (all but ``ignore``)."""
        return tuple(i for i in range(self.num_classes) if i != self.ignore)

    @property
    def colour_table(self) -> np.ndarray:
        """uint8 (num_classes, 3)."""
        return np.array(self.colours, dtype=np.uint8)

    def index(self, name: str) -> int:
        """The label value of class ``name``.

        Raises:
            ValueError: naming the valid classes.
        """
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"no class {name!r}; classes: {', '.join(self.names)}") from None

    def as_dict(self) -> dict:
        return {
            "names": list(self.names),
            "colours": [list(c) for c in self.colours],
            "ignore": self.ignore,
            "hazards": list(self.hazards),
        }

    @classmethod
    def from_dict(cls, values: dict) -> LabelSet:
        """The inverse of :meth:`as_dict`.

        Raises:
            ValueError: for a missing or malformed field.
        """
        try:
            return cls(
                names=tuple(str(n) for n in values["names"]),
                colours=tuple(tuple(int(v) for v in c) for c in values.get("colours", ())),
                ignore=values.get("ignore", 0),
                hazards=tuple(values.get("hazards", ())),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a label set: {values!r} ({err})") from err


MARS = LabelSet(
    names=("background", "soil", "bedrock", "sand", "big_rock"),
    ignore=0,
    hazards=("big_rock",),
)

# AI4Mars' label values (0 soil, 1 bedrock, 2 sand, 3 big rock, 255 unlabelled) as MARS values:
# +1, and 255 -> the ignored 0. Any other value maps to 255, which no MARS label has: readers
# refuse it.
AI4MARS_TO_MARS = np.full(256, 255, np.uint8)
AI4MARS_TO_MARS[[0, 1, 2, 3, 255]] = [1, 2, 3, 4, 0]

# The Mars label set's fields, for code that works with that set only (the data loaders).
CLASS_NAMES: tuple[str, ...] = MARS.names
NUM_CLASSES = MARS.num_classes
SCORED_CLASSES: tuple[int, ...] = MARS.scored
CLASS_COLOURS = MARS.colour_table


def colourise(labels: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """Map a label map to RGB.

    Args:
        labels: integer labels, any shape.
        label_set: gives the colours.

    Returns:
        uint8 array of shape ``labels.shape + (3,)``.

    Raises:
        ValueError: if a label is not a class of ``label_set``.
    """
    labels = np.asarray(labels)
    n = label_set.num_classes
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise ValueError(
            f"expected labels in 0..{n - 1}, found {int(labels.min())}..{int(labels.max())}"
        )
    return label_set.colour_table[labels.astype(np.intp)]


def overlay(
    image: np.ndarray, labels: np.ndarray, label_set: LabelSet, alpha: float = 0.45
) -> np.ndarray:
    """Blend the colourised labels over a grayscale frame; the ignored label stays uncoloured.

    Args:
        image: grayscale frame (H, W), uint8.
        labels: label map (H, W).
        alpha: weight of the label colour where a class is predicted.
        label_set: gives the colours and the uncoloured label.

    Returns:
        uint8 RGB array (H, W, 3).
    """
    weight = round(alpha * 256)  # integer blend: ~3x faster than float, off by at most 1
    grey = np.asarray(image, dtype=np.uint16)[..., None]
    tinted = (grey * (256 - weight) + colourise(labels, label_set).astype(np.uint16) * weight) >> 8
    labels = np.asarray(labels)
    coloured = labels != label_set.ignore if label_set.ignore is not None else labels >= 0
    return np.where(coloured[..., None], tinted, grey).astype(np.uint8)
