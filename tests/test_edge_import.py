"""The rover has no TensorFlow: importing and running `edge` must never touch it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
        for m in pkgutil.iter_modules(edge.__path__):
            importlib.import_module(f"edge.{m.name}")
        assert not any(k.split(".")[0] in {"tensorflow", "keras"} for k in sys.modules)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_blocker_really_blocks():
    result = run_without_tensorflow("import tensorflow")
    assert result.returncode != 0 and "not installed on the rover" in result.stderr
