"""tools/arm64_check.sh: the edge side and the benchmark on aarch64, emulated by qemu-user."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import band_frame

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64" or not shutil.which("apt-get"),
    reason="the check emulates aarch64 on a Debian x86_64 machine",
)
def test_arm64_check_passes(band_models, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        Image.fromarray(band_frame(rng)[0]).save(frames / f"{i:03d}.png")
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "arm64_check.sh"), "--frames", str(frames),
         "--cache", str(ROOT / ".cache" / "arm64"), "--out", str(tmp_path / "out"),
         str(band_models["float32"]), str(band_models["int8"]), str(band_models["logits"])],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Python 3.11" in result.stdout and "aarch64" in result.stdout
    assert "bands_float32: 3 frames, class maps agree on 100.000 %" in result.stdout
    assert "bands_int8: 3 frames" in result.stdout and "EMULATED" in result.stdout
    assert "bands_logits: 3 frames" in result.stdout  # the rover graph (logits, sub-pixel)
    assert "arm64 check passed" in result.stdout
    masks = sorted((tmp_path / "out" / "aarch64" / "bands_int8" / "masks").glob("*.png"))
    assert len(masks) == 3
