"""Train every registered model with the same budget on the same synthetic split: our Table 1.

    python benchmarks/compare_models.py --data data/synthetic.npz --epochs 8 --width 0.25 --out report/compare

Every model gets the same data (outliers removed, stratified split, the report's offline
augmentation), the same loss, optimizer, learning rate, epochs and width multiplier. The table
gives parameters and MACs at that width, the best validation mean IoU and per-class IoU, and the
seconds per epoch measured on this machine, plus the time one epoch over 2,600 frames would take.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.contract.labels import CLASS_NAMES
from edge.io.sinks import atomic_write_bytes, atomic_write_json


def compare(
    data: Path,
    out: Path,
    *,
    models: list[str],
    epochs: int,
    width: float,
    lr: float,
    batch_size: int,
    limit: int | None,
    seed: int,
) -> list[dict]:
    """Train each model in turn; return one flat dict per model."""
    import csv

    import keras

    from trainer.config import DataConfig, TrainConfig
    from trainer.models import build_model, count_macs
    from trainer.train import fit

    rows = []
    for name in models:
        keras.backend.clear_session()
        cfg = TrainConfig(
            data=DataConfig(path=str(data), limit=limit),
            model=name,
            width=width,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=lr,
            seed=seed,
            stop_patience=epochs,
            verbose=2,
        )
        run_dir = out / "runs" / name
        if _finished(run_dir, cfg):
            seconds = json.loads((run_dir / "seconds.json").read_text())["seconds"]
            click.echo(f"{name}: reusing the finished run in {run_dir}", err=True)
        else:
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            seconds = fit(cfg, run_dir).seconds
            atomic_write_json(run_dir / "seconds.json", {"seconds": seconds})
        metrics = json.loads((run_dir / "metrics.json").read_text())
        data_info = json.loads((run_dir / "data.json").read_text())
        with open(run_dir / "history.csv") as f:
            epochs_run = len(list(csv.DictReader(f)))
        prep = data_info["preprocessing"]
        model = build_model(
            name, (prep["height"], prep["width"], 1), len(data_info["labels"]["names"]), width=width
        )
        seconds_per_epoch = seconds / max(epochs_run, 1)
        frames_per_epoch = data_info["train_after_augmentation"]
        rows.append(
            {
                "model": name,
                "params": model.count_params(),
                "gmac": count_macs(model) / 1e9,
                "val_miou": metrics["mean_iou"],
                **{f"iou_{k}": v for k, v in metrics["per_class_iou"].items()},
                "epochs": epochs_run,
                "seconds_per_epoch": seconds_per_epoch,
                "train_frames_per_epoch": frames_per_epoch,
                "seconds_per_2600_frames": seconds_per_epoch * 2600 / frames_per_epoch,
            }
        )
        click.echo(f"{name}: val mIoU {metrics['mean_iou']:.4f} in {seconds:.0f} s", err=True)
    return rows


def _finished(run_dir: Path, cfg) -> bool:
    """A complete earlier run of exactly this config (so an interrupted comparison can go on)."""
    from trainer.config import to_json

    done = all((run_dir / f).exists() for f in ("config.json", "metrics.json", "seconds.json"))
    return done and json.loads((run_dir / "config.json").read_text()) == json.loads(to_json(cfg))


def markdown_table(rows: list[dict], settings: str) -> str:
    names = CLASS_NAMES[1:]
    head = ["model", "params", "GMAC", "val mIoU", *names, "s/epoch", "s per 2,600 frames"]
    lines = [settings, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = max(r["val_miou"] for r in rows)
    for r in sorted(rows, key=lambda r: -r["val_miou"]):
        miou = f"**{r['val_miou']:.4f}**" if r["val_miou"] == best else f"{r['val_miou']:.4f}"
        cells = [
            r["model"],
            f"{r['params']:,}",
            f"{r['gmac']:.2f}",
            miou,
            *[f"{r[f'iou_{n}']:.3f}" for n in names],
            f"{r['seconds_per_epoch']:.0f}",
            f"{r['seconds_per_2600_frames']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _synthetic_if_missing(_ctx, _param, data: Path) -> Path:
    if not data.exists():
        from edge.synthetic import SyntheticConfig, write_npz

        write_npz(SyntheticConfig(n_train=3000, n_test=500, seed=0), data, progress=True)
    return data


# Shared with benchmarks/ablations.py.
DATA_OPTION = click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("data/synthetic.npz"),
    show_default=True,
    callback=_synthetic_if_missing,
    help="Synthetic (or real) npz; a synthetic one is generated if missing.",
)


@click.command()
@DATA_OPTION
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report/compare"),
    show_default=True,
)
@click.option(
    "--models", default="", help="Comma-separated subset [default: every registered model]."
)
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--width",
    default=0.25,
    show_default=True,
    type=float,
    help="Width multiplier for every model (1.0 is the paper size; 0.25 fits a CPU budget).",
)
@click.option(
    "--lr",
    default=1e-3,
    show_default=True,
    type=float,
    help="AdamW learning rate (the report's 1e-4 is for long runs).",
)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--limit", default=None, type=int, help="Use only the first N frames of the data.")
@click.option("--seed", default=0, show_default=True)
def main(
    data: Path,
    out: Path,
    models: str,
    epochs: int,
    width: float,
    lr: float,
    batch_size: int,
    limit: int | None,
    seed: int,
) -> None:
    """Train every registered model with one budget; write compare.md and compare.json."""
    from trainer.models import MODELS

    names = [m for m in models.split(",") if m] or list(MODELS)
    unknown = set(names) - set(MODELS)
    if unknown:
        raise click.BadParameter(
            f"unknown {sorted(unknown)}; valid: {', '.join(MODELS)}", param_hint="--models"
        )
    start = time.perf_counter()
    rows = compare(
        data,
        out,
        models=names,
        epochs=epochs,
        width=width,
        lr=lr,
        batch_size=batch_size,
        limit=limit,
        seed=seed,
    )
    settings = (
        f"Data `{data}`{f' (first {limit} frames)' if limit else ''}; {epochs} epochs, width {width}, "
        f"AdamW lr {lr}, batch {batch_size}, background-ignoring CE, offline aug (flip, MaskDropout, "
        f"big rock x4), seed {seed}; total {time.perf_counter() - start:.0f} s on this machine."
    )
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, settings)
    atomic_write_bytes(out / "compare.md", table.encode())
    atomic_write_json(out / "compare.json", {"settings": settings, "rows": rows})
    click.echo(table)


if __name__ == "__main__":
    main()
