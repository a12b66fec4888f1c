"""The op profile: one-op models cut from a .tflite run alone and compute what the op does in
the whole model; `edge-seg bench --op-profile` reports them."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from edge.bench.op_profile import markdown, profile, single_op_models


def _interpreter(content: bytes, preserve: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=preserve,
    )
    interpreter.allocate_tensors()
    return interpreter


def test_each_one_op_model_computes_what_its_op_computes_in_the_whole_model(band_models):
    content = band_models["int8"].read_bytes()
    whole = _interpreter(content, preserve=True)
    listed = whole._get_ops_details()
    detail = whole.get_input_details()[0]
    frame = np.random.default_rng(0).integers(-128, 128, detail["shape"]).astype(np.int8)
    whole.set_tensor(detail["index"], frame)
    whole.invoke()
    ops = single_op_models(content)
    assert [o["op"] for o in ops] == [op["op_name"] for op in listed]
    for cut, op in zip(ops, listed, strict=True):
        alone = _interpreter(cut["model"])
        assert set(cut["inputs"]) <= set(op["inputs"])
        for inp, source in zip(alone.get_input_details(), cut["inputs"], strict=True):
            alone.set_tensor(inp["index"], whole.get_tensor(source))
        alone.invoke()
        got = alone.get_tensor(alone.get_output_details()[0]["index"])
        np.testing.assert_array_equal(got, whole.get_tensor(op["outputs"][0]), err_msg=cut["op"])


def test_the_profile_accounts_for_the_ops_and_reads_as_tables(band_models):
    result = profile(band_models["float32"], threads=1, runs=3, warmup=1)
    assert result["ops"] == len(single_op_models(band_models["float32"].read_bytes()))
    assert result["whole_ms"] > 0 and result["ops_sum_ms"] > 0
    total = sum(t["ms"] for t in result["by_type"])
    assert abs(total - result["ops_sum_ms"]) < 1e-3 * max(1, result["ops"])
    assert sum(t["count"] for t in result["by_type"]) == result["ops"]
    assert [o["ms"] for o in result["top"]] == sorted(
        (o["ms"] for o in result["top"]), reverse=True
    )
    lines = "\n".join(markdown({"bands": result}))
    assert "## Op profile" in lines and f"| {result['by_type'][0]['op']} |" in lines


def test_edge_seg_bench_op_profile(band_models, tmp_path):
    from edge.cli import main

    out = tmp_path / "bench"
    args = ["bench", "--models", str(band_models["float32"]), str(band_models["int8"]),
            "--frames", "4", "--threads", "1", "--runs", "3", "--warmup", "1", "--no-roofline",
            "--kernels", "xnnpack", "--op-profile", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for entry in report["models"].values():
        assert entry["op_profile"]["kernels"] == "xnnpack" and entry["op_profile"]["ops"] > 0
    assert (out / "report.md").read_text().count("### bands_") == 2


def test_edge_seg_bench_takes_its_models_as_arguments(band_models, tmp_path):
    from edge.cli import main

    none = CliRunner().invoke(main, ["bench", "--out", str(tmp_path)])
    assert none.exit_code == 2 and "give the models to compare" in none.output
    listed = CliRunner().invoke(
        main,
        ["bench", str(band_models["float32"]), str(band_models["int8"]), "--frames", "2",
         "--threads", "1", "--runs", "2", "--warmup", "1", "--no-roofline", "--kernels",
         "xnnpack", "--out", str(tmp_path / "b")],
    )  # fmt: skip
    assert listed.exit_code == 0, listed.output
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert list(report["models"]) == ["bands_float32", "bands_int8"] and "limit" not in report
