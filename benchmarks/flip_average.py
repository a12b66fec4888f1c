"""What averaging the logits of a frame and its mirror image would buy at the rover.

    python benchmarks/flip_average.py FRAMES --labels LABELS [--model edge/models/model_int8.tflite]

The model was trained with horizontal flips, so its mirror-image prediction is a second opinion
at the cost of a second inference. Every labelled frame of FRAMES is segmented once as it is and
once mirrored, by the rover's own segmenter (no TensorFlow), and both class maps are scored at
the frame's size against its labels: the single pass and the average of the two passes' logits.
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
    """Score one pass against the flip average on labelled frames."""
    from edge.contract.metrics import confusion_matrix, report_from_confusion
    from edge.io.decode import is_candidate, read_frame
    from edge.io.labels import LabelReader
    from edge.segmenter import Segmenter

    seg = Segmenter(model, threads)
    reader = LabelReader(labels, seg.num_classes)
    n = seg.num_classes
    confusion = {"one pass": np.zeros((n, n), np.int64), "flip average": np.zeros((n, n), np.int64)}
    fill = seg.labels.ignore or 0

    def logits(image: np.ndarray) -> np.ndarray:
        seg.interpreter.set_tensor(seg.input_index, seg.preprocess(image))
        seg.interpreter.invoke()
        return seg.dequantize(seg.interpreter.get_tensor(seg._output["index"])[0].copy())

    scored = 0
    for file in sorted(p for p in frames.iterdir() if is_candidate(p)):
        truth = reader.read_for(file.stem)
        if truth is None:
            continue
        image = read_frame(file)
        once = logits(image)
        mirrored = logits(np.ascontiguousarray(image[:, ::-1]))[:, ::-1]
        for name, values in (("one pass", once), ("flip average", (once + mirrored) / 2)):
            small = values.argmax(axis=-1).astype(np.uint8)
            predicted = seg.preprocessing.restore(small, image.shape, fill=fill)
            confusion[name] += confusion_matrix(truth, predicted, n)
        scored += 1
    if not scored:
        raise click.ClickException(f"no frame of {frames} has a label in {labels}")
    click.echo(f"{scored} labelled frames of {frames}; model {model}")
    for name, matrix in confusion.items():
        report = report_from_confusion(matrix, seg.labels).as_dict()
        per_class = "  ".join(f"{c} {v:.3f}" for c, v in report["per_class_iou"].items())
        click.echo(f"{name:<13} mIoU {report['mean_iou']:.4f}  ({per_class})")


if __name__ == "__main__":
    main()
