"""Describe a .tflite: inputs, outputs, quantization, ops and their tensor types, size."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edge.runtime import list_ops, make_interpreter


def describe(path: Path, tensors: bool = False) -> str:
    """A readable summary of a model; ops are listed before XNNPACK delegation.

    Raises:
        ValueError: if the file is missing or not a TFLite model.
    """
    interpreter, runtime = make_interpreter(path, xnnpack=False)  # list ops before delegation
    lines = [f"{path}  ({path.stat().st_size / 1024:.1f} KiB, opened with {runtime})"]
    for kind, details in (
        ("input", interpreter.get_input_details()),
        ("output", interpreter.get_output_details()),
    ):
        for d in details:
            scale, zero = d["quantization"]
            quant = f"scale {scale:.6g}, zero point {zero}" if scale else "not quantized"
            lines.append(
                f"{kind:<6} {d['name']}: {tuple(int(v) for v in d['shape'])} {d['dtype'].__name__} ({quant})"
            )
    ops = list_ops(interpreter)
    floats = [op for op in ops if not op.is_integer]
    lines.append(
        f"ops: {len(ops)} ({'integer-only' if not floats else f'{len(floats)} with float tensors'})"
    )
    for name, count in sorted(Counter(op.name for op in ops).items()):
        types = sorted(
            {t for op in ops if op.name == name for t in op.input_types + op.output_types}
        )
        lines.append(f"  {name:<28} x{count:<4} {', '.join(types)}")
    if tensors:
        for t in interpreter.get_tensor_details():
            scale, zero = t["quantization"]
            lines.append(
                f"  tensor {t['index']:>4} {t['name'][:60]:<60} {t['dtype'].__name__:<8} "
                f"{tuple(int(v) for v in t['shape'])} scale {scale:.4g} zp {zero}"
            )
    return "\n".join(lines)
