"""Real TFLite conversion and the real LiteRT interpreter."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edge.contract.labels import MARS
from edge.contract.metadata import read_model_metadata
from trainer.cli import main
from trainer.config import DataConfig, TrainConfig, to_json
from trainer.convert import ConvertConfig, check_integer_only, convert_run
from trainer.models import MODELS, build_model

pytestmark = pytest.mark.slow


def make_run(tmp_path, npz, name="marsseg", width=0.25):
    """An (untrained) model saved as a run directory with a config that points at the data."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    build_model(name, (64, 128, 1), 5, width=width).save(run_dir / "model.keras")
    to_json(
        TrainConfig(data=DataConfig(path=str(npz), limit=60), model=name, width=width),
        run_dir / "config.json",
    )
    return run_dir


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_converts_to_integer_only_int8(name, small_npz, tmp_path):
    run_dir = make_run(tmp_path, small_npz, name)
    report = convert_run(
        run_dir,
        ConvertConfig(precisions=("float32", "int8"), calibration_frames=8, parity_frames=4),
    )
    ops = check_integer_only(run_dir / "model_int8.tflite")
    assert "CONV_2D" in ops and not any(op.startswith(("FLEX", "CUSTOM")) for op in ops)
    int8 = report["models"]["int8"]
    assert int8["size_vs_float32"] < 0.45
    # the untrained float32 model through LiteRT equals Keras
    assert report["models"]["float32"]["pixel_agreement"] > 0.99
    assert report["models"]["float32"]["max_abs_prob_diff"] < 1e-3
    sidecar = json.loads((run_dir / "model_int8.json").read_text())
    embedded = read_model_metadata(run_dir / "model_int8.tflite")
    assert embedded.source == "embedded" and embedded.document() == sidecar
    assert embedded.labels.names[4] == "big_rock" and sidecar["calibration"]["frames"] == 8
    assert embedded.preprocessing.size == (64, 128) and embedded.info["architecture"] == name
    assert json.loads((run_dir / "parity.json").read_text())["frames"] == 4


def test_run_without_model_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "empty")])
    assert (
        result.exit_code == 2 and result.output.count("\n") == 1 and "no model at" in result.output
    )
    assert not list((tmp_path / "empty").glob("*.tflite"))


def test_empty_calibration_set_writes_nothing(small_npz, tmp_path):
    run_dir = make_run(tmp_path, small_npz)
    result = CliRunner().invoke(main, ["convert", str(run_dir), "--int8", "--calib", "0"])
    assert result.exit_code == 2 and "calibration set is empty" in result.output
    assert not list(run_dir.glob("*.tflite")) and not list(run_dir.glob(".*partial"))


def test_corrupted_keras_file_is_one_line_error(small_npz, tmp_path):
    run_dir = make_run(tmp_path, small_npz)
    data = (run_dir / "model.keras").read_bytes()
    (run_dir / "model.keras").write_bytes(data[: len(data) // 3])
    result = CliRunner().invoke(main, ["convert", str(run_dir)])
    assert (
        result.exit_code == 2
        and result.output.startswith("Error: cannot load")
        and result.output.count("\n") == 1
    )
    assert not list(run_dir.glob("*.tflite"))


def test_edge_seg_info_describes_the_int8_model(small_npz, tmp_path):
    from edge.cli import main as edge_main

    run_dir = make_run(tmp_path, small_npz)
    convert_run(run_dir, ConvertConfig(precisions=("int8",), calibration_frames=4, parity_frames=2))
    result = CliRunner().invoke(edge_main, ["info", str(run_dir / "model_int8.tflite")])
    assert result.exit_code == 0, result.output
    assert (
        "(1, 64, 128, 1) int8" in result.output
        and "integer-only" in result.output
        and "CONV_2D" in result.output
    )
    bad = CliRunner().invoke(edge_main, ["info", str(small_npz)])
    assert bad.exit_code == 2 and "not a .tflite or .onnx model" in bad.output  # run's code


def test_calibration_represents_every_missing_class():
    import numpy as np

    from trainer.convert import calibration_frames

    labels = np.ones((20, 4, 4), np.uint8)
    labels[3, 0, 0], labels[7, 0, 0] = 3, 4  # sand and big rock in one frame each
    images = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((20, 4, 4), np.float32)
    picked = calibration_frames(images, labels, 4, big_rock_share=0.0, seed=0, label_set=MARS)
    chosen = {int(frame[0, 0]) for frame in picked}
    assert {3, 7} <= chosen and len(picked) == 4


def test_a_run_finds_its_data_from_another_folder(small_npz, tmp_path, monkeypatch):
    import json
    import shutil

    from trainer.rundir import RunDir

    (tmp_path / "work" / "data").mkdir(parents=True)
    shutil.copy(small_npz, tmp_path / "work" / "data" / "d.npz")
    run = tmp_path / "work" / "runs" / "r"
    run.mkdir(parents=True)
    to_json(TrainConfig(data=DataConfig(path="data/d.npz")), run / "config.json")
    (run / "data.json").write_text(json.dumps({"path_absolute": str(tmp_path / "work/data/d.npz")}))
    monkeypatch.chdir(tmp_path / "work")  # where fit ran: the relative path works
    assert RunDir(run).data_location() == "data/d.npz"
    monkeypatch.chdir(tmp_path)  # elsewhere: the absolute one recorded by fit
    assert RunDir(run).data_location() == str(tmp_path / "work/data/d.npz")
    assert RunDir(run).data_location("given.npz") == "given.npz"  # a path given wins
    (run / "data.json").unlink()  # an older run: nothing found, the recorded path comes back
    assert RunDir(run).data_location() == "data/d.npz"
    (run / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        RunDir(run).config()
    (run / "config.json").unlink()
    with pytest.raises(ValueError, match=r"has no config.json: it is not a run of `trainer fit`"):
        RunDir(run).config()


def test_the_converters_own_lines_go_to_convert_log(small_npz, tmp_path):
    """TensorFlow's C++ code prints absl lines and "fully_quantize: 0, ..." on the process's
    stderr; `trainer convert` keeps them out of the terminal, in RUN/convert.log."""
    import os
    import subprocess
    import sys

    run_dir = make_run(tmp_path, small_npz)
    done = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "convert", str(run_dir), "--int8", "--calib", "4",
         "--parity-frames", "2"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    native = (run_dir / "convert.log").read_text()
    assert "fully_quantize" in native
    assert "fully_quantize" not in done.stderr and "I0000" not in done.stderr
    assert "parity on 2 validation frames" in done.stdout
