"""`trainer evaluate` and `trainer predict`: score a run, write predictions and a submission."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from edge.classes import colourise
from edge.metrics import IoUReport, score
from trainer import data as D

log = logging.getLogger(__name__)


def load_model(path: str | Path):
    """Load a ``.keras`` model of this project (custom layers registered), uncompiled.

    Raises:
        ValueError: if the file is missing or not a readable Keras model.
    """
    import keras

    import trainer.models  # noqa: F401  (registers the custom layers)

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no model at {path}; train one with `trainer fit`")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many kinds for a damaged zip or config
        raise ValueError(
            f"cannot load {path}: {type(err).__name__}: {err}; is the file complete?"
        ) from err


def resolve_model_path(run: str | Path) -> Path:
    """A run directory (its ``model.keras``) or a ``.keras`` file."""
    run = Path(run)
    return run / "model.keras" if run.is_dir() else run


def predict_probabilities(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, H, W, C) for float frames (N, H, W) in [0, 1]."""
    return model.predict(images[..., None].astype(np.float32), batch_size=batch_size, verbose=0)


def evaluate_model(
    model, images: np.ndarray, labels: np.ndarray, batch_size: int = 64
) -> tuple[IoUReport, np.ndarray]:
    """Score a model; returns the report and the predicted label maps."""
    predicted = predict_probabilities(model, images, batch_size).argmax(-1).astype(np.uint8)
    return score(labels, predicted), predicted


def evaluation_frames(
    run_dir: Path, data_path: Path, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frames to evaluate on: the run's validation split (recomputed from its config), or the
    labelled test set.

    Returns:
        ``(images, labels, source_index)``.
    """
    if split == "val":
        mars, _, val_idx = run_split(run_dir, data_path)
        return mars.images[val_idx], mars.labels[val_idx], mars.index[val_idx]
    if split != "test":
        raise ValueError(f"unknown split {split!r}; valid: val, test")
    mars = D.load_dataset(data_path)
    if mars.test_labels is None:
        raise ValueError(f"{data_path} has no test_labels; evaluate on --split val instead")
    return mars.test_images, mars.test_labels, np.arange(len(mars.test_images))


def run_split(
    run_dir: Path, data_path: Path | None = None
) -> tuple[D.MarsData, np.ndarray, np.ndarray]:
    """A run's data, cleaned and split exactly as its training was: ``(data, train_idx, val_idx)``.

    Args:
        run_dir: the run (its ``config.json`` gives the data settings; defaults without one).
        data_path: the data set; by default the one recorded in the config.

    Raises:
        ValueError: when the data cannot be found.
    """
    from trainer.config import TrainConfig, from_dict

    config_path = run_dir / "config.json"
    cfg = (
        from_dict(TrainConfig, json.loads(config_path.read_text()))
        if config_path.exists()
        else TrainConfig()
    )
    path = Path(data_path or cfg.data.path)
    if not str(data_path or cfg.data.path) or not path.exists():
        raise ValueError(
            f"cannot find the run's data ({cfg.data.path or 'not recorded'}); pass the data path"
        )
    mars, train_idx, val_idx, _ = D.clean_and_split(D.load_dataset(path), cfg.data)
    return mars, train_idx, val_idx


def evaluate_run(
    run: str | Path, data_path: str | Path, split: str = "val", out_dir: str | Path | None = None
) -> dict:
    """Per-class IoU, mean IoU, confusion matrix PNG and a PNG of the worst frames.

    Args:
        run: run directory or ``.keras`` file.
        data_path: the data set (npz or AI4Mars folder).
        split: ``val`` (the run's own validation split) or ``test`` (needs ``test_labels``).
        out_dir: where to write; by default ``<run>/eval_<split>``.

    Returns:
        The metrics, as written to ``metrics.json``.
    """
    from trainer import viz

    model_path = resolve_model_path(run)
    run_dir = model_path.parent
    model = load_model(model_path)
    images, labels, index = evaluation_frames(run_dir, Path(data_path), split)
    report, predicted = evaluate_model(model, images, labels)
    out = Path(out_dir) if out_dir else run_dir / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    per_frame = np.array([score(t, p).mean_iou for t, p in zip(labels, predicted)])
    worst = np.argsort(np.nan_to_num(per_frame, nan=2.0))[:8]
    result = {
        "split": split,
        "frames": len(images),
        **report.as_dict(),
        "worst_frames": [{"index": int(index[i]), "miou": float(per_frame[i])} for i in worst],
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    viz.confusion_matrix_plot(report.confusion, out / "confusion.png")
    viz.sample_grid(
        images[worst],
        labels[worst],
        out / "worst_frames.png",
        predictions=predicted[worst],
        titles=[f"frame {index[i]}: mIoU {per_frame[i]:.2f}" for i in worst],
    )
    result["files"] = [str(out / n) for n in ("metrics.json", "confusion.png", "worst_frames.png")]
    return result


def format_report(result: dict) -> str:
    """The per-class IoU table printed by `trainer evaluate`."""
    lines = [f"{result['split']} split, {result['frames']} frames", f"{'class':<10} {'IoU':>7}"]
    for name, value in result["per_class_iou"].items():
        lines.append(f"{name:<10} {value:7.4f}")
    lines.append(
        f"{'mean IoU':<10} {result['mean_iou']:7.4f}   (classes 1-4, background not scored)"
    )
    lines.append(f"pixel accuracy {result['pixel_accuracy']:.4f}")
    return "\n".join(lines + [f"wrote {f}" for f in result.get("files", [])])


def predict_run(
    run: str | Path,
    data_path: str | Path,
    submission: Path | None = None,
    masks_dir: Path | None = None,
    batch_size: int = 64,
) -> dict:
    """Predict the test set: the Kaggle submission CSV and/or colourised PNG masks.

    The CSV has the header ``id,0,1,...,H*W-1`` and one row per test frame, the predicted
    labels flattened row-major; it is written to a temporary name and renamed when complete.

    Raises:
        ValueError: if the data has no test set or nothing was asked for.
    """
    from PIL import Image

    if submission is None and masks_dir is None:
        raise ValueError("nothing to write: give --submission FILE.csv and/or --masks DIR")
    model = load_model(resolve_model_path(run))
    mars = D.load_dataset(data_path)
    if mars.test_images is None or len(mars.test_images) == 0:
        raise ValueError(f"{data_path} has no test_set to predict")
    predicted = (
        predict_probabilities(model, mars.test_images, batch_size).argmax(-1).astype(np.uint8)
    )
    if submission is not None:
        write_submission(predicted, Path(submission))
    if masks_dir is not None:
        masks_dir = Path(masks_dir)
        masks_dir.mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(predicted):
            Image.fromarray(colourise(mask)).save(masks_dir / f"{i:05d}.png")
    return {
        "frames": len(predicted),
        "submission": str(submission) if submission else None,
        "masks": str(masks_dir) if masks_dir else None,
    }


def write_submission(predicted: np.ndarray, path: Path) -> Path:
    """Write the Kaggle CSV (``id,0,...,H*W-1``), atomically."""
    _, h, w = predicted.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w") as f:
        f.write("id," + ",".join(map(str, range(h * w))) + "\n")
        for i, mask in enumerate(predicted):
            f.write(f"{i}," + ",".join(map(str, mask.reshape(-1).tolist())) + "\n")
    tmp.replace(path)
    return path


__all__ = [
    "evaluate_model",
    "evaluate_run",
    "load_model",
    "predict_run",
    "write_submission",
]
