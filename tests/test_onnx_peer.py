"""The ONNX Runtime peer: the float32 .tflite translated op for op, ONNX Runtime's own int8
quantization, the embedded metadata, and the bench's peer column."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import band_frame

pytest.importorskip("onnx", reason="the [peers] extra (make test installs it)")
pytest.importorskip("onnxruntime", reason="the [peers] extra (make test installs it)")


@pytest.fixture(scope="module")
def band_peer(band_models, tmp_path_factory):
    """The band model's ONNX peer, calibrated on band frames like its .tflite."""
    from edge.onnx_peer import export_onnx

    rng = np.random.default_rng(3)
    calibration = np.stack([band_frame(rng)[0] for _ in range(8)]).astype(np.float32) / 255.0
    return export_onnx(band_models["float32"], calibration, tmp_path_factory.mktemp("peer"))


def test_the_int8_peer_is_quantized_by_onnx_runtime_and_gives_the_known_answer(band_peer):
    import onnx

    from edge.modelmeta import read_model_metadata
    from edge.segmenter import Segmenter

    graph = onnx.load(str(band_peer["int8"])).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)  # the weights
    frame, truth = band_frame(np.random.default_rng(11))
    for precision, path in band_peer.items():
        seg = Segmenter(path)
        assert seg.runtime == "onnxruntime" and seg.precision == precision
        assert seg.execution["kernels"] == "onnxruntime-cpu"
        np.testing.assert_array_equal(seg.segment(frame).labels, truth)
        meta = read_model_metadata(path)
        assert meta.source == "embedded" and meta.info["translated_from"] == "bands_float32.tflite"
        assert meta.labels.names[4] == "big_rock" and meta.info["file"] == path.name
    assert read_model_metadata(band_peer["int8"]).info["calibration"]["frames"] == 8


def test_a_damaged_onnx_file_is_refused_with_a_value_error(band_peer, tmp_path):
    from edge.modelmeta import read_model_metadata

    data = band_peer["int8"].read_bytes()
    for cut in (7, len(data) // 2, len(data) - 5):  # in a header, the graph, the metadata
        damaged = tmp_path / f"cut_{cut}.onnx"
        damaged.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a readable ONNX model"):
            read_model_metadata(damaged)


def test_an_op_without_translation_is_named_with_the_supported_ones(band_models, monkeypatch):
    from edge.limit import conv_model
    from edge.onnx_peer import HANDLERS, UnsupportedModel, tflite_to_onnx

    monkeypatch.delitem(HANDLERS, "SOFTMAX")
    with pytest.raises(UnsupportedModel, match=r"op SOFTMAX has no ONNX translation.*CONV_2D"):
        tflite_to_onnx(band_models["float32"].read_bytes())
    with pytest.raises(UnsupportedModel, match="translate the float32 model"):
        tflite_to_onnx(conv_model("int8"))


def test_bench_puts_litert_against_the_onnx_peer(band_models, band_peer, tmp_path):
    from edge.bench import BenchConfig, run_benchmark

    models = [band_models["float32"], band_models["int8"], band_peer["float32"], band_peer["int8"]]
    report = run_benchmark(
        BenchConfig(models=models, frames=6, threads=(1,), runs=5, warmup=1, limit=False,
                    kernels=("xnnpack", "builtin"), out=tmp_path / "bench", in_process=True)
    )  # fmt: skip
    names = list(report["models"])
    # the peer runs once with its own kernels, the .tflite models once per kernel choice
    assert names[-2:] == ["model_float32.onnx", "model_int8.onnx"] and len(names) == 6
    assert report["models"]["model_int8.onnx"]["runtime"].startswith("onnxruntime ")
    assert report["models"]["bands_int8 [xnnpack]"]["runtime"].startswith("litert ")
    rows = {(r["model"], r["peer"]): r for r in report["peers"]}
    row = rows[("bands_int8 [xnnpack]", "model_int8.onnx")]
    ours = report["models"]["bands_int8 [xnnpack]"]["threads"]["1"]["invoke"]["p50"]
    theirs = report["models"]["model_int8.onnx"]["threads"]["1"]["invoke"]["p50"]
    assert row["precision"] == "int8" and row["p50_ratio"]["1"] == pytest.approx(ours / theirs)
    assert ("bands_int8 [xnnpack]", "model_float32.onnx") not in rows  # precisions differ
    markdown = (tmp_path / "bench" / "report.md").read_text()
    assert "## Against the peer runtime" in markdown
    assert "| bands_int8 [xnnpack] / model_int8.onnx | int8 |" in markdown
    assert "| model_int8.onnx | onnxruntime " in markdown  # the execution table names it
    assert report["models"]["model_int8.onnx"]["macs"] is None  # no limit comparison for it


def test_bench_without_onnxruntime_says_what_to_install(band_models, band_peer, monkeypatch):
    from edge.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    result = CliRunner().invoke(
        main, ["bench", "--models", str(band_models["int8"]), str(band_peer["int8"])]
    )
    assert result.exit_code == 2
    assert "needs onnxruntime: pip install 'marsseg-edge[peers]'" in result.output


def test_bench_refuses_a_file_that_is_not_a_model(band_models, tmp_path):
    from edge.cli import main

    other = tmp_path / "frames.npz"
    other.write_bytes(b"")
    result = CliRunner().invoke(main, ["bench", "--models", str(band_models["int8"]), str(other)])
    assert result.exit_code == 2 and "frames.npz: not a .tflite or .onnx model" in result.output


@pytest.mark.slow
def test_trainer_convert_onnx_translates_marsseg_exactly(small_npz, tmp_path):
    from edge.onnx_peer import HANDLERS
    from edge.runtime import list_ops, make_interpreter
    from edge.segmenter import Segmenter
    from tests.test_convert import make_run
    from trainer.cli import main

    run_dir = make_run(tmp_path, small_npz)
    refused = CliRunner().invoke(main, ["convert", str(run_dir), "--int8", "--onnx"])
    assert refused.exit_code == 1 and "convert float32 too" in refused.output
    assert not list(run_dir.rglob("*.tflite")) and not (run_dir / "onnx").exists()

    args = ["convert", str(run_dir), "--onnx", "--calib", "4", "--parity-frames", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    parity = json.loads((run_dir / "parity.json").read_text())["models"]
    assert parity["onnx-int8"]["file"] == "onnx/model_int8.onnx"
    assert parity["onnx-float32"]["pixel_agreement"] > 0.99  # the same graph as the .tflite
    tflite = run_dir / "model_float32.tflite"
    interpreter, _ = make_interpreter(tflite, xnnpack=False)
    ops = {op.name for op in list_ops(interpreter)}
    assert {"DEPTH_TO_SPACE", "TILE", "REDUCE_MAX", "LOGISTIC", "PAD"} <= ops <= set(HANDLERS)
    # op for op: the float32 outputs of both runtimes agree to float rounding
    ours, peer = Segmenter(tflite, xnnpack=False), Segmenter(run_dir / "onnx/model_float32.onnx")
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = ours.preprocess(rng.integers(0, 256, (64, 128), dtype=np.uint8))
        outputs = []
        for seg in (ours, peer):
            seg.interpreter.set_tensor(seg.input_index, x)
            seg.interpreter.invoke()
            outputs.append(
                seg.interpreter.get_tensor(seg.interpreter.get_output_details()[0]["index"])
            )
        scale = max(1.0, float(np.abs(outputs[0]).max()))
        assert np.abs(outputs[0] - outputs[1]).max() < 1e-4 * scale
