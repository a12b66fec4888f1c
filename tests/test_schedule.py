"""The cosine learning-rate schedule with warm-up."""

from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer.callbacks import CosineSchedule  # noqa: E402


def test_warm_up_then_cosine_to_the_floor():
    s = CosineSchedule(peak=1e-3, floor=1e-5, epochs=10, warmup_epochs=2)
    assert s.rate(0) == pytest.approx(1e-5)
    assert s.rate(1) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way up
    assert s.rate(2) == pytest.approx(1e-3)  # the peak when the warm-up ends
    assert s.rate(6) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way down
    assert s.rate(10) == pytest.approx(1e-5) and s.rate(12) == pytest.approx(1e-5)
    assert s.rate(3) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi / 8)))


def test_the_rate_changes_every_batch_and_resumes_where_it_was():
    def train(initial_epoch):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        rates = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_begin=lambda b, logs: rates.append(
                float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
            )
        )
        x = np.zeros((8, 2), np.float32)
        model.fit(x, x[:, :1], batch_size=2, epochs=4, initial_epoch=initial_epoch, verbose=0,
                  callbacks=[CosineSchedule(0.1, 0.0, 4), record])  # fmt: skip
        return rates

    whole, resumed = train(0), train(2)
    assert len(whole) == 16 and whole[0] == pytest.approx(0.1)
    assert np.all(np.diff(whole) < 0)  # decays at every step
    np.testing.assert_allclose(resumed, whole[8:], rtol=1e-6)
