"""`trainer calibrate`: one bias per class on the logits, tuned on training frames.

Why: the rover recipe favours the rare class on purpose (big-rock frames repeated offline, an
adaptive focal + Dice loss), which buys recall of big rock and pays for it in precision: the
first shipped model called big rock on about four times the pixels the labels have (precision
23 %, recall 81 %, IoU 0.22). Adding a constant per class to the logits moves each class's
decision boundary without retraining, and four numbers chosen on training frames (never the
validation split) by coordinate ascent on the mean IoU undo that shift of the prior.

The ignored class (background: sky, rover hardware, unlabelled ground) keeps bias 0: its pixels
are not scored, so pushing terrain over it would look free by the score and be wrong on the
rover, which relies on it to keep the sky out of the hazard map.

The bias is folded into the bias of every model's 1x1 logits convolution (``head_conv``). That is
exact: what follows it in every registered model is a resize (weights summing to one) and the
softmax, and it costs nothing on the rover.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge.contract.labels import LabelSet
from edge.contract.metrics import mean_iou
from edge.io.sinks import atomic_path, atomic_write_json
from trainer.rundir import RunDir

log = logging.getLogger(__name__)

HEAD = "head_conv"
UNCALIBRATED = "model_uncalibrated.keras"
RECORD = "class_bias.json"


@dataclass
class BiasSearch:
    """The coordinate ascent: each sweep tries every grid value for each scored class in turn."""

    low: float = -3.0
    high: float = 3.0
    step: float = 0.25
    sweeps: int = 3

    @property
    def grid(self) -> np.ndarray:
        return np.round(np.arange(self.low, self.high + self.step / 2, self.step), 6)


@dataclass
class Calibration:
    """What `trainer calibrate` found and measured (written as ``class_bias.json``)."""

    bias: dict[str, float]
    frames: int
    seed: int
    search: dict = field(default_factory=dict)
    tune_miou_before: float = 0.0
    tune_miou_after: float = 0.0
    val_before: dict = field(default_factory=dict)
    val_after: dict = field(default_factory=dict)


def scored_pixels(
    log_probs: np.ndarray, labels: np.ndarray, label_set: LabelSet
) -> tuple[np.ndarray, np.ndarray]:
    """The labelled pixels only: ``(P, C)`` log-probabilities and ``(P,)`` labels. The search
    scores thousands of candidate biases, so the ignored pixels are dropped once, here."""
    keep = labels != label_set.ignore if label_set.ignore is not None else labels >= 0
    return log_probs[keep], labels[keep].astype(np.int64)


def pixel_miou(
    log_probs: np.ndarray, labels: np.ndarray, bias: np.ndarray, label_set: LabelSet
) -> float:
    """Mean IoU over the scored classes of ``argmax(log_probs + bias)`` on scored pixels (the
    project's score: classes absent from both prediction and truth do not count)."""
    n = label_set.num_classes
    predicted = np.argmax(log_probs + bias, axis=-1)
    confusion = np.bincount(labels * n + predicted, minlength=n * n).reshape(n, n)
    value = mean_iou(confusion, label_set)  # the project's score, from the confusion
    return value if np.isfinite(value) else 0.0


def tune_bias(
    log_probs: np.ndarray, labels: np.ndarray, label_set: LabelSet, search: BiasSearch
) -> np.ndarray:
    """The per-class bias (C,) that maximizes :func:`pixel_miou` on these scored pixels; the
    ignored class stays at 0 and ties keep the smaller change."""
    bias = np.zeros(label_set.num_classes, np.float32)
    grid = sorted(search.grid, key=abs)  # ties: the value nearest 0 wins
    for _ in range(search.sweeps):
        before = bias.copy()
        for k in range(label_set.num_classes):
            if k == label_set.ignore:
                continue
            best, best_score = bias[k], -1.0
            for value in grid:
                trial = bias.copy()
                trial[k] = value
                score = pixel_miou(log_probs, labels, trial, label_set)
                if score > best_score + 1e-9:
                    best, best_score = value, score
            bias[k] = best
        if np.array_equal(bias, before):
            break
    return bias


def fold_bias(model, bias: np.ndarray) -> None:
    """Add ``bias`` to the logits convolution's bias, in place.

    Raises:
        ValueError: when the model has no ``head_conv`` with a bias of the right size.
    """
    try:
        head = model.get_layer(HEAD)
    except ValueError as err:
        raise ValueError(f"{model.name} has no {HEAD!r} layer: cannot fold a class bias") from err
    weights = head.get_weights()
    if len(weights) != 2 or weights[1].shape != bias.shape:
        raise ValueError(
            f"{model.name}'s {HEAD} has no bias of {bias.shape[0]} classes to fold into"
        )
    head.set_weights([weights[0], weights[1] + bias.astype(weights[1].dtype)])


def log_probabilities(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """log p (N, H, W, C) float32: the softmax's logits up to a constant per pixel."""
    from trainer.evaluate import predict_probabilities

    probs = predict_probabilities(model, images, batch_size)
    return np.log(np.clip(probs, 1e-7, 1.0)).astype(np.float32)


def _report(model, images, labels, label_set: LabelSet) -> dict:
    """The validation report (as in metrics.json) plus where the hazard map fires unlabelled."""
    from trainer.evaluate import evaluate_model

    report, predicted = evaluate_model(model, images, labels, label_set)
    out = report.as_dict()
    if label_set.hazards and label_set.ignore is not None:
        # the hazard map's alarms where nobody labelled: the rover sees those pixels too
        hazard = np.isin(predicted, [label_set.index(name) for name in label_set.hazards])
        unlabelled = labels == label_set.ignore
        out["hazard_pixels"] = float(hazard.mean())
        out["hazard_pixels_on_unlabelled"] = (
            float(hazard[unlabelled].mean()) if unlabelled.any() else 0.0
        )
    return out


def calibrate_run(
    run_dir: str | Path,
    data_path: str | Path | None = None,
    *,
    frames: int = 1500,
    seed: int = 0,
    search: BiasSearch | None = None,
) -> Calibration:
    """Tune the class bias of a run on its training frames and fold it into ``model.keras``.

    The model as trained is kept as ``model_uncalibrated.keras`` and is where a second call
    starts from, so calibrating twice does not add two biases. ``metrics.json`` is rewritten for
    the calibrated model; ``class_bias.json`` records the bias and the validation before/after.

    Raises:
        ValueError: for a folder that is not a run, missing data or a model without ``head_conv``.
    """
    from trainer.evaluate import load_model, run_split

    run_dir = Path(run_dir)
    search = search or BiasSearch()
    source = run_dir / UNCALIBRATED
    if not source.is_file():
        source = RunDir(run_dir).model
    if not source.is_file():
        raise ValueError(f"{run_dir} has no model.keras: train it with `trainer fit` first")
    if frames < 1:
        raise ValueError(f"--frames {frames}: tune on at least one training frame")
    mars, train_idx, val_idx = run_split(run_dir, Path(data_path) if data_path else None)
    label_set = mars.label_set
    rng = np.random.default_rng(seed)
    tune_idx = np.sort(rng.choice(train_idx, min(frames, len(train_idx)), replace=False))
    model = load_model(source)
    log.info("tuning the class bias on %d training frames of %s", len(tune_idx), run_dir)
    pixels, truth = scored_pixels(
        log_probabilities(model, mars.images[tune_idx]), mars.labels[tune_idx], label_set
    )
    bias = tune_bias(pixels, truth, label_set, search)
    record = Calibration(
        bias={name: float(b) for name, b in zip(label_set.names, bias, strict=True)},
        frames=len(tune_idx),
        seed=seed,
        search=asdict(search),
        tune_miou_before=pixel_miou(pixels, truth, np.zeros_like(bias), label_set),
        tune_miou_after=pixel_miou(pixels, truth, bias, label_set),
    )
    val_images, val_labels = mars.images[val_idx], mars.labels[val_idx]
    record.val_before = _report(model, val_images, val_labels, label_set)
    fold_bias(model, bias)
    record.val_after = _report(model, val_images, val_labels, label_set)
    _write(run_dir, source, model, record, label_set)
    return record


def _write(run_dir: Path, source: Path, model, record: Calibration, label_set: LabelSet) -> None:
    """Keep the model as trained, then the calibrated model, its record and metrics."""
    uncalibrated = run_dir / UNCALIBRATED
    if source != uncalibrated:
        with atomic_path(uncalibrated) as tmp:
            shutil.copyfile(source, tmp)
    with atomic_path(RunDir(run_dir).model) as tmp:
        model.save(tmp)
    metrics = {"split": "validation", "class_bias": record.bias, **record.val_after}
    atomic_write_json(run_dir / RunDir.METRICS, metrics)
    from trainer import viz

    confusion = np.asarray(record.val_after["confusion"])
    viz.confusion_matrix_plot(confusion, run_dir / "confusion.png", label_set)
    atomic_write_json(run_dir / RECORD, asdict(record))


def forget_calibration(run_dir: Path) -> None:
    """A new best model.keras from `trainer fit` makes an older calibration stale."""
    for name in (UNCALIBRATED, RECORD):
        (Path(run_dir) / name).unlink(missing_ok=True)
