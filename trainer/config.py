"""Typed configs: the one place where the settings, their defaults and their help live.

``trainer fit`` builds its command-line options from these dataclasses (:func:`click_options`),
reads ``--config FILE`` and ``--set key=value`` on top, and saves the resolved config as
``config.json`` in the run directory. Each field's ``metadata`` carries its help text, and
``resume=True`` on the fields that may change when a run is resumed (the schedule, not the model
or the data).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def setting(
    default: Any,
    help: str,
    *,
    flag: str | tuple[str, ...] | None = None,
    choices=None,
    resume=False,
    cli=True,
):
    """A dataclass field with its help text (and, optionally, its CLI flag or flags, the first
    the name shown, and its choices)."""
    meta = {"help": help, "flag": flag, "choices": choices, "resume": resume, "cli": cli}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Which frames to train on and how to prepare them."""

    path: str = setting("", "course npz, synthetic npz or AI4Mars folder", cli=False)
    size: str | None = setting(
        None,
        "Frame size HxW for folder data sets (AI4Mars: default 128x128, the whole frame); an npz "
        "is used at its own size.",
    )
    crop: str = setting(
        "none",
        "none: resize the whole frame; centre: centre crop to the aspect of --size first.",
        choices=("none", "centre"),
    )
    test_agreement: int = setting(
        3, "AI4Mars expert test set: masked-gold-min<N>-100agree.", choices=(1, 2, 3)
    )
    val_fraction: float = setting(0.2, "Share of frames held out for validation.")
    split_from: str | None = setting(
        None,
        "Validate on the frames another run (its data.json) or a shipped model folder (its "
        "manifest.json) validated on, and train on the rest, instead of splitting anew: the "
        "split is stratified on big rock as seen at the frame size, so a new size moves frames "
        "across it; none: split by --split-seed. A recorded split replaces --val-fraction, "
        "--split-seed and --group-split. With --init, the init's split when every frame of it "
        "is among these after --limit and outlier removal (else a warning, and a split by "
        "--split-seed) [default: split by --split-seed].",
    )
    split_seed: int = setting(
        0, "Seed of the split (fixed when the training seed changes; a --split-from overrides it)."
    )
    group_split: bool = setting(
        True, "Keep AI4Mars frames of one rover position (site/drive) on one side of the split."
    )
    remove_outliers: bool | None = setting(
        None,
        "Drop frames whose mask repeats (the course file's alien pictures) [default: course npz "
        "only].",
        flag="--remove-outliers/--keep-outliers",
    )
    outlier_min_repeats: int | None = setting(
        None, "A mask repeated this often marks outliers [default: 0.5 % of frames, >= 3]."
    )
    flip: bool = setting(True, "Offline: add every frame's horizontal flip (report).")
    mask_dropout_fraction: float = setting(
        0.25, "Offline: MaskDropout on this share of the flips (report)."
    )
    big_rock_repeats: int = setting(4, "Offline: frames with big rock appear this many times.")
    online_geometric: bool = setting(True, "Online: flip + small affine.")
    online_pixel: bool = setting(
        False, "Online: brightness/contrast/noise (the report found it hurts)."
    )
    limit: int | None = setting(None, "Use only the first N frames (smoke tests).")

    def __post_init__(self) -> None:
        if self.size is not None:
            from edge.contract.preprocess import parse_size

            self.size = "{}x{}".format(*parse_size(self.size))

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """``size`` as (height, width), or None (the data's own or default size)."""
        return None if self.size is None else tuple(int(v) for v in self.size.split("x"))


@dataclass
class TrainConfig:
    """One training run. Defaults are the report's recipe unless the help says otherwise."""

    data: DataConfig = field(default_factory=DataConfig)
    model: str = setting(
        "marsseg",
        "The architecture, a name from `trainer models` (--model is its older name; in "
        "edge-seg, --model is a model file).",
        flag=("--arch", "--model"),
    )
    width: float = setting(1.0, "Channel multiplier (0.25 trains ~5x faster on a CPU).")
    epochs: int = setting(40, "Epochs in all (on --resume: may be raised).", resume=True)
    batch_size: int = setting(32, "Global batch, split across replicas.", resume=True)
    learning_rate: float = setting(1e-4, "AdamW learning rate (report).", flag="--lr", resume=True)
    weight_decay: float = setting(1e-4, "AdamW weight decay.", resume=True)
    ema: float = setting(
        0.0,
        "Momentum of an exponential moving average of the weights (e.g. 0.999; 0: off). "
        "Validation, checkpoints and model.keras then hold the average, which is steadier than "
        "the last step's weights; --resume continues from the average.",
        resume=True,
    )
    loss: str = setting(
        "afd+0.5*background",
        "Terms such as 'afd+0.5*background': afd (the MarsSeg paper's adaptive focal + Dice), "
        "ce (the report's cross-entropy, background ignored; --loss ce for the course score), "
        "plain_ce, weighted_ce, dice, focal, boundary, background (class 0 on unlabelled pixels: "
        "sky and rover hardware are not reported as rock). The default is for models bound for "
        "the rover (benchmarks/rover_safety.py).",
    )
    schedule: str = setting(
        "plateau",
        "Learning-rate schedule: plateau (ReduceLROnPlateau on val mIoU, the report's), cosine "
        "(linear warm-up, then cosine decay from --lr to --min-lr over --epochs: for a fixed "
        "budget).",
        choices=("plateau", "cosine"),
        resume=True,
    )
    warmup_epochs: float = setting(
        0.0, "cosine: epochs of linear warm-up from --min-lr to --lr.", resume=True
    )
    lr_patience: int = setting(3, "ReduceLROnPlateau patience on val mIoU.", resume=True)
    lr_factor: float = setting(0.5, "ReduceLROnPlateau factor.", resume=True)
    min_lr: float = setting(1e-6, "ReduceLROnPlateau floor.", resume=True)
    stop_patience: int = setting(
        8, "EarlyStopping patience on val mIoU (best weights restored).", resume=True
    )
    seed: int = setting(0, "Seed of weights, shuffling and augmentation.")
    init: str | None = setting(
        None,
        "Start from the weights of this run (its model.keras) or .keras file: fine-tuning, e.g. "
        "with another loss. The architecture and frame size must match.",
    )
    device: str = setting(
        "auto",
        "Train on: auto (a GPU if the backend sees one), cpu, or gpu (exit 2 where there is none).",
        choices=("auto", "cpu", "gpu"),
        resume=True,
    )
    strategy: str = setting(
        "auto",
        "auto (all GPUs if several), default (one device), mirrored (local GPUs, or --replicas "
        "CPU devices), multiworker (TF_CONFIG; under JAX KERAS_DISTRIBUTION_*).",
        choices=("auto", "default", "mirrored", "multiworker"),
        resume=True,
    )
    replicas: int = setting(
        0, "Split the CPU into N logical devices (data parallelism on any machine).", resume=True
    )
    loop: str = setting(
        "auto",
        "Training loop: fit (Keras), custom (strategy.run; what multiworker needs, as Keras 3's "
        "fit fails there), auto: custom for multiworker, else fit.",
        choices=("auto", "fit", "custom"),
        resume=True,
    )
    mixed_precision: bool = setting(
        False, "mixed_float16 on GPUs (mixed_bfloat16 on CPUs).", resume=True
    )
    xla: bool = setting(False, "Compile with XLA (helps on GPUs, slower on CPUs).", resume=True)
    steps_per_epoch: int | None = setting(None, "Cap batches per epoch.", resume=True)
    verbose: int = setting(1, "Keras progress: 1 bar, 2 a line per epoch, 0 silent.", cli=False)


# Named recipes: the settings behind a figure, one flag away (`trainer fit --preset rover`). A
# preset sits under --config, --set and the options, which override it.
PRESETS: dict[str, dict[str, Any]] = {
    # the rover model's recipe (docs/model_card.md): MarsSeg at width 0.25 on 128x128 frames,
    # benchmarks/pareto.py's pick under the 2 GMAC budget (0.43 GMAC); AdamW at 1e-3 with a
    # cosine schedule for a fixed budget
    "rover": {
        "model": "marsseg", "width": 0.25, "data.size": "128x128", "learning_rate": 1e-3,
        "batch_size": 16, "schedule": "cosine", "warmup_epochs": 1.0, "epochs": 40,
        "steps_per_epoch": 300, "stop_patience": 40,
    },
    # the course report's MarsSeg on the course npz: cross-entropy without background, 1e-4
    "course": {"model": "marsseg", "width": 1.0, "learning_rate": 1e-4, "loss": "ce"},
    # the small MarsSeg the earlier README figures used (128x128, width 0.25, 1e-3)
    "marsseg-small": {
        "model": "marsseg", "width": 0.25, "data.size": "128x128", "learning_rate": 1e-3,
        "epochs": 40, "steps_per_epoch": 300,
    },
}  # fmt: skip


def preset_values(name: str) -> dict[str, Any]:
    """The dotted settings of preset ``name``.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


# ----------------------------------------------------------------------------------------------
# Serialization.


def to_json(cfg: Any, path: str | Path | None = None) -> str:
    """Serialize a (nested) config dataclass; also write it to ``path`` (atomically) when given."""
    text = json.dumps(asdict(cfg), indent=2, sort_keys=True)
    if path is not None:
        from edge.io.sinks import atomic_write_bytes

        atomic_write_bytes(path, (text + "\n").encode())
    return text


def from_dict(cls: type[T], values: dict) -> T:
    """Build ``cls`` from a dict, recursing into nested dataclasses; unknown keys are an error.

    Raises:
        ValueError: naming unknown keys and listing the valid ones.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}
    values = {_RENAMED.get(k, k): v for k, v in values.items()}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        sub = _nested_type(cls, key)
        kwargs[key] = from_dict(sub, value) if sub and isinstance(value, dict) else value
    return cls(**kwargs)


# Keys that older runs saved under another name.
_RENAMED = {"cpu_replicas": "replicas"}


def _nested_type(cls: type, name: str) -> type | None:
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    if spec.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = spec.default_factory()  # type: ignore[misc]
        return type(value) if dataclasses.is_dataclass(value) else None
    return None


# ----------------------------------------------------------------------------------------------
# Flat keys ("data.size", "epochs"): the CLI, --set and --resume speak in these.


def flat_fields(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf field of a (nested) config class by its dotted key."""
    out = {}
    for f in dataclasses.fields(cls):
        sub = _nested_type(cls, f.name)
        if sub is not None:
            out.update(flat_fields(sub, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f
    return out


def flatten(cfg: Any) -> dict[str, Any]:
    """{dotted key: value} of a config instance."""
    out = {}
    for key in flat_fields(type(cfg)):
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = value
    return out


def with_values(cfg: T, values: dict[str, Any]) -> T:
    """A copy of ``cfg`` with the dotted keys of ``values`` replaced (each converted and checked
    against its field's type and choices).

    Raises:
        ValueError: for an unknown key or a value of the wrong kind, naming both.
    """
    fields = flat_fields(type(cfg))
    tree = asdict(cfg)
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown setting {key!r}; valid: {', '.join(sorted(fields))}")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = coerce(fields[key], value, key)
    return from_dict(type(cfg), tree)


def parse_assignments(items: typing.Iterable[str]) -> dict[str, str]:
    """``["epochs=5", "data.size=96x96"]`` -> {key: text}.

    Raises:
        ValueError: for an item without ``=``.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"--set expects key=value (e.g. epochs=5, data.size=96x96), got {item!r}"
            )
        out[key.strip()] = value.strip()
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON config (nested like config.json, or flat with dotted keys) as flat {key: value}.

    Raises:
        ValueError: if it is not a JSON object.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the config {path}: {err}") from err
    if not isinstance(doc, dict):
        raise ValueError(f"{path} must hold a JSON object of settings")

    def walk(node: dict, prefix: str) -> dict:
        flat = {}
        for key, value in node.items():
            if isinstance(value, dict):
                flat.update(walk(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    return walk(doc, "")


def coerce(spec: dataclasses.Field, value: Any, key: str) -> Any:
    """Convert ``value`` (a JSON value or the text of --set) to the field's type.

    Raises:
        ValueError: when it does not fit, naming the key, the value and what was expected.
    """
    kind, optional = _field_type(spec)
    if value is None or (
        optional and isinstance(value, str) and value.lower() in ("none", "null", "")
    ):
        if optional:
            return None
        raise ValueError(f"{key} cannot be empty")
    try:
        if kind is bool:
            if isinstance(value, str):
                truth = {
                    "true": True,
                    "1": True,
                    "yes": True,
                    "false": False,
                    "0": False,
                    "no": False,
                }
                value = truth[value.lower()]
            converted = bool(value)
        elif kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            converted = int(value)
        elif kind is float:
            converted = float(value)
        else:
            converted = str(value)
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{key}={value!r} is not a valid {'true/false' if kind is bool else kind.__name__}"
        ) from None
    choices = spec.metadata.get("choices")
    if choices and converted not in choices:
        raise ValueError(f"{key}={converted!r} is not one of {', '.join(map(str, choices))}")
    return converted


def _field_type(spec: dataclasses.Field) -> tuple[type, bool]:
    """(base type, optional) of a field annotated like ``int | None``."""
    hint = spec.type
    if isinstance(hint, str):  # from __future__ annotations
        hint = eval(hint, {"typing": typing}, {})  # our own annotations, e.g. "int | None"
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()
    if args:
        base = [a for a in args if a is not type(None)]
        return base[0], type(None) in args
    return hint, False


@dataclass
class QatConfig:
    """One quantization-aware fine-tuning (saved as ``qat.json`` beside its outputs)."""

    teacher: str = ""  # the float run (or the shipped model folder) it distils
    # measured on the shipped rover model (400 validation frames, int8 against float32): bias
    # correction alone took agreement from 98.14 to 98.77 %; an epoch of fine-tuning (margin
    # target, without the correction) raised it on training frames and lowered it on
    # validation frames to 97.77 %: no fine-tuning by default
    bias_correction: bool = True
    bias_sweeps: int = 2
    # adaptive rounding of the kernels before the bias correction (trainer/adaround.py)
    adaround: bool = False
    adaround_iterations: int = 1000
    # the head conv's int8 output spans only the logits that decide a class (trainer/logit_window.py):
    # the share of pixels whose top logit may fall below it or second above it; 0: the full range
    logit_window: float = 1e-4
    # cross-layer equalization of the activations' channels first (trainer/equalize.py)
    equalize: bool = True
    epochs: int = 0
    steps_per_epoch: int | None = None  # None: one pass over the training split
    batch_size: int = 16
    learning_rate: float = 1e-4  # cosine to 0 over the epochs: a fine-tune, not a new training
    # "margin": the float model's probabilities (cross-entropy) plus a hinge that asks the int8
    # model's logit for the float model's class to lead the next one by `margin` (in logits):
    # soft targets alone copy the float model's near-ties, and the rounding flips them;
    # "soft": the probabilities only; "hard": cross-entropy with the float model's class
    target: str = "margin"
    margin: float = 1.0
    calibration_frames: int = 200  # as `trainer convert --calib`, the same draw
    seed: int = 0


__all__ = [
    "DataConfig",
    "QatConfig",
    "TrainConfig",
    "coerce",
    "flat_fields",
    "flatten",
    "from_dict",
    "load_config_file",
    "parse_assignments",
    "setting",
    "to_json",
    "with_values",
]
