"""Print a .tflite's inputs, outputs, quantization, ops (with tensor types) and size.

    python tools/inspect_tflite.py runs/marsseg/model_int8.tflite [--tensors]

The same command as `edge-seg info`; needs only the edge dependencies, no TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.cli import info as main

if __name__ == "__main__":
    main()
