"""No thread but the loop's own works during a frame in turn: a library's thread pool that spins
after a call (numpy's matrix products through OpenBLAS did) doubles what a frame costs the
rover's CPU while the wall time hides it (benchmarks/frame_cpu.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread CPU from /proc")
def test_a_frame_in_turn_keeps_its_work_on_the_loop_thread():
    # a fresh process: only the rover loop's own threads and pools (no pytest, no TensorFlow);
    # a BLAS pool of 2 threads on any machine, so that a call into it shows on a 1-core one too
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "frame_cpu.py"), "--mode", "in_turn",
         "--frames", "120", "--threads", "1", "--json", "-"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads(done.stdout)["modes"]["in_turn"]
    assert run["frames"] == 120 and run["errors"] == 0
    spent = run["cpu_by_thread_ms"]
    assert spent["loop"] > 0.5, spent  # the measurement sees the loop's own work
    # with the matrix product in the region counts, `other` was as large as `loop`
    assert spent["other"] < 0.2 * spent["loop"], spent
