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
    from edge.bench.onnx_peer import export_onnx

    rng = np.random.default_rng(3)
    calibration = np.stack([band_frame(rng)[0] for _ in range(8)]).astype(np.float32) / 255.0
    return export_onnx(band_models["float32"], calibration, tmp_path_factory.mktemp("peer"))


def test_the_int8_peer_is_quantized_by_onnx_runtime_and_gives_the_known_answer(band_peer):
    import onnx

    from edge.contract.metadata import read_model_metadata
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
        other, other_truth = band_frame(np.random.default_rng(12))  # a fresh output each time
        np.testing.assert_array_equal(seg.segment(other).labels, other_truth)
        meta = read_model_metadata(path)
        assert meta.source == "embedded" and meta.info["translated_from"] == "bands_float32.tflite"
        assert meta.labels.names[4] == "big_rock" and meta.info["file"] == path.name
    assert read_model_metadata(band_peer["int8"]).info["calibration"]["frames"] == 8


def test_a_damaged_onnx_file_is_refused_with_a_value_error(band_peer, tmp_path):
    from edge.contract.metadata import read_model_metadata

    data = band_peer["int8"].read_bytes()
    for cut in (7, len(data) // 2, len(data) - 5):  # in a header, the graph, the metadata
        damaged = tmp_path / f"cut_{cut}.onnx"
        damaged.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a readable ONNX model"):
            read_model_metadata(damaged)


def test_an_op_without_translation_is_named_with_the_supported_ones(band_models, monkeypatch):
    from edge.bench.onnx_peer import HANDLERS, UnsupportedModel, tflite_to_onnx
    from edge.bench.roofline import conv_model

    monkeypatch.delitem(HANDLERS, "SOFTMAX")
    with pytest.raises(UnsupportedModel, match=r"op SOFTMAX has no ONNX translation.*CONV_2D"):
        tflite_to_onnx(band_models["float32"].read_bytes())
    with pytest.raises(UnsupportedModel, match="translate the float32 model"):
        tflite_to_onnx(conv_model("int8"))


def test_bench_puts_litert_against_the_onnx_peer(band_models, band_peer, tmp_path):
    from edge.bench.runner import BenchConfig, run_benchmark

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
    assert 0 < row["p50_ratio"]["1"] < 100
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
    from edge.bench.onnx_peer import HANDLERS
    from edge.runtimes.interpreter import list_ops, make_interpreter
    from edge.segmenter import Segmenter
    from tests.test_convert import make_run
    from trainer.cli import main

    run_dir = make_run(tmp_path, small_npz)
    refused = CliRunner().invoke(main, ["convert", str(run_dir), "--int8", "--onnx"])
    assert refused.exit_code == 2 and "convert float32 too" in refused.output
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


# A tiny .tflite per case, written with LiteRT's schema module: every handler against LiteRT's
# own reference kernels, numerically (the band model exercises only CONV_2D and SOFTMAX).
def _tiny_model(input_shape, ops, seed=0) -> bytes:
    """ops: (opcode, [input names], output name, output shape, options or None); constants are
    ("const", array) in the input lists, named tensors are earlier outputs or "x"."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    rng = np.random.default_rng(seed)
    buffers, tensors, index, codes, operators = [fb.BufferT()], [], {}, [], []

    def tensor(name, shape, data=None, dtype=None):
        t = fb.TensorT()
        t.name, t.shape = name, list(shape)
        t.type = {np.dtype("int32"): fb.TensorType.INT32}.get(
            np.dtype(dtype or np.float32), fb.TensorType.FLOAT32
        )
        t.buffer = 0
        if data is not None:
            b = fb.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    index["x"] = tensor("x", input_shape)
    for k, (code, inputs, out, out_shape, options) in enumerate(ops):
        ids = []
        for item in inputs:
            if isinstance(item, str):
                ids.append(index[item])
            else:  # a constant: ("w", shape) random float32, or an int32 array
                if isinstance(item, np.ndarray):
                    ids.append(tensor(f"c{k}_{len(ids)}", item.shape, item, item.dtype))
                else:
                    value = rng.standard_normal(item[1]).astype(np.float32)
                    ids.append(tensor(f"c{k}_{len(ids)}", item[1], value))
        index[out] = tensor(out, out_shape)
        builtin = getattr(fb.BuiltinOperator, code)
        if builtin not in codes:
            codes.append(builtin)
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes.index(builtin), ids, [index[out]]
        if options is not None:
            kind, fields = options
            opt = getattr(fb, f"{kind}T")()
            for name, value in fields.items():
                setattr(opt, name, value)
            op.builtinOptionsType = getattr(fb.BuiltinOptions, kind)
            op.builtinOptions = opt
        operators.append(op)
    op_codes = []
    for builtin in codes:
        c = fb.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), 1
        op_codes.append(c)
    graph = fb.SubGraphT()
    graph.tensors, graph.operators = tensors, operators
    graph.inputs, graph.outputs = [index["x"]], [index[ops[-1][2]]]
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = (
        3,
        op_codes,
        [graph],
        buffers,
    )
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _conv(padding="SAME", stride=1, dilation=1, act="NONE"):
    from ai_edge_litert import schema_py_generated as fb

    return ("Conv2DOptions", {
        "padding": getattr(fb.Padding, padding), "strideH": stride, "strideW": stride,
        "dilationHFactor": dilation, "dilationWFactor": dilation,
        "fusedActivationFunction": getattr(fb.ActivationFunctionType, act),
    })  # fmt: skip


def _cases():
    from ai_edge_litert import schema_py_generated as fb

    i32 = np.int32
    pool = lambda size, stride, padding: ("Pool2DOptions", {  # noqa: E731
        "padding": getattr(fb.Padding, padding), "strideH": stride, "strideW": stride,
        "filterHeight": size, "filterWidth": size})  # fmt: skip
    return {
        # width == channels: a broadcast taken on the wrong axis would still run, wrongly
        "broadcast": (
            (1, 6, 4, 4),
            [
                (
                    "CONV_2D",
                    ["x", ("w", (4, 3, 3, 4)), ("b", (4,))],
                    "c",
                    (1, 6, 4, 4),
                    _conv(act="RELU6"),
                ),
                (
                    "MEAN",
                    ["c", np.array([1, 2], i32)],
                    "m",
                    (1, 4),
                    ("ReducerOptions", {"keepDims": False}),
                ),
                ("MUL", ["c", "m"], "p", (1, 6, 4, 4), ("MulOptions", {})),
                ("ADD", ["p", ("b", (4,))], "y", (1, 6, 4, 4), ("AddOptions", {})),
            ],
        ),
        "strided_dilated_depthwise": (
            (1, 7, 9, 3),
            [
                (
                    "CONV_2D",
                    ["x", ("w", (6, 4, 4, 3)), ("b", (6,))],
                    "a",
                    (1, 4, 5, 6),
                    _conv(stride=2, act="RELU"),
                ),
                (
                    "DEPTHWISE_CONV_2D",
                    ["a", ("w", (1, 3, 3, 12)), ("b", (12,))],
                    "d",
                    (1, 4, 5, 12),
                    (
                        "DepthwiseConv2DOptions",
                        {
                            "padding": fb.Padding.SAME,
                            "strideH": 1,
                            "strideW": 1,
                            "depthMultiplier": 2,
                            "dilationHFactor": 2,
                            "dilationWFactor": 2,
                        },
                    ),
                ),
                ("AVERAGE_POOL_2D", ["d"], "v", (1, 2, 3, 12), pool(3, 2, "SAME")),
                ("MAX_POOL_2D", ["d"], "y", (1, 2, 3, 12), pool(3, 2, "SAME")),
            ],
        ),
        "decoder": (
            (1, 4, 5, 6),
            [
                (
                    "CONCATENATION",
                    ["x", "x"],
                    "c",
                    (1, 4, 10, 6),
                    ("ConcatenationOptions", {"axis": 2}),
                ),
                (
                    "PAD",
                    ["c", np.array([[0, 0], [1, 0], [0, 1], [0, 0]], i32)],
                    "p",
                    (1, 5, 11, 6),
                    None,
                ),
                (
                    "CONV_2D",
                    ["p", ("w", (8, 2, 2, 6)), ("b", (8,))],
                    "k",
                    (1, 4, 10, 8),
                    _conv("VALID"),
                ),
                (
                    "DEPTH_TO_SPACE",
                    ["k"],
                    "s",
                    (1, 8, 20, 2),
                    ("DepthToSpaceOptions", {"blockSize": 2}),
                ),
                (
                    "REDUCE_MAX",
                    ["s", np.array([-1], i32)],
                    "r",
                    (1, 8, 20, 1),
                    ("ReducerOptions", {"keepDims": True}),
                ),
                ("LOGISTIC", ["r"], "g", (1, 8, 20, 1), None),
                ("MUL", ["s", "g"], "m", (1, 8, 20, 2), ("MulOptions", {})),
                ("SOFTMAX", ["m"], "y", (1, 8, 20, 2), ("SoftmaxOptions", {"beta": 1.0})),
            ],
        ),
        "pyramid_broadcast": (
            (1, 1, 1, 4),
            [
                ("RESHAPE", ["x", np.array([1, 1, 1, 1, 4], i32)], "r", (1, 1, 1, 1, 4), None),
                ("TILE", ["r", np.array([1, 2, 1, 3, 1], i32)], "t", (1, 2, 1, 3, 4), None),
                ("RESHAPE", ["t", np.array([1, 2, 3, 4], i32)], "q", (1, 2, 3, 4), None),
                ("CONV_2D", ["q", ("w", (5, 1, 1, 4)), ("b", (5,))], "y", (1, 2, 3, 5), _conv()),
            ],
        ),
    }


@pytest.mark.parametrize(
    "case", ["broadcast", "strided_dilated_depthwise", "decoder", "pyramid_broadcast"]
)
def test_each_op_translates_to_what_litert_computes(case, tmp_path):
    import onnxruntime as ort

    from edge.bench.onnx_peer import tflite_to_onnx
    from edge.runtimes.interpreter import make_interpreter

    shape, ops = _cases()[case]
    path = tmp_path / f"{case}.tflite"
    path.write_bytes(_tiny_model(shape, ops))
    interpreter, _ = make_interpreter(path, xnnpack=False)  # LiteRT's reference kernels
    session = ort.InferenceSession(
        tflite_to_onnx(path.read_bytes()).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(1)
    for _ in range(2):  # two inputs: an output that never refreshes fails
        x = rng.standard_normal(shape).astype(np.float32)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        want = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        got = session.run(None, {"input": x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_a_peer_is_set_against_models_of_its_own_graph_and_precision():
    from edge.bench.report import peer_ratios

    def entry(runtime, graph, precision, p50):
        figures = {"precision": precision, "invoke": {"p50": p50}}
        return {"runtime": runtime, "graph": graph, "threads": {"1": figures}}

    report = {
        "models": {
            "keras_int8": entry("litert 2.3.0", "keras", "int8", 3.0),
            "rover_int8": entry("litert 2.3.0", "rover", "int8", 1.0),
            "rover_float32": entry("litert 2.3.0", "rover", "float32", 4.0),
            "peer_int8": entry("onnxruntime 1.32.0", "rover", "int8", 2.0),
        }
    }
    rows = peer_ratios(report)
    assert [(r["model"], r["peer"]) for r in rows] == [("rover_int8", "peer_int8")]
    assert rows[0]["p50_ratio"] == {"1": 0.5}


def test_the_onnx_session_refuses_what_litert_refuses(band_peer):
    from edge.runtimes.interpreter import make_interpreter

    interpreter, runtime = make_interpreter(band_peer["float32"])
    assert runtime == "onnxruntime"
    with pytest.raises(ValueError, match=r"takes float32 \(1, 64, 128, 1\), got uint8"):
        interpreter.set_tensor(0, np.zeros((1, 64, 128, 1), np.uint8))
    with pytest.raises(ValueError, match="got float32 \\(1, 64, 64, 1\\)"):
        interpreter.set_tensor(0, np.zeros((1, 64, 64, 1), np.float32))
    with pytest.raises(ValueError, match="no input tensor 3"):
        interpreter.set_tensor(3, np.zeros((1, 64, 128, 1), np.float32))
    frame = np.full((1, 64, 128, 1), 0.5, np.float32)
    interpreter.set_tensor(0, frame)
    frame[:] = 0.1  # the caller reuses its array: the set input is a copy
    interpreter.invoke()
    out = interpreter.get_output_details()[0]["index"]
    assert (interpreter.get_tensor(out)[0].argmax(-1) == 2).all()  # 0.5 is band 2
    with pytest.raises(ValueError, match="only"):
        make_interpreter(band_peer["float32"], runtime="litert")


def test_the_keras_graph_gets_no_peer():
    from trainer.convert import check_onnx_peer

    frames = np.zeros((2, 64, 128), np.float32)
    with pytest.raises(ValueError, match="rover graph only"):
        check_onnx_peer(("float32", "int8"), frames, "keras")
    with pytest.raises(ValueError, match="convert float32 too"):
        check_onnx_peer(("int8",), frames)
    with pytest.raises(ValueError, match="--calib must be >= 1"):
        check_onnx_peer(("float32",), None)
    check_onnx_peer(("float32",), frames)  # the packages are installed here
