"""Print a .tflite's inputs, outputs, quantization, ops (with tensor types) and size.

    python tools/inspect_tflite.py runs/marsseg/model_int8.tflite [--tensors]

Needs only the edge dependencies (a TFLite runtime), no TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.modelinfo import describe


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
