"""True label maps for frames, from a folder of label files named like the frames."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from edge.contract.labels import AI4MARS_TO_MARS
from edge.io.decode import DEFAULT_MAX_PIXELS, BadFrame, check_pixels, regular_file

log = logging.getLogger(__name__)


LABEL_FORMATS = ("auto", "ai4mars", "model")


class LabelReader:
    """True label maps for frames, from a folder of label files named like the frames.

    Two formats are read: the model's own label values (``model``: PNG or .npy with values
    0..C-1) and AI4Mars' (``ai4mars``: PNG with 0-3 soil, bedrock, sand, big rock and 255
    unlabelled, mapped to the Mars labels 1-4 and 0). ``auto`` decides once per folder: AI4Mars
    when the folder looks like the release's (``labels/train``, ``masked-gold-*``, files named
    ``<id>_merged.png``) or a sampled label holds 255.

    A frame ``NAME`` finds ``NAME.png``, ``NAME_merged.png`` (the AI4Mars expert labels) or
    ``NAME.npy``.

    Args:
        folder: the label folder.
        num_classes: the model's class count (values must lie below it).
        fmt: ``auto``, ``ai4mars`` or ``model``.
        max_pixels: label files with more pixels are refused unread.

    Raises:
        ValueError: if the folder does not exist or the format is unknown.
    """

    SUFFIXES = (".png", "_merged.png", ".npy", ".PNG")

    def __init__(
        self,
        folder: str | Path,
        num_classes: int,
        fmt: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"labels folder {self.folder} does not exist or is not a folder")
        if fmt not in LABEL_FORMATS:
            raise ValueError(f"unknown label format {fmt!r}; valid: {', '.join(LABEL_FORMATS)}")
        self.num_classes = num_classes
        self.max_pixels = max_pixels
        self.format = detect_label_format(self.folder) if fmt == "auto" else fmt
        if self.format == "ai4mars" and num_classes != 5:
            raise ValueError(
                f"AI4Mars labels (soil, bedrock, sand, big rock, unlabelled) need a 5-class model; "
                f"this one has {num_classes} classes"
            )
        self.found = 0
        self.missing = 0

    def find(self, name: str) -> Path | None:
        """The label file of frame ``name``, if any."""
        for suffix in self.SUFFIXES:
            candidate = self.folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
        return None

    def read_for(self, name: str) -> np.ndarray | None:
        """The label map of frame ``name`` (None when it has no label file).

        Raises:
            BadFrame: if the label file cannot be read or holds values outside the format's.
        """
        path = self.find(name)
        if path is None:
            self.missing += 1
            return None
        self.found += 1
        return self.read(path)

    def read(self, path: Path) -> np.ndarray:
        """One label file as uint8 (H, W) in the model's label values.

        Raises:
            BadFrame: if it cannot be read or holds values outside the format's.
        """
        labels = _read_label_array(path, self.max_pixels)
        if self.format == "ai4mars":
            mapped = AI4MARS_TO_MARS[np.clip(labels, 0, 255).astype(np.intp)]
            if labels.size and (labels.min() < 0 or labels.max() > 255 or (mapped == 255).any()):
                bad = sorted(set(np.unique(labels).tolist()) - {0, 1, 2, 3, 255})
                raise BadFrame(
                    f"{path.name}: values {bad[:6]}; AI4Mars labels are 0-3 and 255 (unlabelled)"
                )
            return mapped
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            hint = " (AI4Mars labels? pass --label-format ai4mars)" if labels.max() == 255 else ""
            raise BadFrame(
                f"{path.name}: labels {labels.min()}..{labels.max()}, expected "
                f"0..{self.num_classes - 1}{hint}"
            )
        return labels.astype(np.uint8)

    def describe(self) -> str:
        what = (
            "AI4Mars values (0-3 soil, bedrock, sand, big rock; 255 unlabelled)"
            if self.format == "ai4mars"
            else f"model values 0..{self.num_classes - 1}"
        )
        return f"labels in {self.folder} read as {what}"


def detect_label_format(folder: Path, sample: int = 16) -> str:
    """``ai4mars`` or ``model`` for a label folder (see :class:`LabelReader`)."""
    parts = [p.lower() for p in folder.resolve().parts]
    if "masked-gold" in "/".join(parts) or parts[-2:] == ["labels", "train"]:
        return "ai4mars"
    try:
        with os.scandir(folder) as entries:
            names = [e.name for _, e in zip(range(4 * sample), entries)]
    except OSError:
        return "model"
    if any(n.endswith("_merged.png") for n in names):
        return "ai4mars"
    for name in [n for n in names if n.lower().endswith(".png")][:sample]:
        try:
            if (_read_label_array(folder / name) == 255).any():
                return "ai4mars"
        except BadFrame:
            continue
    return "model"


def _read_label_array(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A label file as an integer array, refusing oversized files and bombs before decoding."""
    regular_file(path)
    if path.suffix.lower() == ".npy":
        try:
            labels = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise BadFrame(f"{path.name}: not a readable .npy array ({err})") from err
        if labels.ndim >= 2:
            check_pixels(path.name, int(labels.shape[1]), int(labels.shape[0]), max_pixels)
        labels = np.array(labels)
    else:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    check_pixels(path.name, *img.size, max_pixels)
                    labels = np.asarray(img)
        except Image.DecompressionBombError as err:
            raise BadFrame(f"{path.name}: a decompression bomb ({err}); not decoded") from err
        except (OSError, SyntaxError, ValueError) as err:
            raise BadFrame(f"{path.name}: cannot read the label image ({err})") from err
    labels = np.squeeze(np.asarray(labels))
    if labels.ndim != 2:
        raise BadFrame(f"{path.name}: label shape {labels.shape}, expected (H, W)")
    if labels.dtype.kind not in "iub":
        raise BadFrame(f"{path.name}: label dtype {labels.dtype}, expected integers")
    return labels
