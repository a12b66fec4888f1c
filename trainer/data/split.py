"""The course file's outliers, and a split that keeps one rover position on one side."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.contract.labels import CLASS_NAMES, LabelSet
from edge.contract.metrics import class_fractions
from trainer.data.dataset import MarsData

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Cleaning and splitting.


@dataclass
class OutlierReport:
    """Frames whose mask repeats identically across many frames (the course's alien pictures).

    Attributes:
        indices: positions of the outlier frames, sorted.
        groups: one entry per repeated mask: its frames and class fractions.
        min_repeats: how many identical copies made a mask suspicious.
    """

    indices: np.ndarray
    groups: list[dict]
    min_repeats: int

    @property
    def count(self) -> int:
        return len(self.indices)

    def summary(self) -> str:
        if not self.groups:
            return f"outliers: none (no mask repeats {self.min_repeats}+ times)"
        lines = [f"outliers: {self.count} frames share {len(self.groups)} repeated mask(s)"]
        for g in self.groups:
            fractions = ", ".join(f"{k} {v:.0%}" for k, v in g["class_fractions"].items() if v > 0)
            first = ", ".join(map(str, g["frames"][:6]))
            lines.append(
                f"  mask {g['hash']}: {len(g['frames'])} frames (first {first}); {fractions}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "min_repeats": self.min_repeats,
            "indices": self.indices.tolist(),
            "groups": self.groups,
        }


def default_min_repeats(n_frames: int) -> int:
    """An identical mask in at least 0.5 % of the frames, and never fewer than 3, is an outlier."""
    return max(3, int(np.ceil(0.005 * n_frames)))


def find_outliers(labels: np.ndarray, min_repeats: int | None = None) -> OutlierReport:
    """Find frames whose label mask repeats byte for byte in ``min_repeats`` or more frames.

    Natural terrain masks never repeat exactly; the course's 110 alien pictures all carry one.

    Args:
        labels: uint8 (N, H, W).
        min_repeats: threshold; by default :func:`default_min_repeats`.

    Returns:
        The report; ``indices`` is empty when nothing repeats.
    """
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    min_repeats = default_min_repeats(len(labels)) if min_repeats is None else int(min_repeats)
    if min_repeats < 2:
        raise ValueError(f"min_repeats must be >= 2, got {min_repeats}")
    by_hash: dict[str, list[int]] = {}
    for i, mask in enumerate(labels):
        by_hash.setdefault(hashlib.blake2b(mask.tobytes(), digest_size=8).hexdigest(), []).append(i)
    groups = []
    for digest, frames in by_hash.items():
        if len(frames) >= min_repeats:
            fractions = class_fractions(labels[frames[0]])
            groups.append(
                {
                    "hash": digest,
                    "frames": frames,
                    "class_fractions": {n: float(f) for n, f in zip(CLASS_NAMES, fractions)},
                }
            )
    groups.sort(key=lambda g: -len(g["frames"]))
    indices = np.array(sorted(i for g in groups for i in g["frames"]), dtype=np.int64)
    return OutlierReport(indices, groups, min_repeats)


def drop_outliers(data: MarsData, report: OutlierReport) -> MarsData:
    """The data without the report's outlier frames."""
    keep = np.setdiff1d(np.arange(len(data.images)), report.indices)
    return data.subset(keep)


def has_hazard(labels: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """Per frame: does it contain a pixel of one of ``label_set``'s hazard classes (big rock for
    Mars)? (N,) bool; all False for a label set without hazards."""
    hazards = [label_set.index(name) for name in label_set.hazards]
    return np.isin(np.asarray(labels), hazards).any(axis=(1, 2))


def split_indices(
    labels: np.ndarray,
    val_fraction: float = 0.2,
    seed: int = 0,
    groups: np.ndarray | None = None,
    *,
    label_set: LabelSet,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split, stratified on whether a frame contains a hazard class of
    ``label_set`` (big rock for Mars).

    Big rock is in few frames; a plain random split can leave the validation set without any,
    and then its IoU is undefined. Each stratum with 2+ members puts at least one on each side.

    With ``groups`` (one id per frame), whole groups go to one side: AI4Mars frames of one rover
    position overlap, and splitting them would score the model on views it trained on. A group
    counts as a big-rock group when any of its frames has big rock; groups are taken until the
    validation side holds ``val_fraction`` of the stratum's frames.

    Returns:
        ``(train_idx, val_idx)``, each sorted.

    Raises:
        ValueError: if ``val_fraction`` is not in (0, 1), there are fewer than 2 frames (or
            groups), or ``groups`` does not match the frames.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(labels)
    if n < 2:
        raise ValueError(f"need at least 2 frames to split, got {n}")
    if groups is None:
        groups = np.arange(n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups has shape {groups.shape}, expected ({n},): one id per frame")
    ids, member = np.unique(groups, return_inverse=True)
    if len(ids) < 2:
        raise ValueError(
            "all frames belong to one rover position; a grouped split needs at least 2 "
            "(--no-group-split splits frame by frame)"
        )
    sizes = np.bincount(member)
    rock = np.bincount(member, weights=has_hazard(labels, label_set)) > 0  # per group
    rng = np.random.default_rng(seed)
    val_groups = []
    for stratum in (np.flatnonzero(rock), np.flatnonzero(~rock)):
        if len(stratum) == 0:
            continue
        perm = rng.permutation(stratum)
        if len(perm) < 2:
            continue  # a lone group (e.g. every big rock at one rover position) trains
        # the prefix of groups whose frame count comes closest to val_fraction of the stratum's
        target = val_fraction * sizes[stratum].sum()
        k = int(np.argmin(np.abs(np.cumsum(sizes[perm]) - target))) + 1
        val_groups.append(perm[: min(max(k, 1), len(perm) - 1)])
    if not val_groups:  # every stratum is a lone group: the one without big rock validates
        val_groups.append(np.flatnonzero(~rock)[:1] if (~rock).any() else np.arange(1))
    val_idx = np.flatnonzero(np.isin(member, np.concatenate(val_groups))).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    return train_idx, val_idx


SPLIT_ANEW = "none"  # --split-from none: draw a split by --split-seed even with --init


def split_source(setting: str | None) -> str | None:
    """The record a ``split_from`` setting names, or None to draw a split anew."""
    return None if setting is None or setting.strip().lower() == SPLIT_ANEW else setting


def clean_frames(mars: MarsData, cfg) -> tuple[MarsData, OutlierReport | None]:
    """A run's frames: the first ``limit``, less the outliers when they are removed.

    Returns:
        ``(clean_data, outlier_report)``; the report is None when outliers are kept.
    """
    if cfg.limit:
        mars = mars.subset(np.arange(min(cfg.limit, len(mars.images))))
    report = None
    if removes_outliers(mars, cfg.remove_outliers):
        report = find_outliers(mars.labels, cfg.outlier_min_repeats)
        mars = drop_outliers(mars, report)
    return mars, report


def split_frames(mars: MarsData, cfg) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)`` of cleaned data: the frames ``split_from`` recorded, else a
    stratified split by ``split_seed`` (by rover position with ``group_split``)."""
    source = split_source(cfg.split_from)
    if source:
        return split_from_record(mars, source)
    groups = mars.groups if cfg.group_split else None
    return split_indices(
        mars.labels, cfg.val_fraction, cfg.split_seed, groups, label_set=mars.label_set
    )


def clean_and_split(
    mars: MarsData, cfg
) -> tuple[MarsData, np.ndarray, np.ndarray, OutlierReport | None]:
    """Apply a run's data settings: :func:`clean_frames`, then :func:`split_frames`.

    Training, evaluation and conversion all call this, so they see the same validation frames.

    Args:
        mars: the loaded data.
        cfg: a :class:`trainer.config.DataConfig`.

    Returns:
        ``(clean_data, train_idx, val_idx, outlier_report)``; the report is None when outliers
        are kept.
    """
    mars, report = clean_frames(mars, cfg)
    train_idx, val_idx = split_frames(mars, cfg)
    return mars, train_idx, val_idx, report


def recorded_val_names(source: str | Path) -> list[str] | None:
    """The validation frames a run folder (``data.json``) or a shipped model folder
    (``manifest.json``'s ``data``) recorded, by name; ``source`` may be a file inside one.
    None when neither records any.

    Raises:
        ValueError: when ``source`` does not exist, or its record is not a JSON object.
    """
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{source}: no such file or folder (a run or a shipped model folder)")
    folder = path if path.is_dir() else path.parent
    for name in ("data.json", "manifest.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            record = json.loads(file.read_text())
        except ValueError as err:
            raise ValueError(f"{file} is not valid JSON ({err})") from err
        if name == "manifest.json" and isinstance(record, dict):
            record = record.get("data", {})
        if not isinstance(record, dict):
            raise ValueError(f"{file}: a JSON object expected, found {type(record).__name__}")
        names = record.get("val_names")
        if names:
            return [str(n) for n in names]
    return None


def split_from_record(mars: MarsData, source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)`` with the validation frames ``source`` recorded, so that a model
    fine-tuned from it (at another frame size, say) is never trained on the frames its weights
    were scored on, and both are scored on the same frames.

    Raises:
        ValueError: when ``source`` records no split, the data has no frame names, or any of
            the recorded frames is not in the data.
    """
    names = recorded_val_names(source)
    if not names:
        raise ValueError(
            f"{source} records no validation frames (val_names in a data.json or "
            "manifest.json): name a run or a shipped model folder, or none to split anew"
        )
    if mars.names is None:
        raise ValueError(
            f"{mars.source} has no frame names to match the validation frames of {source} "
            "against (an npz): split it by seed instead"
        )
    position = {n: i for i, n in enumerate(mars.names)}
    missing = [n for n in names if n not in position]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(names)} validation frames of {source} are not in "
            f"{mars.source} after --limit and outlier removal (e.g. {missing[0]}): pass the "
            "data set it used, without a --limit that cuts them off"
        )
    val_idx = np.sort(np.array([position[n] for n in names], dtype=np.int64))
    log.info("validation split: the %d frames %s validated on", len(val_idx), source)
    return np.setdiff1d(np.arange(len(mars.names)), val_idx), val_idx


def removes_outliers(mars: MarsData, setting: bool | None) -> bool:
    """Whether the course file's outlier filter applies: by default (None) to the course layout
    only; AI4Mars has no alien frames, and its near-uniform masks repeat honestly."""
    return mars.layout == "npz" if setting is None else bool(setting)
