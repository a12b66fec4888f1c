"""Float vs int8 on the board: `edge-seg bench` from a checkout (the library is edge/bench/runner.py).

    python benchmarks/run.py --models model_float32.tflite model_int8.tflite \
        --data eval.npz --threads 1,2,4 --runs 200 --warmup 20 --out report/bench

The same as `edge-seg bench ...` on a board where the package is installed; see
`edge-seg bench --help`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.cli import LOG_FORMAT, bench

if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # the bench command itself, so that --help reads "python benchmarks/run.py [OPTIONS]"
    bench.main(sys.argv[1:], prog_name="python benchmarks/run.py")
