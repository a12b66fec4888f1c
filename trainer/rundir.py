"""A run folder of `trainer fit`: its files, and the one way they are read.

``runs/<name>/`` holds ``config.json`` (the resolved :class:`trainer.config.TrainConfig`),
``data.json`` (the split, the preprocessing, the classes, where the data was), ``model.keras``
(the best weights), ``last.keras`` + ``state.json`` (for ``--resume``), ``history.csv``,
``metrics.json``; after ``trainer calibrate`` also ``model_uncalibrated.keras`` and
``class_bias.json``; after ``trainer convert`` the ``.tflite`` files and ``parity.json``. Every
command that reads a run goes through :class:`RunDir`, so that a missing or damaged file says
the same thing wherever it is found, and where the data is is resolved one way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class RunDir:
    """The files of one run; ``RunDir.of`` also takes a ``.keras`` file inside a run."""

    CONFIG = "config.json"
    DATA = "data.json"
    MODEL = "model.keras"
    LAST = "last.keras"
    STATE = "state.json"
    HISTORY = "history.csv"
    METRICS = "metrics.json"
    PARITY = "parity.json"
    DEVICES = "devices.json"  # what fit trained on (trainer.devices.Devices)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of(cls, run: str | Path) -> RunDir:
        """The run of a folder, or of a model file (the folder it lies in)."""
        run = Path(run)
        return cls(run if run.is_dir() or run.suffix != ".keras" else run.parent)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def model(self) -> Path:
        return self.path / self.MODEL

    def _json(self, name: str) -> dict | None:
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); is the run complete?") from err

    def has_config(self) -> bool:
        return (self.path / self.CONFIG).is_file()

    def config(self):
        """The run's :class:`trainer.config.TrainConfig`.

        Raises:
            ValueError: when the folder has no config.json (it is not a run of `trainer fit`).
        """
        from trainer.config import TrainConfig, from_dict

        values = self._json(self.CONFIG)
        if values is None:
            raise ValueError(f"{self.path} has no {self.CONFIG}: it is not a run of `trainer fit`")
        return from_dict(TrainConfig, values)

    def config_or_default(self):
        """The run's config, or the defaults (with a warning) for a bare ``.keras`` beside no
        config: evaluating a model file needs only the data settings."""
        from trainer.config import TrainConfig

        if self.has_config():
            return self.config()
        log.warning("no %s beside the model in %s: using the default data settings", self.CONFIG,
                    self.path)  # fmt: skip
        return TrainConfig()

    def config_values(self) -> dict:
        """config.json as written (for provenance records), or {}."""
        return self._json(self.CONFIG) or {}

    def data_record(self) -> dict:
        """data.json (split, preprocessing, classes, data location), or {}."""
        return self._json(self.DATA) or {}

    def state(self) -> dict | None:
        return self._json(self.STATE)

    def data_location(self, given: str | None = None) -> str | None:
        """Where the run's data is from here: ``given``, else the path as given to fit
        (relative to where fit ran), else the absolute path data.json recorded, else that path
        relative to the run folder; the first that exists (else the best guess, for the error)."""
        if given:
            return str(given)
        path = self.config_or_default().data.path
        candidates = [path] if path else []
        candidates.append(self.data_record().get("path_absolute"))
        if path and not Path(path).is_absolute():
            candidates.append(str(self.path / path))
        return next((c for c in candidates if c and Path(c).exists()), path or None)
