"""`trainer evaluate` and `trainer predict`: score a run, write predictions and a submission."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.contract.labels import LabelSet, colourise
from edge.contract.metrics import IoUReport, confusion_matrix, report_from_confusion, score
from edge.io.sinks import atomic_path, atomic_write_bytes, atomic_write_json, png_bytes
from trainer import data as D
from trainer.rundir import RunDir

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
    return RunDir(run).model if run.is_dir() else run


def predict_probabilities(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, H, W, C) for float frames (N, H, W) in [0, 1].

    Under a Keras distribution (JAX, several devices) every batch must split evenly over the
    devices: the frames are padded to a multiple of their count (and the batch rounded to one),
    and the padding's predictions dropped.
    """
    import keras

    frames = images[..., None].astype(np.float32)
    distribution = keras.distribution.distribution()
    devices = len(distribution.device_mesh.devices.ravel()) if distribution is not None else 1
    if devices > 1:
        batch_size = max(devices, batch_size // devices * devices)
        pad = -len(frames) % devices
        frames = np.concatenate([frames, np.zeros((pad, *frames.shape[1:]), frames.dtype)])
    return model.predict(frames, batch_size=batch_size, verbose=0)[: len(images)]


def predict_labels(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class maps (N, H, W) uint8, predicted in batches (the probabilities are not kept)."""
    out = np.empty(images.shape[:3], np.uint8)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        out[start : start + len(chunk)] = predict_probabilities(model, chunk, batch_size).argmax(-1)
    return out


def evaluate_model(
    model, images: np.ndarray, labels: np.ndarray, label_set: LabelSet, batch_size: int = 64
) -> tuple[IoUReport, np.ndarray]:
    """Score a model at its own resolution; returns the report and the predicted label maps."""
    predicted = predict_labels(model, images, batch_size)
    return score(labels, predicted, label_set), predicted


def run_config(run_dir: Path):
    """The run's :class:`trainer.config.TrainConfig` (the defaults when it has no config.json)."""
    return RunDir(run_dir).config_or_default()


def run_split(
    run_dir: Path, data_path: Path | None = None
) -> tuple[D.MarsData, np.ndarray, np.ndarray]:
    """A run's data, loaded, cleaned and split exactly as its training was:
    ``(data, train_idx, val_idx)``.

    Args:
        run_dir: the run (its ``config.json`` gives the data settings; defaults without one).
        data_path: the data set; by default the one recorded in the config.

    Raises:
        ValueError: when the data cannot be found.
    """
    from dataclasses import replace

    run = RunDir(run_dir)
    cfg = run.config_or_default()
    path = run.data_location(str(data_path) if data_path else None)
    if not path or not Path(path).exists():
        which = "given data" if data_path else "run's data"
        raise ValueError(
            f"cannot find the {which} ({data_path or cfg.data.path or 'not recorded'}); "
            "pass the data path"
        )
    data_cfg = replace(cfg.data, path=path)
    own = D.split_source(data_cfg.split_from) is not None and run.data_record().get("val_names")
    if own:
        # the run's own data.json holds the frames it was given: found wherever the run is now
        # (a missing one is an error there); a recomputed split is checked against the record
        data_cfg = replace(data_cfg, split_from=str(run_dir))
    mars, train_idx, val_idx, _ = D.clean_and_split(D.load_data(data_cfg), data_cfg)
    if not own:
        _check_split(run_dir, mars, val_idx)
    return mars, train_idx, val_idx


def _check_split(run_dir: Path, mars: D.MarsData, val_idx: np.ndarray) -> None:
    """The recomputed validation frames must be the ones the run recorded in data.json: other
    data (another copy, a folder that changed) would score the model on frames it trained on.

    Raises:
        ValueError: naming how many frames differ.
    """
    recorded = RunDir(run_dir).data_record()
    if "val_names" in recorded and mars.names is not None:
        mine, theirs = {mars.names[i] for i in val_idx}, set(recorded["val_names"])
    elif "val_source_index" in recorded:
        mine, theirs = set(mars.index[val_idx].tolist()), set(recorded["val_source_index"])
    else:
        return
    if mine != theirs:
        raise ValueError(
            f"these data give {len(mine ^ theirs)} validation frames other than the run's "
            f"{len(theirs)} (data.json): pass the data set the run was trained on"
        )


def evaluation_frames(
    run_dir: Path, data_path: Path, split: str, agreement: int | None = None
) -> tuple[D.MarsData, np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    """The frames to evaluate on: the run's validation split (recomputed from its config), or the
    labelled test set.

    Returns:
        ``(data, images, labels, source_index, names)``; names are the AI4Mars ids, else None.
    """
    if split == "val":
        mars, _, val_idx = run_split(run_dir, data_path)
        names = None if mars.names is None else [mars.names[i] for i in val_idx]
        return mars, mars.images[val_idx], mars.labels[val_idx], mars.index[val_idx], names
    if split != "test":
        raise ValueError(f"unknown split {split!r}; valid: val, test")
    cfg = run_config(run_dir).data
    mars = D.load_dataset(data_path, cfg.frame_size, cfg.crop, agreement or cfg.test_agreement)
    if mars.test_labels is None:
        what = (
            "no labels/test/masked-gold-min*-100agree folder"
            if mars.layout == "ai4mars"
            else "no test_labels"
        )
        raise ValueError(f"{data_path} has {what}; evaluate on --split val instead")
    index = np.arange(len(mars.test_images))
    return mars, mars.test_images, mars.test_labels, index, mars.test_names


def native_score(
    mars: D.MarsData, predicted: np.ndarray, names: list[str], test: bool
) -> IoUReport:
    """Score class maps at the frames' own resolution: each map is brought back with the
    preprocessing's :meth:`~edge.contract.preprocess.Preprocessing.restore` (what the rover does) and
    compared with the full-size label (masks applied)."""
    n = mars.label_set.num_classes
    cm = np.zeros((n, n), np.int64)
    for pred, truth in zip(predicted, D.native_labels(mars, names, test)):
        restored = mars.preprocessing.restore(pred, truth.shape, fill=mars.label_set.ignore or 0)
        cm += confusion_matrix(truth, restored, n)
    return report_from_confusion(cm, mars.label_set)


def evaluate_run(
    run: str | Path,
    data_path: str | Path,
    split: str = "val",
    out_dir: str | Path | None = None,
    agreement: int | None = None,
) -> dict:
    """Per-class IoU, mean IoU, big-rock figures, confusion matrix PNG and the worst frames.

    On an AI4Mars folder the score is also computed at the frames' own resolution (the model's
    maps restored as the rover restores them), which is what ``edge-seg run --labels`` measures.

    Args:
        run: run directory or ``.keras`` file.
        data_path: the data set (npz or AI4Mars folder).
        split: ``val`` (the run's own validation split) or ``test`` (needs test labels).
        out_dir: where to write; by default ``<run>/eval_<split>``.
        agreement: AI4Mars expert test set (1, 2, 3: ``masked-gold-min<N>-100agree``) for
            ``split="test"`` [default: the run's ``data.test_agreement``].

    Returns:
        The metrics, as written to ``metrics.json``.
    """
    from trainer import viz

    model_path = resolve_model_path(run)
    run_dir = model_path.parent
    model = load_model(model_path)
    mars, images, labels, index, names = evaluation_frames(
        run_dir, Path(data_path), split, agreement
    )
    label_set = mars.label_set
    report, predicted = evaluate_model(model, images, labels, label_set)
    out = Path(out_dir) if out_dir else run_dir / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    test_info = (
        {"test_agreement": agreement or run_config(run_dir).data.test_agreement}
        if split == "test"
        else {}
    )
    per_frame = np.array([score(t, p, label_set).mean_iou for t, p in zip(labels, predicted)])
    worst = np.argsort(np.nan_to_num(per_frame, nan=2.0))[:8]
    result = {
        "split": split,
        **test_info,
        "frames": len(images),
        "resolution": "{}x{}".format(*images.shape[1:3]),
        **report.as_dict(),
        "worst_frames": [
            {
                "index": int(index[i]),
                "name": None if names is None else names[i],
                "miou": float(per_frame[i]),
            }
            for i in worst
        ],
    }
    if names is not None and mars.layout == "ai4mars":
        result["native"] = native_score(mars, predicted, names, split == "test").as_dict()
    atomic_write_json(out / "metrics.json", result)
    viz.confusion_matrix_plot(report.confusion, out / "confusion.png", label_set)
    viz.sample_grid(
        images[worst],
        labels[worst],
        out / "worst_frames.png",
        predictions=predicted[worst],
        titles=[f"frame {index[i]}: mIoU {per_frame[i]:.2f}" for i in worst],
        label_set=label_set,
    )
    result["files"] = [str(out / n) for n in ("metrics.json", "confusion.png", "worst_frames.png")]
    return result


def format_report(result: dict) -> str:
    """The per-class IoU table printed by `trainer evaluate`."""
    native = result.get("native")
    head = f"{'class':<10} {'IoU':>7}" + (f" {'native':>7}" if native else "")
    lines = [
        f"{result['split']} split, {result['frames']} frames at {result['resolution']}"
        + ("; native: scored at the frames' own size, as the rover is" if native else ""),
        head,
    ]

    def cell(value):
        return f"{value:7.4f}" if value is not None else f"{'-':>7}"

    for name, value in result["per_class_iou"].items():
        lines.append(
            f"{name:<10} {cell(value)}"
            + (f" {cell(native['per_class_iou'][name])}" if native else "")
        )
    lines.append(
        f"{'mean IoU':<10} {cell(result['mean_iou'])}"
        + (f" {cell(native['mean_iou'])}" if native else "")
        + "   (background not scored)"
    )
    lines.append(f"pixel accuracy {result['pixel_accuracy']:.4f}")
    for name, h in result.get("hazards", {}).items():
        lines.append(
            f"{name}: recall {_pct(h['recall'])}, precision {_pct(h['precision'])}; "
            f"{_pct(h['on_unlabelled'])} of predicted {name} pixels lie on unlabelled ground"
        )
    return "\n".join(lines + [f"wrote {f}" for f in result.get("files", [])])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


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
    if submission is None and masks_dir is None:
        raise ValueError("nothing to write: give --submission FILE.csv and/or --masks DIR")
    model_path = resolve_model_path(run)
    model = load_model(model_path)
    cfg = run_config(model_path.parent).data
    mars = D.load_dataset(data_path, cfg.frame_size, cfg.crop, cfg.test_agreement)
    if mars.test_images is None or len(mars.test_images) == 0:
        raise ValueError(f"{data_path} has no test set to predict")
    predicted = predict_labels(model, mars.test_images, batch_size)
    if submission is not None:
        write_submission(predicted, Path(submission))
    if masks_dir is not None:
        masks_dir = Path(masks_dir)
        masks_dir.mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(predicted):
            name = mars.test_names[i] if mars.test_names else f"{i:05d}"
            atomic_write_bytes(
                masks_dir / f"{name}.png", png_bytes(colourise(mask, mars.label_set))
            )
    return {
        "frames": len(predicted),
        "submission": str(submission) if submission else None,
        "masks": str(masks_dir) if masks_dir else None,
    }


def write_submission(predicted: np.ndarray, path: Path) -> Path:
    """Write the Kaggle CSV (``id,0,...,H*W-1``), atomically."""
    _, h, w = predicted.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("id," + ",".join(map(str, range(h * w))) + "\n")
        for i, mask in enumerate(predicted):
            f.write(f"{i}," + ",".join(map(str, mask.reshape(-1).tolist())) + "\n")
    return path


__all__ = [
    "evaluate_model",
    "evaluate_run",
    "load_model",
    "predict_run",
    "write_submission",
]
