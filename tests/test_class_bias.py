"""`trainer calibrate`: the bias search, the fold into the head, and a run calibrated twice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.contract.labels import MARS
from trainer.class_bias import BiasSearch, fold_bias, pixel_miou, scored_pixels, tune_bias


def _skewed_pixels(rng, n=20_000, shift=(0.0, 0.0, 0.0, 0.0, 1.5)):
    """Log-probabilities of a model that is right on average but favours big rock by ``shift``
    (what repeating rock frames and a Dice loss do)."""
    labels = rng.integers(0, 5, n)
    logits = rng.normal(0.0, 1.0, (n, 5)) + 2.0 * np.eye(5)[labels] + np.asarray(shift)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return log_probs.astype(np.float32), labels


def test_the_search_undoes_a_shifted_prior_and_leaves_the_ignored_class(rng):
    log_probs, labels = _skewed_pixels(rng)
    pixels, truth = scored_pixels(log_probs, labels, MARS)
    assert (truth != MARS.ignore).all() and len(truth) < len(labels)
    bias = tune_bias(pixels, truth, MARS, BiasSearch(step=0.25, sweeps=3))
    assert bias[MARS.ignore] == 0.0
    rock = MARS.index("big_rock")
    # the other scored classes may move together; what matters is rock against them
    others = [k for k in MARS.scored if k != rock]
    assert bias[rock] - np.mean(bias[others]) == pytest.approx(-1.5, abs=0.5)
    before = pixel_miou(pixels, truth, np.zeros(5), MARS)
    assert pixel_miou(pixels, truth, bias, MARS) > before + 0.01


def test_an_unbiased_model_keeps_a_small_bias(rng):
    log_probs, labels = _skewed_pixels(rng, shift=(0.0,) * 5)
    pixels, truth = scored_pixels(log_probs, labels, MARS)
    bias = tune_bias(pixels, truth, MARS, BiasSearch())
    assert np.abs(bias).max() <= 0.5


def test_pixel_miou_matches_the_projects_score(rng):
    from edge.contract.metrics import score

    log_probs, labels = _skewed_pixels(rng, n=4096)
    bias = np.array([0.0, 0.3, -0.2, 0.0, -1.0])
    predicted = np.argmax(log_probs + bias, -1)
    want = score(labels.reshape(1, 64, 64), predicted.reshape(1, 64, 64), MARS).mean_iou
    pixels, truth = scored_pixels(log_probs, labels, MARS)
    assert pixel_miou(pixels, truth, bias, MARS) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("name", ["marsseg", "segformer", "twobranch"])
def test_folding_adds_the_bias_to_the_logits_exactly(name, rng):
    from trainer.models import build_model

    model = build_model(name, (32, 64, 1), 5, width=0.25)
    frames = rng.random((2, 32, 64, 1), dtype=np.float32)
    before = np.log(np.clip(model.predict(frames, verbose=0), 1e-30, 1.0))
    bias = np.array([0.0, 0.5, -0.25, 1.0, -2.0], np.float32)
    fold_bias(model, bias)
    after = np.log(np.clip(model.predict(frames, verbose=0), 1e-30, 1.0))
    # log-softmax(z + b) = z + b - logsumexp(z + b): after - before - b is one constant per pixel
    gap = after - before - bias
    np.testing.assert_allclose(gap, gap[..., :1].repeat(5, -1), atol=2e-4)


def test_folding_needs_the_logits_head():
    import keras

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(5, 1, name="other")(inputs))
    with pytest.raises(ValueError, match="has no 'head_conv' layer"):
        fold_bias(model, np.zeros(5, np.float32))


@pytest.mark.slow
def test_calibrating_a_run_twice_starts_from_the_model_as_trained(small_npz, tmp_path):
    from click.testing import CliRunner

    from tests.test_train import tiny_config
    from trainer.cli import main
    from trainer.train import fit

    run = tmp_path / "run"
    fit(tiny_config(small_npz, epochs=1), run)
    trained = (run / "model.keras").read_bytes()
    first = CliRunner().invoke(main, ["calibrate", str(run), "--frames", "20"])
    assert first.exit_code == 0, first.output
    assert "mean IoU" in first.output and "model_uncalibrated.keras" in first.output
    assert (run / "model_uncalibrated.keras").read_bytes() == trained
    record = json.loads((run / "class_bias.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["class_bias"] == record["bias"]
    assert metrics["mean_iou"] == pytest.approx(record["val_after"]["mean_iou"])
    assert record["tune_miou_after"] >= record["tune_miou_before"]
    second = CliRunner().invoke(main, ["calibrate", str(run), "--frames", "20"])
    assert second.exit_code == 0, second.output
    assert json.loads((run / "class_bias.json").read_text())["bias"] == record["bias"]
    assert (run / "model_uncalibrated.keras").read_bytes() == trained
    # a fit that writes a new best model makes the calibration stale: it goes
    from trainer.train import resume_config

    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "best": -1.0}))  # any epoch is a best
    cfg, _ = resume_config(run, {"epochs": 2})
    fit(cfg, run, resume=True)
    assert not (run / "class_bias.json").exists()
    assert not (run / "model_uncalibrated.keras").exists()
    bad = CliRunner().invoke(main, ["calibrate", str(tmp_path)])
    assert bad.exit_code == 2 and "has no model.keras" in bad.output
