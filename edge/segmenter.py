"""Segment one grayscale frame with a .tflite model, timing every stage."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.classes import NUM_CLASSES
from edge.runtime import make_interpreter

log = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """The result for one frame: the class map, optionally probabilities, and stage timings (us)."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    timings_us: dict[str, float] = field(default_factory=dict)


class Segmenter:
    """Runs a segmentation .tflite on uint8 grayscale frames.

    The input and output quantization (scale, zero point) are read from the model itself. A frame
    is scaled to [0, 1] exactly as in training, then quantized when the model's input is integer.
    Frames of another size are resized to the model's input (bilinear) and the class map is
    resized back (nearest), with one warning.

    Args:
        model_path: the .tflite.
        threads: CPU threads.
        runtime: ``auto``, ``litert`` or ``tflite-runtime``.
        xnnpack: use the XNNPACK delegate.

    Raises:
        ValueError: if the model's input is not (1, H, W, 1) or its output not (1, H, W, 5).
    """

    def __init__(
        self, model_path: str | Path, threads: int = 1, runtime: str = "auto", xnnpack: bool = True
    ):
        self.model_path = Path(model_path)
        self.interpreter, self.runtime = make_interpreter(model_path, threads, runtime, xnnpack)
        self.threads = threads
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        shape_in, shape_out = tuple(self._input["shape"]), tuple(self._output["shape"])
        if len(shape_in) != 4 or shape_in[0] != 1 or shape_in[3] != 1:
            raise ValueError(
                f"{self.model_path.name}: input shape {shape_in}, expected (1, H, W, 1) grayscale; "
                "export with a fixed batch of 1 (trainer convert)"
            )
        if len(shape_out) != 4 or shape_out[1:3] != shape_in[1:3] or shape_out[3] != NUM_CLASSES:
            raise ValueError(
                f"{self.model_path.name}: output shape {shape_out}, expected (1, H, W, {NUM_CLASSES})"
            )
        self.input_shape = shape_in[1:3]
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_quant = tuple(self._input["quantization"])
        self.output_quant = tuple(self._output["quantization"])
        self._warned_resize = False

    @property
    def input_index(self) -> int:
        """The interpreter's input tensor index (for timing ``invoke`` alone)."""
        return self._input["index"]

    @property
    def quantized(self) -> bool:
        return self.input_dtype.kind in "iu"

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """uint8 (H, W) frame -> the model's input tensor (1, H, W, 1)."""
        frame = np.asarray(frame)
        if frame.shape != self.input_shape:
            frame = self._resize(frame, self.input_shape, bilinear=True)
        x = frame.astype(np.float32) / 255.0
        if self.quantized:
            scale, zero = self.input_quant
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        return x.astype(self.input_dtype)[None, :, :, None]

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Dequantize the output to float probabilities (H, W, C)."""
        if self.output_dtype.kind in "iu":
            scale, zero = self.output_quant
            return (raw.astype(np.float32) - zero) * scale
        return raw.astype(np.float32)

    def segment(self, frame: np.ndarray, with_probabilities: bool = False) -> Segmentation:
        """Segment one uint8 grayscale frame (any size)."""
        t0 = time.perf_counter_ns()
        tensor = self.preprocess(frame)
        t1 = time.perf_counter_ns()
        self.interpreter.set_tensor(self.input_index, tensor)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._output["index"])[0]
        t2 = time.perf_counter_ns()
        # argmax of int8 scores equals argmax of the probabilities (monotonic dequantization)
        labels = raw.argmax(axis=-1).astype(np.uint8)
        probs = self.probabilities(raw) if with_probabilities else None
        if labels.shape != np.asarray(frame).shape[:2]:
            labels = self._resize(labels, np.asarray(frame).shape[:2], bilinear=False)
        t3 = time.perf_counter_ns()
        timings = {
            "preprocess": (t1 - t0) / 1e3,
            "invoke": (t2 - t1) / 1e3,
            "postprocess": (t3 - t2) / 1e3,
        }
        return Segmentation(labels, probs, timings)

    def _resize(self, array: np.ndarray, size: tuple[int, int], bilinear: bool) -> np.ndarray:
        from PIL import Image

        if not self._warned_resize:
            log.warning(
                "frames are %s, the model takes %s: resizing (warned once)",
                array.shape,
                tuple(size),
            )
            self._warned_resize = True
        method = Image.BILINEAR if bilinear else Image.NEAREST
        return np.asarray(Image.fromarray(array).resize((size[1], size[0]), method))
