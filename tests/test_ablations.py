"""benchmarks/ablations.py --quick: every run trains, the table, the verdicts and the chart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.ablations import summarise, verdict

ROOT = Path(__file__).resolve().parents[1]


def test_verdicts_need_a_gap_beyond_twice_the_standard_error():
    rows = [{"variant": v, "seed": s, "val_miou": m, "big_rock_iou": 0.0}
            for v, ms in {"a": (0.60, 0.61, 0.62), "b": (0.50, 0.51, 0.52),
                          "c": (0.59, 0.63, 0.61)}.items() for s, m in enumerate(ms)]  # fmt: skip
    stats = summarise(rows)
    assert stats["a"]["val_miou"] == pytest.approx(0.61)
    assert stats["a"]["val_miou_std"] == pytest.approx(0.01)
    assert verdict(stats, "a", "b")[0] == "confirmed"
    assert verdict(stats, "b", "a")[0] == "refuted"
    assert verdict(stats, "a", "c")[0] == "inside the noise"


@pytest.mark.slow
def test_quick_ablation_of_the_loss_group(small_npz, tmp_path):
    out = tmp_path / "ablations"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ablations.py"), "--quick", "--groups", "loss",
         "--data", str(small_npz), "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "ablations.json").read_text())
    assert {r["variant"] for r in report["rows"]} == {
        "plain CE", "background-ignoring CE", "class-weighted CE", "CE + dice",
        "CE + 0.1 background CE",
    }  # fmt: skip
    assert all(0 <= r["val_miou"] <= 1 for r in report["rows"])
    text = (out / "ablations.md").read_text()
    assert "| loss | CE + dice |" in text and "background-ignoring CE vs plain CE" in text
    assert (out / "ablations.png").read_bytes()[:4] == b"\x89PNG"
