"""One contract, run over every registered model."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer.losses import make_loss  # noqa: E402
from trainer.models import MODELS, build_model, count_macs  # noqa: E402

# The course file's 64x128 with its 5 classes, and a square AI4Mars-like size with 3 classes: the
# frame size and the class count are properties of the data, never of a model builder.
CASES = [((64, 128), 5), ((96, 96), 3)]


def batch(size, classes):
    rng = np.random.default_rng(0)
    images = rng.random((2, *size, 1), dtype=np.float32)
    return images, rng.integers(0, classes, size=(2, *size)).astype(np.int32)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("size", "classes"), CASES, ids=["64x128x5", "96x96x3"])
class TestModelContract:
    def test_output_is_a_probability_map(self, name, size, classes):
        model = build_model(name, (*size, 1), classes, width=0.25)
        out = np.asarray(model(batch(size, classes)[0], training=False))
        assert out.shape == (2, *size, classes)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-4)

    @pytest.mark.slow  # a compiled training step: ~7 s a model on 2 cores
    def test_one_training_step_changes_weights_and_stays_finite(self, name, size, classes):
        model = build_model(name, (*size, 1), classes, width=0.25)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=make_loss("ce", ignore=0))
        before = [w.copy() for w in model.get_weights()]
        loss = model.train_on_batch(*batch(size, classes))
        assert np.isfinite(loss)
        assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    def test_keras_round_trip_gives_equal_outputs(self, name, size, classes, tmp_path):
        model = build_model(name, (*size, 1), classes, width=0.25)
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.models.load_model(path, compile=False)
        images = batch(size, classes)[0]
        np.testing.assert_allclose(loaded(images), model(images), atol=1e-5)

    def test_layers_are_named_after_their_stage(self, name, size, classes):
        model = build_model(name, (*size, 1), classes, width=0.25)
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
        build_model("resnet", (64, 128, 1), 5)


def test_a_size_the_model_cannot_take_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unet takes frames whose sides are multiples of 16"):
        build_model("unet", (100, 100, 1), 5)


def test_marsseg_matches_the_seed_size():
    model = build_model("marsseg", (64, 128, 1), 5)
    assert abs(model.count_params() - 2_887_016) / 2_887_016 < 0.03
    assert 2.9e9 < count_macs(model) < 3.5e9
    half = build_model("marsseg", (64, 128, 1), 5, width=0.5)
    assert half.count_params() < model.count_params() / 3
