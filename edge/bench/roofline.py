"""The machine's limit: one large convolution as a .tflite, written without TensorFlow.

``edge-seg bench`` times it beside the models, in the same run and with the same kernels, and
reports each model's GMAC/s against it: how much of what this CPU and runtime can do for a conv
the model gets, and its floor (its MACs at that rate). The model is written with the flatbuffers
object API of LiteRT's own schema module (``ai_edge_litert.schema_py_generated``, installed
with LiteRT), so that a board builds it with the edge dependencies only.
"""

from __future__ import annotations

import numpy as np

# The reference conv: 3x3, stride 1, 'same', channels -> channels over (1, side, side, channels).
# 64x64x256 -> 256 is 2.4 G MACs: long enough to time to 1 %, with rows enough for every
# thread (a 16x16 conv did not scale to 2 threads), 576 KiB of int8 weights.
SIDE, CHANNELS, KERNEL = 64, 256, 3


def describe() -> str:
    """The reference conv in words, for reports."""
    return (
        f"one {KERNEL}x{KERNEL} conv, {SIDE}x{SIDE}x{CHANNELS} -> {CHANNELS} "
        f"({limit_macs() / 1e9:.2f} G MACs)"
    )


def limit_macs(side: int = SIDE, channels: int = CHANNELS, kernel: int = KERNEL) -> int:
    """Multiply-accumulates of one invoke of :func:`conv_model`."""
    return side * side * channels * channels * kernel * kernel


def conv_model(
    precision: str, side: int = SIDE, channels: int = CHANNELS, kernel: int = KERNEL, seed: int = 0
) -> bytes:
    """A one-op CONV_2D .tflite: ``int8`` (per-channel weights, int8 in and out, as the converter
    writes full-integer models) or ``float32``.

    Raises:
        ImportError: without LiteRT's schema module or the flatbuffers package.
        ValueError: for another precision.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    if precision not in ("int8", "float32"):
        raise ValueError(f"precision must be int8 or float32, got {precision!r}")
    rng = np.random.default_rng(seed)
    shape_w = [channels, kernel, kernel, channels]  # (out, kh, kw, in)
    buffers = [fb.BufferT()]  # buffer 0: the empty one every tensor without data points to

    def buffer(array: np.ndarray) -> int:
        b = fb.BufferT()
        b.data = np.frombuffer(array.tobytes(), np.uint8)
        buffers.append(b)
        return len(buffers) - 1

    def tensor(name, shape, dtype, buffer_index=0, scale=None, zero=None, axis=0):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), dtype, buffer_index
        if scale is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(v) for v in np.atleast_1d(scale)]
            q.zeroPoint = [int(v) for v in np.atleast_1d(zero)]
            q.quantizedDimension = axis
            t.quantization = q
        return t

    act = [1, side, side, channels]
    if precision == "int8":
        w = rng.integers(-127, 128, shape_w, dtype=np.int8)
        w_scale = np.full(channels, 0.01, np.float32)
        in_scale = 0.02
        tensors = [
            tensor("input", act, fb.TensorType.INT8, scale=in_scale, zero=-128),
            tensor("weights", shape_w, fb.TensorType.INT8, buffer(w), w_scale, np.zeros(channels)),
            tensor(
                "bias",
                [channels],
                fb.TensorType.INT32,
                buffer(rng.integers(-1000, 1000, channels, dtype=np.int32)),
                in_scale * w_scale,
                np.zeros(channels),
            ),
            tensor("output", act, fb.TensorType.INT8, scale=0.5, zero=0),
        ]
    else:
        w = (rng.standard_normal(shape_w) * 0.05).astype(np.float32)
        tensors = [
            tensor("input", act, fb.TensorType.FLOAT32),
            tensor("weights", shape_w, fb.TensorType.FLOAT32, buffer(w)),
            tensor("bias", [channels], fb.TensorType.FLOAT32, buffer(np.zeros(channels, "f4"))),
            tensor("output", act, fb.TensorType.FLOAT32),
        ]
    options = fb.Conv2DOptionsT()
    options.padding, options.strideW, options.strideH = fb.Padding.SAME, 1, 1
    options.dilationWFactor = options.dilationHFactor = 1
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.Conv2DOptions, options
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.CONV_2D
    code.version = 3 if precision == "int8" else 1  # per-channel int8 conv is version 3
    graph = fb.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0], [3], [op]
    graph.name = "limit"
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], buffers
    model.description = f"marsseg-edge limit conv {side}x{side}x{channels} {kernel}x{kernel}"
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def graph_macs(interpreter) -> int:
    """Multiply-accumulates of one invoke, from a model's graph (before delegation: open it
    with ``xnnpack=False``). Convs, transposed and depthwise convs, fully connected layers and
    batch matmuls are counted as the kernels compute them (zero taps included)."""
    shapes = {
        t["index"]: tuple(int(v) for v in t["shape"]) for t in interpreter.get_tensor_details()
    }
    total = 0
    for op in interpreter._get_ops_details():  # the public API has no op listing
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        out = shapes.get(outs[0], ()) if outs else ()
        if name == "CONV_2D":
            _, kh, kw, cin = shapes[ins[1]]
            total += int(np.prod(out)) * kh * kw * cin
        elif name == "DEPTHWISE_CONV_2D":
            _, kh, kw, _ = shapes[ins[1]]
            total += int(np.prod(out)) * kh * kw
        elif name == "TRANSPOSE_CONV":  # inputs: output shape, weights (O, kh, kw, I), input
            total += int(np.prod(shapes[ins[2]][:3])) * int(np.prod(shapes[ins[1]][:3]))
        elif name == "FULLY_CONNECTED":
            total += int(np.prod(out)) * shapes[ins[1]][-1]
        elif name == "BATCH_MATMUL":
            total += int(np.prod(out)) * shapes[ins[0]][-1]
    return total


__all__ = ["conv_model", "describe", "graph_macs", "limit_macs"]
