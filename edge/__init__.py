"""Rover side of marsseg-edge: run a segmentation .tflite on camera frames.

Depends only on numpy, pillow, click and a TFLite runtime (ai-edge-litert or tflite-runtime);
it never imports TensorFlow, so that it installs on a rover's ARM computer.

The Python API (docs/api.md)::

    from edge import RegionAnalyzer, RegionConfig, Segmenter, read_frame, shipped_model

    segmenter = Segmenter(shipped_model(), threads=2)
    analyzer = RegionAnalyzer(RegionConfig(), segmenter.labels)
    segmentation, analysis = analyzer.frame(segmenter, read_frame("frame.jpg"))
"""

from edge.contract.labels import CLASS_COLOURS, CLASS_NAMES, NUM_CLASSES, colourise

__all__ = [
    "CLASS_COLOURS", "CLASS_NAMES", "NUM_CLASSES", "RegionAnalyzer", "RegionConfig", "Segmenter",
    "colourise", "read_frame", "shipped_model",
]  # fmt: skip
__version__ = "0.1.0"

_LAZY = {
    "Segmenter": "edge.segmenter",
    "RegionAnalyzer": "edge.run.hazards",
    "RegionConfig": "edge.run.hazards",
    "read_frame": "edge.io.decode",
    "shipped_model": "edge.models",
}


def __getattr__(name: str):
    """The API's classes, imported when first used: ``import edge`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
