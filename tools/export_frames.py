"""Export held-out frames for the rover: a camera folder of image files, or an eval npz.

Frames come from a run's validation split (``--run``: loaded, cleaned and split exactly as in
training) or from the data set's test split.

- An npz data set (course layout): the frames as 8-bit grayscale PNGs (``frames/``) with label
  PNGs in the model's values (``<frames>-labels/``).
- An AI4Mars folder: the original frame files, untouched (at their own size, e.g. the 256x256
  JPEGs), with the release's own label PNGs (0-3, 255; ``_merged`` names for the expert test
  set) and the rover/range masks applied. ``edge-seg run --labels`` reads that format.
- ``--npz``: frames (uint8) and labels (model values) at the frames' own size, for
  ``benchmarks/run.py --data`` on a board without TensorFlow.

python tools/export_frames.py DATA --run runs/marsseg --frames-dir cam --npz eval.npz
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.io.sinks import atomic_path


def held_out(data: Path, run: Path | None, limit: int | None):
    """The held-out frames: ``(mars, images, labels, names, test)``; for AI4Mars the images are
    None (the files are copied) and ``names`` are the frame ids."""
    from trainer import data as D

    if run is not None:
        from trainer.evaluate import run_split

        mars, _, val_idx = run_split(run, data)
        val_idx = val_idx[:limit]
        names = None if mars.names is None else [mars.names[i] for i in val_idx]
        return mars, mars.images[val_idx], mars.labels[val_idx], names, False
    mars = D.load_dataset(data)
    if mars.test_images is None or mars.test_labels is None:
        raise click.ClickException(
            f"{data.name} has no labelled test set; pass --run RUN to use a run's validation split"
        )
    names = None if mars.test_names is None else mars.test_names[:limit]
    return mars, mars.test_images[:limit], mars.test_labels[:limit], names, True


@click.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--run",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Take this run's validation split [default: the data's test split].",
)
@click.option(
    "--frames-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the frames here, and the labels beside it in <frames-dir>-labels/.",
)
@click.option(
    "--npz",
    "npz_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write images and labels (uint8, frames at their own size) to this npz.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many frames.")
def main(
    data: Path, run: Path | None, frames_dir: Path | None, npz_out: Path | None, limit: int | None
) -> None:
    """Export held-out frames of DATA for edge-seg run and benchmarks/run.py."""
    from edge.io.sinks import atomic_write_bytes, png_bytes
    from trainer import data as D

    if frames_dir is None and npz_out is None:
        raise click.UsageError("say where to write: --frames-dir DIR and/or --npz FILE")
    try:
        mars, images, labels, names, test = held_out(data, run, limit)
        files = D.ai4mars_files(mars, names, test) if mars.layout == "ai4mars" else None
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    if frames_dir is not None:
        labels_dir = frames_dir.with_name(f"{frames_dir.name}-labels")
        frames_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        with click.progressbar(range(len(labels)), label="frames", file=sys.stderr) as bar:
            for i in bar:
                # label first: a watcher that sees the frame can already find its label
                if files is None:
                    atomic_write_bytes(labels_dir / f"{i:06d}.png", png_bytes(labels[i]))
                    atomic_write_bytes(frames_dir / f"{i:06d}.png", png_bytes(_uint8(images[i])))
                    continue
                pair = files[i]
                if pair.masks:  # write the label as the release's test labels are: masks applied
                    mars_labels = D.read_ai4mars_label(pair.label, pair.masks)
                    atomic_write_bytes(
                        labels_dir / pair.label.name, png_bytes(_to_ai4mars(mars_labels))
                    )
                else:
                    _copy(pair.label, labels_dir / pair.label.name)
                _copy(pair.image, frames_dir / pair.image.name)
        kind = "original AI4Mars files" if files is not None else "PNG frames"
        click.echo(f"{len(labels)} {kind} in {frames_dir}/, labels in {labels_dir}/")
    if npz_out is not None:
        if files is not None:
            read = [D.read_ai4mars_pair(p.image, p.label, p.masks) for p in files]
            sizes = {im.shape for im, _ in read}
            if len(sizes) > 1:
                raise click.ClickException(
                    f"the frames have {len(sizes)} sizes ({sorted(sizes)[:3]}...); an npz needs one"
                )
            images_u8 = np.stack([im for im, _ in read])
            labels = np.stack([lab for _, lab in read])
        else:
            images_u8 = _uint8(images)
        npz_out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(npz_out.with_suffix(".npz")) as tmp:
            np.savez_compressed(tmp, images=images_u8, labels=labels.astype(np.uint8))
        click.echo(f"{len(images_u8)} frames and labels in {npz_out}")


def _uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(images) * 255).astype(np.uint8)


def _to_ai4mars(labels: np.ndarray) -> np.ndarray:
    """Mars labels (0 unlabelled, 1-4) back to AI4Mars values (255, 0-3)."""
    return np.where(labels == 0, 255, labels.astype(np.int16) - 1).astype(np.uint8)


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


if __name__ == "__main__":
    main()
