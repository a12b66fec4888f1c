"""Rocks as objects: the connected components of confident hazard-class pixels.

A navigation stack plans around obstacles, not around a share of pixels: each rock is reported
with its box, centroid, area and base point in the pixels of the *input frame*, and its mean
confidence. Components are found at the model's resolution (a 128x128 class map, where a frame
of any size has already been reduced to), with 8-connectivity, from the runs of each row: the
work grows with the number of runs of rock pixels, not with the frame (a frame without rock
costs one comparison per pixel). Frame coordinates come from the segmenter's pixel map, so a
centre crop or a resize are both exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean (H, W) mask.

    Returns:
        ``(labels, count)``: int32 (H, W), 0 outside the mask and 1..count inside, numbered in
        the order of each component's first pixel (row-major).
    """
    mask = np.asarray(mask, dtype=bool)
    w = mask.shape[1]
    labels = np.zeros(mask.shape, np.int32)
    left = np.zeros_like(mask)
    left[:, 1:] = mask[:, :-1]
    first = mask & ~left  # the first pixel of every horizontal run
    rows, starts = np.nonzero(first)
    if not len(rows):
        return labels, 0
    run_of_pixel = np.cumsum(first[mask]) - 1  # row-major: the run of each mask pixel
    lengths = np.bincount(run_of_pixel, minlength=len(rows))
    ends = starts + lengths  # exclusive
    # runs of the row above that touch run j (8-connectivity: columns starts-1 .. ends) are
    # contiguous there: those ending at or after starts_j and starting at or before ends_j
    stride = w + 2
    key_end = rows * stride + ends
    key_start = rows * stride + starts
    above = (rows - 1) * stride
    lo = np.searchsorted(key_end, above + starts, "left")
    hi = np.searchsorted(key_start, above + ends, "right")
    count = np.maximum(hi - lo, 0)
    js = np.repeat(np.arange(len(rows)), count)
    is_ = np.repeat(lo, count) + (
        np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    )
    parent = np.arange(len(rows))
    for i, j in zip(is_.tolist(), js.tolist()):  # union-find over touching pairs only
        ri, rj = _root(parent, i), _root(parent, j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([_root(parent, i) for i in range(len(rows))])
    _, numbers = np.unique(roots, return_inverse=True)  # roots ascend with first pixel
    labels[mask] = (numbers + 1)[run_of_pixel]
    return labels, int(numbers.max()) + 1


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving: the trees stay flat
        i = parent[i]
    return int(i)


@dataclass(frozen=True)
class RockSettings:
    """Which pixels make rocks.

    Attributes:
        cls: the class whose components are objects (the model's first hazard class).
        min_probability: a pixel is rock when the model gives the class at least this
            probability, even where another class is likelier (a hazard detector should err
            towards seeing rocks; ``tools/hazard_table.py`` chose the default for the shipped
            model). None: the
            pixels whose arg max is the class, with ``min_confidence``.
        min_confidence: with ``min_probability`` None, the top probability a rock pixel needs.
        min_area_px: components smaller than this, in input-frame pixels, are not reported.
    """

    cls: str | None = None
    min_probability: float | None = 0.06
    min_confidence: float = 0.5
    min_area_px: int = 100

    def validate(self) -> None:
        if self.min_probability is not None and not 0.0 < self.min_probability <= 1.0:
            raise ValueError(
                f"rocks.min_probability must be in (0, 1] (or null), got {self.min_probability}"
            )
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"rocks.min_confidence must be in [0, 1], got {self.min_confidence}")
        if int(self.min_area_px) < 1:
            raise ValueError(f"rocks.min_area_px must be at least 1, got {self.min_area_px}")


class FrameGeometry:
    """Where each model pixel lies in the input frame, for one frame size and model size.

    Args:
        pixel_map: (H, W) int: the model pixel (flat index) of each frame pixel, -1 outside
            the model's view (:meth:`edge.segmenter.Segmenter.pixel_map`).
        model_shape: (h, w) of the model's output.
    """

    def __init__(self, pixel_map: np.ndarray, model_shape: tuple[int, int]):
        h, w = model_shape
        self.frame_shape = pixel_map.shape
        valid = pixel_map >= 0
        # frame pixels each model pixel stands for (its area weight)
        self.weights = np.bincount(pixel_map[valid], minlength=h * w).reshape(h, w)
        rows, cols = np.nonzero(valid)
        model = pixel_map[valid]
        # the restore is separable (a resize or a crop): rows and columns map on their own
        self.row_lo = _extreme(model // w, rows, h, np.minimum, pixel_map.shape[0])
        self.row_hi = _extreme(model // w, rows, h, np.maximum, -1)
        self.col_lo = _extreme(model % w, cols, w, np.minimum, pixel_map.shape[1])
        self.col_hi = _extreme(model % w, cols, w, np.maximum, -1)
        self.row_mid = (self.row_lo + self.row_hi) / 2.0
        self.col_mid = (self.col_lo + self.col_hi) / 2.0


def _extreme(index, values, size, op, start):
    out = np.full(size, start, np.int64)
    op.at(out, index, values)
    return out


def find_rocks(
    small_labels: np.ndarray,
    small_top: np.ndarray | None,
    geometry: FrameGeometry,
    class_index: int,
    settings: RockSettings,
    small_class: np.ndarray | None = None,
    ignore: int | None = None,
) -> list[dict]:
    """The rocks of one frame, largest first.

    Args:
        small_labels: (h, w) class map at the model's size.
        small_top: (h, w) uint8 top probability x 255 at the model's size, or None (then every
            pixel of the class counts).
        geometry: the frame's :class:`FrameGeometry`.
        class_index: the rock class.
        settings: probability or confidence, and minimum area.
        small_class: (h, w) uint8 probability x 255 of the rock class, for
            ``settings.min_probability`` (None: the arg max and ``min_confidence`` decide).
        ignore: the ignored label: pixels the model calls that (sky, rover hardware) are never
            rock, whatever their rock probability.

    Returns:
        One dict per rock: ``box`` [x0, y0, x1, y1] (inclusive frame pixels), ``centroid``
        [x, y], ``base`` [x, y] (the middle of its lowest row: where it meets the ground),
        ``area_px`` (frame pixels), ``confidence`` (mean probability of the class, or mean top
        probability by arg max), and the model-size ``pixels`` (flat indices; dropped before the
        record is written).
    """
    by_probability = settings.min_probability is not None and small_class is not None
    if by_probability:
        mask = small_class >= int(np.ceil(settings.min_probability * 255 - 1e-9))
        if ignore is not None:
            mask &= small_labels != ignore
        small_top = small_class  # each rock's confidence: its mean probability of rock
    else:
        mask = small_labels == class_index
        if small_top is not None:
            mask &= small_top >= int(np.ceil(settings.min_confidence * 255 - 1e-9))
    if not mask.any():
        return []
    components, count = label_components(mask)
    inside = np.flatnonzero(components)  # the rock pixels only: a few of the map's
    numbers = components.ravel()[inside]
    weights = geometry.weights.ravel()
    area = np.bincount(numbers, weights=weights[inside], minlength=count + 1)[1:]
    keep = np.nonzero(area >= settings.min_area_px)[0] + 1
    if not len(keep):
        return []
    w = small_labels.shape[1]
    ranked = np.argsort(numbers, kind="stable")
    order = inside[ranked]  # pixels grouped by component
    bounds = np.searchsorted(numbers[ranked], np.arange(count + 2))
    rocks = []
    for n in keep:
        pixels = order[bounds[n] : bounds[n + 1]]
        pixels = pixels[weights[pixels] > 0]  # model pixels outside the view make no frame pixel
        if not len(pixels):
            continue
        r, c = pixels // w, pixels % w
        wt = weights[pixels].astype(np.float64)
        bottom = r == r.max()
        conf = 1.0 if small_top is None else float(small_top.ravel()[pixels].mean() / 255.0)
        rocks.append(
            {
                "box": [
                    int(geometry.col_lo[c.min()]),
                    int(geometry.row_lo[r.min()]),
                    int(geometry.col_hi[c.max()]),
                    int(geometry.row_hi[r.max()]),
                ],
                "centroid": [
                    # sums of products, not `@`: no BLAS call (its threads spin after it)
                    round(float((wt * geometry.col_mid[c]).sum() / wt.sum()), 1),
                    round(float((wt * geometry.row_mid[r]).sum() / wt.sum()), 1),
                ],
                "base": [
                    round(float(geometry.col_mid[c[bottom]].mean()), 1),
                    int(geometry.row_hi[r.max()]),
                ],
                "area_px": int(area[n - 1]),
                "confidence": round(conf, 3),
                "pixels": pixels,
            }
        )
    rocks.sort(key=lambda rock: -rock["area_px"])
    return rocks
