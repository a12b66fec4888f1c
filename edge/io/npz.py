"""Frames (and their labels) from an npz array, e.g. an evaluation set copied to the rover."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.io.decode import BadFrame, Frame, to_grayscale_uint8

log = logging.getLogger(__name__)


class NpzFrames:
    """Frames (and labels, when present) from an npz, e.g. an evaluation set copied to the rover.

    Args:
        path: the npz.
        key: the array of frames, (N, H, W); by default ``test_set``, else ``images``, else the
            course file's ``training_set`` (N, 2, H, W), whose channel 0 is the frame.
        labels_key: the array of labels (N, H, W); by default ``test_labels``, else ``labels``,
            else channel 1 of a course-layout ``training_set``.
        limit: at most this many frames.

    Raises:
        ValueError: if the file has no usable array.
    """

    FRAME_KEYS = ("test_set", "images", "training_set")
    LABEL_KEYS = ("test_labels", "labels")

    def __init__(
        self,
        path: str | Path,
        key: str | None = None,
        labels_key: str | None = None,
        limit: int | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"no npz at {self.path}")
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys = list(data.keys())
                key = key or next((k for k in self.FRAME_KEYS if k in keys), None)
                if key not in keys:
                    raise ValueError(
                        f"{self.path.name} has no frame array {key or self.FRAME_KEYS}; "
                        f"it holds {keys}"
                    )
                frames = data[key]
                labels = None
                labels_key = labels_key or next((k for k in self.LABEL_KEYS if k in keys), None)
                course = frames.ndim == 4 and frames.shape[1] == 2  # (N, 2, H, W)
                if labels_key in keys:
                    labels = data[labels_key]
                elif course:
                    labels = frames[:, 1]
                if course:
                    frames = frames[:, 0]
        except (OSError, EOFError) as err:
            raise ValueError(f"cannot read {self.path.name}: {err}") from err
        if frames.ndim != 3:
            raise ValueError(f"{self.path.name}:{key} has shape {frames.shape}, expected (N, H, W)")
        if labels is not None and labels.shape != frames.shape:
            raise ValueError(
                f"{self.path.name}: labels {labels.shape} do not match frames {frames.shape}"
            )
        n = len(frames) if limit is None else min(limit, len(frames))
        self.frames = frames[:n]
        self.labels = None if labels is None else np.asarray(labels[:n]).astype(np.uint8)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        for i, raw in enumerate(self.frames):
            t0 = time.perf_counter_ns()
            name = f"{i:06d}"
            try:
                image, error = to_grayscale_uint8(raw, name), None
            except BadFrame as err:
                image, error = None, str(err)
            label = None if self.labels is None else self.labels[i]
            yield Frame(
                name, image, error, None, i, (time.perf_counter_ns() - t0) / 1e3, label=label
            )
