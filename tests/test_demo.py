"""`make demo`'s pipeline (tools/demo.sh) end to end with a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_pipeline_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {
        **os.environ,
        "OUT": str(out), "PYTHON_BIN": str(Path(sys.executable).parent),
        "EPOCHS": "1", "LIMIT": "160", "FRAMES": "200", "TEST_FRAMES": "10",
        "CAMERA_FRAMES": "12", "RUNS": "5",
    }  # fmt: skip
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "demo.sh")],
        capture_output=True, text=True, env=env, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in range(1, 9):
        assert f"[{step}/8]" in result.stdout
    shipped = json.loads((out / "shipped" / "summary.json").read_text())
    assert (shipped["frames"], shipped["errors"]) == (8, 0)
    assert shipped["model"]["chosen"] == "the shipped model set" and shipped["miou"] is not None
    screen = result.stdout[result.stdout.index("marsseg-edge demo") :]
    for needle in ("size (KiB)", "val mIoU (LiteRT)", "invoke ms, 1 thread", "pipeline fps",
                   "pixel agreement", "overlays", "report.md"):  # fmt: skip
        assert needle in screen
    edge = json.loads((out / "edge" / "summary.json").read_text())
    assert (edge["frames"], edge["errors"]) == (12, 0) and edge["miou"] is not None
    assert len(list((out / "edge" / "overlays").glob("*.png"))) == 12
    bench = json.loads((out / "report" / "report.json").read_text())
    assert list(bench["models"]) == ["model_float32", "model_int8"]
    assert (out / "runs" / "marsseg" / "parity.json").is_file()

    figures = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "readme_figures.py"), str(out), "--out", str(tmp_path / "docs")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert figures.returncode == 0, figures.stderr
    assert (tmp_path / "docs" / "overlays.png").read_bytes()[:4] == b"\x89PNG"
