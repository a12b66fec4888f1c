"""What a model says about itself, and one preprocessing for training and the rover."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge.cli import main
from edge.contract.labels import MARS, LabelSet
from edge.contract.metadata import (
    METADATA_KEY,
    ModelMetadata,
    read_model_metadata,
    tflite_metadata,
)
from edge.contract.preprocess import Preprocessing, parse_size
from edge.io.decode import read_frame
from edge.segmenter import Segmenter
from tests.conftest import band_frame, band_metadata


def test_embedded_metadata_is_read_back_without_tensorflow_parsing(band_models):
    entries = tflite_metadata(band_models["int8"].read_bytes())
    assert METADATA_KEY in entries and "min_runtime_version" in entries  # ours beside TFLite's
    meta = read_model_metadata(band_models["int8"])
    assert meta.source == "embedded" and meta.labels == MARS
    assert meta.preprocessing == Preprocessing(64, 128) and meta.info["precision"] == "int8"
    assert read_model_metadata(band_models["bare"]) is None


def test_sidecar_is_read_when_nothing_is_embedded(band_models, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(band_models["bare"].read_bytes())
    labels = LabelSet(("unknown", "a", "b", "c", "d"), hazards=("d",))
    doc = ModelMetadata(labels, Preprocessing(64, 128, crop="centre"), {"name": "x"})
    model.with_suffix(".json").write_bytes(doc.to_bytes())
    meta = read_model_metadata(model)
    assert (
        meta.source == "sidecar" and meta.labels == labels and meta.preprocessing.crop == "centre"
    )
    assert Segmenter(model).labels.names[4] == "d"


def test_a_model_that_misdescribes_itself_is_refused(band_models, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(band_models["bare"].read_bytes())
    wrong = ModelMetadata(MARS, Preprocessing(128, 128))
    model.with_suffix(".json").write_bytes(wrong.to_bytes())
    with pytest.raises(ValueError, match=r"metadata says 128x128 input but the tensor is 64x128"):
        Segmenter(model)
    model.with_suffix(".json").write_text(json.dumps({"schema": "marsseg-edge/model-metadata/1"}))
    with pytest.raises(ValueError, match=r"not a label set|not a preprocessing"):
        Segmenter(model)


def test_a_model_without_metadata_runs_with_generic_classes(band_models, caplog):
    with caplog.at_level(logging.WARNING):
        segmenter = Segmenter(band_models["bare"])
    assert "carries no marsseg-edge metadata" in caplog.text
    assert segmenter.labels.names == tuple(f"class_{i}" for i in range(5))
    assert segmenter.labels.hazards == ()
    image, truth = band_frame()
    np.testing.assert_array_equal(segmenter.segment(image).labels, truth)


def test_the_rover_prepares_a_frame_exactly_as_training_did(band_models, tmp_path):
    """A 128x256 NAVCAM-like JPEG through the trainer's AI4Mars loader and through edge-seg's
    reader and Segmenter gives the same model input, bit for bit."""
    from trainer import data as D

    cam = tmp_path / "msl" / "ncam"
    (cam / "images" / "edr").mkdir(parents=True)
    (cam / "labels" / "train").mkdir(parents=True)
    rng = np.random.default_rng(4)
    frame = np.clip(rng.normal(120, 40, (128, 256)), 0, 255).astype(np.uint8)
    path = cam / "images" / "edr" / "NLA_400000001EDR_F0010000NCAM00001M1.JPG"
    Image.fromarray(np.repeat(frame[..., None], 3, -1)).save(path, quality=95)
    Image.fromarray(np.zeros((128, 256), np.uint8)).save(
        cam / "labels" / "train" / f"{path.stem}.png"
    )
    training = D.load_dataset(tmp_path, size=(64, 128)).images[0]  # float32 in [0, 1]

    segmenter = Segmenter(band_models["float32"])
    rover = segmenter.preprocess(read_frame(path))[0, :, :, 0]
    np.testing.assert_array_equal(rover, training)
    quantized = Segmenter(band_models["int8"])
    scale, zero = quantized.input_quant
    expected = np.clip(np.round(training / scale + zero), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(quantized.preprocess(read_frame(path))[0, :, :, 0], expected)


def test_crop_restores_the_uncovered_parts_as_the_ignored_label():
    prep = Preprocessing(64, 128, crop="centre")
    assert prep.region((256, 256)) == (64, 0, 128, 256)
    restored = prep.restore(np.full((64, 128), 3, np.uint8), (256, 256), fill=0)
    assert (
        (restored[64:192] == 3).all() and (restored[:64] == 0).all() and (restored[192:] == 0).all()
    )
    whole = Preprocessing(64, 128)
    assert whole.restore(np.full((64, 128), 2, np.uint8), (256, 256)).shape == (256, 256)


@pytest.mark.parametrize(
    ("text", "size"), [("128x128", (128, 128)), ("64,128", (64, 128)), ("96", (96, 96))]
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "x", "4x4", "128x", "a by b"])
def test_parse_size_errors(text):
    with pytest.raises(ValueError, match="expected a frame size HxW"):
        parse_size(text)


def to_ai4mars(labels: np.ndarray) -> np.ndarray:
    """Mars labels (0 unlabelled, 1-4) as AI4Mars values (255, 0-3)."""
    return np.where(labels == 0, 255, labels.astype(np.int16) - 1).astype(np.uint8)


def test_edge_seg_scores_ai4mars_labels_with_merged_names(band_models, tmp_path):
    frames, labels = tmp_path / "cam", tmp_path / "masked-gold-min3-100agree"
    frames.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        image, truth = band_frame(rng)
        Image.fromarray(image).save(frames / f"f{i}.png")
        Image.fromarray(to_ai4mars(truth)).save(labels / f"f{i}_merged.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["run", "--camera-dir", str(frames), "--model", str(band_models["int8"]),
               "--out", str(out), "--labels", str(labels)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored_frames"] == 3 and summary["miou"] == pytest.approx(1.0)
    assert summary["config"]["label_format"] == "ai4mars"
    assert summary["hazards"]["big_rock"]["recall"] == pytest.approx(1.0)


def test_edge_seg_warns_when_no_label_matches(band_models, tmp_path, caplog):
    frames, labels = tmp_path / "cam", tmp_path / "labels"
    frames.mkdir()
    labels.mkdir()
    image, truth = band_frame()
    Image.fromarray(image).save(frames / "frame_a.png")
    Image.fromarray(truth).save(labels / "other_name.png")
    result = CliRunner().invoke(
        main, ["run", "--camera-dir", str(frames), "--model", str(band_models["int8"]),
               "--out", str(tmp_path / "out"), "--labels", str(labels)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no label in" in caplog.text and "matched any of the 1 frames" in caplog.text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["miou"] is None and summary["labels_missing"] == 1


def test_model_labels_that_look_like_ai4mars_say_so(band_models, tmp_path):
    from edge.io.decode import BadFrame
    from edge.io.labels import LabelReader

    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(labels / "a.png")
    reader = LabelReader(labels, 5, "model")
    with pytest.raises(BadFrame, match="pass --label-format ai4mars"):
        reader.read(labels / "a.png")
    assert LabelReader(labels, 5).format == "ai4mars"  # auto: a 255 was sampled
    assert (LabelReader(labels, 5).read(labels / "a.png") == 0).all()


def test_info_shows_the_metadata(band_models):
    result = CliRunner().invoke(main, ["info", str(band_models["int8"])])
    assert result.exit_code == 0, result.output
    assert "classes: background, soil, bedrock, sand, big_rock" in result.output
    assert "preprocessing: 64x128, crop none" in result.output
    assert "output: probabilities (softmax in the graph; --flip-average needs logits)" in (
        result.output
    )
    assert band_metadata("int8").labels == MARS
    logits = CliRunner().invoke(main, ["info", str(band_models["logits"])])
    assert "output: logits (--flip-average can average them)" in logits.output


def test_info_describes_each_file_of_a_model_folder(band_models, tmp_path):
    import shutil

    folder = tmp_path / "set"
    folder.mkdir()
    for p in ("int8", "float32"):
        shutil.copy(band_models[p], folder / f"model_{p}.tflite")
    result = CliRunner().invoke(main, ["info", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.output.count("== ") == 2 and "precision float32" in result.output
    empty = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert empty.exit_code == 2 and "no model_<precision>.tflite in" in empty.output
    (folder / "model_float16.tflite").write_bytes(b"not a model")  # one bad file of three
    partly = CliRunner().invoke(main, ["info", str(folder)])
    assert partly.exit_code == 2 and partly.output.count("== ") == 2  # the others described
    assert "model_float16.tflite:" in partly.output


def test_the_generic_classes_warning_names_the_model_and_the_classes(band_models, caplog):
    with caplog.at_level(logging.WARNING):
        Segmenter(band_models["bare"])
    assert (
        "bands_bare.tflite carries no marsseg-edge metadata: classes are named class_0..class_4, "
        "label 0 is unscored, no class is a hazard, frames are resized whole (convert with "
        "`trainer convert` to embed the real ones)"
    ) in caplog.text


@pytest.mark.parametrize("ignore", [0, 4])
def test_what_a_centre_crop_left_out_is_the_ignored_label(band_models, tmp_path, ignore):
    """A 1:2 model cropping a square frame: the top and bottom quarters were never seen."""
    model = tmp_path / "cropped.tflite"
    model.write_bytes(band_models["bare"].read_bytes())
    labels = LabelSet(("a", "b", "c", "d", "e"), ignore=ignore)
    sidecar = ModelMetadata(labels, Preprocessing(64, 128, crop="centre"))
    model.with_suffix(".json").write_bytes(sidecar.to_bytes())
    segmenter = Segmenter(model)
    image, _ = band_frame()
    square = np.zeros((128, 128), np.uint8)
    square[32:96] = np.asarray(Image.fromarray(image).resize((128, 64), Image.NEAREST))
    result = segmenter.segment(square, with_confidence=True)
    assert result.labels.shape == (128, 128)
    assert (result.labels[:32] == ignore).all() and (result.labels[96:] == ignore).all()
    assert (result.top_probability[:32] == 0).all() and (result.top_probability[96:] == 0).all()
    assert (result.top_probability[32:96] > 0.2).all()  # at least 1/5 where the model looked


def test_outputs_are_only_what_was_asked_in_float32_and_microseconds(band_models):
    import time

    segmenter = Segmenter(band_models["int8"])
    image, _ = band_frame()
    plain = segmenter.segment(image)
    assert plain.probabilities is None and plain.top_probability is None
    start = time.perf_counter_ns()
    full = segmenter.segment(image, with_probabilities=True, with_confidence=True)
    elapsed_us = (time.perf_counter_ns() - start) / 1e3
    assert full.probabilities.dtype == np.float32 and full.top_probability.dtype == np.float32
    assert (
        all(0 < v for v in full.timings_us.values()) and sum(full.timings_us.values()) <= elapsed_us
    )
    # the confidence is the top probability in 1/255 steps (native size: no resampling)
    top = full.probabilities.max(axis=-1)
    assert np.abs(full.top_probability - top).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="frames must be uint8 grey levels, got float32"):
        segmenter.preprocess(image.astype(np.float32))


def test_the_shared_preprocessing_by_hand():
    """Area resize for frames, nearest for labels, the centre crop's window, the defaults."""
    from edge.contract.preprocess import INPUT_SCALE

    prep = Preprocessing(8, 8)
    frame = np.kron(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3, np.ones((2, 2), np.uint8))
    frame[0, 0] = 255  # one bright pixel: the area filter averages it into its 2x2 box
    small = prep.prepare(frame)
    assert small.shape == (8, 8) and small[0, 1] == frame[0, 2] and small[0, 0] == 64
    checker = (np.indices((16, 16)).sum(axis=0) % 2 * 2 + 1).astype(np.uint8)  # 1, 3, 1, ...
    assert set(np.unique(prep.prepare_labels(checker))) <= {1, 3}  # nearest: never a blend, 2
    assert prep.to_input(frame).dtype == np.float32
    crop = Preprocessing(64, 128, crop="centre")
    assert crop.region((100, 400)) == (0, 100, 100, 200)  # too wide: the middle columns
    assert crop.region((300, 128)) == (118, 0, 64, 128)  # too tall: the middle rows
    assert crop.region((64, 128)) == (0, 0, 64, 128)
    striped = np.full((128, 128), 255, np.uint8)
    striped[32:96] = 7
    assert (crop.prepare(striped) == 7).all()  # only the window reaches the model
    restored = crop.restore(np.full((64, 128), 2, np.uint8), (128, 128), fill=0)
    assert restored.dtype == np.uint8 and (restored[32:96] == 2).all()
    assert Preprocessing.from_dict({"height": 64, "width": 128}) == Preprocessing(64, 128)
    assert Preprocessing(64, 128).scale == INPUT_SCALE and Preprocessing(64, 128).crop == "none"
    assert Preprocessing.from_dict(crop.as_dict()) == crop
    assert crop.as_dict()["resize"] == "area (box filter) for images, nearest for labels"
    with pytest.raises(ValueError, match=r"input size must be at least 8x8, got 64x4"):
        Preprocessing(64, 4)
    with pytest.raises(ValueError, match=r"unknown crop 'middle'; valid: none, centre"):
        Preprocessing(64, 128, crop="middle")
    with pytest.raises(ValueError, match=r"not a preprocessing description: \{'width': 8\}"):
        Preprocessing.from_dict({"width": 8})
    with pytest.raises(ValueError, match=r"expected a single-channel \(H, W\) array, got shape"):
        prep.prepare(np.zeros((16, 16, 3), np.uint8))


def test_the_shared_preprocessing_at_odd_sizes():
    """An off-centre-sized crop, a non-integer restore, a scale of its own, sizes as pairs."""
    crop = Preprocessing(64, 128, crop="centre")
    tall = np.repeat(np.arange(100, dtype=np.uint8)[:, None], 128, axis=1)  # row i holds i
    assert crop.region((100, 128)) == (18, 0, 64, 128)
    np.testing.assert_array_equal(crop.prepare(tall), tall[18:82])  # the window, unresized
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 2 + 1).astype(np.uint8)
    restored = Preprocessing(8, 8).restore(checker, (13, 11))
    assert restored.shape == (13, 11) and set(np.unique(restored)) <= {1, 3}  # never blended
    own = Preprocessing(8, 8, scale=0.5)
    assert Preprocessing.from_dict(own.as_dict()).scale == 0.5
    assert parse_size((8, 16)) == (8, 16) and parse_size([8, 8]) == (8, 8)
    with pytest.raises(ValueError):
        parse_size("7x8")


def test_a_logits_model_gives_the_probabilities_of_the_softmax_model(band_models):
    """The rover graph ships logits: its class map is the softmax model's, and the
    probabilities and confidence computed on the rover agree with what the softmax gave."""
    softmax, logits = Segmenter(band_models["float32"]), Segmenter(band_models["logits"])
    assert softmax.output_kind == "probabilities" and logits.output_kind == "logits"
    image, _ = band_frame(np.random.default_rng(5))
    a = softmax.segment(image, with_probabilities=True, with_confidence=True)
    b = logits.segment(image, with_probabilities=True, with_confidence=True)
    assert (a.labels == b.labels).mean() > 0.98  # int8 against float32
    np.testing.assert_allclose(b.probabilities.sum(-1), 1.0, atol=1e-5)
    assert np.abs(a.probabilities - b.probabilities).mean() < 0.02
    # the confidence is the top probability of the computed softmax, to 1/255
    top = b.probabilities.max(axis=-1)
    assert np.abs(b.top_probability - top).max() <= 0.5 / 255 + 1e-6
    # by hand: logits (0, ln 3) -> probabilities (1/4, 3/4)
    raw = np.array([[[0.0, np.log(3.0)]]], np.float32)
    logits.output_dtype = np.dtype(np.float32)  # as a float32 logits model gives them
    np.testing.assert_allclose(logits.probabilities(raw)[0, 0], [0.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(logits.top_probability(raw), [[0.75]], rtol=1e-6)


def test_a_model_whose_metadata_names_an_unknown_output_is_refused(band_models, tmp_path):
    model = tmp_path / "odd.tflite"
    model.write_bytes(band_models["bare"].read_bytes())
    meta = ModelMetadata(
        LabelSet(("a", "b", "c", "d", "e"), ignore=0), Preprocessing(64, 128), {"output": "scores"}
    )
    model.with_suffix(".json").write_bytes(meta.to_bytes())
    with pytest.raises(ValueError, match="output 'scores'; valid: probabilities, logits"):
        Segmenter(model)


def test_the_int8_top_probability_table_equals_the_softmax(band_models, rng):
    """The rover path's confidence: a 256-entry exp table over int8 logit steps, which must
    equal the softmax of the dequantized logits at the top class."""
    from edge.segmenter import Segmenter

    seg = Segmenter(band_models["logits"])
    assert seg.output_kind == "logits" and seg.output_dtype == np.int8
    raw = rng.integers(-128, 128, (16, 32, 5)).astype(np.int8)
    values = seg.dequantize(raw)
    softmax = np.exp(values - values.max(-1, keepdims=True))
    want = (softmax / softmax.sum(-1, keepdims=True)).max(-1)
    np.testing.assert_allclose(seg.top_probability(raw), want, rtol=1e-5)


@pytest.mark.parametrize(
    "window", [{"low": 2.0, "high": 1.0}, {"low": "-inf", "high": "inf"}, {"high": 3.0}, [0, 1]]
)
def test_a_logit_window_that_cannot_be_read_back_is_refused(band_models, tmp_path, window):
    """trainer/logit_window.py records {low, high} of a relu6 head; anything else would turn
    the int8 output into wrong logits, so the model is refused at load."""
    import json
    import shutil

    from edge.contract.metadata import read_model_metadata

    doc = read_model_metadata(band_models["logits"]).document()
    model = tmp_path / "windowed.tflite"
    shutil.copy(band_models["bare"], model)  # no embedded document: the sidecar speaks
    model.with_suffix(".json").write_text(json.dumps({**doc, "logit_window": window}))
    with pytest.raises(ValueError, match=r"logit_window .* is not \{low, high\}"):
        Segmenter(model)
    ok = {**doc, "logit_window": {"low": -1.0, "high": 5.0}}
    model.with_suffix(".json").write_text(json.dumps(ok))
    assert Segmenter(model).logit_window == (-1.0, 5.0)
