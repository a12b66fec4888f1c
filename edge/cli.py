"""`edge-seg`: the rover command line (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def main() -> None:
    """Run Mars terrain segmentation .tflite models on the rover.

    Labels: 0 background, 1 soil, 2 bedrock, 3 sand, 4 big rock.
    """


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tensors", is_flag=True, help="Also list every tensor with its quantization.")
def info(model: Path, tensors: bool) -> None:
    """Describe MODEL (.tflite): input/output, quantization, ops, size."""
    from edge.modelinfo import describe

    try:
        click.echo(describe(model, tensors))
    except ValueError as err:
        raise click.ClickException(str(err)) from err


if __name__ == "__main__":
    main()
