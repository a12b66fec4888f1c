"""What frame size should an AI4Mars model take? Measure what each size costs and loses.

    python benchmarks/frame_size.py --data ../shared/data/ai4mars-msl-256 --out report/frame_size

For each square size S (and the course file's 1:2 crop for comparison):

- **label ceiling**: the labels brought to S (nearest, the training preprocessing) and back to
  the frame's own size (what the rover does with a class map) against the original labels: the
  mean and big-rock IoU a perfect model at S could reach when scored at full resolution, and the
  share of labelled pixels that the input covers at all (a crop discards the rest);
- **cost**: the int8 ``invoke`` time of MarsSeg at S (LiteRT, 2 threads, untrained weights:
  the time does not depend on them) and its training throughput (frames/s) on this machine.

Run it on a quiet machine: the timings share the CPU with anything else running.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.contract.labels import MARS
from edge.io.sinks import atomic_write_bytes, atomic_write_json

SIZES = ("64x64", "96x96", "128x128", "160x160", "192x192", "256x256", "64x128/centre")


def label_ceiling(data: Path, size: str, limit: int | None) -> dict:
    """Mean IoU and big-rock IoU of the labels resampled to ``size`` and restored."""
    from edge.contract.labels import MARS
    from edge.contract.metrics import confusion_matrix, report_from_confusion
    from edge.contract.preprocess import Preprocessing, parse_size
    from trainer import data as D

    spec, _, crop = size.partition("/")
    prep = Preprocessing(*parse_size(spec), crop=crop or "none")
    layout = D.find_ai4mars(data)
    names = sorted(p.stem for p in layout.train_labels.glob("*.png"))[:limit]
    cm = np.zeros((MARS.num_classes, MARS.num_classes), np.int64)
    covered = total = 0
    for name in names:
        truth = D.read_ai4mars_label(layout.train_labels / f"{name}.png")
        restored = prep.restore(prep.prepare_labels(truth), truth.shape, fill=0)
        cm += confusion_matrix(truth, restored)
        _, _, h, w = prep.region(truth.shape)
        labelled = truth > 0
        total += labelled.sum()
        covered += labelled.sum() if (h, w) == truth.shape else _inside(prep, truth)
    report = report_from_confusion(cm, MARS)
    return {
        "frames": len(names),
        "mean_iou": report.mean_iou,
        "big_rock_iou": report.per_class["big_rock"],
        "labelled_pixels_covered": float(covered / max(total, 1)),
    }


def _inside(prep, truth: np.ndarray) -> int:
    top, left, h, w = prep.region(truth.shape)
    return int((truth[top : top + h, left : left + w] > 0).sum())


def cost(size: str, width: float, threads: int, runs: int) -> dict:
    """int8 invoke time (ms) and training frames/s of MarsSeg at ``size``."""
    import tempfile

    import keras

    from edge.contract.preprocess import parse_size
    from edge.segmenter import Segmenter
    from trainer.convert import convert_saved_model, export_saved_model
    from trainer.losses import make_loss
    from trainer.models import build_model

    h, w = parse_size(size.partition("/")[0])
    keras.backend.clear_session()
    model = build_model("marsseg", (h, w, 1), MARS.num_classes, width=width)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        saved = export_saved_model(model, Path(tmp) / "saved", (h, w, 1))
        calib = rng.random((8, h, w), dtype=np.float32)
        path = Path(tmp) / "m.tflite"
        path.write_bytes(convert_saved_model(saved, "int8", calib))
        seg = Segmenter(path, threads=threads)
        tensor = seg.preprocess(rng.integers(0, 256, (h, w), dtype=np.uint8))
        seg.interpreter.set_tensor(seg.input_index, tensor)
        for _ in range(10):
            seg.interpreter.invoke()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            seg.interpreter.invoke()
            times.append((time.perf_counter_ns() - t0) / 1e6)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=make_loss("ce", ignore=0))
    x = rng.random((64, h, w, 1), dtype=np.float32)
    y = rng.integers(0, 5, (64, h, w)).astype(np.int32)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # compile and warm up
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    return {
        "int8_invoke_ms": float(np.mean(times)),
        "int8_invoke_p99_ms": float(np.percentile(times, 99)),
        "train_frames_per_s": 128 / (time.perf_counter() - t0),
    }


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    default=Path("../shared/data/ai4mars-msl-256"),
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report/frame_size"),
    show_default=True,
)
@click.option("--sizes", default=",".join(SIZES), show_default=True)
@click.option("--width", default=0.25, show_default=True, help="MarsSeg width for the costs.")
@click.option("--threads", default=2, show_default=True)
@click.option("--runs", default=200, show_default=True)
@click.option("--limit", type=int, default=None, help="Labels to read [default: all].")
@click.option("--no-cost", is_flag=True, help="Only the label ceiling (no TensorFlow timing).")
def main(
    data: Path,
    out: Path,
    sizes: str,
    width: float,
    threads: int,
    runs: int,
    limit: int | None,
    no_cost: bool,
) -> None:
    """Label ceiling and cost of each frame size on AI4Mars."""
    rows = []
    for size in sizes.split(","):
        row = {"size": size, **label_ceiling(data, size, limit)}
        if not no_cost:
            row.update(cost(size, width, threads, runs))
        rows.append(row)
        click.echo(json.dumps(row), err=True)
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    out.mkdir(parents=True, exist_ok=True)
    meta = {"data": str(data), "width": width, "threads": threads, "cpu": cpu, "rows": rows}
    atomic_write_json(out / "frame_size.json", meta)
    lines = [
        "# Frame size for AI4Mars",
        "",
        f"Data: {data}. Label ceiling: labels to the size and back, scored at 256x256 against the "
        f"originals. Cost: MarsSeg width {width}, int8 invoke with {threads} threads (LiteRT) and "
        f"training throughput, on {cpu}.",
        "",
        "| size | ceiling mIoU | ceiling big-rock IoU | labelled pixels seen | int8 invoke ms "
        "| training frames/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['mean_iou']:.4f} | {r['big_rock_iou']:.4f} | "
            f"{100 * r['labelled_pixels_covered']:.1f} % | "
            + (
                f"{r['int8_invoke_ms']:.2f} | {r['train_frames_per_s']:.0f} |"
                if "int8_invoke_ms" in r
                else "- | - |"
            )
        )
    atomic_write_bytes(out / "frame_size.md", ("\n".join(lines) + "\n").encode())
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
