"""Write a synthetic Mars terrain set in the course npz layout (see edge/synthetic.py).

python tools/make_synthetic.py data/synthetic.npz --frames 3000 --preview data/preview.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.contract.labels import MARS
from edge.synthetic import SyntheticConfig, generate, write_npz


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--frames",
    default=3000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Labelled training frames.",
)
@click.option(
    "--test-frames",
    default=500,
    show_default=True,
    type=click.IntRange(min=0),
    help="Test frames (with test_labels).",
)
@click.option(
    "--size",
    default="64x128",
    show_default=True,
    help="Frame size HxW (the course file's by default).",
)
@click.option("--seed", default=0, show_default=True, help="Same seed, same bytes.")
@click.option(
    "--big-rock-rate",
    default=0.03,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of frames with big rocks (course: ~2.5 %).",
)
@click.option(
    "--outlier-rate",
    default=0.04,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of alien frames that share one mask.",
)
@click.option(
    "--preview",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a 4x4 grid of frames with their colourised labels as a PNG.",
)
def main(
    out: Path,
    frames: int,
    test_frames: int,
    size: str,
    seed: int,
    big_rock_rate: float,
    outlier_rate: float,
    preview: Path | None,
) -> None:
    """Generate a synthetic Mars terrain set and write it to OUT (.npz)."""
    from edge.contract.preprocess import parse_size

    try:
        height, width = parse_size(size)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--size") from err
    cfg = SyntheticConfig(
        n_train=frames,
        n_test=test_frames,
        height=height,
        width=width,
        seed=seed,
        big_rock_rate=big_rock_rate,
        outlier_rate=outlier_rate,
    )
    summary = write_npz(cfg, out, progress=True)
    click.echo(
        f"wrote {out}: {summary['n_train']} labelled + {summary['n_test']} test frames, "
        f"{summary['outliers_planted']} outliers planted, in {summary['seconds']:.1f} s"
    )
    if preview is not None:
        from trainer.viz import sample_grid

        sample = generate(
            SyntheticConfig(
                n_train=16,
                n_test=0,
                height=height,
                width=width,
                seed=seed,
                big_rock_rate=0.25,
                outlier_rate=1 / 16,
            )
        )
        sample_grid(
            sample.images,
            sample.labels,
            preview,
            label_set=MARS,
            titles=["outlier" if i in sample.outlier_index else f"frame {i}" for i in range(16)],
        )
        click.echo(f"wrote {preview}")


if __name__ == "__main__":
    main()
