"""trainer fit's periodic progress lines, where no progress bar shows, and its presets."""

from __future__ import annotations

import logging

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer.callbacks import ProgressLog, _duration  # noqa: E402


def test_progress_lines_give_the_step_speed_and_time_left(caplog):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((24, 4), np.float32)
    with caplog.at_level(logging.INFO, logger="trainer.callbacks"):
        model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0,
                  callbacks=[ProgressLog(4, interval_s=0.0)])  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.name == "trainer.callbacks"]
    assert len(lines) == 12  # every step of both epochs at interval 0
    assert lines[0].startswith("epoch 1/2: step 1/6, ") and "frames/s" in lines[0]
    assert "epoch ends in ~" in lines[0] and "training in ~" in lines[0]
    assert lines[-1].startswith("epoch 2/2: step 6/6")


def test_durations_read_as_a_person_says_them():
    assert [_duration(s) for s in (45, 89.9, 90, 725, 3599, 7530)] == [
        "45 s", "89 s", "2 min", "12 min", "1 h 00 min", "2 h 06 min",
    ]  # fmt: skip


def test_every_preset_is_a_valid_config_and_an_unknown_one_is_named():
    from trainer.config import PRESETS, TrainConfig, preset_values, with_values

    for name in PRESETS:
        cfg = with_values(TrainConfig(), preset_values(name))
        assert cfg.model in ("marsseg", "twobranch")
    rover = with_values(TrainConfig(), preset_values("rover"))
    assert (rover.model, rover.data.size, rover.schedule) == ("marsseg", "128x128", "cosine")
    with pytest.raises(ValueError, match=r"unknown preset 'fast'; valid presets: rover, course"):
        preset_values("fast")
