"""benchmarks/run.py on the band models, in processes where TensorFlow cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

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
         "--frames", "12", "--threads", "1,2", "--runs", "8", "--warmup", "2", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["bands_float32", "bands_int8"]
    assert report["data"].startswith("synthetic")  # generated here, numpy only
    for entry in report["models"].values():
        for threads in ("1", "2"):
            figures = entry["threads"][threads]
            assert figures["invoke"]["count"] == 8
            assert (
                0 < figures["invoke"]["min"] <= figures["invoke"]["p50"] <= figures["invoke"]["max"]
            )
            assert figures["pipeline"]["count"] == 8 and figures["pipeline"]["fps"] > 0
            assert figures["peak_rss_mb"] > 0
        assert 0 <= entry["accuracy"]["mean_iou"] <= 1
    pair = report["pairs"][0]
    assert (pair["reference"], pair["test"]) == ("bands_float32", "bands_int8")
    assert 0.9 <= pair["pixel_agreement"] <= 1.0
    markdown = (out / "report.md").read_text()
    assert "bands_int8 / bands_float32" in markdown and "pixel agreement" in markdown
    for png in ("latency_bands_float32.png", "latency_bands_int8.png", "iou_per_class.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.isfinite(report["models"]["bands_int8"]["threads"]["1"]["invoke_fps"])
