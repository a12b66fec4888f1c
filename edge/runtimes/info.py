"""Describe a .tflite: inputs, outputs, quantization, ops and their tensor types, size."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edge.contract.metadata import read_model_metadata
from edge.runtimes.interpreter import list_ops, make_interpreter


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
    lines += _metadata_lines(path)
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


def _metadata_lines(path: Path) -> list[str]:
    try:
        meta = read_model_metadata(path)
    except ValueError as err:
        return [f"metadata: unreadable ({err})"]
    if meta is None:
        return [
            "metadata: none (classes, colours and preprocessing unknown; convert with `trainer convert`)"
        ]
    p, labels = meta.preprocessing, meta.labels
    lines = [
        f"metadata: {meta.source}"
        + "".join(
            f", {k} {meta.info[k]}"
            for k in ("name", "architecture", "precision", "loss")
            if meta.info.get(k) is not None
        ),
        f"classes: {', '.join(labels.names)}"
        + (f" (not scored: {labels.names[labels.ignore]})" if labels.ignore is not None else ""),
        f"hazard classes: {', '.join(labels.hazards) or 'none'}",
        f"preprocessing: {p.height}x{p.width}, crop {p.crop}, grey level x {p.scale:.6g}",
        "output: logits (--flip-average can average them)"
        if meta.info.get("output") == "logits"
        else "output: probabilities (softmax in the graph; --flip-average needs logits)",
    ]
    if meta.info.get("predicts_ignored_label") is False:
        lines.append(
            "warning: trained without a background target: it labels sky and rover hardware "
            "arbitrarily (hazard flags unreliable there)"
        )
    return lines
