"""How hard is the synthetic Mars terrain set? An intensity-only per-pixel classifier.

The classifier learns, from the training split, the most frequent class for every grey level
0..255 (the Bayes-optimal rule when a pixel's intensity is all one knows) and is scored on the
validation split with the task's mean IoU (classes 1-4). data.md asks for at most 0.45, so that
a model has to use texture and context; a trained MarsSeg must clearly beat it.

    python benchmarks/data_hardness.py [--frames 3000] [--seed 0] [--out report/hardness.json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.contract.labels import CLASS_NAMES, MARS, NUM_CLASSES
from edge.contract.metrics import class_fractions, score
from edge.io.sinks import atomic_write_json
from edge.synthetic import SyntheticConfig, generate
from trainer import data as D

LIMIT = 0.45


def intensity_classifier(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Lookup table grey level -> most frequent class among 1-4 in the training pixels.

    Background is never predicted: its pixels are not scored, so predicting it can only cost.
    """
    counts = np.zeros((256, NUM_CLASSES))
    np.add.at(counts, (images.ravel(), labels.ravel()), 1)
    return counts[:, 1:].argmax(axis=1).astype(np.uint8) + 1


def measure(frames: int = 3000, seed: int = 0) -> dict:
    """Generate, clean and split a synthetic set; fit and score the intensity-only classifier."""
    start = time.perf_counter()
    synthetic = generate(SyntheticConfig(n_train=frames, n_test=0, seed=seed))
    seconds = time.perf_counter() - start
    report = D.find_outliers(synthetic.labels)
    keep = np.setdiff1d(np.arange(frames), report.indices)
    images, labels = synthetic.images[keep], synthetic.labels[keep]
    train, val = D.split_indices(labels, 0.2, seed, label_set=MARS)
    lut = intensity_classifier(images[train], labels[train])
    result = score(labels[val], lut[images[val]], MARS)
    return {
        "frames": frames,
        "seed": seed,
        "generation_seconds": round(seconds, 2),
        "outliers_planted": len(synthetic.outlier_index),
        "outliers_found": report.count,
        "outliers_match": bool(np.array_equal(report.indices, synthetic.outlier_index)),
        "class_fractions_percent": {
            n: round(100 * f, 2) for n, f in zip(CLASS_NAMES, class_fractions(labels))
        },
        "big_rock_frames": int(D.has_hazard(labels, MARS).sum()),
        "intensity_only_miou": round(result.mean_iou, 4),
        "intensity_only_per_class_iou": {k: round(v, 4) for k, v in result.per_class.items()},
        "limit": LIMIT,
        "hard_enough": result.mean_iou <= LIMIT,
    }


@click.command()
@click.option("--frames", default=3000, show_default=True, type=click.IntRange(min=50))
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the JSON here.",
)
def main(frames: int, seed: int, out: Path | None) -> None:
    """Measure the synthetic set's hardness and print a summary (exit 1 if it is too easy)."""
    r = measure(frames, seed)
    click.echo(f"generated {r['frames']} frames in {r['generation_seconds']} s")
    click.echo(
        f"outliers planted {r['outliers_planted']}, found {r['outliers_found']}, same frames: {r['outliers_match']}"
    )
    click.echo(
        "class pixel fractions (%): "
        + ", ".join(f"{k} {v}" for k, v in r["class_fractions_percent"].items())
    )
    click.echo(f"frames with big rock: {r['big_rock_frames']}")
    click.echo(
        "intensity-only per-class IoU: "
        + ", ".join(f"{k} {v:.3f}" for k, v in r["intensity_only_per_class_iou"].items())
    )
    click.echo(
        f"intensity-only mean IoU (classes 1-4): {r['intensity_only_miou']:.3f} (limit {LIMIT})"
    )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, r)
    if not r["hard_enough"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
