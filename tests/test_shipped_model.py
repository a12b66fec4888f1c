"""The model set that ships with the package, and how --model is resolved."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge.cli import main
from edge.models import SHIPPED_DIR, model_files, resolve_model, shipped_model
from tests.conftest import noise_frames


def test_a_run_folder_gives_its_int8_model_else_the_float_one(band_models, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(band_models["float32"], run / "model_float32.tflite")
    assert resolve_model(run) == (run / "model_float32.tflite", f"model folder {run}")
    shutil.copy(band_models["int8"], run / "model_int8.tflite")
    assert resolve_model(run)[0] == run / "model_int8.tflite"
    assert resolve_model(run, "float32")[0] == run / "model_float32.tflite"
    with pytest.raises(ValueError, match=r"no model_float16.tflite \(it holds: model_int8"):
        resolve_model(run, "float16")
    with pytest.raises(ValueError, match=r"unknown precision 'int4'"):
        resolve_model(run, "int4")
    assert resolve_model(band_models["int8"]) == (band_models["int8"], "given")


def test_a_folder_without_models_says_how_to_make_them(tmp_path):
    with pytest.raises(ValueError, match=r"run `trainer convert .* --int8 --float32` first"):
        resolve_model(tmp_path)
    with pytest.raises(ValueError, match=r"no model at"):
        resolve_model(tmp_path / "missing")


def test_the_package_ships_an_int8_and_a_float32_model_with_their_card():
    found = model_files(SHIPPED_DIR)
    assert set(found) >= {"int8", "float32"}
    assert shipped_model() == found["int8"]
    assert (SHIPPED_DIR / "model.keras").is_file()
    parity = json.loads((SHIPPED_DIR / "parity.json").read_text())
    assert set(parity["models"]) >= {"int8", "float32"}


def test_the_shipped_model_is_described_by_its_metadata():
    from edge.segmenter import Segmenter

    segmenter = Segmenter(shipped_model())
    assert segmenter.quantized and segmenter.labels.names[0] == "background"
    assert segmenter.metadata.info.get("output") == "logits"  # the rover graph
    frame = np.random.default_rng(0).integers(0, 255, (200, 300), np.uint8)
    labels = segmenter.segment(frame).labels
    assert labels.shape == (200, 300) and labels.max() < segmenter.num_classes


@pytest.mark.slow  # a real run of the shipped model on a few frames
def test_edge_seg_run_without_model_takes_the_shipped_one(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (256, 256), np.uint8)).save(frames / f"f{i}.png")
    result = CliRunner().invoke(
        main, ["run", "--camera-dir", str(frames), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    precision = summary["execution"]["precision"]["precision"]  # --precision auto's choice
    assert f"model: {shipped_model(precision)} (the shipped model set; {precision}, " in (
        result.output
    )
    assert summary["frames"] == 3
    assert summary["model"]["file"] == str(shipped_model(precision))
    assert summary["model"]["chosen"] == "the shipped model set"


def _reference_flip_average(model, frame: np.ndarray):
    """The mean logits of a frame and its mirror image, computed by hand: a bare interpreter,
    the output dequantized by its own tensor parameters, the metadata's logit window applied."""
    from edge.runtimes.interpreter import make_interpreter
    from edge.segmenter import Segmenter

    seg = Segmenter(model)  # for its preprocessing and metadata only
    interpreter, _ = make_interpreter(model, 1, "auto", True)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = out["quantization"]

    def logits(tensor):
        interpreter.set_tensor(inp["index"], tensor)
        interpreter.invoke()
        values = interpreter.get_tensor(out["index"])[0].astype(np.float64)
        if scale:
            values = (values - zero) * scale
        window = seg.metadata.info.get("logit_window")
        if window:
            values = window["low"] + values * (window["high"] - window["low"]) / 6.0
        return values

    tensor = seg.preprocess(frame)
    mean = (logits(tensor) + logits(np.ascontiguousarray(tensor[:, :, ::-1]))[:, ::-1]) / 2
    exp = np.exp(mean - mean.max(axis=-1, keepdims=True))
    return mean, exp / exp.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("precision", ["int8", "float32"])
def test_flip_average_decides_on_the_mean_logits_of_the_frame_and_its_mirror(precision):
    from edge.io.decode import read_frame
    from edge.segmenter import Segmenter

    model = shipped_model(precision)
    frame = read_frame(
        sorted((SHIPPED_DIR.parents[1] / "docs/samples/ai4mars/frames").iterdir())[0]
    )
    mean, probs = _reference_flip_average(model, frame)
    seg = Segmenter(model, flip_average=True)
    rock = seg.labels.names.index("big_rock")
    got = seg.segment(frame, with_probabilities=True, with_confidence=True, class_probability=rock)
    once = Segmenter(model).segment(frame).model_labels
    # the reference's arg max, except where two classes tie to rounding (a float64 mean)
    ordered = np.sort(mean, axis=-1)
    clear = ordered[..., -1] - ordered[..., -2] > 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(got.model_labels[clear], mean.argmax(axis=-1)[clear])
    assert (got.model_labels != once).any()  # the mirror's opinion changed some pixels
    np.testing.assert_allclose(got.model_top / 255.0, probs.max(axis=-1), atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(
        got.model_class_probability / 255.0, probs[..., rock], atol=0.5 / 255 + 1e-6
    )
    np.testing.assert_allclose(got.probabilities, probs, atol=1e-5)
    assert got.labels.shape == frame.shape


def test_flip_average_needs_a_logits_output(band_models):
    from edge.segmenter import Segmenter

    with pytest.raises(ValueError, match=r"flip averaging needs logits.*probabilities"):
        Segmenter(band_models["int8"], flip_average=True)


def test_edge_seg_run_records_flip_average(band_models, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    frames = noise_frames(tmp_path / "frames", seed=2)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["run", "--camera-dir", str(frames), "--out", str(out), "--flip-average",
         "--model", str(band_models["logits"])],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "flip average: each frame segmented as it is and mirrored" in result.output
    schemas = SHIPPED_DIR.parents[0] / "schemas"
    lines = [json.loads(x) for x in (out / "telemetry.jsonl").read_text().splitlines()]
    assert [x["model"].get("flip_average") for x in lines] == [True, True]
    for line in lines:
        jsonschema.validate(line, json.loads((schemas / "telemetry.schema.json").read_text()))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["flip_average"] is True and summary["config"]["flip_average"]
    plain = CliRunner().invoke(
        main, ["run", "--camera-dir", str(frames), "--out", str(tmp_path / "plain"),
               "--model", str(band_models["logits"])],
    )  # fmt: skip
    assert plain.exit_code == 0, plain.output
    line = json.loads((tmp_path / "plain" / "telemetry.jsonl").read_text().splitlines()[0])
    assert "flip_average" not in line["model"]
    assert summary["run_totals"]["models"][-1].endswith("+flip")


def test_a_restart_that_switches_flip_average_says_so(band_models, tmp_path, caplog):
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.full((64, 128), 90, np.uint8)).save(frames / "a.png")
    model = str(band_models["logits"])
    first = ["run", "--camera-dir", str(frames), "--out", str(tmp_path / "out"), "--model", model]
    assert CliRunner().invoke(main, first).exit_code == 0
    Image.fromarray(np.full((64, 128), 200, np.uint8)).save(frames / "b.png")
    with caplog.at_level("WARNING"):
        again = CliRunner().invoke(main, [*first, "--flip-average"])
    assert again.exit_code == 0, again.output
    assert "ran without --flip-average before this start; it now runs with it" in caplog.text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    sha = summary["model"]["sha256"][:16]
    assert summary["run_totals"]["models"] == [sha, sha + "+flip"]
