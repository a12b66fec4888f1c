"""`trainer fit`: train a registered model and leave a complete run directory.

A run directory holds ``config.json`` (resolved), ``data.json`` (frames, split, classes,
preprocessing), ``model.keras`` (best by validation mean IoU), ``last.keras`` + ``state.json``
(for ``--resume``), ``history.csv`` (with the learning rate), ``curves.png``, ``metrics.json`` and
``confusion.png``. Every file is written to a temporary name first and renamed, so an interrupted
run never leaves half a checkpoint.

:func:`fit` is a short sequence of named steps: check the run directory, pick the distribution
strategy, seed, load and prepare the data, build and compile the model, train, finish.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np

from edge.contract.labels import LabelSet
from edge.contract.preprocess import Preprocessing
from edge.io.sinks import atomic_write_json
from trainer import data as D
from trainer.augment import offline_augment
from trainer.callbacks import (
    AdaptiveWeightsUpdate,
    AtomicCheckpoint,
    CosineSchedule,
    EpochTimer,
    LearningRateLog,
    ProgressLog,
    ScheduleResume,
)
from trainer.config import TrainConfig, flat_fields, flatten, to_json, with_values
from trainer.devices import Devices, backend, configure_jax, set_precision
from trainer.devices import select as select_devices
from trainer.distributed import (
    TrainingError,
    is_chief,
    one_line,
    select_strategy,
    synchronize_batch_norm,
    train_custom,
    worker_name,
)
from trainer.pipeline import make_dataset
from trainer.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Training and validation frames after cleaning, splitting and offline augmentation."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    label_set: LabelSet
    preprocessing: Preprocessing
    info: dict


@dataclass
class FitResult:
    run_dir: Path
    best_miou: float
    epochs_run: int
    interrupted: bool
    seconds: float
    replicas: int = 1
    model: object = None  # the trained keras.Model (its weights, e.g. to compare workers)
    chief: bool = True


def fit(
    cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, callbacks: list | None = None
) -> FitResult:
    """Train ``cfg.model`` on ``cfg.data`` and fill ``run_dir``.

    Args:
        cfg: the resolved configuration (saved as ``config.json``); on ``resume``, the one
            :func:`resume_config` returned.
        run_dir: output folder; must not hold a run unless ``resume``.
        resume: continue from ``last.keras`` and ``state.json`` (weights, epoch, learning rate
            and best score; AdamW's moment estimates restart).
        callbacks: extra Keras callbacks, run after the project's own.

    Returns:
        Where the run is, its best validation mean IoU and whether it was interrupted.

    Raises:
        ValueError: for a bad config, data, or a run directory in the wrong state.
    """
    from trainer.losses import parse_loss_spec
    from trainer.models import MODELS

    start = time.perf_counter()
    run_dir = Path(run_dir)
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; valid names: {', '.join(sorted(MODELS))}")
    loss_terms = parse_loss_spec(cfg.loss)  # the one parse: fails before any data is loaded
    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"--ema {cfg.ema}: a momentum in [0, 1), e.g. 0.999 (0: off)")
    # first: the devices and the strategy, before anything starts the backend
    found, strategy, chief, custom = _place(cfg)
    state = _run_state(run_dir, resume, cfg)  # every worker looks: it only reads
    _seed_everything(cfg.seed)
    set_precision(found, cfg.mixed_precision)
    log.info("%s", found.line())
    data = prepare_data(cfg, own_split=run_dir if resume else None)
    if cfg.data.size is None and data.info["layout"] != "npz":  # record the size used
        cfg.data.size = "{}x{}".format(*data.preprocessing.size)
    if chief:  # the other workers write nothing
        _write_run_files(run_dir, cfg, data, found)
    with strategy.scope():
        model, adaptive = build_training_model(cfg, data, loss_terms, state, run_dir)
        if strategy.num_replicas_in_sync > 1 and found.backend == "tensorflow":
            synchronize_batch_norm(model)  # (under JAX the step sees the global batch)
    log.info(
        "%s: %s parameters, %d replica(s)%s",
        cfg.model,
        f"{model.count_params():,}",
        strategy.num_replicas_in_sync,
        "" if chief else f" ({worker_name(strategy)}: not the chief, writes nothing)",
    )
    checkpoint = AtomicCheckpoint(run_dir, best=state["best"], write=chief, state=state)
    all_callbacks = make_callbacks(
        cfg, run_dir, checkpoint, data.label_set, adaptive, resume, chief
    )
    all_callbacks += callbacks or []
    try:
        if custom:
            interrupted = train_custom(
                model, data, cfg, strategy, state["epoch"], all_callbacks, chief
            )
        else:
            interrupted = train_model(model, data, cfg, state["epoch"], all_callbacks, strategy)
    except Exception as err:
        if isinstance(err, (*_backend_errors(), RuntimeError)):
            raise TrainingError(
                f"training failed on {worker_name(strategy)}: {one_line(err)}"
            ) from err
        raise
    if getattr(strategy, "process_count", 1) > 1:  # JAX, several machines: the chief scores
        keras.distribution.set_distribution(None)  # alone, on its own device (no collectives)
    if chief:
        finish_run(run_dir, data.val_images, data.val_labels, data.label_set)
    return FitResult(
        run_dir,
        float(checkpoint.best or 0.0),
        checkpoint.epochs_done,
        interrupted,
        time.perf_counter() - start,
        strategy.num_replicas_in_sync,
        model=model,
        chief=chief,
    )


# ----------------------------------------------------------------------------------------------
# The steps of fit().


def _place(cfg: TrainConfig):
    """The devices (:class:`trainer.devices.Devices`), the strategy (a ``tf.distribute`` one, or
    JAX's :class:`trainer.jax_backend.Placement`), whether this process is the chief and whether
    the custom loop trains."""
    if backend() == "jax":
        from trainer import jax_backend as J

        J.check_loop(cfg)
        # before jax.distributed starts the devices: the settings it reads, and Keras' seed (an
        # unset one is agreed between the processes, which starts every backend)
        configure_jax(cfg.device, cfg.replicas)
        _seed_everything(cfg.seed)
        cluster = J.join_cluster(cfg.strategy)
        found = select_devices(cfg.device, cfg.replicas)
        placement = J.select_distribution(cfg.strategy, found.kind, cfg.batch_size, cluster)
        return found, placement, placement.process_index == 0, False
    found = select_devices(cfg.device)
    found.xla = cfg.xla
    strategy = select_strategy(cfg.strategy, cfg.replicas)
    import tensorflow as tf

    multiworker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multiworker and cfg.loop == "fit":
        raise ValueError("--loop fit cannot train multiworker (keras-team/keras#20585): use auto")
    custom = cfg.loop == "custom" or (cfg.loop == "auto" and multiworker)
    if custom and cfg.xla:
        log.warning("--xla is not used by the custom training loop")
    if custom and cfg.ema:
        raise ValueError("--ema needs Keras' fit loop (--loop fit, one machine); use --ema 0")
    return found, strategy, is_chief(strategy), custom


def _backend_errors() -> tuple:
    if backend() == "jax":
        return ()
    import tensorflow as tf

    return (tf.errors.OpError,)


def _run_state(run_dir: Path, resume: bool, cfg: TrainConfig) -> dict:
    """The state to start from: a fresh one, or the run's ``state.json`` on ``resume`` (under
    multiworker every worker must see the run folder: shared storage)."""
    run = RunDir(run_dir)
    state_path = run / RunDir.STATE
    if resume:
        state = run.state()
        if state is None:
            raise ValueError(
                f"nothing to resume in {run_dir}: no state.json (start without --resume)"
            )
        if cfg.learning_rate != _saved_config(run_dir).learning_rate:
            state["lr"] = cfg.learning_rate  # an explicit new rate wins over the schedule's
        return state
    if run.model.exists() or state_path.exists():
        raise ValueError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --name"
        )
    return {"epoch": 0, "best": None, "lr": cfg.learning_rate}


def resume_config(run_dir: str | Path, overrides: dict) -> tuple[TrainConfig, list[str]]:
    """The config of a run to resume, with the settings that may change replaced.

    Architecture and data settings come from the run; the schedule (epochs, learning rate,
    patience, strategy, ...: the fields marked ``resume``) may change.

    Args:
        run_dir: the run.
        overrides: {dotted key: value} the user gave.

    Returns:
        ``(config, changes)``, where each change reads ``"epochs 40 -> 60"``.

    Raises:
        ValueError: when the run has no config, or an override changes a fixed setting.
    """
    saved = _saved_config(Path(run_dir))
    fields = flat_fields(TrainConfig)
    current = flatten(saved)
    wanted = flatten(with_values(saved, overrides))
    changes, refused = [], []
    for key in overrides:
        if wanted[key] == current[key]:
            continue
        if fields[key].metadata.get("resume"):
            changes.append(f"{key} {current[key]} -> {wanted[key]}")
        else:
            refused.append(f"{key} ({current[key]} in the run, {wanted[key]} asked)")
    if refused:
        raise ValueError(
            f"cannot change {', '.join(refused)} on --resume: the architecture and the data come "
            "from the run; start a new run (another --name) to change them"
        )
    return with_values(saved, {k: wanted[k] for k in overrides}), changes


def _saved_config(run_dir: Path) -> TrainConfig:
    return RunDir(run_dir).config()


def prepare_data(cfg: TrainConfig, own_split: Path | None = None) -> Prepared:
    """Load, validate, drop outliers, split (stratified) and augment the training part offline.

    Args:
        cfg: the run's configuration; with ``--init`` and no ``--split-from``, the init's split
            is adopted into ``cfg.data.split_from`` (see :func:`_split_like_init`).
        own_split: a run being resumed: its ``data.json``'s validation frames are kept, wherever
            the record the split first came from went since.
    """
    loaded = D.load_data(cfg.data)
    if len(loaded.images) == 0:
        tests = 0 if loaded.test_images is None else len(loaded.test_images)
        raise ValueError(
            f"{cfg.data.path} has no training labels, only {tests} expert test frames: nothing to "
            "train on (score a run on them with `trainer evaluate RUN DATA --split test`)"
        )
    mars, report = D.clean_frames(loaded, cfg.data)
    split_cfg = cfg.data
    if own_split is not None:  # resuming: the run's split, never a new one
        if mars.names is not None and RunDir(own_split).data_record().get("val_names"):
            split_cfg = replace(cfg.data, split_from=str(own_split))
    else:
        _split_like_init(cfg, mars, loaded.names)
    train_idx, val_idx = D.split_frames(mars, split_cfg)
    if len(train_idx) * (2 if cfg.data.flip else 1) < cfg.batch_size:
        raise ValueError(
            f"{len(train_idx)} training frames do not fill one batch of {cfg.batch_size}: lower "
            "--batch-size or raise --limit"
        )
    images, labels, stats = offline_augment(
        mars.images[train_idx],
        mars.labels[train_idx],
        flip=cfg.data.flip,
        mask_dropout_fraction=cfg.data.mask_dropout_fraction,
        big_rock_repeats=cfg.data.big_rock_repeats,
        label_set=mars.label_set,
        seed=cfg.seed,
    )
    recorded = D.split_source(cfg.data.split_from)
    info: dict = {
        "source": mars.source,
        "layout": mars.layout,
        "frames": len(mars.images) + (report.count if report else 0),
        "outliers_removed": report.count if report else 0,
        "train_frames": len(train_idx),
        "val_frames": len(val_idx),
        "train_after_augmentation": len(images),
        "mask_dropout": stats.mask_dropout,
        "grouped_split": bool(cfg.data.group_split and mars.groups is not None and not recorded),
        "split_from": recorded,
        "val_source_index": mars.index[val_idx].tolist(),
        "labels": mars.label_set.as_dict(),
        "preprocessing": mars.preprocessing.as_dict(),
    }
    if mars.names is not None:
        info["val_names"] = [mars.names[i] for i in val_idx]
    log.info(
        "data: %d frames (%d outliers removed) -> %d train (%d after offline augmentation), "
        "%d validation%s; frames %dx%d",
        info["frames"],
        info["outliers_removed"],
        len(train_idx),
        len(images),
        len(val_idx),
        f" (the frames {recorded} validated on)"
        if recorded
        else " (split by rover position)"
        if info["grouped_split"]
        else "",
        *mars.frame_shape,
    )
    return Prepared(
        images,
        labels,
        mars.images[val_idx],
        mars.labels[val_idx],
        mars.label_set,
        mars.preprocessing,
        info,
    )


def _split_like_init(
    cfg: TrainConfig, mars: D.MarsData, loaded_names: list[str] | None = None
) -> None:
    """With ``--init`` and no ``--split-from``: keep the init's validation frames when it
    recorded a split of these (cleaned) frames, set in ``cfg`` so that config.json records it.
    A new split would put some of the frames the init's weights were validated on into
    training, and the new run's score would count them.

    Args:
        cfg: the run's configuration (``cfg.data.split_from`` is set here).
        mars: the frames after ``--limit`` and outlier removal.
        loaded_names: the frames as loaded, before those: the init's split is of this data when
            its frames are among them, even if ``--limit`` cut every one off.
    """
    if not cfg.init or cfg.data.split_from or mars.names is None or not Path(cfg.init).exists():
        return  # (a missing --init fails where its weights are loaded, with its own message)
    names = D.recorded_val_names(cfg.init)
    if not names:
        return
    present = set(mars.names)
    inside = sum(n in present for n in names)
    loaded = set(loaded_names if loaded_names is not None else mars.names)
    if inside == 0 and not any(n in loaded for n in names):
        return  # another data set's split: nothing of it to keep
    if inside < len(names):
        log.warning(
            "--init %s validated on %d frames, %d of them not among these after --limit and "
            "outlier removal: splitting anew, so validation may count frames the init was "
            "trained on (--split-from to choose a split)",
            cfg.init,
            len(names),
            len(names) - inside,
        )
        return
    source = Path(cfg.init)
    cfg.data.split_from = str((source if source.is_dir() else source.parent).resolve())
    log.info("--init %s: validating on its %d validation frames", cfg.init, len(names))


def _write_run_files(run_dir: Path, cfg: TrainConfig, data: Prepared, found: Devices) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    to_json(cfg, run_dir / "config.json")
    atomic_write_json(run_dir / RunDir.DEVICES, found.as_dict())
    # the path as given is relative to where fit ran; the absolute one finds it from anywhere
    absolute = str(Path(cfg.data.path).resolve()) if cfg.data.path else None
    atomic_write_json(run_dir / "data.json", {**data.info, "path_absolute": absolute})


def build_training_model(cfg: TrainConfig, data: Prepared, loss_terms: dict, state: dict, run_dir):
    """The compiled model (call inside ``strategy.scope()``) and the ``afd`` weights, if used."""
    from trainer.losses import AdaptiveWeights, class_weights_from_labels, make_loss, per_frame
    from trainer.metrics import segmentation_metrics
    from trainer.models import build_model

    n = data.label_set.num_classes
    weights = (
        class_weights_from_labels(data.train_labels, n, data.label_set.ignore)
        if "weighted_ce" in loss_terms
        else None
    )
    adaptive = AdaptiveWeights(n) if "afd" in loss_terms else None
    if adaptive is not None and state.get("afd_weights"):
        adaptive.variable.assign(np.asarray(state["afd_weights"], np.float32))
    input_shape = (*data.train_images.shape[1:3], 1)
    model = build_model(cfg.model, input_shape, n, width=cfg.width)
    if state["epoch"]:
        model.load_weights(run_dir / "last.keras")
    elif cfg.init:
        _load_initial_weights(model, Path(cfg.init))
    model.compile(
        optimizer=keras.optimizers.AdamW(
            state["lr"],
            weight_decay=cfg.weight_decay,
            use_ema=cfg.ema > 0,
            ema_momentum=cfg.ema or 0.99,
        ),
        loss=per_frame(make_loss(loss_terms, weights, adaptive, ignore=data.label_set.ignore)),
        metrics=segmentation_metrics(data.label_set),
        # under JAX the step is always compiled (XLA): uncompiled it runs op by op, several
        # times slower, and a step split over devices then waits forever on its all-reduce
        jit_compile=True if backend() == "jax" else cfg.xla,
    )
    return model, adaptive


def _load_initial_weights(model, source: Path) -> None:
    """The weights of another run's best model (fine-tuning).

    Raises:
        ValueError: when the file is missing or its architecture differs.
    """
    path = source / "model.keras" if source.is_dir() else source
    if not path.is_file():
        raise ValueError(f"--init {source}: no model at {path}")
    try:
        model.load_weights(path)
    except ValueError as err:
        raise ValueError(
            f"--init {source}: its weights do not fit {model.name} here (another model, width, "
            f"size or class count?): {str(err).splitlines()[0]}"
        ) from err
    log.info("starting from the weights of %s", path)


def make_callbacks(
    cfg: TrainConfig,
    run_dir: Path,
    checkpoint,
    label_set: LabelSet,
    adaptive,
    resume: bool,
    chief: bool = True,
) -> list:
    """The history's extra columns (learning rate, epoch time), the afd weights, checkpoints
    and the history (the chief's only), the schedule and early stopping."""
    callbacks = [LearningRateLog(), EpochTimer(cfg.batch_size)]
    if cfg.ema:  # first: validation, the schedule's monitor and the checkpoints see the average
        callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if cfg.verbose != 1 and chief:  # no progress bar (a log, not a terminal): periodic lines
        callbacks.append(ProgressLog(cfg.batch_size))
    if adaptive is not None:
        callbacks.append(AdaptiveWeightsUpdate(adaptive, label_set, checkpoint))
    if chief:  # the history records the rate the epoch used: before the plateau's cut
        callbacks.append(keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume))
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_miou",
        mode="max",
        factor=cfg.lr_factor,
        patience=cfg.lr_patience,
        min_lr=cfg.min_lr,
        verbose=1,
    )
    stopping = keras.callbacks.EarlyStopping(
        monitor="val_miou",
        mode="max",
        patience=cfg.stop_patience,
        restore_best_weights=True,
        verbose=1,
    )
    checkpoint.schedule = (plateau, stopping)
    if cfg.schedule == "cosine":  # the rate is a function of the step: no plateau cuts
        rate = [CosineSchedule(cfg.learning_rate, cfg.min_lr, cfg.epochs, cfg.warmup_epochs)]
    else:
        rate = [plateau]
    # the checkpoint last: state.json gets the rate after the plateau's cut, and the counters
    return [*callbacks, *rate, stopping, ScheduleResume(checkpoint), checkpoint]


def train_model(
    model, data: Prepared, cfg: TrainConfig, initial_epoch: int, callbacks, strategy=None
) -> bool:
    """Run ``model.fit``; returns whether Ctrl-C ended it (the checkpoints stay)."""
    if backend() == "jax":  # Keras' PyDataset: no TensorFlow
        from trainer.jax_backend import FramesDataset, StreamEpoch

        processes, index = (
            getattr(strategy, "process_count", 1),
            getattr(strategy, "process_index", 0),
        )
        shard = (processes, index) if processes > 1 else None
        batch = cfg.batch_size // processes  # this process's share of the global batch
        train_ds = FramesDataset(
            data.train_images, data.train_labels, batch, training=True, cfg=cfg,
            steps=cfg.steps_per_epoch, shard=shard,
        )  # fmt: skip
        callbacks = [StreamEpoch(train_ds), *callbacks]  # the stream continues on --resume
        val_ds = FramesDataset(
            data.val_images, data.val_labels, batch, training=False, cfg=cfg, shard=shard,
            multiple=strategy.num_replicas_in_sync // processes, pad_label=data.label_set.ignore,
        )  # fmt: skip
        steps = None  # the dataset's length is the epoch
    else:
        train_ds = make_dataset(
            data.train_images, data.train_labels, cfg.batch_size, training=True, cfg=cfg
        )
        val_ds = make_dataset(
            data.val_images, data.val_labels, cfg.batch_size, training=False, cfg=cfg
        )
        steps = cfg.steps_per_epoch
    try:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=cfg.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=cfg.verbose,
            shuffle=False,  # tf.data shuffles
        )
    except KeyboardInterrupt:
        log.warning("interrupted: keeping the best checkpoint and the history written so far")
        return True
    return False


def finish_run(
    run_dir: Path, val_images: np.ndarray, val_labels: np.ndarray, label_set: LabelSet
) -> None:
    """Write curves.png from the history and metrics.json + confusion.png from the best model."""
    from trainer import viz
    from trainer.evaluate import evaluate_model, load_model

    history = run_dir / "history.csv"
    if history.exists() and history.stat().st_size:
        viz.training_curves(history, run_dir / "curves.png", label_set)
    if (run_dir / "model.keras").exists():
        model = load_model(run_dir / "model.keras")
        report, _ = evaluate_model(model, val_images, val_labels, label_set)
        atomic_write_json(run_dir / "metrics.json", {"split": "validation", **report.as_dict()})
        viz.confusion_matrix_plot(report.confusion, run_dir / "confusion.png", label_set)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    if backend() != "jax":
        keras.utils.set_random_seed(seed)  # also seeds numpy's legacy global generator and TF
        return
    # under JAX set_random_seed would import TensorFlow (when installed) only to seed it: seed
    # what it seeds but that (numpy, and Keras' global seed, read by unseeded initializers)
    np.random.seed(seed)  # noqa: NPY002  (the legacy global generator is what it seeds)
    try:
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED
    except ImportError:  # another Keras layout: the public call, TensorFlow import and all
        keras.utils.set_random_seed(seed)
        return
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
