"""Typed configs. CLI flags override the defaults; the resolved config is saved as config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class DataConfig:
    """Which frames to train on and how to prepare them."""

    path: str = ""  # course npz, AI4Mars folder, or a synthetic npz
    val_fraction: float = 0.2  # held out, stratified on big rock
    split_seed: int = 0  # the split stays fixed when the training seed changes
    remove_outliers: bool = True  # the course's 110 alien frames share one mask
    outlier_min_repeats: int | None = None  # None: 0.5 % of the frames, at least 3
    flip: bool = True  # offline: add every frame's horizontal flip (report)
    mask_dropout_fraction: float = 0.25  # offline: MaskDropout on a quarter of the flips (report)
    big_rock_repeats: int = 4  # offline: big-rock frames appear 4x (report)
    online_geometric: bool = True  # online: flip + small affine
    online_pixel: bool = False  # online: brightness/contrast/noise; the report found it hurts
    limit: int | None = None  # use only the first N frames (smoke tests)


@dataclass
class TrainConfig:
    """One training run. Defaults are the report's recipe unless a comment says otherwise."""

    data: DataConfig = field(default_factory=DataConfig)
    model: str = "marsseg"  # a name from trainer.models.MODELS
    width: float = 1.0  # channel multiplier; 0.25 trains ~5x faster on a CPU
    epochs: int = 40
    batch_size: int = 32  # global: split across replicas under tf.distribute
    learning_rate: float = 1e-4  # AdamW (report)
    weight_decay: float = 1e-4
    loss: str = "ce"  # background-ignoring CE (report's best); e.g. "ce+0.5*dice"
    lr_patience: int = 3  # ReduceLROnPlateau on val mIoU
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    stop_patience: int = 8  # EarlyStopping on val mIoU, best weights restored
    seed: int = 0
    strategy: str = "auto"  # auto | default | mirrored | multiworker
    cpu_replicas: int = (
        0  # >1 splits the CPU into logical devices (tests tf.distribute without GPUs)
    )
    mixed_precision: bool = False  # mixed_float16 on GPUs (mixed_bfloat16 on CPUs)
    xla: bool = False  # jit_compile; helps on GPUs, slower on these CPUs
    steps_per_epoch: int | None = None  # cap batches per epoch (smoke tests)
    verbose: int = 1  # Keras progress: 1 bar, 2 one line per epoch, 0 silent


def to_json(cfg: Any, path: str | Path | None = None) -> str:
    """Serialize a (nested) config dataclass; also write it to ``path`` when given."""
    text = json.dumps(asdict(cfg), indent=2, sort_keys=True)
    if path is not None:
        Path(path).write_text(text + "\n")
    return text


def from_dict(cls: type[T], values: dict) -> T:
    """Build ``cls`` from a dict, recursing into nested dataclasses; unknown keys are an error.

    Raises:
        ValueError: naming unknown keys and listing the valid ones.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        sub = _dataclass_type(cls, key)
        kwargs[key] = from_dict(sub, value) if sub and isinstance(value, dict) else value
    return cls(**kwargs)


def _dataclass_type(cls: type, name: str) -> type | None:
    default = next(f for f in dataclasses.fields(cls) if f.name == name)
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = default.default_factory()  # type: ignore[misc]
        return type(value) if dataclasses.is_dataclass(value) else None
    return None


__all__ = ["DataConfig", "TrainConfig", "from_dict", "to_json"]
