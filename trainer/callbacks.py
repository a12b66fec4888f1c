"""The Keras callbacks of ``trainer fit``: checkpoints written atomically, the schedule's state for
``--resume``, the learning-rate and timing columns of the history, the cosine schedule, progress
lines for logs, and the adaptive loss weights."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import keras
import numpy as np

from edge.contract.labels import LabelSet
from edge.io.sinks import atomic_path, atomic_write_json
from trainer.class_bias import forget_calibration
from trainer.jax_backend import retrace_after_weights_change

log = logging.getLogger(__name__)


def _atomic_save(model, path: Path) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)


def _save_in_step(model, improved: bool) -> None:
    """What a process that writes nothing does while the chief saves, under JAX on several
    machines: the same saves, to a scratch folder. Saving gathers the weights with collectives,
    which every process must join in the same order, or the next collective of each mismatches
    (``device_put ... is not the same on each process``)."""
    if keras.backend.backend() != "jax":
        return
    import jax

    if jax.process_count() == 1:
        return
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        for name in ("model.keras", "last.keras")[0 if improved else 1 :]:
            model.save(Path(scratch) / name)


class ScheduleResume(keras.callbacks.Callback):
    """On ``--resume``, gives ReduceLROnPlateau and EarlyStopping back the counters they had
    (they reset them when training begins)."""

    def __init__(self, checkpoint):
        super().__init__()
        self.checkpoint = checkpoint

    def on_train_begin(self, logs=None):
        saved = self.checkpoint.resumed_schedule
        if not saved:
            return
        plateau, stopping = self.checkpoint.schedule
        plateau.wait, plateau.best = saved["plateau_wait"], saved["plateau_best"]
        stopping.wait, stopping.best = saved["stop_wait"], saved["stop_best"]


class LearningRateLog(keras.callbacks.Callback):
    """Puts the epoch's learning rate into the logs, so that history.csv records it."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


class EpochTimer(keras.callbacks.Callback):
    """Puts the training time of each epoch (without validation) and the frames per second into
    the logs, for ``fit`` (the custom loop measures them itself)."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self._start = self._stop = 0.0
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._stop, self._steps = time.perf_counter(), 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps = batch + 1

    def on_test_begin(self, logs=None):
        self._stop = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or "epoch_s" in logs:
            return
        seconds = (self._stop or time.perf_counter()) - self._start
        logs["epoch_s"] = seconds
        logs["train_frames_per_s"] = self._steps * self.batch_size / seconds if seconds else 0.0


class CosineSchedule(keras.callbacks.Callback):
    """Linear warm-up from ``floor`` to ``peak`` over ``warmup_epochs``, then a cosine decay to
    ``floor`` at the end of ``epochs``; set before every batch under ``fit`` (before every epoch
    under the custom loop). The rate depends on the step alone, so ``--resume`` continues it."""

    def __init__(self, peak: float, floor: float, epochs: int, warmup_epochs: float = 0.0):
        super().__init__()
        self.peak, self.floor, self.epochs, self.warmup = peak, floor, epochs, warmup_epochs
        self._epoch = 0

    def rate(self, progress: float) -> float:
        """The rate at ``progress`` epochs from the start (fractions within an epoch)."""
        import math

        if progress < self.warmup:
            return self.floor + (self.peak - self.floor) * progress / self.warmup
        span = max(self.epochs - self.warmup, 1e-9)
        t = min(max((progress - self.warmup) / span, 0.0), 1.0)
        return self.floor + 0.5 * (self.peak - self.floor) * (1 + math.cos(math.pi * t))

    def _set(self, progress: float) -> None:
        self.model.optimizer.learning_rate.assign(self.rate(progress))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._set(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps")
        if steps:
            self._set(self._epoch + batch / steps)


class ProgressLog(keras.callbacks.Callback):
    """A line every ``interval_s`` during an epoch, where no progress bar shows (a log file, a
    pipe): the step, the training speed and how long the epoch and the run have left at that
    speed (validation not counted). An epoch on a slow CPU takes many minutes."""

    def __init__(self, batch_size: int, interval_s: float = 60.0):
        super().__init__()
        self.batch_size, self.interval_s = batch_size, interval_s
        self._start = self._last = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self._last < self.interval_s:
            return
        self._last = now
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        per_step = (now - self._start) / (batch + 1)
        line = f"epoch {self._epoch + 1}/{epochs}: step {batch + 1}/{steps or '?'}, "
        line += f"{self.batch_size / per_step:.1f} frames/s"
        if steps:
            left = (steps - batch - 1) * per_step
            line += f", epoch ends in ~{_duration(left)}"
            if epochs:
                left += (epochs - self._epoch - 1) * steps * per_step
                line += f", training in ~{_duration(left)} (validation not counted)"
        log.info(line)


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 05 min``."""
    if seconds < 90:
        return f"{int(seconds)} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class AdaptiveWeightsUpdate(keras.callbacks.Callback):
    """After each epoch, sets the ``afd`` class weights from that epoch's training IoU."""

    def __init__(self, adaptive, label_set: LabelSet, checkpoint):
        super().__init__()
        self.adaptive = adaptive
        self.label_set = label_set
        self.checkpoint = checkpoint

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        ious = np.zeros(self.label_set.num_classes)
        for c in self.label_set.scored:
            ious[c] = logs.get(f"iou_{self.label_set.names[c]}", 0.0)
        weights = self.adaptive.update(ious)
        retrace_after_weights_change(self.model)
        self.checkpoint.extra_state["afd_weights"] = weights.tolist()
        log.debug("afd weights: %s", np.round(weights, 3).tolist())


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves ``model.keras`` when validation mean IoU improves and ``last.keras`` + ``state.json``
    after every epoch, each through a temporary file and a rename."""

    def __init__(
        self,
        run_dir: Path,
        best: float | None = None,
        write: bool = True,
        state: dict | None = None,
    ):
        super().__init__()
        self.run_dir = run_dir
        self.best = best
        self.write = write  # False on workers that are not the chief: track only
        self.epochs_done = 0
        self.extra_state: dict = {}
        self.schedule: tuple = ()  # (ReduceLROnPlateau, EarlyStopping): their counters are saved
        self.resumed_schedule = (state or {}).get("schedule")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = logs.get("val_miou")
        improved = score is not None and (self.best is None or score > self.best)
        if improved:
            self.best = float(score)
        self.epochs_done = epoch + 1
        if not self.write:
            _save_in_step(self.model, improved)
            return
        if improved:
            _atomic_save(self.model, self.run_dir / "model.keras")
            forget_calibration(self.run_dir)  # `trainer calibrate` tuned the model it replaced
        _atomic_save(self.model, self.run_dir / "last.keras")
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        state = {"epoch": epoch + 1, "best": self.best, "lr": lr, **self.extra_state}
        if self.schedule:
            plateau, stopping = self.schedule
            # a callback that is not in use (the plateau under --schedule cosine) never started:
            # its counters are still unset
            state["schedule"] = {
                "plateau_wait": int(plateau.wait or 0),
                "plateau_best": None if plateau.best is None else float(plateau.best),
                "stop_wait": int(stopping.wait or 0),
                "stop_best": None if stopping.best is None else float(stopping.best),
            }
        atomic_write_json(self.run_dir / "state.json", state)
