"""The documented Python API runs as docs/api.md shows it, on the shipped model."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)


def test_the_api_example_runs_on_the_shipped_model(capsys):
    here = os.getcwd()
    os.chdir(ROOT)  # the example's frame path is relative to the checkout
    try:
        exec(compile(blocks()[0], "docs/api.md", "exec"), {})
    finally:
        os.chdir(here)
    printed = capsys.readouterr().out
    assert "soil" in printed and ("hazard" in printed or "clear" in printed)


def test_the_ros_node_example_is_valid_python_on_the_documented_api():
    node = blocks()[1]
    compile(node, "docs/api.md (ROS 2 node)", "exec")  # rclpy is not installed here
    import edge

    for name in re.findall(r"from edge import (.*)", node)[0].split(", "):
        assert getattr(edge, name)  # every name it imports exists
    assert "analyzer.frame(self.segmenter" in node
