"""Rover side of marsseg-edge: run a segmentation .tflite on camera frames.

Depends only on numpy, pillow, click and a TFLite runtime (ai-edge-litert or tflite-runtime);
it never imports TensorFlow, so that it installs on a rover's ARM computer.
"""

from edge.contract.labels import CLASS_COLOURS, CLASS_NAMES, NUM_CLASSES, colourise

__all__ = ["CLASS_COLOURS", "CLASS_NAMES", "NUM_CLASSES", "colourise"]
__version__ = "0.1.0"
