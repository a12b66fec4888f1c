"""Export held-out frames for the rover: a camera folder of image files, or an eval npz.

Frames come from a run's validation split (``--run``: cleaned and split exactly as in training)
or from the data set's ``test_set`` with its ``test_labels``. Written as 8-bit grayscale PNG
frames (``frames/``) with label PNGs (``labels/``, values 0..4), and/or as one npz
(``images``, ``labels``: uint8) for ``benchmarks/run.py --data`` on a board without TensorFlow.

python tools/export_frames.py data/synthetic.npz --run runs/marsseg --frames-dir cam --npz eval.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install


def held_out(data: Path, run: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames (N, H, W) and labels of the run's validation split, or of the test set."""
    from trainer import data as D

    if run is not None:
        from trainer.evaluate import run_split

        mars, _, val_idx = run_split(run, data)
        images, labels = mars.images[val_idx], mars.labels[val_idx]
    else:
        mars = D.load_dataset(data)
        if mars.test_images is None or mars.test_labels is None:
            raise click.ClickException(
                f"{data.name} has no labelled test set; pass --run RUN to use a run's validation split"
            )
        images, labels = mars.test_images, mars.test_labels
    return np.round(images * 255).astype(np.uint8), labels.astype(np.uint8)


@click.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--run",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Take this run's validation split [default: the data's test_set].",
)
@click.option(
    "--frames-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write frames as PNG here, and the labels beside it in <frames-dir>-labels/.",
)
@click.option(
    "--npz",
    "npz_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write images and labels (uint8) to this npz.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many frames.")
def main(
    data: Path, run: Path | None, frames_dir: Path | None, npz_out: Path | None, limit: int | None
) -> None:
    """Export held-out frames of DATA for edge-seg run and benchmarks/run.py."""

    from edge.sinks import atomic_write_bytes, png_bytes

    if frames_dir is None and npz_out is None:
        raise click.UsageError("say where to write: --frames-dir DIR and/or --npz FILE")
    try:
        images, labels = held_out(data, run)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    images, labels = images[:limit], labels[:limit]
    if frames_dir is not None:
        labels_dir = frames_dir.with_name(f"{frames_dir.name}-labels")
        frames_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        with click.progressbar(range(len(images)), label="frames", file=sys.stderr) as bar:
            for i in bar:
                # label first: a watcher that sees the frame can already find its label
                atomic_write_bytes(labels_dir / f"{i:06d}.png", png_bytes(labels[i]))
                atomic_write_bytes(frames_dir / f"{i:06d}.png", png_bytes(images[i]))
        click.echo(f"{len(images)} frames in {frames_dir}/, labels in {labels_dir}/")
    if npz_out is not None:
        npz_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = npz_out.with_name(f".{npz_out.name}.tmp.npz")
        np.savez_compressed(tmp, images=images, labels=labels)
        tmp.replace(npz_out)
        click.echo(f"{len(images)} frames and labels in {npz_out}")


if __name__ == "__main__":
    main()
