"""Print a .tflite's inputs, outputs, quantization, ops (with tensor types) and size.

    python tools/inspect_tflite.py runs/marsseg/model_int8.tflite [--tensors]

Needs only the edge dependencies (a TFLite runtime), no TensorFlow.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.runtime import list_ops, make_interpreter


def describe(path: Path, tensors: bool = False) -> str:
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
                f"{kind:<6} {d['name']}: {tuple(d['shape'])} {d['dtype'].__name__} ({quant})"
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
                f"{tuple(t['shape'])} scale {scale:.4g} zp {zero}"
            )
    return "\n".join(lines)


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tensors", is_flag=True, help="Also list every tensor with its quantization.")
def main(model: Path, tensors: bool) -> None:
    """Describe MODEL (.tflite): inputs, outputs, quantization, ops, size."""
    try:
        click.echo(describe(model, tensors))
    except ValueError as err:
        raise click.ClickException(str(err)) from err


if __name__ == "__main__":
    main()
