"""benchmarks/run.py on the band models, in processes where TensorFlow cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_edge_import import BLOCK_TF

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_reports_float_vs_int8_without_tensorflow(band_models, tmp_path):
    # A sitecustomize on PYTHONPATH blocks TensorFlow in the script and in its worker processes.
    site = tmp_path / "site"
    site.mkdir()
    # The board has our trainer package (numpy-only synthetic data) but no TensorFlow or Keras.
    (site / "sitecustomize.py").write_text(BLOCK_TF.replace(', "trainer"', ""))
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    blocked = subprocess.run(
        [sys.executable, "-c", "import tensorflow"], env=env, capture_output=True
    )
    assert blocked.returncode != 0  # the blocker is in force
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"),
         "--models", str(band_models["float32"]), str(band_models["int8"]),
         "--frames", "12", "--threads", "1,2", "--runs", "8", "--warmup", "2", "--out", str(out),
         "--kernels", "xnnpack,builtin"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    columns = [f"bands_{p} [{k}]" for p in ("float32", "int8") for k in ("xnnpack", "builtin")]
    assert list(report["models"]) == columns
    assert report["data"].startswith("synthetic")  # generated here, numpy only
    for entry in report["models"].values():
        for threads in ("1", "2"):
            figures = entry["threads"][threads]
            assert figures["invoke"]["count"] == 8
            assert (
                0 < figures["invoke"]["min"] <= figures["invoke"]["p50"] <= figures["invoke"]["max"]
            )
            assert figures["pipeline"]["count"] == 8 and figures["pipeline"]["fps"] > 0
            for mode in figures["pipeline"]["modes"].values():  # in turn, overlapped
                assert set(mode["stages_ms"]) == {"read", "preprocess", "invoke", "postprocess",
                                                  "analyze", "write"}  # fmt: skip
                invoke = mode["stages_ms"]["invoke"]
                assert mode["outside_invoke_ms"] == pytest.approx(mode["wall_ms"] - invoke)
                assert mode["cpu_ms"] > 0
            assert figures["peak_rss_mb"] > 0
            # what ran is recorded, and the model is set against the limit conv of this run
            assert figures["execution"]["kernels"] == entry["kernels"]
            assert figures["execution"]["cpu"]["int8_isa"]
            limit = report["limit"][entry["kernels"]][threads][figures["precision"]]
            assert limit["gmac_per_s"] > 0 and limit["macs"] == 64 * 64 * 256 * 256 * 9
            assert figures["gmac_per_s"] == pytest.approx(
                entry["macs"] / figures["invoke"]["p50"] / 1e6
            )
            assert figures["limit_share"] == pytest.approx(
                figures["gmac_per_s"] / limit["gmac_per_s"]
            )
            assert figures["vs_floor"] == pytest.approx(1 / figures["limit_share"])
        assert entry["macs"] > 0
        assert 0 <= entry["accuracy"]["mean_iou"] <= 1
    # MACs are the graph's: the same for a model whatever kernels run it
    assert len({report["models"][c]["macs"] for c in columns[:2]}) == 1
    pair = report["pairs"][0]
    assert (pair["reference"], pair["test"]) == (columns[0], columns[1])
    assert 0.9 <= pair["pixel_agreement"] <= 1.0
    markdown = (out / "report.md").read_text()
    assert f"{columns[2]} / {columns[0]}" in markdown and "pixel agreement" in markdown
    assert "## Where a frame's time goes" in markdown and "| **beyond invoke** |" in markdown
    assert "## Execution" in markdown and "Limit: one 3x3 conv, 64x64x256" in markdown
    assert "| builtin | no |" not in markdown  # builtin's row names builtin kernels, not an ISA
    charts = [
        f"latency_bands_{p}_{k}.png" for p in ("float32", "int8") for k in ("xnnpack", "builtin")
    ]
    for png in ("iou_per_class.png", *charts):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.isfinite(report["models"][columns[2]]["threads"]["1"]["invoke_fps"])


def test_a_ratio_against_a_zero_reference_reads_n_a():
    """A spread of two runs of a tiny model rounds to 0.0 ms: its ratio must not end the
    report (it did, now and then, under load: ZeroDivisionError)."""
    from edge.bench.report import _ratio

    assert _ratio(0.5, 0.25) == "2.00x"
    assert _ratio(0.5, 0.0) == _ratio(0.5, float("nan")) == "n/a"
