"""Segment one grayscale frame with a .tflite model, timing every stage."""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.contract.metadata import ModelMetadata, default_metadata, read_model_metadata
from edge.runtimes import model_format
from edge.runtimes.interpreter import KernelChoice, choose_kernels, make_interpreter

log = logging.getLogger(__name__)
OUTPUT_KINDS = ("probabilities", "logits")


@dataclass
class Segmentation:
    """The result for one frame: the class map at the frame's size, the same at the model's size
    with each pixel's top probability there (in 1/255 steps), optionally the probabilities at the
    model's size, and stage timings (us).

    ``top_probability`` (at the frame's size) is made when first asked for: the rover's region
    analysis reads the model-size maps through :meth:`Segmenter.pixel_map` instead, which gives
    the same figures at a quarter of the pixels.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    timings_us: dict[str, float] = field(default_factory=dict)
    model_labels: np.ndarray | None = None  # (h, w) at the model's size
    model_top: np.ndarray | None = None  # (h, w) uint8: top probability x 255, rounded
    restore: object = None  # model-size map -> frame-size map (fill for a crop's margins)
    # (h, w) uint8: the probability x 255 of the class asked for (segment's class_probability)
    model_class_probability: np.ndarray | None = None

    @functools.cached_property
    def top_probability(self) -> np.ndarray | None:
        """Each frame pixel's top probability (float32, 1/255 steps; 0 outside a crop)."""
        if self.model_top is None:
            return None
        top = self.model_top if self.restore is None else self.restore(self.model_top, 0)
        return top.astype(np.float32) / 255.0


class Segmenter:
    """Runs a segmentation .tflite on uint8 grayscale frames of any size.

    Everything about the model comes from the model: the input and output quantization from its
    tensors, and the classes, colours and preprocessing from its metadata
    (:mod:`edge.contract.metadata`). A frame is prepared exactly as training prepared its frames
    (:class:`edge.contract.preprocess.Preprocessing`), scaled to [0, 1], quantized when the input is
    integer, and the class map is brought back to the frame's own size.

    Args:
        model_path: the .tflite (or an ``.onnx`` peer of ``edge-seg bench``, run with ONNX
            Runtime: :class:`edge.runtimes.interpreter.OnnxInterpreter`).
        threads: CPU threads.
        runtime: ``auto``, ``litert`` or ``tflite-runtime`` (an ``.onnx`` takes ``auto``).
        xnnpack: use the XNNPACK delegate (when ``kernels`` is not given).
        kernels: ``auto``, ``xnnpack``, ``xnnpack-no-amx`` or ``builtin``
            (:func:`edge.runtimes.interpreter.choose_kernels`); what ran is in :attr:`execution`.
        flip_average: segment each frame twice, as it is and mirrored left to right, and decide
            on the mean of the two passes' logits (the training's flip, at inference: a second
            opinion for a second invoke; ``invoke`` times both). Needs a logits output.

    Raises:
        ValueError: if the model has more than one input, its input is not (1, H, W, 1), its
            output not (1, H, W, C), its metadata disagrees with its tensors, or
            ``flip_average`` is asked of a model whose output is not logits.
    """

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 1,
        runtime: str = "auto",
        xnnpack: bool = True,
        kernels: str | None = None,
        flip_average: bool = False,
    ):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ValueError(f"no model at {self.model_path}")
        kernels = kernels or ("xnnpack" if xnnpack else "builtin")
        if model_format(self.model_path).own_kernels:  # the benchmark's peer: its own kernels
            choice = KernelChoice("onnxruntime-cpu", "ONNX Runtime peer (its CPU provider)")
        else:
            choice = choose_kernels(kernels, self.model_path, threads, runtime)
        self.interpreter, self.runtime = make_interpreter(
            model_path, threads, runtime, choice.kernels != "builtin"
        )
        # the execution path as it is now that XNNPACK has started (AMX granted or not)
        self.execution = choice.record()
        self.threads = threads
        name = self.model_path.name
        inputs, outputs = (
            self.interpreter.get_input_details(),
            self.interpreter.get_output_details(),
        )
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{name}: {len(inputs)} input(s) and {len(outputs)} output(s); a segmentation "
                "model has one grayscale input and one class-score output"
            )
        self._input, self._output = inputs[0], outputs[0]
        shape_in = tuple(int(v) for v in self._input["shape"])
        shape_out = tuple(int(v) for v in self._output["shape"])
        if len(shape_in) != 4 or shape_in[0] != 1 or shape_in[3] != 1:
            raise ValueError(
                f"{name}: input shape {shape_in}, expected (1, H, W, 1) grayscale; "
                "export with a fixed batch of 1 (trainer convert)"
            )
        if len(shape_out) != 4 or shape_out[1:3] != shape_in[1:3] or shape_out[3] < 2:
            raise ValueError(
                f"{name}: output shape {shape_out}, expected (1, {shape_in[1]}, {shape_in[2]}, C) "
                "class scores"
            )
        self.input_shape = shape_in[1:3]
        self.num_classes = shape_out[3]
        self.metadata = self._metadata()
        self.labels = self.metadata.labels
        self.preprocessing = self.metadata.preprocessing
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_quant = tuple(self._input["quantization"])
        self.output_quant = tuple(self._output["quantization"])
        # what the output channels hold: "probabilities" (softmax in the graph, the models of
        # before the rover graph) or "logits" (the rover graph: softmax only where asked)
        self.output_kind = self.metadata.info.get("output", "probabilities")
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError(
                f"{name}: its metadata says output {self.output_kind!r}; "
                f"valid: {', '.join(OUTPUT_KINDS)}"
            )
        # the output's levels spent on the logits that decide a class (trainer/logit_window.py):
        # it is relu6 of the logits mapped from [low, high] onto [0, 6]; None: the logits whole
        self.logit_window = self._logit_window()
        if flip_average and self.output_kind != "logits":
            raise ValueError(
                f"{name}: flip averaging needs logits, and this model's output is "
                f"{self.output_kind} (a rover graph from `trainer convert` has logits)"
            )
        self.flip_average = flip_average
        # grey level -> input value, computed once: quantizing a frame is then one table lookup
        self._lut = self._input_table()

    def _metadata(self) -> ModelMetadata:
        meta = read_model_metadata(self.model_path)
        name = self.model_path.name
        if meta is None:
            log.warning(
                "%s carries no marsseg-edge metadata: classes are named class_0..class_%d, label 0 "
                "is unscored, no class is a hazard, frames are resized whole (convert with "
                "`trainer convert` to embed the real ones)",
                name,
                self.num_classes - 1,
            )
            return default_metadata(*self.input_shape, self.num_classes)
        if meta.preprocessing.size != self.input_shape:
            raise ValueError(
                f"{name}: its metadata says {meta.preprocessing.height}x{meta.preprocessing.width} "
                f"input but the tensor is {self.input_shape[0]}x{self.input_shape[1]}"
            )
        if meta.labels.num_classes != self.num_classes:
            raise ValueError(
                f"{name}: its metadata names {meta.labels.num_classes} classes but the output has "
                f"{self.num_classes} channels"
            )
        return meta

    def _logit_window(self) -> tuple[float, float] | None:
        window = self.metadata.info.get("logit_window")
        if window is None:
            return None
        try:
            low, high = float(window["low"]), float(window["high"])
        except (TypeError, KeyError, ValueError):
            low = high = float("nan")
        if not (math.isfinite(low) and math.isfinite(high) and high > low) or (
            self.output_kind != "logits"
        ):
            raise ValueError(f"{self.model_path.name}: its metadata's logit_window {window!r} is "
                             "not {low, high} with low < high on a logits output")  # fmt: skip
        return low, high

    @property
    def _logit_gain(self) -> np.float32:
        """Logits per unit of the dequantized output (the window's span over relu6's 6)."""
        if self.logit_window is None:
            return np.float32(1.0)
        low, high = self.logit_window
        return np.float32((high - low) / 6.0)

    def _input_table(self) -> np.ndarray:
        x = np.arange(256, dtype=np.float32) * np.float32(self.preprocessing.scale)
        if self.quantized:
            scale, zero = self.input_quant
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        return x.astype(self.input_dtype)

    @property
    def input_index(self) -> int:
        """The interpreter's input tensor index (for timing ``invoke`` alone)."""
        return self._input["index"]

    @property
    def quantized(self) -> bool:
        """Whether the input tensor is integer (an ONNX QDQ model's is float: see precision)."""
        return self.input_dtype.kind in "iu"

    @property
    def precision(self) -> str:
        """``int8``, ``float32``, ... as the metadata says, else from the input tensor."""
        return self.metadata.info.get("precision") or ("int8" if self.quantized else "float32")

    @functools.cached_property
    def _exp_steps(self) -> np.ndarray:
        """exp(-k * scale) for k = 0..255: the softmax terms of int8 logits k steps below the top."""
        return self._exp_table(1)

    @functools.cached_property
    def _exp_half_steps(self) -> np.ndarray:
        """The same for the sum of two passes' int8 logits (k = 0..510, half a step each)."""
        return self._exp_table(2)

    def _exp_table(self, passes: int) -> np.ndarray:
        scale = np.float32(self.output_quant[0]) if self.output_quant else np.float32(1.0)
        scale *= self._logit_gain / np.float32(passes)
        return np.exp(-np.arange(255 * passes + 1, dtype=np.float32) * scale).astype(np.float32)

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """uint8 (any size) frame -> the model's input tensor (1, H, W, 1)."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 grey levels, got {frame.dtype}")
        return self._lut[self.preprocessing.prepare(frame)][None, :, :, None]

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """The output tensor as float32 probabilities or logits (a windowed output's logits are
        clipped to the window)."""
        values = raw.astype(np.float32)
        if self.output_dtype.kind in "iu":
            scale, zero = self.output_quant
            values = (values - zero) * np.float32(scale)
        if self.logit_window is not None:
            values = np.float32(self.logit_window[0]) + values * self._logit_gain
        return values

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """The output (H, W, C) as float32 class probabilities."""
        values = self.dequantize(raw)
        if self.output_kind == "probabilities":
            return values
        exp = np.exp(values - values.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)

    def top_probability(self, raw: np.ndarray) -> np.ndarray:
        """Each pixel's probability of its top class (H, W), float32."""
        if self.output_kind == "probabilities":
            return self.dequantize(raw.max(axis=-1))
        if self.output_dtype.kind in "iu" and raw.dtype.itemsize == 1:
            # int8 logits: exp of a step count is a 256-entry table, about 4x cheaper than exp
            # over every score of every pixel
            return self._top_from_steps(raw, raw.max(axis=-1))[0]
        values = self.dequantize(raw)
        # softmax at the argmax: 1 / sum_c exp(l_c - l_max), without the full softmax
        return 1.0 / np.exp(values - values.max(axis=-1, keepdims=True)).sum(axis=-1)

    def segment(
        self,
        frame: np.ndarray,
        with_probabilities: bool = False,
        with_confidence: bool = False,
        class_probability: int | None = None,
    ) -> Segmentation:
        """Segment one uint8 grayscale frame (any size); the class map has the frame's size.

        Args:
            frame: uint8 (H, W).
            with_probabilities: also return the probabilities (at the model's size).
            with_confidence: also return each pixel's top probability (at the frame's size, to
                1/255).
            class_probability: also return this class's probability at the model's size, to
                1/255 (the rover's rocks: a hazard detector takes a pixel as rock at a lower
                probability than the arg max would).
        """
        frame = np.asarray(frame)
        t0 = time.perf_counter_ns()
        tensor = self.preprocess(frame)
        t1 = time.perf_counter_ns()
        raw = self._invoke(tensor)
        passes = 1
        if self.flip_average:
            raw, passes = self._with_mirror(raw, tensor)
        t2 = time.perf_counter_ns()
        wanted = with_confidence or class_probability is not None
        small, top, chosen = self._classes(raw, wanted, class_probability, passes)
        if passes > 1 and with_probabilities:
            raw = raw.astype(np.float32) / passes  # the mean (dequantize is affine)
        probs = self.probabilities(raw) if with_probabilities else None
        if class_probability is not None:
            if chosen is None:  # float outputs: from the softmax
                chosen = (probs if probs is not None else self.probabilities(raw))[
                    ..., class_probability
                ]
            chosen = np.clip(np.rint(chosen * 255.0), 0, 255).astype(np.uint8)
        if top is not None and not with_confidence:
            top = None
        if top is not None:  # in 1/255 steps
            top = np.clip(np.rint(top * 255.0), 0, 255).astype(np.uint8)
        restore = None
        labels = small
        if small.shape != frame.shape[:2]:
            shape = frame.shape

            def restore(small_map: np.ndarray, fill: int) -> np.ndarray:
                return self.preprocessing.restore(small_map, shape, fill=fill)

            labels = restore(small, self.labels.ignore or 0)
        t3 = time.perf_counter_ns()
        timings = {
            "preprocess": (t1 - t0) / 1e3,
            "invoke": (t2 - t1) / 1e3,
            "postprocess": (t3 - t2) / 1e3,
        }
        return Segmentation(labels, probs, timings, small, top, restore, chosen)

    def _invoke(self, tensor: np.ndarray) -> np.ndarray:
        """One inference: the output (H, W, C), a copy the next invoke leaves alone."""
        self.interpreter.set_tensor(self.input_index, tensor)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output["index"])[0]

    def _with_mirror(self, raw: np.ndarray, tensor: np.ndarray) -> tuple[np.ndarray, int]:
        """``raw`` combined with the mirrored frame's output, mirrored back, and the passes in
        it: 8-bit logits as their int16 sum (exact; :meth:`_classes` reads it in half steps),
        any other output as the mean (which the generic path reads as one pass)."""
        mirrored = self._invoke(np.ascontiguousarray(tensor[:, :, ::-1]))[:, ::-1]
        if raw.dtype.kind in "iu" and raw.dtype.itemsize == 1 and raw.shape[-1] <= 255:
            total = raw.astype(np.int16)
            total += mirrored
            return total, 2
        return (raw.astype(np.float32) + mirrored) * np.float32(0.5), 1

    def top_class(
        self, raw: np.ndarray, with_confidence: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The class map (uint8) and, if asked, each pixel's top probability (float32) of an
        output (H, W, C).

        The arg max of the scores is the arg max of the probabilities (dequantization and
        softmax are monotonic); ties go to the lower class, as ``argmax`` gives them. For int8
        logits both come from one pass over the class planes: a running maximum with the class
        that set it, then the softmax's terms from a table (:meth:`top_probability`).
        """
        labels, top, _ = self._classes(raw, with_confidence)
        return labels, top

    def _classes(
        self, raw: np.ndarray, with_confidence: bool, index: int | None = None, passes: int = 1
    ):
        """:meth:`top_class`, and for int8 logits class ``index``'s probability from the same
        pass (its softmax term times the top probability); None otherwise. ``passes`` 2: ``raw``
        is the int16 sum of two passes' int8 logits (:meth:`_with_mirror`)."""
        int8_logits = (
            self.output_kind == "logits" and self.output_dtype.kind in "iu"
            and raw.dtype.itemsize == passes and raw.shape[-1] <= 255
        )  # fmt: skip
        if not int8_logits:
            labels = raw.argmax(axis=-1).astype(np.uint8)
            return labels, self.top_probability(raw) if with_confidence else None, None
        best = raw[..., 0].copy()
        labels = np.zeros(best.shape, np.uint8)
        for c in range(1, raw.shape[-1]):
            plane = raw[..., c]
            np.putmask(labels, plane > best, c)  # strictly greater: the first maximum wins
            np.maximum(best, plane, out=best)
        if not with_confidence:
            return labels, None, None
        top, term = self._top_from_steps(raw, best, index, passes)
        return labels, top, None if term is None else term * top

    def _top_from_steps(
        self, raw: np.ndarray, best: np.ndarray, index: int | None = None, passes: int = 1
    ):
        """``(1 / sum_c exp(l_c - l_max), exp(l_index - l_max) or None)`` for int8 logits
        ``raw`` (H, W, C) and their maximum ``best`` (H, W): l_max - l_c is a step count in
        0..255 (0..510 half steps for the sum of two passes), so each term is a lookup."""
        table = self._exp_steps if passes == 1 else self._exp_half_steps
        best = best.astype(np.int16)
        total = np.zeros(best.shape, np.float32)
        kept = None
        for c in range(raw.shape[-1]):
            term = table.take(best - raw[..., c])
            total += term
            if c == index:
                kept = term
        return 1.0 / total, kept

    def pixel_map(self, frame_shape: tuple[int, ...]) -> np.ndarray:
        """For each pixel of a frame of this shape, the model pixel (a flat index) whose class it
        gets, or -1 outside a centre crop: the restore of :meth:`segment` as an index map, made
        once per frame size (the last two kept)."""
        key = (int(frame_shape[0]), int(frame_shape[1]))
        cache = self.__dict__.setdefault("_pixel_maps", {})
        if key not in cache:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))
            h, w = self.input_shape
            index = np.arange(h * w, dtype=np.int32).reshape(h, w)
            cache[key] = self.preprocessing.restore(index, key, fill=-1)
        return cache[key]
