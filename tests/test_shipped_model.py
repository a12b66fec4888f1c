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
