"""Where the time of one invoke goes, op by op (``edge-seg bench --op-profile``).

LiteRT's Python interpreter has no op profiler (``benchmark_model --enable_op_profiling`` is a
C++ tool not shipped in the wheels), so each op is measured on its own: the model's flatbuffer is
cut into one-op models (the op, its tensors and its constant buffers, read and written with
LiteRT's own schema module), and each is timed with the same runtime, kernels and threads as the
whole model. The sum of the ops is printed beside the whole model's invoke: where it is close the
profile accounts for the time; what it cannot show is what the whole graph gains from XNNPACK
fusing neighbouring ops or keeping activations in cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def _schema():
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    return flatbuffers, fb


def _op_names(fb) -> dict[int, str]:
    return {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


def single_op_models(model_bytes: bytes) -> list[dict]:
    """One small model per op of the main subgraph: ``{"index", "op", "shape", "inputs",
    "model"}`` (``inputs``: the whole graph's tensors that feed the one-op model's inputs).

    Raises:
        ImportError: without LiteRT's schema module or the flatbuffers package.
    """
    flatbuffers, fb = _schema()
    full = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = full.subgraphs[0]
    names = _op_names(fb)
    out = []
    for index, op in enumerate(graph.operators):
        code = full.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        used = [t for t in [*op.inputs, *op.outputs] if t >= 0]
        order = list(dict.fromkeys(used))
        remap = {old: new for new, old in enumerate(order)}
        buffers = [fb.BufferT()]
        tensors = []
        for old in order:
            tensor = graph.tensors[old]
            source = full.buffers[tensor.buffer] if tensor.buffer < len(full.buffers) else None
            copy = fb.TensorT()
            copy.name, copy.shape, copy.type = tensor.name, tensor.shape, tensor.type
            copy.quantization, copy.shapeSignature = tensor.quantization, tensor.shapeSignature
            copy.buffer = 0
            if source is not None and source.data is not None and len(source.data):
                constant = fb.BufferT()
                constant.data = source.data
                buffers.append(constant)
                copy.buffer = len(buffers) - 1
            tensors.append(copy)
        one = fb.OperatorT()
        one.opcodeIndex = 0
        one.inputs = [remap[t] if t >= 0 else -1 for t in op.inputs]
        one.outputs = [remap[t] for t in op.outputs]
        one.builtinOptionsType, one.builtinOptions = op.builtinOptionsType, op.builtinOptions
        one.customOptions = op.customOptions
        sub = fb.SubGraphT()
        sub.tensors, sub.operators = tensors, [one]
        sub.inputs = [remap[t] for t in op.inputs if t >= 0 and tensors[remap[t]].buffer == 0]
        sub.outputs = list(one.outputs)
        model = fb.ModelT()
        model.version, model.operatorCodes, model.subgraphs = 3, [code], [sub]
        model.buffers, model.description = buffers, f"op {index}"
        builder = flatbuffers.Builder(1 << 16)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        shape = [int(v) for v in graph.tensors[op.outputs[0]].shape] if op.outputs else []
        out.append(
            {"index": index, "op": names.get(builtin, str(builtin)), "shape": shape,
             "inputs": [order[t] for t in sub.inputs], "model": bytes(builder.Output())}
        )  # fmt: skip
    return out


def _time(model: bytes, threads: int, runs: int, warmup: int, xnnpack: bool) -> float:
    """Median ms of ``runs`` invokes of a model given as bytes, random inputs."""
    import tempfile

    from edge.runtimes.interpreter import make_interpreter

    with tempfile.TemporaryDirectory() as tmp:  # the runtimes open files
        path = Path(tmp) / "op.tflite"
        path.write_bytes(model)
        interpreter, _ = make_interpreter(path, threads, "auto", xnnpack)
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        dtype, shape = np.dtype(detail["dtype"]), detail["shape"]
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            value = rng.integers(max(info.min, -128), min(info.max, 127) + 1, shape).astype(dtype)
        else:
            value = rng.standard_normal(shape).astype(dtype)
        interpreter.set_tensor(detail["index"], value)
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        if i >= warmup:
            times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.median(times))


def profile(
    model_path: str | Path,
    threads: int = 1,
    runs: int = 30,
    warmup: int = 5,
    xnnpack: bool = True,
    top: int = 10,
) -> dict:
    """The op profile of one model: time by op type, the ``top`` costliest ops, and the sum of
    the ops against the whole model's invoke (all medians, ms, with these threads).

    Raises:
        ValueError: when an op cannot be run on its own (the message names it).
    """
    model = Path(model_path).read_bytes()
    whole = _time(model, threads, runs, warmup, xnnpack)
    ops = []
    for entry in single_op_models(model):
        try:
            ms = _time(entry["model"], threads, runs, warmup, xnnpack)
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"op {entry['index']} ({entry['op']}) does not run alone: {err}"
            ) from err
        ops.append({"index": entry["index"], "op": entry["op"], "shape": entry["shape"],
                    "ms": round(ms, 4)})  # fmt: skip
    total = sum(o["ms"] for o in ops)
    by_type: dict[str, dict] = defaultdict(lambda: {"count": 0, "ms": 0.0})
    for o in ops:
        by_type[o["op"]]["count"] += 1
        by_type[o["op"]]["ms"] += o["ms"]
    types = sorted(by_type.items(), key=lambda kv: -kv[1]["ms"])
    return {
        "threads": threads,
        "whole_ms": round(whole, 4),
        "ops_sum_ms": round(total, 4),
        "ops": len(ops),
        "by_type": [_type_row(name, v, total) for name, v in types],
        "top": sorted(ops, key=lambda o: -o["ms"])[:top],
    }


def _type_row(name: str, values: dict, total: float) -> dict:
    share = round(values["ms"] / total, 4) if total else 0.0
    return {"op": name, "count": values["count"], "ms": round(values["ms"], 4), "share": share}


def markdown(profiles: dict[str, dict]) -> list[str]:
    """The report's ``## Op profile`` section: one table by type and one of the costliest ops
    per model."""
    lines = [
        "## Op profile",
        "",
        "Each op timed alone (a one-op model with the same runtime, kernels and threads); the sum "
        "of the ops against the whole model's invoke says how much of the time the profile "
        "accounts for (the rest: what XNNPACK gains or loses across ops).",
        "",
    ]
    for name, p in profiles.items():
        lines += [
            f"### {name} ({p['threads']} thread(s)): {p['ops']} ops, sum {p['ops_sum_ms']:.3f} ms, "
            f"whole model {p['whole_ms']:.3f} ms",
            "",
            "| op type | count | ms | share |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {t['op']} | {t['count']} | {t['ms']:.3f} | {100 * t['share']:.1f} % |"
            for t in p["by_type"]
        ]
        lines += ["", "| costliest ops | type | output | ms |", "|---:|---|---|---:|"]
        lines += [
            f"| {o['index']} | {o['op']} | {'x'.join(map(str, o['shape']))} | {o['ms']:.3f} |"
            for o in p["top"]
        ]
        lines.append("")
    return lines


def profile_in_child(model_path: str | Path, threads: int, kernels: str, runs: int = 30) -> dict:
    """:func:`profile` in a fresh process with ``kernels`` (``xnnpack``, ``xnnpack-no-amx`` or
    ``builtin``): XNNPACK's choice of int8 path is made once per process, as in the bench.

    Raises:
        ValueError: naming the model when the child fails.
    """
    spec = {"model": str(model_path), "threads": threads, "kernels": kernels, "runs": runs}
    done = subprocess.run(
        [sys.executable, "-m", "edge.bench.op_profile", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ValueError(f"profiling {Path(model_path).name} failed: {tail}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "kernels": kernels}


def _worker(spec: dict) -> dict:
    if spec["kernels"] == "xnnpack-no-amx":
        from edge.runtimes.kernels import refuse_amx

        refuse_amx()
    return profile(
        spec["model"], spec["threads"], spec["runs"], xnnpack=spec["kernels"] != "builtin"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: edge-seg bench --op-profile (this module's entry point is its worker)")
