"""Training under Keras' JAX backend (``KERAS_BACKEND=jax trainer fit ...``): no TensorFlow.

- **Input**: :class:`FramesDataset`, a ``keras.utils.PyDataset`` that shuffles, augments with the
  same albumentations recipe as the ``tf.data`` pipeline (``trainer.augment``) in worker threads,
  and batches. Each batch's random draws are seeded by (seed, pass, batch), so a batch is the
  same whichever thread makes it and a rerun sees the same frames.
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
import threading
from dataclasses import dataclass

import keras
import numpy as np

from trainer.augment import augment_pair, online_pipeline
from trainer.config import TrainConfig
from trainer.distributed import STRATEGIES

log = logging.getLogger(__name__)
CLUSTER_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES")


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

    Args:
        images, labels: (N, H, W) frames in [0, 1] and their labels.
        batch_size: frames per batch of this process (the global batch / processes).
        training: shuffle, augment online and drop the last partial batch.
        cfg: the seed and the online augmentation switches.
        steps: batches per epoch; the stream then runs on across passes over the frames, each
            pass in a new order (as ``tf.data``'s repeat with reshuffling).
        shard: ``(processes, index)``: this process's share of every pass.
        workers: threads that make batches ahead of the step.
        multiple: the devices a batch is split over; a last validation batch that does not
            split evenly is padded with frames labelled ``pad_label`` (the ignored label: they
            count nowhere), or, without one, loses its few leftover frames (a warning says so).
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
        workers: int = 2,
        multiple: int = 1,
        pad_label: int | None = 0,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=8)
        self.images, self.labels = images, labels
        self.batch_size, self.training, self.seed = batch_size, training, cfg.seed
        self.shard = shard or (1, 0)
        self.frames = len(range(self.shard[1], len(images), self.shard[0]))
        per_pass = self.frames // batch_size if training else math.ceil(self.frames / batch_size)
        if per_pass == 0:
            raise ValueError(f"{self.frames} frames do not fill one batch of {batch_size}")
        self.steps = steps or per_pass
        self.epoch = 0
        self.multiple, self.pad_label = multiple, pad_label
        leftover = self.frames % batch_size % multiple
        if not training and leftover and pad_label is None:
            log.warning("validation: %d frame(s) left out (no ignored label to pad with)", leftover)
        self._geometric, self._pixel = cfg.data.online_geometric, cfg.data.online_pixel
        self._local = threading.local()

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def _order(self, rank: int) -> np.ndarray:
        """This process's frames in pass ``rank``'s order (the same shuffle on every process)."""
        order = np.random.default_rng((self.seed, rank)).permutation(len(self.images))
        return order[self.shard[1] :: self.shard[0]]

    def _indices(self, idx: int) -> np.ndarray:
        if not self.training:
            return np.arange(len(self.images))[self.shard[1] :: self.shard[0]][
                idx * self.batch_size : (idx + 1) * self.batch_size
            ]
        start = (self.epoch * self.steps + idx) * self.batch_size  # position in the stream
        usable = self.frames - self.frames % self.batch_size  # a pass drops its partial batch
        rank, offset = divmod(start, usable)
        return self._order(rank)[offset : offset + self.batch_size]

    def _pipeline(self):
        if not hasattr(self._local, "pipeline"):  # one per thread: Compose is not thread-safe
            self._local.pipeline = online_pipeline(self._geometric, self._pixel, seed=self.seed)
        return self._local.pipeline

    def __getitem__(self, idx: int):
        take = self._indices(idx)
        images, labels = self.images[take], self.labels[take]
        pipeline = self._pipeline() if self.training else None
        if pipeline is not None:
            pipeline.set_random_seed(hash((self.seed, self.epoch, idx)) % 2**31)
            pairs = [augment_pair(pipeline, i, m) for i, m in zip(images, labels)]
            images = np.stack([p[0] for p in pairs])
            labels = np.stack([p[1] for p in pairs])
        short = -len(take) % self.multiple  # a last batch that does not split over the devices
        if short and self.pad_label is not None:
            images = np.concatenate([images, np.zeros((short, *images.shape[1:]), images.dtype)])
            pad = np.full((short, *labels.shape[1:]), self.pad_label, labels.dtype)
            labels = np.concatenate([labels, pad])
        elif short:
            keep = len(take) - len(take) % self.multiple
            images, labels = images[:keep], labels[:keep]
        return images.astype(np.float32)[..., None], labels.astype(np.int32)


def retrace_after_weights_change(model) -> None:
    """Make JAX's compiled steps read the ``afd`` class weights again.

    Under JAX the training step is traced once, and a variable outside the model's state (the
    ``afd`` weights) enters it as a constant: forcing a new trace is what makes the next epoch
    use the new weights (a recompile, seconds, once an epoch).
    """
    if keras.backend.backend() == "jax":
        model.make_train_function(force=True)
        model.make_test_function(force=True)
