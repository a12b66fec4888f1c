from __future__ import annotations

import json

from click.testing import CliRunner

from trainer.cli import main


def test_inspect_prints_counts_and_writes_plots(small_npz, tmp_path):
    out = tmp_path / "inspect"
    result = CliRunner().invoke(main, ["inspect", str(small_npz), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        "160 labelled" in result.output
        and "outliers: 6 frames share 1 repeated mask" in result.output
    )
    assert "big_rock" in result.output
    for name in ("class_distribution.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "inspect.json").read_text())
    assert summary["n_clean"] == 154 and abs(sum(summary["class_fractions"].values()) - 1) < 1e-6


def test_inspect_bad_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    result = CliRunner().invoke(main, ["inspect", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.startswith("Error: could not read") and result.output.count("\n") == 1
