"""`trainer qat`: the BatchNorm fold, the int8 rounding it simulates, and a run against the real
converter and the real LiteRT interpreter."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from trainer import qat
from trainer.config import QatConfig


def _with_statistics(model, rng):
    """Give every BatchNorm moving statistics and an affine part far from the identity, so that
    folding them is not a no-op."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 2.0, n), rng.normal(0, 0.3, n),
                rng.normal(0, 0.2, n), rng.uniform(0.2, 3.0, n),
            ])  # fmt: skip
    return model


def _marsseg(rng, shape=(32, 64, 1)):
    from trainer.models import build_model

    return _with_statistics(build_model("marsseg", shape, 5, width=0.25), rng)


def test_folding_the_batch_norms_keeps_the_rover_graph_exact(rng):
    from trainer.export_graph import rover_graph

    model = _marsseg(rng)
    frames = rng.random((3, 32, 64, 1), dtype=np.float32)
    want = keras.ops.convert_to_numpy(rover_graph(model)[0](frames))
    folded, rewrites = qat.export_graph(model)
    assert rewrites == {"subpixel": 2, "dilated": 4, "logits": 1}
    assert not any(isinstance(x, keras.layers.BatchNormalization) for x in folded.layers)
    assert sum(isinstance(x, qat.FoldedNorm) for x in folded.layers) > 10
    got = keras.ops.convert_to_numpy(folded(frames))
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    # its own weights: training the fold leaves the model it came from alone
    kernel = folded.get_layer("enc1_conv1_conv").kernel
    kernel.assign(kernel.numpy() * 0)
    again = keras.ops.convert_to_numpy(rover_graph(model)[0](frames))
    np.testing.assert_allclose(again, want, atol=1e-6)


def test_a_batch_norm_after_something_else_is_refused():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    y = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.Add()([x, y]))  # the conv has a second reader
    with pytest.raises(ValueError, match="cannot fold bn: conv is not a conv read by it alone"):
        qat.fold_batch_norms(model)


def test_snapped_kernels_lie_on_a_per_channel_int8_grid(rng):
    kernel = rng.normal(0, 1, (3, 3, 4, 6)).astype(np.float32) * rng.uniform(0.01, 5, 6)
    snapped = qat.snap_kernel(kernel)
    scale = np.abs(kernel).max(axis=(0, 1, 2)) / 127.0
    steps = snapped / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    np.testing.assert_allclose(np.abs(snapped).max(axis=(0, 1, 2)), np.abs(kernel).max(axis=(0, 1, 2)),
                               rtol=1e-6)  # fmt: skip
    # the converter's rounding of a snapped kernel is a no-op (to float32 rounding)
    np.testing.assert_allclose(qat.snap_kernel(snapped), snapped, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(qat.fake_quant_kernel(kernel)), snapped,
                               atol=1e-6)  # fmt: skip


def test_activation_rounding_has_256_levels_zero_exact_and_clipped_gradients():
    import tensorflow as tf

    x = tf.constant(np.linspace(-2.0, 5.0, 2001, dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = qat.fake_quant(x, -1.0, 3.0)
        total = tf.reduce_sum(y)
    grad = tape.gradient(total, x).numpy()
    y = y.numpy()
    assert len(np.unique(np.round(y, 6))) <= 256
    assert float(qat.fake_quant(tf.constant(0.0), -1.0, 3.0)) == 0.0
    step = 4.0 / 255  # the range moves by less than a step so that 0 is on the grid
    assert -1.0 - step <= y.min() < -1.0 + step and 3.0 - step < y.max() <= 3.0 + step
    inside = (x.numpy() > -0.99) & (x.numpy() < 2.99)
    assert (grad[inside] == 1).all() and (grad[x.numpy() > 3.1] == 0).all()
    # a range that leaves out 0 is widened to hold it, as TFLite does
    assert float(qat.fake_quant(tf.constant(0.0), 0.5, 3.0)) == 0.0


def test_the_student_shares_the_folds_weights_and_switches_off_for_calibration(rng):
    folded, _ = qat.export_graph(_marsseg(rng))
    student, quantizers = qat.quantized_student(folded)
    assert {id(v) for v in student.trainable_variables} == {
        id(v) for v in folded.trainable_variables
    }
    frames = rng.random((4, 32, 64), dtype=np.float32)
    qat.calibrate(student, quantizers, frames)
    assert all(float(q.on) == 1.0 for q in quantizers)
    free = [q for q in quantizers if q.fixed is None]
    assert all(float(q.lo) <= float(q.hi) for q in free)
    assert any(q.fixed == qat.SIGMOID_GRID for q in quantizers)  # the attention's LOGISTIC
    names = {q.name for q in quantizers}
    assert "enc1_conv1_relu_aq" in names and "enc1_conv1_conv_aq" not in names  # fused ReLU
    assert not any("pool" in n and "enc" in n for n in names)  # max pools keep their scale
    out = qat.predict_logits(student, frames)
    floats = qat.predict_logits(folded, frames)
    assert out.shape == floats.shape and not np.allclose(out, floats)


@pytest.mark.slow
def test_a_qat_run_converts_checks_resumes_and_refuses_to_overwrite(small_npz, tmp_path, rng):
    """The run end to end: the student's int8 file is integer-only, the fake quantization stands
    for TFLite's arithmetic, a second epoch resumes from the first."""
    from tests.test_convert import make_run
    from trainer.cli import main
    from trainer.convert import check_integer_only

    teacher = make_run(tmp_path, small_npz)
    model = keras.saving.load_model(teacher / "model.keras")
    _with_statistics(model, rng).save(teacher / "model.keras")
    out = tmp_path / "qat"
    cfg = QatConfig(teacher=str(teacher), epochs=1, steps_per_epoch=2, batch_size=4,
                    calibration_frames=8, logit_window=0.0)  # fmt: skip
    with pytest.raises(ValueError, match="give --logit-window 0 with --epochs"):
        qat.qat_run(teacher, out, QatConfig(**{**cfg.__dict__, "logit_window": 1e-3}))
    record = qat.qat_run(teacher, out, cfg)
    assert [h["epoch"] for h in record["history"]] == [1]
    assert "CONV_2D" in check_integer_only(out / "model_int8.tflite")
    parity = json.loads((out / "parity.json").read_text())
    assert set(parity["models"]) == {"float32", "int8"}
    assert parity["models"]["float32"]["pixel_agreement"] > 0.99  # the teacher, unchanged
    assert record["simulation_agreement"] > 0.9
    meta = json.loads((out / "model_int8.json").read_text())
    assert meta["quantization_aware"]["epochs_done"] == 1 and meta["output"] == "logits"

    result = CliRunner().invoke(main, ["qat", str(teacher), "--out", str(out)])
    assert result.exit_code == 2 and "add --resume to continue it" in result.output
    record = qat.qat_run(teacher, out, QatConfig(**{**cfg.__dict__, "epochs": 2}), resume=True)
    assert [h["epoch"] for h in record["history"]] == [1, 2]


@pytest.mark.slow
def test_a_windowed_int8_file_reads_back_as_the_float_models_logits(small_npz, tmp_path, rng):
    """The logit window end to end: the int8 file records it, the rover maps its output back to
    logits, and its probabilities are the float model's to the window's rounding."""
    from edge.segmenter import Segmenter
    from tests.test_convert import make_run
    from trainer.data.npz import load_npz

    teacher = make_run(tmp_path, small_npz)
    model = keras.saving.load_model(teacher / "model.keras")
    _with_statistics(model, rng).save(teacher / "model.keras")
    out = tmp_path / "qat"
    cfg = QatConfig(teacher=str(teacher), calibration_frames=8, bias_sweeps=1, logit_window=0.01)
    record = qat.qat_run(teacher, out, cfg)
    low, high = record["logit_window"]["low"], record["logit_window"]["high"]
    assert high - low >= np.log(4 * 999) - 1e-6  # wide enough for a confidence of 0.999
    int8 = Segmenter(out / "model_int8.tflite")
    assert int8.logit_window == pytest.approx((low, high))
    assert Segmenter(out / "model_float32.tflite").logit_window is None  # the teacher's, whole
    images = load_npz(small_npz).images[:6]
    frames = np.rint(images * 255).astype(np.uint8)
    want = keras.ops.convert_to_numpy(model(images[..., None]))  # probabilities
    diffs, agree = [], []
    for frame, probs in zip(frames, want, strict=True):
        result = int8.segment(frame, with_probabilities=True, with_confidence=True)
        diffs.append(np.abs(result.probabilities - probs).mean())
        agree.append((result.labels == probs.argmax(-1)).mean())
        top = np.rint(result.probabilities.max(-1) * 255)
        assert np.abs(top - result.model_top.astype(float)).max() <= 1  # the table, the softmax
    # an untrained model: many near ties, yet the probabilities are the float model's
    assert np.mean(diffs) < 0.01 and np.mean(agree) > 0.85


def test_bias_correction_brings_the_rounded_means_back_to_the_float_ones(rng):
    model = _marsseg(rng)
    reference, _ = qat.export_graph(model)
    folded, _ = qat.export_graph(model)
    student, quantizers = qat.quantized_student(folded)
    frames = rng.random((6, 32, 64), dtype=np.float32)
    qat.calibrate(student, quantizers, frames)
    head = folded.get_layer("head_conv")
    by_inner = {x.inner.name: x for x in student.layers if isinstance(x, qat.QuantKernel)}
    x = frames[..., None]

    def gap(name):  # at full resolution (the head) and at a quarter (the encoder's last conv)
        want = keras.Model(reference.input, reference.get_layer(name).output)(x)
        got = keras.Model(student.input, by_inner[name].output)(x)
        want, got = (keras.ops.convert_to_numpy(t).mean(axis=(0, 1, 2)) for t in (want, got))
        return np.abs(want - got).max()

    names = ("head_conv", "enc3_conv1_conv")
    before, bias = [gap(n) for n in names], head.bias.numpy().copy()
    record = qat.correct_biases(reference, folded, student, quantizers, frames, sweeps=2)
    for name, was in zip(names, before, strict=True):
        assert gap(name) < 0.2 * was, name
    assert not np.allclose(head.bias.numpy(), bias)
    assert {r["sweep"] for r in record} == {1, 2} and "head_conv" in {r["conv"] for r in record}
    # the second sweep has less left to move than the first
    first = np.mean([r["mean_abs_shift"] for r in record if r["sweep"] == 1])
    second = np.mean([r["mean_abs_shift"] for r in record if r["sweep"] == 2])
    assert second < first


def test_adaptive_rounding_lowers_the_output_error_and_keeps_the_int8_grid(rng):
    """Each conv's kernel, rounded up or down as suits its output, stays on the converter's
    per-channel grid (same scale: the extreme weight keeps its point) and errs less than
    rounding to nearest on the frames it learned from; the whole student follows the float
    model more closely."""
    from trainer.adaround import adaround
    from trainer.fake_quant import snap_kernel

    model = _marsseg(rng)
    reference, _ = qat.export_graph(model)
    folded, _ = qat.export_graph(model)
    student, quantizers = qat.quantized_student(folded)
    frames = rng.random((12, 32, 64), dtype=np.float32)
    qat.calibrate(student, quantizers, frames)

    def student_error():
        want = keras.ops.convert_to_numpy(qat.predict_logits(reference, frames))
        return float(np.mean((qat.predict_logits(student, frames) - want) ** 2))

    originals = {c.name: c.kernel.numpy().copy() for c in qat.kernel_layers(folded)}
    before = student_error()
    record = adaround(reference, qat.kernel_layers(folded), student, frames, iterations=60,
                      calibrate=lambda f: qat.calibrate(student, quantizers, f),
                      activation_of=qat._activation_name)  # fmt: skip
    assert {r["conv"] for r in record} == set(originals)
    assert all(r["error_adaptive"] <= r["error_nearest"] for r in record)
    assert any(r["flipped"] > 0 for r in record)  # some weights went the other way
    for conv in qat.kernel_layers(folded):
        kernel, original = conv.kernel.numpy(), originals[conv.name]
        np.testing.assert_allclose(snap_kernel(kernel), kernel, rtol=0, atol=1e-7)  # on its grid
        axes = tuple(range(kernel.ndim - 1))
        np.testing.assert_allclose(np.abs(kernel).max(axes), np.abs(original).max(axes), rtol=1e-6)
        step = np.abs(original).max(axes) / 127
        assert (np.abs(kernel - original) <= step + 1e-6).all()  # one grid step at most
    assert student_error() < before
