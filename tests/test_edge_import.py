"""The rover has no TensorFlow: importing and running `edge` must never touch it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCK_TF = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"tensorflow", "keras", "tf_keras", "trainer"}:
                raise ImportError(f"{name} is not installed on the rover")
            return None

    sys.meta_path.insert(0, BlockTensorFlow())
    """
)


def run_without_tensorflow(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TF + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_edge_imports_without_tensorflow():
    result = run_without_tensorflow(
        """
        import pkgutil, importlib, edge
        names = [m.name for m in pkgutil.walk_packages(edge.__path__, "edge.")]
        assert "edge.runtimes.interpreter" in names and "edge.contract.labels" in names
        for name in names:
            importlib.import_module(name)
        assert not any(k.split(".")[0] in {"tensorflow", "keras"} for k in sys.modules)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_blocker_really_blocks():
    result = run_without_tensorflow("import tensorflow")
    assert result.returncode != 0 and "not installed on the rover" in result.stderr


@pytest.mark.slow
def test_an_edge_only_install_runs_the_board_benchmark(band_models, tmp_path):
    """A fresh venv with `pip install '.[edge]'` (not editable): no TensorFlow, Keras,
    matplotlib or albumentations; `edge-seg bench` works, `trainer` says what to install."""
    venv = tmp_path / "board"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", f"{ROOT}[edge]"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-2000:]
    python = str(venv / "bin" / "python")
    probe = subprocess.run(
        [python, "-c", "import importlib.util as u; print([m for m in ('tensorflow', 'keras', "
         "'matplotlib', 'albumentations') if u.find_spec(m)])"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    out = tmp_path / "bench"
    bench = subprocess.run(
        [str(venv / "bin" / "edge-seg"), "bench", "--models", str(band_models["float32"]),
         str(band_models["int8"]), "--frames", "6", "--threads", "1", "--runs", "5",
         "--warmup", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["bands_float32", "bands_int8"]
    assert report["load_average_before"] and "mIoU change" in (out / "report.md").read_text()
    trainer = subprocess.run(
        [str(venv / "bin" / "trainer"), "models"], capture_output=True, text=True
    )
    assert trainer.returncode == 2 and "install 'marsseg-edge[train]'" in trainer.stderr
    assert "Traceback" not in trainer.stderr
