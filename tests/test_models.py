"""One contract, run over every registered model."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer.losses import make_loss  # noqa: E402
from trainer.models import MODELS, build_model, count_macs  # noqa: E402

SHAPE = (64, 128, 1)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.random((2, *SHAPE), dtype=np.float32), rng.integers(0, 5, size=(2, 64, 128)).astype(
        np.int32
    )


@pytest.mark.parametrize("name", sorted(MODELS))
class TestModelContract:
    def test_output_is_a_probability_map(self, name, batch):
        model = build_model(name, SHAPE, width=0.25)
        out = np.asarray(model(batch[0], training=False))
        assert out.shape == (2, 64, 128, 5)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-4)

    def test_one_training_step_changes_weights_and_stays_finite(self, name, batch):
        model = build_model(name, SHAPE, width=0.25)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=make_loss("ce"))
        before = [w.copy() for w in model.get_weights()]
        loss = model.train_on_batch(*batch)
        assert np.isfinite(loss)
        assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    def test_keras_round_trip_gives_equal_outputs(self, name, batch, tmp_path):
        model = build_model(name, SHAPE, width=0.25)
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.models.load_model(path, compile=False)
        np.testing.assert_allclose(loaded(batch[0]), model(batch[0]), atol=1e-5)

    def test_layers_are_named_after_their_stage(self, name):
        model = build_model(name, SHAPE, width=0.25)
        generic = [
            layer.name
            for layer in model.layers
            if layer.name.split("_")[0] in {"conv2d", "dense", "add", "concatenate"}
        ]
        assert not generic, f"unnamed layers: {generic[:5]}"
        assert count_macs(model) > 0


def test_unknown_model_lists_valid_names():
    with pytest.raises(
        ValueError, match=r"unknown model 'resnet'; valid names: deeplabv3plus, marsseg"
    ):
        build_model("resnet")


def test_marsseg_matches_the_seed_size():
    model = build_model("marsseg")
    assert abs(model.count_params() - 2_887_016) / 2_887_016 < 0.03
    assert 2.9e9 < count_macs(model) < 3.5e9
    half = build_model("marsseg", width=0.5)
    assert half.count_params() < model.count_params() / 3
