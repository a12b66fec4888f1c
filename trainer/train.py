"""`trainer fit`: train a registered model and leave a complete run directory.

A run directory holds ``config.json`` (resolved), ``model.keras`` (best by validation mean IoU),
``last.keras`` + ``state.json`` (for ``--resume``), ``history.csv``, ``curves.png``,
``metrics.json`` and ``confusion.png``. Every file is written to a temporary name first and
renamed, so an interrupted run never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from trainer import data as D
from trainer.augment import augment_pair, offline_augment, online_pipeline
from trainer.config import TrainConfig, from_dict, to_json

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Training and validation frames after cleaning, splitting and offline augmentation."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    info: dict


@dataclass
class FitResult:
    run_dir: Path
    best_miou: float
    epochs_run: int
    interrupted: bool
    seconds: float
    replicas: int = 1


def prepare_data(cfg: TrainConfig) -> Prepared:
    """Load, validate, drop outliers, split (stratified) and augment the training part offline."""
    mars, train_idx, val_idx, report = D.clean_and_split(D.load_dataset(cfg.data.path), cfg.data)
    info: dict = {
        "source": mars.source,
        "frames": len(mars.images) + (report.count if report else 0),
    }
    if report is not None:
        info["outliers_removed"] = report.count
    images, labels, stats = offline_augment(
        mars.images[train_idx],
        mars.labels[train_idx],
        flip=cfg.data.flip,
        mask_dropout_fraction=cfg.data.mask_dropout_fraction,
        big_rock_repeats=cfg.data.big_rock_repeats,
        seed=cfg.seed,
    )
    info.update(
        train_frames=len(train_idx),
        val_frames=len(val_idx),
        train_after_augmentation=len(images),
        val_source_index=mars.index[val_idx].tolist(),
    )
    log.info(
        "data: %d frames (%s outliers removed) -> %d train (%d after offline augmentation), %d validation",
        info["frames"],
        info.get("outliers_removed", 0),
        len(train_idx),
        len(images),
        len(val_idx),
    )
    info["mask_dropout"] = stats.mask_dropout
    return Prepared(images, labels, mars.images[val_idx], mars.labels[val_idx], info)


def select_strategy(name: str, cpu_replicas: int = 0):
    """The ``tf.distribute`` strategy for ``name``.

    - ``auto``: MirroredStrategy over all GPUs when there are several, else the default.
    - ``default``: one device.
    - ``mirrored``: MirroredStrategy over all GPUs, or over ``cpu_replicas`` logical CPUs.
    - ``multiworker``: MultiWorkerMirroredStrategy, configured by the ``TF_CONFIG`` variable.

    Raises:
        ValueError: for an unknown name, or ``multiworker`` without ``TF_CONFIG``.
    """
    import tensorflow as tf

    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
            )
        except RuntimeError as err:  # already initialized in this process
            log.warning("could not split the CPU into %d devices: %s", cpu_replicas, err)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices("CPU")]
        )
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy multiworker needs TF_CONFIG, e.g. "
                '\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; valid: auto, default, mirrored, multiworker")


def make_dataset(images, labels, batch_size: int, *, training: bool, cfg: TrainConfig):
    """``tf.data`` pipeline: shuffle, online albumentations in parallel (training), batch, prefetch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        ds = ds.shuffle(len(images), seed=cfg.seed, reshuffle_each_iteration=True)
        pipeline = online_pipeline(cfg.data.online_geometric, cfg.data.online_pixel, seed=cfg.seed)
        if pipeline is not None:
            h, w = images.shape[1:3]

            def augment(image, label):
                image, label = tf.numpy_function(
                    lambda i, m: augment_pair(pipeline, i, m),
                    [image, label],
                    [tf.float32, tf.uint8],
                )
                return tf.ensure_shape(image, (h, w)), tf.ensure_shape(label, (h, w))

            ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.map(
        lambda i, m: (i[..., None], tf.cast(m, tf.int32)), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def fit(
    cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, callbacks: list | None = None
) -> FitResult:
    """Train ``cfg.model`` on ``cfg.data`` and fill ``run_dir``.

    Args:
        cfg: the run's configuration (saved as ``config.json``).
        run_dir: output folder; must not hold a run unless ``resume``.
        resume: continue from ``last.keras`` and ``state.json`` (weights, epoch, learning rate
            and best score; AdamW's moment estimates restart).
        callbacks: extra Keras callbacks, run after the project's own.

    Returns:
        Where the run is, its best validation mean IoU and whether it was interrupted.

    Raises:
        ValueError: for a bad config, data, or a run directory in the wrong state.
    """
    run_dir = Path(run_dir)
    start = time.perf_counter()
    state_path = run_dir / "state.json"
    if resume:
        if not state_path.exists():
            raise ValueError(
                f"nothing to resume in {run_dir}: no state.json (start without --resume)"
            )
        cfg = from_dict(TrainConfig, json.loads((run_dir / "config.json").read_text()))
    elif (run_dir / "model.keras").exists() or state_path.exists():
        raise ValueError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --name"
        )
    from trainer.models import MODELS

    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; valid names: {', '.join(sorted(MODELS))}")
    from trainer.losses import class_weights_from_labels, make_loss, parse_loss_spec

    parse_loss_spec(cfg.loss)  # fail on a bad spec before loading data

    strategy = select_strategy(cfg.strategy, cfg.cpu_replicas)
    import tensorflow as tf

    from trainer.metrics import segmentation_metrics
    from trainer.models import build_model

    _seed_everything(cfg.seed)
    if cfg.mixed_precision:
        policy = "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
    data = prepare_data(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    to_json(cfg, run_dir / "config.json")
    (run_dir / "data.json").write_text(json.dumps(data.info) + "\n")

    state = (
        json.loads(state_path.read_text())
        if resume
        else {"epoch": 0, "best": None, "lr": cfg.learning_rate}
    )
    weights = class_weights_from_labels(data.train_labels) if "weighted_ce" in cfg.loss else None
    input_shape = (*data.train_images.shape[1:3], 1)
    with strategy.scope():
        model = build_model(cfg.model, input_shape, width=cfg.width)
        if resume:
            model.load_weights(run_dir / "last.keras")
        model.compile(
            optimizer=keras.optimizers.AdamW(state["lr"], weight_decay=cfg.weight_decay),
            loss=make_loss(cfg.loss, weights),
            metrics=segmentation_metrics(),
            jit_compile=cfg.xla,
        )
    log.info(
        "%s: %s parameters, %d replica(s)",
        cfg.model,
        f"{model.count_params():,}",
        strategy.num_replicas_in_sync,
    )

    train_ds = make_dataset(
        data.train_images, data.train_labels, cfg.batch_size, training=True, cfg=cfg
    )
    val_ds = make_dataset(data.val_images, data.val_labels, cfg.batch_size, training=False, cfg=cfg)
    checkpoint = AtomicCheckpoint(run_dir, best=state["best"])
    all_callbacks = [
        checkpoint,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_miou",
            mode="max",
            factor=cfg.lr_factor,
            patience=cfg.lr_patience,
            min_lr=cfg.min_lr,
            verbose=1,
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_miou",
            mode="max",
            patience=cfg.stop_patience,
            restore_best_weights=True,
            verbose=1,
        ),
        *(callbacks or []),
    ]
    interrupted = False
    try:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=cfg.epochs,
            initial_epoch=state["epoch"],
            steps_per_epoch=cfg.steps_per_epoch,
            callbacks=all_callbacks,
            verbose=cfg.verbose,
            shuffle=False,  # tf.data shuffles
        )
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: keeping the best checkpoint and the history written so far")
    finish_run(run_dir, data.val_images, data.val_labels)
    return FitResult(
        run_dir,
        float(checkpoint.best or 0.0),
        checkpoint.epochs_done,
        interrupted,
        time.perf_counter() - start,
        strategy.num_replicas_in_sync,
    )


def finish_run(run_dir: Path, val_images: np.ndarray, val_labels: np.ndarray) -> None:
    """Write curves.png from the history and metrics.json + confusion.png from the best model."""
    from trainer import viz
    from trainer.evaluate import evaluate_model, load_model

    history = run_dir / "history.csv"
    if history.exists() and history.stat().st_size:
        viz.training_curves(history, run_dir / "curves.png")
    if (run_dir / "model.keras").exists():
        model = load_model(run_dir / "model.keras")
        report, _ = evaluate_model(model, val_images, val_labels)
        write_json(run_dir / "metrics.json", {"split": "validation", **report.as_dict()})
        viz.confusion_matrix_plot(report.confusion, run_dir / "confusion.png")


def write_json(path: Path, obj) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    keras.utils.set_random_seed(seed)  # also seeds numpy's legacy global generator and TensorFlow


def _atomic_save(model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.partial.keras")
    model.save(tmp)
    tmp.replace(path)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves ``model.keras`` when validation mean IoU improves and ``last.keras`` + ``state.json``
    after every epoch, each through a temporary file and a rename."""

    def __init__(self, run_dir: Path, best: float | None = None):
        super().__init__()
        self.run_dir = run_dir
        self.best = best
        self.epochs_done = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = logs.get("val_miou")
        if score is not None and (self.best is None or score > self.best):
            self.best = float(score)
            _atomic_save(self.model, self.run_dir / "model.keras")
        _atomic_save(self.model, self.run_dir / "last.keras")
        lr = float(self.model.optimizer.learning_rate.numpy())
        write_json(self.run_dir / "state.json", {"epoch": epoch + 1, "best": self.best, "lr": lr})
        self.epochs_done = epoch + 1
