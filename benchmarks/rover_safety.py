"""Which loss makes a model safe for the rover? Big rock must not fire on sky, far field or
rover hardware, and big rock itself must be found.

    python benchmarks/rover_safety.py --data ../shared/data/ai4mars-msl-256 --out report/rover_safety

With the report's background-ignoring loss a model gets no target on unlabelled pixels (sky, far
field, the rover's own hardware), so it labels them arbitrarily, and on AI4Mars mostly as big
rock: a hazard rule on its output would fire on every frame. Each variant below is trained with
the same budget on the same split (AI4Mars frames, split by rover position) and scored on the
validation frames: mean IoU, big-rock IoU, recall and precision, and the share of predicted
big-rock pixels that lie on unlabelled ground. Every model is also scored with a confidence
floor (pixels whose top probability is below it become background, "unknown"). The run is
resumable: finished variants are reused.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.io.sinks import atomic_write_bytes, atomic_write_json

VARIANTS = {
    "ce": "the report's: cross-entropy, background ignored",
    "ce+0.5*background": "+ a background term (class 0 on unlabelled pixels)",
    "weighted_ce+0.5*background": "class-weighted CE (median frequency) + background",
    "afd": "the paper's adaptive focal + Dice, w_k = 1/(IoU_k + 0.5)",
    "afd+0.5*background": "adaptive focal + Dice + background",
}
FLOORS = (0.0, 0.5, 0.7)


@dataclass
class Budget:
    """What every variant gets."""

    epochs: int = 6
    steps_per_epoch: int | None = 150
    width: float = 0.25
    size: str = "128x128"
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0


def train_variant(data: Path, loss: str, run_dir: Path, budget: Budget) -> float:
    """Train one variant (reusing a finished run); returns the training seconds."""
    from trainer.config import DataConfig, TrainConfig
    from trainer.train import fit

    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "timing.json").read_text())["seconds"]
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts over
    cfg = TrainConfig(
        data=DataConfig(path=str(data), size=budget.size),
        width=budget.width,
        epochs=budget.epochs,
        steps_per_epoch=budget.steps_per_epoch,
        learning_rate=budget.lr,
        batch_size=budget.batch_size,
        loss=loss,
        seed=budget.seed,
        stop_patience=budget.epochs,
        verbose=2,
    )
    start = time.perf_counter()
    fit(cfg, run_dir)
    seconds = time.perf_counter() - start
    atomic_write_json(run_dir / "timing.json", {"seconds": seconds})
    return seconds


def score_variant(run_dir: Path, floors=FLOORS) -> dict:
    """Validation scores of a run's best model, with each confidence floor."""
    import keras

    from edge.contract.metrics import confusion_matrix, report_from_confusion
    from trainer.evaluate import load_model, predict_probabilities, run_split

    keras.backend.clear_session()
    model = load_model(run_dir / "model.keras")
    mars, _, val_idx = run_split(run_dir)
    images, labels = mars.images[val_idx], mars.labels[val_idx]
    n = mars.label_set.num_classes
    cms = {f: np.zeros((n, n), np.int64) for f in floors}
    for start in range(0, len(images), 64):
        probs = predict_probabilities(model, images[start : start + 64])
        top, pred = probs.max(-1), probs.argmax(-1)
        for f in floors:
            cms[f] += confusion_matrix(labels[start : start + 64], np.where(top < f, 0, pred), n)
    out = {}
    for f, cm in cms.items():
        report = report_from_confusion(cm, mars.label_set).as_dict()
        report.pop("confusion")
        out[f"{f:g}"] = report
    return out


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    default=Path("../shared/data/ai4mars-msl-256"),
    show_default=True,
    help="The AI4Mars folder (or any data set trainer reads).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report/rover_safety"),
    show_default=True,
)
@click.option("--epochs", default=Budget.epochs, show_default=True)
@click.option("--steps-per-epoch", default=Budget.steps_per_epoch, show_default=True)
@click.option("--width", default=Budget.width, show_default=True)
@click.option("--size", default=Budget.size, show_default=True)
@click.option(
    "--variants",
    default=",".join(VARIANTS),
    show_default=True,
    help="Loss specs to compare, separated by commas.",
)
def main(
    data: Path,
    out: Path,
    epochs: int,
    steps_per_epoch: int,
    width: float,
    size: str,
    variants: str,
) -> None:
    """Train each loss variant with one budget and score it for rover safety."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    budget = Budget(epochs=epochs, steps_per_epoch=steps_per_epoch, width=width, size=size)
    rows = []
    for loss in [v for v in variants.split(",") if v]:
        slug = "".join(c if c.isalnum() else "-" for c in loss)
        run_dir = out / "runs" / slug
        click.echo(f"== {loss}", err=True)
        seconds = train_variant(data, loss, run_dir, budget)
        rows.append({"loss": loss, "about": VARIANTS.get(loss, ""), "seconds": seconds,
                     "scores": score_variant(run_dir)})  # fmt: skip
        _write(out, rows, budget, data)
    click.echo((out / "rover_safety.md").read_text())


def _write(out: Path, rows: list[dict], budget: Budget, data: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out / "rover_safety.json", {"budget": asdict(budget), "data": str(data), "rows": rows}
    )
    lines = [
        "# Rover safety of the loss choices",
        "",
        f"Data: {data} (validation split by rover position). Budget: MarsSeg width "
        f"{budget.width}, {budget.size}, {budget.epochs} epochs x {budget.steps_per_epoch} steps "
        f"of {budget.batch_size}, AdamW lr {budget.lr}, seed {budget.seed}. `on unlabelled`: "
        "share of predicted big-rock pixels whose truth is unlabelled (sky, far field, rover).",
        "",
        "| loss | floor | mIoU | soil | bedrock | sand | big rock IoU | recall | precision "
        "| on unlabelled | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, pct=False):
        return "-" if v is None else (f"{100 * v:.1f} %" if pct else f"{v:.3f}")

    for row in rows:
        for floor, s in row["scores"].items():
            c, h = s["per_class_iou"], s["hazards"]["big_rock"]
            lines.append(
                f"| `{row['loss']}` | {floor} | {f(s['mean_iou'])} | {f(c['soil'])} | "
                f"{f(c['bedrock'])} | {f(c['sand'])} | {f(h['iou'])} | {f(h['recall'], True)} | "
                f"{f(h['precision'], True)} | {f(h['on_unlabelled'], True)} | "
                f"{row['seconds'] / 60:.1f} |"
            )
    atomic_write_bytes(out / "rover_safety.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
