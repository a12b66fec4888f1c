"""Training under Keras' JAX backend (``KERAS_BACKEND=jax trainer fit ...``): no TensorFlow.

- **Input**: :class:`FramesDataset`, a ``keras.utils.PyDataset`` that shuffles, augments with the
  same albumentations recipe as the ``tf.data`` pipeline (``trainer.augment``) and batches. A
  batch's frames and random draws follow from the seed and its position in the stream, so a
  rerun, or a ``--resume``, sees the same frames.
- **Several devices**: ``keras.distribution.DataParallel`` over the GPUs, or over ``--replicas``
  CPU devices. The step is one program over the global batch (XLA splits it), so BatchNorm's
  statistics are the global batch's with nothing to synchronize.
- **Several machines**: ``keras.distribution.initialize`` (``jax.distributed``), configured by
  Keras' variables ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator first),
  ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID``; each process feeds
  its own share of every global batch and process 0 writes the run.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import keras
import numpy as np

from trainer.augment import augment_pair, online_pipeline
from trainer.config import TrainConfig
from trainer.distributed import STRATEGIES

log = logging.getLogger(__name__)
CLUSTER_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


@dataclass
class Placement:
    """Where a JAX run trains: what ``fit`` needs of a ``tf.distribute`` strategy."""

    num_replicas_in_sync: int
    process_index: int = 0
    process_count: int = 1

    def scope(self):
        import contextlib

        return contextlib.nullcontext()  # the distribution is global (set_distribution)


def join_cluster(strategy: str) -> bool:
    """Start ``jax.distributed`` for ``multiworker`` (or ``auto`` with the cluster variables set).

    First of all: JAX must not have started its devices yet.

    Raises:
        ValueError: ``multiworker`` without the cluster variables, or an unknown strategy.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    configured = all(v in os.environ for v in CLUSTER_VARIABLES)
    if strategy == "multiworker" and not configured:
        raise ValueError(
            "--strategy multiworker under JAX needs KERAS_DISTRIBUTION_JOB_ADDRESSES "
            "(e.g. host1:1234,host2:1234), KERAS_DISTRIBUTION_NUM_PROCESSES and "
            "KERAS_DISTRIBUTION_PROCESS_ID"
        )
    if strategy == "multiworker" or (strategy == "auto" and configured):
        import jax

        # CPU processes all-reduce over gloo (TCP); GPUs use NCCL whatever this says
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize()
        return True
    return False


def select_distribution(strategy: str, kind: str, batch_size: int, cluster: bool) -> Placement:
    """Set Keras' distribution for ``strategy`` over the devices of ``kind``.

    Raises:
        ValueError: ``mirrored`` with one device, or a batch that does not split evenly.
    """
    import jax

    devices = keras.distribution.list_devices(kind)
    many = len(devices) > 1
    if strategy == "mirrored" and not many:
        raise ValueError(
            "--strategy mirrored found one device: add --replicas N to split the CPU into N "
            "devices, or use --strategy default"
        )
    if strategy == "default" or not many:
        return Placement(1)
    if batch_size % len(devices):
        raise ValueError(
            f"--batch-size {batch_size} does not split over {len(devices)} replicas; use a multiple"
        )
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    )
    count = jax.process_count() if cluster else 1
    return Placement(len(devices), jax.process_index() if cluster else 0, count)


def check_loop(cfg: TrainConfig) -> None:
    if cfg.loop == "custom":
        raise ValueError(
            "--loop custom is the tf.distribute loop; under JAX Keras' fit trains on every "
            "device and machine (use --loop auto)"
        )


class FramesDataset(keras.utils.PyDataset):
    """Batches of (frames (B, H, W, 1) float32, labels (B, H, W) int32), augmented when training.

    Batches are made on the training thread, not by Keras' worker threads: its enqueuer keeps
    the batches it prefetched across an epoch's end and serves them first in the next, so which
    frames an epoch saw would depend on timing (a rerun or a ``--resume`` would differ, and so
    would the processes of one global step). JAX dispatches the step asynchronously, so the
    next batch is still made while the device computes.

    Args:
        images, labels: (N, H, W) frames in [0, 1] and their labels.
        batch_size: frames per batch of this process (the global batch / processes).
        training: shuffle, augment online and drop the last partial batch.
        cfg: the seed and the online augmentation switches.
        steps: batches per epoch; the stream then runs on across passes over the frames, each
            pass in a new order (as ``tf.data``'s repeat with reshuffling).
        shard: ``(processes, index)``: this process's share of every pass; every process gets
            as many frames and batches (training drops the ``N % processes`` last frames of
            a pass, validation pads).
        multiple: the devices a batch is split over; a last validation batch that does not
            split evenly is padded with blank frames labelled ``pad_label`` (the ignored label:
            they count in no IoU, only in ``val_loss``), or, without one, loses its few
            leftover frames (a warning says so).
        pad_label: the label set's ignored label, or None.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        training: bool,
        cfg: TrainConfig,
        steps: int | None = None,
        shard: tuple[int, int] | None = None,
        multiple: int = 1,
        pad_label: int | None = 0,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images, self.labels = images, labels
        self.batch_size, self.training, self.seed = batch_size, training, cfg.seed
        self.processes, self.index = shard or (1, 0)
        self.multiple, self.pad_label = multiple, pad_label
        n = len(images)
        if training:
            self.frames = n // self.processes  # per process and pass
            per_pass = self.frames // batch_size
        else:  # -1: a blank frame (padding)
            self._val = self._padded_validation(n)
            per_pass = math.ceil(len(self._val) / batch_size)
            self.frames = len(self._val)
        if per_pass == 0:
            raise ValueError(f"{self.frames} frames do not fill one batch of {batch_size}")
        self.steps = steps or per_pass
        self.epoch = 0  # set by StreamEpoch before each epoch
        self._geometric, self._pixel = cfg.data.online_geometric, cfg.data.online_pixel
        self._pipeline = None

    def _padded_validation(self, n: int) -> np.ndarray:
        """This process's validation frames, as many on every process and in every batch a
        multiple of the devices: padded with blanks (-1), or trimmed without a label for them."""
        order = np.arange(n)
        if self.pad_label is None:
            keep = n - n % (self.processes * self.multiple)
            if keep < n:
                log.warning(
                    "validation: %d frame(s) left out (no ignored label to pad with)", n - keep
                )
            order = order[:keep]
        else:
            order = np.concatenate([order, np.full(-n % self.processes, -1)])
        mine = order[self.index :: self.processes]
        tail = len(mine) % self.batch_size
        if self.pad_label is not None and tail % self.multiple:
            mine = np.concatenate([mine, np.full(-tail % self.multiple, -1)])
        return mine

    def __len__(self) -> int:
        return self.steps

    def _indices(self, idx: int) -> tuple[np.ndarray, int]:
        """The frames of batch ``idx`` of this epoch, and its position in the stream (the seed
        of its random draws)."""
        if not self.training:
            return self._val[idx * self.batch_size : (idx + 1) * self.batch_size], idx
        start = (self.epoch * self.steps + idx) * self.batch_size  # position in the stream
        usable = self.frames - self.frames % self.batch_size  # a pass drops its partial batch
        rank, offset = divmod(start, usable)
        order = np.random.default_rng((self.seed, rank)).permutation(len(self.images))
        order = order[: self.frames * self.processes][self.index :: self.processes]
        return order[offset : offset + self.batch_size], start

    def __getitem__(self, idx: int):
        take, position = self._indices(idx)
        blank = take < 0
        images, labels = (
            self.images[np.where(blank, 0, take)],
            self.labels[np.where(blank, 0, take)],
        )
        if self.training and (self._geometric or self._pixel):
            if self._pipeline is None:
                self._pipeline = online_pipeline(self._geometric, self._pixel, seed=self.seed)
            self._pipeline.set_random_seed(hash((self.seed, position, self.index)) % 2**31)
            pairs = [augment_pair(self._pipeline, i, m) for i, m in zip(images, labels)]
            images = np.stack([p[0] for p in pairs])
            labels = np.stack([p[1] for p in pairs])
        if blank.any():
            images, labels = images.copy(), labels.copy()
            images[blank], labels[blank] = 0, self.pad_label
        return images.astype(np.float32)[..., None], labels.astype(np.int32)


class StreamEpoch(keras.callbacks.Callback):
    """Tells the training stream which epoch begins (also the first after ``--resume``)."""

    def __init__(self, dataset: FramesDataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.epoch = epoch


def retrace_after_weights_change(model) -> None:
    """Make JAX's compiled steps read the ``afd`` class weights again.

    Under JAX the training step is traced once, and a variable outside the model's state (the
    ``afd`` weights) enters it as a constant: forcing a new trace is what makes the next epoch
    use the new weights (a recompile, seconds, once an epoch).
    """
    if keras.backend.backend() == "jax":
        model.make_train_function(force=True)
        model.make_test_function(force=True)
