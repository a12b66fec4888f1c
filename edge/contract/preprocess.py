"""One preprocessing for training and for the rover: how a camera frame becomes a model input.

The trainer prepares every frame of a folder data set with :meth:`Preprocessing.prepare` and
records the settings in the model's metadata (:mod:`edge.contract.metadata`); the rover reads them back
and prepares its frames with the same function, so a frame of any size reaches the model exactly
as training frames did. Labels follow the same geometry with nearest-neighbour sampling, and a
class map is brought back to the frame's own size with :meth:`Preprocessing.restore`.

- Geometry: the whole frame is resized to (height, width) (``crop="none"``, the default: nothing
  is thrown away, the aspect ratio may change), or first centre-cropped to the aspect ratio of
  (height, width) (``crop="centre"``; what the course file's 1:2 frames were cut as).
- Images are resized by area averaging (Pillow's box filter) on the 8-bit grey values and stay
  8-bit; labels by nearest neighbour.
- Values: grey 0..255 times ``scale`` (1/255) gives the float input in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CROPS = ("none", "centre")
INPUT_SCALE = 1.0 / 255.0


@dataclass(frozen=True)
class Preprocessing:
    """How frames become model inputs; saved in the model's metadata.

    Attributes:
        height: model input rows.
        width: model input columns.
        crop: ``none`` (resize the whole frame) or ``centre`` (centre crop to the input's
            aspect ratio first).
        scale: grey level (0..255) times this is the float input.
    """

    height: int
    width: int
    crop: str = "none"
    scale: float = INPUT_SCALE

    def __post_init__(self) -> None:
        if int(self.height) < 8 or int(self.width) < 8:
            raise ValueError(f"input size must be at least 8x8, got {self.height}x{self.width}")
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "width", int(self.width))
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; valid: {', '.join(CROPS)}")

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def region(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """The part of a frame of ``shape`` that becomes the input: ``(top, left, rows, cols)``."""
        rows, cols = int(shape[0]), int(shape[1])
        if self.crop == "none" or rows * self.width == cols * self.height:
            return 0, 0, rows, cols
        if cols * self.height > rows * self.width:  # too wide: keep the middle columns
            keep = max(1, round(rows * self.width / self.height))
            return 0, (cols - keep) // 2, rows, keep
        keep = max(1, round(cols * self.height / self.width))
        return (rows - keep) // 2, 0, keep, cols

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """A uint8 grey frame (any size) -> uint8 (height, width), as training saw it."""
        return self._resample(np.asarray(frame), nearest=False)

    def prepare_labels(self, labels: np.ndarray) -> np.ndarray:
        """A label map (any size) -> (height, width) by nearest neighbour, aligned with
        :meth:`prepare`."""
        return self._resample(np.asarray(labels), nearest=True)

    def to_input(self, frame: np.ndarray) -> np.ndarray:
        """A uint8 grey frame -> float32 (height, width) in [0, 1]."""
        return self.prepare(frame).astype(np.float32) * np.float32(self.scale)

    def restore(self, class_map: np.ndarray, shape: tuple[int, ...], fill: int = 0) -> np.ndarray:
        """A (height, width) class map -> the frame's own (rows, cols), nearest neighbour.

        Pixels a centre crop left out get ``fill`` (the ignored label: the model never saw them).
        """
        rows, cols = int(shape[0]), int(shape[1])
        class_map = np.asarray(class_map)
        top, left, h, w = self.region((rows, cols))
        inner = class_map if class_map.shape == (h, w) else _resize(class_map, (h, w), True)
        if (h, w) == (rows, cols):
            return inner
        out = np.full((rows, cols), fill, dtype=class_map.dtype)
        out[top : top + h, left : left + w] = inner
        return out

    def as_dict(self) -> dict:
        return {**asdict(self), "resize": "area (box filter) for images, nearest for labels"}

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        """The inverse of :meth:`as_dict` (unknown keys are ignored: newer writers may add some).

        Raises:
            ValueError: for a missing or malformed field.
        """
        try:
            return cls(
                height=int(values["height"]),
                width=int(values["width"]),
                crop=str(values.get("crop", "none")),
                scale=float(values.get("scale", INPUT_SCALE)),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a preprocessing description: {values!r} ({err})") from err

    def _resample(self, array: np.ndarray, nearest: bool) -> np.ndarray:
        if array.ndim != 2:
            raise ValueError(f"expected a single-channel (H, W) array, got shape {array.shape}")
        top, left, h, w = self.region(array.shape)
        if (h, w) != array.shape:
            array = array[top : top + h, left : left + w]
        if array.shape == self.size:
            return array
        return _resize(array, self.size, nearest)


def parse_size(text: str | tuple | list) -> tuple[int, int]:
    """``"128x128"``, ``"64,128"``, ``"96"`` (square) or a pair -> (height, width).

    Raises:
        ValueError: saying what was expected.
    """
    if isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        parts = str(text).lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 8:
        raise ValueError(f"expected a frame size HxW such as 128x128 (each >= 8), got {text!r}")
    return values[0], values[1]


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    if array.dtype == np.uint8:
        image = Image.fromarray(array)
    elif nearest:  # label maps of another integer type
        image = Image.fromarray(array.astype(np.int32))  # mode "I"
    else:
        raise ValueError(f"frames must be uint8 to be resized, got {array.dtype}")
    method = Image.NEAREST if nearest else Image.BOX
    out = np.asarray(image.resize((size[1], size[0]), method))
    return out.astype(array.dtype, copy=False)
