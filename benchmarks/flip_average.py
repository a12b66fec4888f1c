"""What averaging the logits of a frame and its mirror image would buy at the rover.

    python benchmarks/flip_average.py FRAMES --labels LABELS [--model edge/models/model_int8.tflite]

The model was trained with horizontal flips, so its mirror-image prediction is a second opinion
at the cost of a second inference. Every labelled frame of FRAMES is segmented by the rover's own
segmenter (no TensorFlow) as ``edge-seg run`` does, with and without ``--flip-average``
(:class:`edge.segmenter.Segmenter`'s ``flip_average``), and both class maps are scored at the
frame's size against its labels; the invoke time of each (both passes for the flip average) is
timed on the same frames, in turn.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install


@click.command(context_settings={"show_default": True})
@click.argument("frames", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--labels",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Labels of the frames (AI4Mars values or the model's).",
)
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=ROOT / "edge" / "models" / "model_int8.tflite",
    help="The .tflite to run.",
)
@click.option("--threads", default=2, help="Interpreter threads.")
def main(frames: Path, labels: Path, model: Path, threads: int) -> None:
    """Score one pass against the flip average on labelled frames, and time both."""
    from edge.contract.metrics import confusion_matrix, report_from_confusion
    from edge.io.decode import is_candidate, read_frame
    from edge.io.labels import LabelReader
    from edge.segmenter import Segmenter

    # the rover's two settings, side by side on each frame (edge-seg run with and without it)
    segmenters = {
        "one pass": Segmenter(model, threads),
        "flip average": Segmenter(model, threads, flip_average=True),
    }
    first = segmenters["one pass"]
    reader = LabelReader(labels, first.num_classes)
    n = first.num_classes
    confusion = {name: np.zeros((n, n), np.int64) for name in segmenters}
    invoke_us = {name: [] for name in segmenters}
    rock = first.labels.names.index("big_rock") if "big_rock" in first.labels.names else None
    scored = 0
    for file in sorted(p for p in frames.iterdir() if is_candidate(p)):
        truth = reader.read_for(file.stem)
        if truth is None:
            continue
        image = read_frame(file)
        for name, seg in segmenters.items():  # as the rover asks: confidence and p(rock)
            result = seg.segment(image, with_confidence=True, class_probability=rock)
            confusion[name] += confusion_matrix(truth, result.labels, n)
            invoke_us[name].append(result.timings_us["invoke"])
        scored += 1
    if not scored:
        raise click.ClickException(f"no frame of {frames} has a label in {labels}")
    click.echo(f"{scored} labelled frames of {frames}; model {model}; {threads} thread(s)")
    for name, matrix in confusion.items():
        report = report_from_confusion(matrix, first.labels).as_dict()
        per_class = "  ".join(f"{c} {v:.3f}" for c, v in report["per_class_iou"].items())
        invoke = np.median(invoke_us[name]) / 1e3
        click.echo(f"{name:<13} mIoU {report['mean_iou']:.4f}  ({per_class})  "
                   f"invoke p50 {invoke:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
