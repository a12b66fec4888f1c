"""The interpreters a model runs on (LiteRT, tflite-runtime, ONNX Runtime for the bench's peer),
the CPU's kernels and their choice (kernels), and a model file's description (info).

:data:`FORMATS` is the one registry of model files: each format's suffix, the runtimes that open
it, what to install for them, where its embedded metadata is read from, and whether its runtime
brings its own kernels. Everything that asks "what kind of model is this file" asks
:func:`model_format`; adding a format is an entry here, its opener in
:func:`edge.runtimes.interpreter.make_interpreter` and its metadata reader in
:data:`edge.contract.metadata.METADATA_READERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelFormat:
    """One kind of model file.

    Attributes:
        name: short name (``tflite``, ``onnx``).
        suffix: the file suffix, lower case.
        runtimes: the runtimes that open it, in order of preference (``auto`` takes the first
            one installed).
        install: what to install when none of them is.
        own_kernels: the runtime picks its kernels itself (no ``--kernels`` choice, no limit
            column): ONNX Runtime's CPU provider.
        role: ``rover`` (what flies) or ``peer`` (a benchmark's comparison only).
    """

    name: str
    suffix: str
    runtimes: tuple[str, ...]
    install: str
    own_kernels: bool = False
    role: str = "rover"


FORMATS: tuple[ModelFormat, ...] = (
    ModelFormat(
        "tflite", ".tflite", ("litert", "tflite-runtime"),
        "pip install ai-edge-litert (or tflite-runtime)",
    ),
    ModelFormat(
        "onnx", ".onnx", ("onnxruntime",), "pip install 'marsseg-edge[peers]'",
        own_kernels=True, role="peer",
    ),
)  # fmt: skip
SUFFIXES = tuple(f.suffix for f in FORMATS)


@dataclass(frozen=True)
class Runtime:
    """One interpreter package: the module that opens models and the distribution that installs
    it (what `summary.json` and the bench report name, with its version)."""

    name: str
    module: str
    distribution: str


RUNTIME_PACKAGES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
        Runtime("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
        Runtime("onnxruntime", "onnxruntime", "onnxruntime"),
    )
}


def model_format(path: str | Path) -> ModelFormat:
    """The format of a model file, by its suffix.

    Raises:
        ValueError: for a suffix no format has (the message lists the known ones).
    """
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS:
        if fmt.suffix == suffix:
            return fmt
    raise ValueError(f"{Path(path).name}: not a {' or '.join(SUFFIXES)} model")


__all__ = ["FORMATS", "SUFFIXES", "ModelFormat", "model_format"]
