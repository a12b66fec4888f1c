"""Training on several devices or machines with ``tf.distribute``.

- **One machine, several devices**: ``MirroredStrategy`` over the GPUs, or over ``replicas``
  logical CPU devices (data parallelism testable on any machine). Keras' ``fit`` runs it.
- **Several machines**: ``MultiWorkerMirroredStrategy``, configured by ``TF_CONFIG``. Keras 3's
  ``fit`` cannot run it (it reduces a per-replica batch with ``strategy.reduce`` and fails:
  keras-team/keras#20585), so :func:`train_custom` runs the training step under
  ``strategy.run``: each replica computes its loss and gradients on its slice of the global batch,
  the optimizer all-reduces the gradients, and every worker ends each step with the same weights.
  Each worker scores its share of the validation frames and the counts are summed over the
  workers, so that the schedule (ReduceLROnPlateau, EarlyStopping) takes the same decision
  everywhere. Only the chief (``TF_CONFIG`` task ``chief``, else worker 0) writes the run folder.

With more than one replica, BatchNormalization is synchronized across replicas, so that the
batch statistics are those of the global batch, as in a single-process run, and the moving
statistics stay identical on every worker.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

log = logging.getLogger(__name__)
STRATEGIES = ("auto", "default", "mirrored", "multiworker")


class TrainingError(ValueError):
    """Training failed inside TensorFlow; the message is one line, not a dump of tensors."""


def select_strategy(name: str, replicas: int = 0):
    """The ``tf.distribute`` strategy for ``name``.

    - ``auto``: MultiWorkerMirroredStrategy when ``TF_CONFIG`` is set; else MirroredStrategy
      over all GPUs when there are several, or over ``replicas`` logical CPU devices when that
      is > 1; else the default strategy.
    - ``default``: one device.
    - ``mirrored``: MirroredStrategy over all GPUs, or over ``replicas`` (>= 2) logical CPUs.
    - ``multiworker``: MultiWorkerMirroredStrategy, configured by the ``TF_CONFIG`` variable;
      created before anything else touches the devices (collective ops must be configured at
      program start).

    Raises:
        ValueError: for an unknown name, ``multiworker`` without ``TF_CONFIG`` or with
            ``replicas``, or ``mirrored`` with neither GPUs nor ``replicas``.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    if name == "auto" and "TF_CONFIG" in os.environ:  # a cluster is configured: join it
        name = "multiworker"
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy multiworker needs TF_CONFIG, e.g. "
                '\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": '
                '"worker", "index": 0}}\''
            )
        if replicas > 1:
            raise ValueError(
                "--replicas splits one machine's CPU; with multiworker use one per worker"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if replicas > 1:
        split_cpu(replicas)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "default" or (name == "auto" and len(gpus) < 2 and len(cpus) < 2):
        return tf.distribute.get_strategy()
    if gpus:
        return tf.distribute.MirroredStrategy()
    if len(cpus) < 2:
        raise ValueError(
            "--strategy mirrored found no GPU and one CPU device: add --replicas N to split "
            "the CPU into N devices, or use --strategy default"
        )
    return tf.distribute.MirroredStrategy([d.name for d in cpus])


def split_cpu(replicas: int) -> None:
    """Split the CPU into ``replicas`` logical devices (before TensorFlow initializes them).

    Raises:
        ValueError: when TensorFlow has already initialized its devices with another count.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
    except RuntimeError as err:  # devices already initialized in this process
        have = len(tf.config.list_logical_devices("CPU"))
        if have != replicas:
            raise ValueError(
                f"cannot split the CPU into {replicas} devices: TensorFlow already started with "
                f"{have} in this process ({err})"
            ) from err


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder: always, except for non-chief workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_name(strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "this process"
    return f"{resolver.task_type} {resolver.task_id}"


def synchronize_batch_norm(model) -> int:
    """Make every BatchNormalization of ``model`` compute its batch statistics over all
    replicas; returns how many layers there are."""
    import keras

    layers = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line (TensorFlow's can hold hundreds of lines of tensors)."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}"


def train_custom(
    model, data, cfg, strategy, initial_epoch: int, callbacks: list, chief: bool
) -> bool:
    """Train under ``strategy.run`` (any strategy; the only way under multiworker).

    Args:
        model: compiled (its ``loss`` and ``optimizer`` are used) inside ``strategy.scope()``.
        data: a :class:`trainer.train.Prepared`.
        cfg: the run's :class:`trainer.config.TrainConfig`.
        strategy: the ``tf.distribute`` strategy.
        initial_epoch: the epoch to start from.
        callbacks: Keras callbacks, driven by hand (logs as ``fit`` would give them).
        chief: whether this process shows progress.

    Returns:
        Whether Ctrl-C ended the training.

    Raises:
        ValueError: when the global batch does not split evenly over the replicas.
    """
    import keras
    import tensorflow as tf

    from trainer.pipeline import make_dataset

    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(
            f"--batch-size {cfg.batch_size} does not split over {replicas} replicas; use a multiple"
        )
    label_set = data.label_set
    n, ignore = label_set.num_classes, label_set.ignore
    steps = cfg.steps_per_epoch or max(1, len(data.train_images) // cfg.batch_size)

    def dataset_fn(context):
        # each input pipeline (worker) shards the seeded shuffle and batches its replicas' part
        batch = context.get_per_replica_batch_size(cfg.batch_size)
        shard = (context.num_input_pipelines, context.input_pipeline_id)
        images, labels = data.train_images, data.train_labels
        return make_dataset(images, labels, batch, training=True, cfg=cfg, shard=shard).repeat()

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    loss_fn, optimizer = model.loss, model.optimizer
    if not optimizer.built:  # its slot variables must exist before the step is traced
        with strategy.scope():
            optimizer.build(model.trainable_variables)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            loss = tf.reduce_mean(loss_fn(labels, probs))  # per_frame: B copies of one value
            # each replica's loss is a mean over its slice: the global mean is their mean
            scaled = loss / replicas
            if hasattr(optimizer, "scale_loss"):  # mixed float16: the loss-scale optimizer
                scaled = optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        truth = tf.reshape(tf.cast(labels, tf.int32), [-1])
        predicted = tf.reshape(tf.argmax(probs, axis=-1, output_type=tf.int32), [-1])
        weights = (
            tf.ones_like(truth, tf.float32)
            if ignore is None
            else tf.cast(truth != ignore, tf.float32)
        )
        confusion = tf.math.bincount(
            truth * n + predicted, weights=weights, minlength=n * n, maxlength=n * n
        )
        return loss, confusion

    @tf.function
    def train_step(iterator):
        loss, confusion = strategy.run(replica_step, args=next(iterator))
        mean_loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)
        return mean_loss, strategy.reduce(tf.distribute.ReduceOp.SUM, confusion, axis=None)

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    model.stop_training = False
    callback_list.on_train_begin()
    try:
        for epoch in range(initial_epoch, cfg.epochs):
            callback_list.on_epoch_begin(epoch)
            bar = keras.utils.Progbar(steps, verbose=1) if chief and cfg.verbose == 1 else None
            started, total, cm = time.perf_counter(), 0.0, np.zeros((n, n))
            for step in range(steps):
                loss, confusion = train_step(iterator)
                total += float(loss)
                cm += confusion.numpy().reshape(n, n)
                if bar is not None:
                    bar.update(step + 1, [("loss", total / (step + 1))])
            seconds = time.perf_counter() - started
            logs = {"loss": total / steps, **_iou_logs(cm, label_set, "")}
            logs.update(_validate(forward, loss_fn, data, cfg.batch_size, label_set, strategy))
            logs["epoch_s"] = seconds
            logs["train_frames_per_s"] = steps * cfg.batch_size / seconds
            if chief and cfg.verbose:
                print(
                    f"Epoch {epoch + 1}/{cfg.epochs} - {seconds:.0f}s - "
                    + " - ".join(f"{k}: {v:.4f}" for k, v in sorted(logs.items())),
                    flush=True,
                )
            callback_list.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    except KeyboardInterrupt:
        log.warning("interrupted: keeping the best checkpoint and the history written so far")
        return True
    callback_list.on_train_end()
    return False


def _iou_logs(cm: np.ndarray, label_set, prefix: str) -> dict:
    from edge.contract.metrics import report_from_confusion

    report = report_from_confusion(cm, label_set)
    logs = {f"{prefix}miou": report.mean_iou}
    logs.update({f"{prefix}iou_{name}": v for name, v in report.per_class.items()})
    return {k: float(np.nan_to_num(v)) for k, v in logs.items()}


def _validate(forward, loss_fn, data, batch_size: int, label_set, strategy) -> dict:
    """Validation loss, mean IoU and per-class IoU. Each worker scores its share of the frames
    and the counts are summed across workers, so that every worker takes the schedule's
    decisions (learning rate, stopping) from the same numbers."""
    from edge.contract.metrics import confusion_matrix

    workers, index = _worker_share(strategy)
    n = label_set.num_classes
    cm, loss_sum = np.zeros((n, n)), 0.0
    images, labels = data.val_images[index::workers], data.val_labels[index::workers]
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size, ..., None]
        truth = labels[start : start + batch_size]
        probs = forward(chunk)
        loss_sum += float(np.mean(loss_fn(truth.astype(np.int32), probs))) * len(chunk)
        cm += confusion_matrix(truth, np.asarray(probs).argmax(-1), n)
    totals = _sum_over_workers(strategy, np.append(cm.ravel(), [loss_sum, len(images)]))
    cm, loss_sum, count = totals[: n * n].reshape(n, n), totals[-2], totals[-1]
    return {"val_loss": loss_sum / max(count, 1), **_iou_logs(cm, label_set, "val_")}


def _worker_share(strategy) -> tuple[int, int]:
    """(number of workers, this worker's index); (1, 0) on one machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1, 0
    spec = resolver.cluster_spec().as_dict()
    order = [(kind, i) for kind in ("chief", "worker") for i in range(len(spec.get(kind, [])))]
    return len(order), order.index((resolver.task_type, resolver.task_id))


def _sum_over_workers(strategy, values: np.ndarray) -> np.ndarray:
    """Sum a float64 vector over the workers (an all-reduce; a no-op on one machine)."""
    import tensorflow as tf

    if _worker_share(strategy)[0] == 1:
        return values
    local = len(strategy.extended.worker_devices)  # each local replica carries a 1/local share
    per_replica = strategy.run(lambda: tf.constant(values / local, tf.float64))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
