"""The ONNX Runtime peer: the float32 .tflite translated to ONNX, then quantized the way ONNX
Runtime quantizes (QDQ, uint8 activations, int8 per-channel weights), for ``edge-seg bench``'s
peer column.

A peer only means something on the same graph: this is a translation of the converted
float32 .tflite (the rover graph, BatchNorms already folded), op for op, not a second export
from Keras. TFLite is NHWC and ONNX's convolutions NCHW: every 4-D tensor is kept NCHW where an
op needs it, with a Transpose where a layout-bound op (RESHAPE, TILE) meets one and at the
model's input and output, which stay NHWC so that frames go in as they do into the .tflite
(ONNX Runtime's optimizer folds those two away). The int8 model is
calibrated on the same frames as the .tflite's (``trainer convert --onnx``).

Needs ``onnx`` and ``onnxruntime`` (the ``[peers]`` extra; never on the rover) and LiteRT's
flatbuffer schema module to read the .tflite.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

OPSET = 17
_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)
_NCHW_AXIS = (0, 2, 3, 1)  # NHWC axis -> the same axis in NCHW
QUANTIZATION = "QDQ: uint8 activations (asymmetric), int8 per-channel weights, MinMax calibration"


class UnsupportedModel(ValueError):
    """A .tflite this translator cannot express in ONNX (an op it does not know)."""


def tflite_to_onnx(tflite: bytes, metadata: bytes | None = None):
    """Translate a float32 .tflite into an ONNX model with the same NHWC input and output.

    Args:
        tflite: the flatbuffer.
        metadata: a marsseg-edge metadata document, stored in the ONNX model's
            ``metadata_props`` (key ``marsseg_edge``) as the .tflite stores it.

    Returns:
        An ``onnx.ModelProto``, checked by ``onnx.checker`` with shape inference (structure
        and shapes; the numbers are tested against LiteRT in tests/test_onnx_peer.py).

    Raises:
        UnsupportedModel: for an op outside :data:`HANDLERS` (the message lists them), an
            integer model, or more than one subgraph, input or output.
    """
    import onnx
    from ai_edge_litert import schema_py_generated as fb

    from edge.contract.metadata import METADATA_KEY

    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(tflite, 0))
    graph = model.subgraphs[0] if len(model.subgraphs or []) == 1 else None
    if graph is None or len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedModel("one subgraph with one input and one output is supported")
    codes = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    build = _Builder(model, fb)
    first = graph.tensors[graph.inputs[0]]
    if first.type != fb.TensorType.FLOAT32:
        raise UnsupportedModel("translate the float32 model; ONNX Runtime quantizes it itself")
    build.where[graph.inputs[0]] = {"nhwc": "input"}
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = codes.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
        handler = HANDLERS.get(name)
        if handler is None:
            raise UnsupportedModel(
                f"op {name} has no ONNX translation here; supported: {', '.join(sorted(HANDLERS))} "
                "(the rover graph, `trainer convert --graph rover`, uses only these)"
            )
        handler(build, list(op.inputs), list(op.outputs), op.builtinOptions)
    last = build.get(graph.outputs[0], "nhwc")
    build.nodes.append(onnx.helper.make_node("Identity", [last], ["output"], name="output"))

    def value(name, index):
        shape = [int(v) for v in graph.tensors[index].shape]
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)

    onnx_graph = onnx.helper.make_graph(
        build.nodes,
        "marsseg",
        [value("input", graph.inputs[0])],
        [value("output", graph.outputs[0])],
        build.initializers,
    )
    out = onnx.helper.make_model(
        onnx_graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        producer_name="marsseg-edge",
    )
    out.ir_version = 8  # opset 17's; every ONNX Runtime since 1.13 reads it
    if metadata is not None:
        entry = out.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata.decode()
    try:
        onnx.checker.check_model(out, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise UnsupportedModel(f"the translation is not a valid ONNX model: {err}") from err
    return out


class _Builder:
    """ONNX nodes and initializers for a TFLite graph, tracking each tensor's layout(s)."""

    def __init__(self, model, fb):
        self.model, self.fb = model, fb
        self.graph = model.subgraphs[0]
        self.nodes: list = []
        self.initializers: list = []
        # TFLite tensor index -> {"nhwc" | "nchw": ONNX name}; tensors of rank != 4 are "nhwc"
        self.where: dict[int, dict[str, str]] = {}
        self._count = 0

    def rank(self, index: int) -> int:
        return len(self.graph.tensors[index].shape)

    def shape(self, index: int) -> list[int]:
        return [int(v) for v in self.graph.tensors[index].shape]

    def array(self, index: int) -> np.ndarray | None:
        """A constant tensor's value (None for an activation)."""
        t = self.graph.tensors[index]
        data = self.model.buffers[t.buffer].data
        if data is None or len(data) == 0:
            return None
        dtypes = {
            self.fb.TensorType.FLOAT32: np.float32,
            self.fb.TensorType.INT32: np.int32,
            self.fb.TensorType.INT64: np.int64,
        }
        if t.type not in dtypes:
            names = {v: k for k, v in vars(self.fb.TensorType).items() if not k.startswith("_")}
            raise UnsupportedModel(
                f"constant {t.name!r} is {names.get(t.type, t.type)}; float32, int32 or int64 only"
            )
        return np.frombuffer(bytes(data), dtypes[t.type]).reshape(self.shape(index))

    def constant_input(self, index: int, what: str) -> np.ndarray:
        """An input that must be a constant (weights, axes, paddings...)."""
        value = self.array(index)
        if value is None:
            raise UnsupportedModel(f"{what} computed at run time is not translated")
        return value

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, value: np.ndarray, hint: str) -> str:
        import onnx

        name = self.fresh(hint)
        self.initializers.append(onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        import onnx

        out = self.fresh(hint or op_type.lower())
        self.nodes.append(onnx.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def get(self, index: int, layout: str) -> str:
        """The tensor's ONNX name in ``layout`` (a Transpose added once where needed)."""
        if self.rank(index) != 4:
            layout = "nhwc"
        have = self.where.get(index)
        if have is None:
            value = self.array(index)
            if value is None:
                raise UnsupportedModel(f"tensor {index} is used before any op writes it")
            if value.ndim == 4 and layout == "nchw":
                value = value.transpose(_TO_NCHW)
            have = self.where[index] = {layout: self.constant(value, "const")}
        if layout not in have:
            source = have["nchw" if layout == "nhwc" else "nhwc"]
            perm = _TO_NCHW if layout == "nchw" else _TO_NHWC
            have[layout] = self.node("Transpose", [source], f"to_{layout}", perm=list(perm))
        return have[layout]

    def layout_of(self, index: int) -> str:
        """Where an elementwise op should work: NCHW for a 4-D tensor already there."""
        have = self.where.get(index, {})
        return "nchw" if self.rank(index) == 4 and ("nchw" in have or not have) else "nhwc"

    def put(self, index: int, name: str, layout: str, fused: int = 0) -> None:
        """Record an op's output, after its fused activation."""
        af = self.fb.ActivationFunctionType
        if fused == af.RELU:
            name = self.node("Relu", [name])
        elif fused == af.RELU6:
            name = self.node("Clip", [name, self._scalar(0.0), self._scalar(6.0)], "relu6")
        elif fused != af.NONE:
            raise UnsupportedModel(f"fused activation {fused} is not translated")
        self.where[index] = {layout if self.rank(index) == 4 else "nhwc": name}

    def _scalar(self, v: float) -> str:
        return self.constant(np.array(v, np.float32), "scalar")

    def pads(self, in_hw, kernel_hw, strides, dilations, padding) -> list[int]:
        """TFLite's SAME/VALID as ONNX's explicit pads [top, left, bottom, right]."""
        if padding == self.fb.Padding.VALID:
            return [0, 0, 0, 0]
        before, after = [], []
        for size, k, s, d in zip(in_hw, kernel_hw, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            before.append(total // 2)
            after.append(total - total // 2)
        return before + after


def _conv(b: _Builder, ins, outs, opt, depthwise: bool = False) -> None:
    x = b.get(ins[0], "nchw")
    w = b.constant_input(ins[1], "a conv's weights")  # (O, kh, kw, I); depthwise (1, kh, kw, C*m)
    kh, kw = w.shape[1:3]
    channels = b.shape(ins[0])[3]
    if depthwise:
        groups = channels
        w = w.transpose(3, 0, 1, 2)  # -> (C * m, 1, kh, kw)
    else:
        if w.shape[3] != channels:
            raise UnsupportedModel(
                f"a grouped CONV_2D ({channels} channels, {w.shape[3]} per filter)"
            )
        groups = 1
        w = w.transpose(_TO_NCHW)  # -> (O, I, kh, kw)
    inputs = [x, b.constant(w, "weights")]
    if len(ins) > 2 and ins[2] >= 0:
        inputs.append(b.get(ins[2], "nhwc"))
    strides = [opt.strideH, opt.strideW]
    dilations = [opt.dilationHFactor, opt.dilationWFactor]
    pads = b.pads(b.shape(ins[0])[1:3], (kh, kw), strides, dilations, opt.padding)
    y = b.node(
        "Conv", inputs, "conv", strides=strides, dilations=dilations, pads=pads, group=groups
    )
    b.put(outs[0], y, "nchw", opt.fusedActivationFunction)


def _pool(op_type: str) -> Callable:
    def handler(b: _Builder, ins, outs, opt) -> None:
        kernel, strides = [opt.filterHeight, opt.filterWidth], [opt.strideH, opt.strideW]
        pads = b.pads(b.shape(ins[0])[1:3], kernel, strides, (1, 1), opt.padding)
        y = b.node(
            op_type, [b.get(ins[0], "nchw")], op_type.lower(), kernel_shape=kernel,
            strides=strides, pads=pads,
        )  # fmt: skip
        b.put(outs[0], y, "nchw", opt.fusedActivationFunction)

    return handler


def _axis(b: _Builder, index: int, axis: int) -> int:
    rank = b.rank(index)
    axis %= rank
    return _NCHW_AXIS[axis] if rank == 4 else axis


def _concat(b: _Builder, ins, outs, opt) -> None:
    y = b.node("Concat", [b.get(i, "nchw") for i in ins], axis=_axis(b, outs[0], opt.axis))
    b.put(outs[0], y, "nchw", opt.fusedActivationFunction)


def _elementwise(op_type: str) -> Callable:
    def handler(b: _Builder, ins, outs, opt) -> None:
        layout = "nchw" if b.rank(outs[0]) == 4 else "nhwc"
        names = []
        for i in ins:
            if layout == "nhwc" or b.rank(i) == 4:
                names.append(b.get(i, layout))
                continue
            # a lower-rank operand broadcasts against NHWC's trailing axes: make it a 4-D NHWC
            # tensor ((C,) -> (1, 1, 1, C)), then NCHW
            shape4 = (1,) * (4 - b.rank(i)) + tuple(b.shape(i))
            value = b.array(i) if i not in b.where else None
            if value is not None:
                value = value.reshape(shape4).transpose(_TO_NCHW)
                names.append(b.constant(np.ascontiguousarray(value), "const"))
            else:
                flat = b.constant(np.array(shape4, np.int64), "shape")
                as4 = b.node("Reshape", [b.get(i, "nhwc"), flat], "to_rank4")
                names.append(b.node("Transpose", [as4], "to_nchw", perm=list(_TO_NCHW)))
        fused = getattr(opt, "fusedActivationFunction", 0) if opt is not None else 0
        b.put(outs[0], b.node(op_type, names), layout, fused)

    return handler


def _unary(op_type: str) -> Callable:
    def handler(b: _Builder, ins, outs, opt) -> None:
        layout = b.layout_of(ins[0])
        b.put(outs[0], b.node(op_type, [b.get(ins[0], layout)]), layout)

    return handler


def _reduce(op_type: str) -> Callable:
    def handler(b: _Builder, ins, outs, opt) -> None:
        axes = [int(a) for a in np.atleast_1d(b.constant_input(ins[1], "reduction axes"))]
        keep = bool(getattr(opt, "keepDims", False))
        # keeping the dims, NCHW holds; dropping them, NHWC order decides the result's order
        layout = "nchw" if keep and b.rank(ins[0]) == 4 else "nhwc"
        if layout == "nchw":
            axes = [_axis(b, ins[0], a) for a in axes]
        y = b.node(op_type, [b.get(ins[0], layout)], axes=axes, keepdims=int(keep))
        b.put(outs[0], y, layout)

    return handler


def _reshape(b: _Builder, ins, outs, opt) -> None:
    shape = b.constant(np.array(b.shape(outs[0]), np.int64), "shape")
    b.put(outs[0], b.node("Reshape", [b.get(ins[0], "nhwc"), shape]), "nhwc")


def _tile(b: _Builder, ins, outs, opt) -> None:
    repeats = b.constant(b.constant_input(ins[1], "TILE multiples").astype(np.int64), "repeats")
    b.put(outs[0], b.node("Tile", [b.get(ins[0], "nhwc"), repeats]), "nhwc")


def _pad(b: _Builder, ins, outs, opt) -> None:
    paddings = b.constant_input(ins[1], "PAD paddings").astype(np.int64)  # (rank, 2), NHWC
    layout = "nchw" if b.rank(ins[0]) == 4 else "nhwc"
    if layout == "nchw":
        paddings = paddings[list(_TO_NCHW)]
    pads = b.constant(np.concatenate([paddings[:, 0], paddings[:, 1]]), "pads")
    b.put(outs[0], b.node("Pad", [b.get(ins[0], layout), pads], mode="constant"), layout)


def _depth_to_space(b: _Builder, ins, outs, opt) -> None:
    # TFLite's channel order (block row, block column, channel) is ONNX's DCR mode
    y = b.node("DepthToSpace", [b.get(ins[0], "nchw")], blocksize=opt.blockSize, mode="DCR")
    b.put(outs[0], y, "nchw")


def _softmax(b: _Builder, ins, outs, opt) -> None:
    if opt.beta != 1.0:
        raise UnsupportedModel(f"SOFTMAX with beta {opt.beta} is not translated")
    axis = _axis(b, ins[0], -1)
    layout = "nchw" if b.rank(ins[0]) == 4 else "nhwc"
    b.put(outs[0], b.node("Softmax", [b.get(ins[0], layout)], axis=axis), layout)


HANDLERS: dict[str, Callable] = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": lambda b, i, o, opt: _conv(b, i, o, opt, depthwise=True),
    "MAX_POOL_2D": _pool("MaxPool"),
    "AVERAGE_POOL_2D": _pool("AveragePool"),
    "CONCATENATION": _concat,
    "ADD": _elementwise("Add"),
    "MUL": _elementwise("Mul"),
    "SUB": _elementwise("Sub"),
    "LOGISTIC": _unary("Sigmoid"),
    "RELU": _unary("Relu"),
    "MEAN": _reduce("ReduceMean"),
    "REDUCE_MAX": _reduce("ReduceMax"),
    "RESHAPE": _reshape,
    "TILE": _tile,
    "PAD": _pad,
    "DEPTH_TO_SPACE": _depth_to_space,
    "SOFTMAX": _softmax,
}


def quantize(float_model: Path, calibration: np.ndarray, out: Path) -> None:
    """ONNX Runtime's static quantization of ``float_model`` into ``out``.

    Args:
        float_model: the float32 .onnx (:func:`tflite_to_onnx`).
        calibration: model inputs (N, H, W, 1) float32, the frames the .tflite was calibrated
            with.
        out: the int8 (QDQ) .onnx.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Frames(CalibrationDataReader):
        def __init__(self):
            self._frames = iter(calibration)

        def get_next(self):
            frame = next(self._frames, None)
            return None if frame is None else {"input": frame[None].astype(np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        # ONNX Runtime's recommended preparation: shapes inferred, graph optimized (layout
        # transposes folded into constants) before quantization
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Frames(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def export_onnx(tflite_float32: Path, calibration: np.ndarray, out_dir: Path) -> dict[str, Path]:
    """Write ``model_float32.onnx`` and ``model_int8.onnx`` for a converted float32 .tflite,
    with its metadata (precision and runtime updated) embedded.

    Args:
        tflite_float32: ``model_float32.tflite`` from ``trainer convert``.
        calibration: (N, H, W) or (N, H, W, 1) float32 model inputs, the int8 .tflite's
            calibration frames.
        out_dir: created if missing.

    Returns:
        {precision: path}.
    """
    from edge.contract.metadata import read_model_metadata
    from edge.io.sinks import atomic_write_bytes

    tflite_float32 = Path(tflite_float32)
    meta = read_model_metadata(tflite_float32)
    calibration = np.asarray(calibration, np.float32)
    if calibration.ndim == 3:
        calibration = calibration[..., None]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def document(precision: str, name: str) -> bytes | None:
        if meta is None:
            return None
        doc = meta.document()
        doc.update(
            precision=precision,
            file=name,
            runtime="onnxruntime",
            translated_from=tflite_float32.name,
            quantization=QUANTIZATION if precision == "int8" else None,
            ops=None,
        )
        if precision == "int8":
            doc["calibration"] = {"frames": len(calibration), "as": "the .tflite's calibration"}
        return json.dumps(doc, indent=2, sort_keys=True).encode()

    produced = {"float32": out_dir / "model_float32.onnx", "int8": out_dir / "model_int8.onnx"}
    float_model = tflite_to_onnx(
        tflite_float32.read_bytes(), document("float32", produced["float32"].name)
    )
    with tempfile.TemporaryDirectory() as tmp:  # both made before either replaces a file
        staged = {p: Path(tmp) / path.name for p, path in produced.items()}
        staged["float32"].write_bytes(float_model.SerializeToString())
        quantize(staged["float32"], calibration, staged["int8"])
        _set_metadata(staged["int8"], document("int8", produced["int8"].name))
        for precision, path in produced.items():
            atomic_write_bytes(path, staged[precision].read_bytes())
    return produced


def _set_metadata(path: Path, document: bytes | None) -> None:
    """Replace the marsseg-edge entry of an .onnx's metadata_props."""
    import onnx

    from edge.contract.metadata import METADATA_KEY

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if document is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, document.decode()
    onnx.save(model, str(path))


__all__ = [
    "HANDLERS",
    "QUANTIZATION",
    "UnsupportedModel",
    "export_onnx",
    "quantize",
    "tflite_to_onnx",
]
