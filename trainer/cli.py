"""`trainer`: the workstation command line. Thin wrappers over the library; see --help."""

from __future__ import annotations

import logging
from pathlib import Path

import click


class _ValueErrorsAsUsage(click.Group):
    """Turn the library's ValueErrors (bad input, with a fix in the message) into one clean line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ValueError as err:
            raise click.ClickException(str(err)) from err


@click.group(cls=_ValueErrorsAsUsage)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Train, evaluate and convert Mars terrain segmentation models (64x128 grayscale frames).

    Labels: 0 background/unlabelled (never scored), 1 soil, 2 bedrock, 3 sand, 4 big rock.
    The score is the mean IoU over classes 1-4.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s"
    )


@main.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the plots and inspect.json [default: inspect_<DATA name>].",
)
@click.option(
    "--min-repeats",
    type=click.IntRange(min=2),
    default=None,
    help="A mask shared by this many frames marks them as outliers [default: 0.5 % of frames, >= 3].",
)
def inspect(data: Path, out: Path | None, min_repeats: int | None) -> None:
    """Describe DATA (course npz or AI4Mars folder): counts, outliers, class fractions.

    Writes a class-distribution bar chart and a sample grid.
    """
    from trainer.inspection import inspect_dataset

    result = inspect_dataset(data, out or Path(f"inspect_{data.stem}"), min_repeats)
    click.echo(result.text())


if __name__ == "__main__":
    main()
