"""Measure each claim of the course report: one change at a time, three seeds each.

    python benchmarks/ablations.py --data data/synthetic.npz --out report/ablations
    python benchmarks/ablations.py --quick --out /tmp/ablations     # a few minutes, for CI

The report credits its score, in order, to the model type, the background-ignoring loss and the
augmentation, and also to outlier removal and big-rock oversampling, but shows no ablation. Each
group below changes one thing against a reference on the same split (the split seed is fixed;
only the training seed changes), with the same reduced budget for every run. A claim is
*confirmed* when the claimed winner leads by more than twice the standard error of the
difference of the means over seeds, *refuted* when it trails by that much, and *inside the
noise* otherwise. The run is resumable: finished runs of the same config are reused.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from benchmarks.compare_models import DATA_OPTION, _finished
from edge.io.sinks import atomic_write_bytes, atomic_write_json


@dataclass(frozen=True)
class Variant:
    """One configuration: a label and its overrides of the reference TrainConfig/DataConfig."""

    label: str
    train: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label.lower()).strip("-")


# The offline-augmentation ladder runs without online geometric augmentation, so that it
# measures the report's recipe alone.
NO_ONLINE = {"online_geometric": False}
GROUPS: dict[str, dict] = {
    "outliers": {
        "claim": ("outliers removed", "outliers kept"),
        "variants": [Variant("outliers removed"), Variant("outliers kept", data={"remove_outliers": False})],
    },
    "loss": {
        "claim": ("background-ignoring CE", "plain CE"),
        "variants": [
            Variant("plain CE", train={"loss": "plain_ce"}),
            Variant("background-ignoring CE"),
            Variant("class-weighted CE", train={"loss": "weighted_ce"}),
            Variant("CE + dice", train={"loss": "ce+0.5*dice"}),
            # not the report's: a small background term, for int8 agreement on unscored pixels
            Variant("CE + 0.1 background CE", train={"loss": "ce+0.1*plain_ce"}),
        ],
    },
    "augmentation": {
        "claim": ("+ big rock x4", "no augmentation"),
        "variants": [
            Variant("no augmentation", data={**NO_ONLINE, "flip": False,
                                             "mask_dropout_fraction": 0.0, "big_rock_repeats": 1}),
            Variant("hflip", data={**NO_ONLINE, "mask_dropout_fraction": 0.0, "big_rock_repeats": 1}),
            Variant("hflip + MaskDropout", data={**NO_ONLINE, "big_rock_repeats": 1}),
            Variant("+ big rock x4", data=NO_ONLINE),
        ],
    },
    "model": {
        "claim": ("marsseg", "unet"),
        "variants": [Variant("marsseg"), Variant("marsseg_paper", train={"model": "marsseg_paper"}),
                     Variant("unet", train={"model": "unet"})],
    },
    "pixel augmentation": {
        "claim": ("pixel aug off", "pixel aug on"),
        "variants": [Variant("pixel aug off"), Variant("pixel aug on", data={"online_pixel": True})],
    },
}  # fmt: skip
# Step-by-step claims inside a group (each rung should beat the one before).
LADDERS = {"augmentation": True}


@dataclass
class Budget:
    """The reduced budget every run gets."""

    epochs: int = 4
    width: float = 0.25
    limit: int = 600  # first N frames of the data: 36 runs in about 45 min on 2 CPU cores
    lr: float = 1e-3  # short runs need a larger step than the report's 1e-4
    batch_size: int = 32
    steps_per_epoch: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)


QUICK = Budget(epochs=1, limit=160, steps_per_epoch=2, seeds=(0,))


def run_all(data: Path, out: Path, budget: Budget, groups: list[str]) -> list[dict]:
    """Train every (variant, seed) once; return one row per run."""
    import keras

    from trainer.config import DataConfig, TrainConfig, to_json
    from trainer.train import fit

    variants = list({v.label: v for g in groups for v in GROUPS[g]["variants"]}.values())
    rows, done = [], {}  # done: config JSON -> (metrics, seconds); references repeat across groups
    total = len(variants) * len(budget.seeds)
    for k, (variant, seed) in enumerate((v, s) for v in variants for s in budget.seeds):
        keras.backend.clear_session()
        base = TrainConfig(
            data=DataConfig(path=str(data), limit=budget.limit),
            width=budget.width,
            epochs=budget.epochs,
            batch_size=budget.batch_size,
            learning_rate=budget.lr,
            steps_per_epoch=budget.steps_per_epoch,
            stop_patience=budget.epochs,
            seed=seed,
            verbose=0,
        )
        cfg = replace(base, data=replace(base.data, **variant.data), **variant.train)
        key = to_json(cfg)
        if key not in done:
            run_dir = out / "runs" / f"{variant.slug}-seed{seed}"
            if _finished(run_dir, cfg):
                seconds = json.loads((run_dir / "seconds.json").read_text())["seconds"]
            else:
                if run_dir.exists():
                    import shutil

                    shutil.rmtree(run_dir)
                seconds = fit(cfg, run_dir).seconds
                atomic_write_json(run_dir / "seconds.json", {"seconds": seconds})
            done[key] = (json.loads((run_dir / "metrics.json").read_text()), seconds, run_dir.name)
        metrics, seconds, run_name = done[key]
        rows.append(
            {
                "variant": variant.label,
                "seed": seed,
                "val_miou": metrics["mean_iou"],
                "big_rock_iou": metrics["per_class_iou"]["big_rock"],
                "seconds": seconds,
                "run": run_name,
            }
        )
        click.echo(
            f"[{k + 1}/{total}] {variant.label} seed {seed}: mIoU {metrics['mean_iou']:.4f}, "
            f"big rock {metrics['per_class_iou']['big_rock']:.4f} ({seconds:.0f} s)",
            err=True,
        )
    return rows


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Mean, standard deviation and count of each variant's mIoU and big-rock IoU."""
    out = {}
    for label in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == label]
        stats = {"n": len(mine)}
        for key in ("val_miou", "big_rock_iou"):
            values = np.array([r[key] for r in mine], float)
            stats[key] = float(values.mean())
            stats[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[label] = stats
    return out


def verdict(
    stats: dict[str, dict], winner: str, loser: str, key: str = "val_miou"
) -> tuple[str, float, float]:
    """``confirmed``/``refuted``/``inside the noise`` for "winner beats loser", the gap and its SE."""
    a, b = stats[winner], stats[loser]
    gap = a[key] - b[key]
    se = float(np.sqrt(a[f"{key}_std"] ** 2 / a["n"] + b[f"{key}_std"] ** 2 / b["n"]))
    if a["n"] < 2 or b["n"] < 2:
        return "one seed: no verdict", gap, se
    if gap > 2 * se:
        return "confirmed", gap, se
    if gap < -2 * se:
        return "refuted", gap, se
    return "inside the noise", gap, se


def claims(stats: dict[str, dict], groups: list[str]) -> list[str]:
    """One sentence per claim."""
    sentences = []
    for group in groups:
        variants = [v.label for v in GROUPS[group]["variants"]]
        pairs = [GROUPS[group]["claim"]]
        if LADDERS.get(group):
            pairs = [(variants[i + 1], variants[i]) for i in range(len(variants) - 1)]
        for winner, loser in pairs:
            word, gap, se = verdict(stats, winner, loser)
            rock, rgap, rse = verdict(stats, winner, loser, "big_rock_iou")
            sentences.append(
                f"- **{group}**: {winner} vs {loser}: mIoU {gap:+.4f} (SE {se:.4f}) -> **{word}**; "
                f"big-rock IoU {rgap:+.4f} (SE {rse:.4f}) -> {rock}."
            )
    return sentences


def markdown(stats: dict[str, dict], groups: list[str], settings: str) -> str:
    lines = [
        settings,
        "",
        "| group | variant | val mIoU | big-rock IoU | seeds |",
        "|---|---|---|---|---|",
    ]
    for group in groups:
        for v in GROUPS[group]["variants"]:
            s = stats[v.label]
            lines.append(
                f"| {group} | {v.label} | {s['val_miou']:.4f} ± {s['val_miou_std']:.4f} | "
                f"{s['big_rock_iou']:.4f} ± {s['big_rock_iou_std']:.4f} | {s['n']} |"
            )
    return (
        "\n".join(
            [*lines, "", "Claims (± is the standard deviation over seeds):", *claims(stats, groups)]
        )
        + "\n"
    )


def bar_chart(stats: dict[str, dict], groups: list[str], path: Path) -> Path:
    """mIoU and big-rock IoU per variant with the spread over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [v.label for g in groups for v in GROUPS[g]["variants"]]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(labels)), 4.5))
    for offset, key, colour in ((-0.2, "val_miou", "#0072B2"), (0.2, "big_rock_iou", "#D55E00")):
        ax.bar(
            x + offset,
            [stats[label][key] for label in labels],
            0.4,
            yerr=[stats[label][f"{key}_std"] for label in labels],
            capsize=3,
            color=colour,
            label={"val_miou": "val mIoU", "big_rock_iou": "big-rock IoU"}[key],
        )
    edges = np.cumsum([len(GROUPS[g]["variants"]) for g in groups])[:-1] - 0.5
    for edge in edges:
        ax.axvline(edge, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, labels, rotation=35, ha="right")
    ax.set_ylabel("IoU (mean over seeds, bar = std)")
    ax.set_title("Ablations of the course report's claims")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@click.command()
@DATA_OPTION
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report/ablations"),
    show_default=True,
)
@click.option("--groups", default="", help=f"Comma-separated subset of: {', '.join(GROUPS)}.")
@click.option("--quick", is_flag=True, help="1 epoch of 2 steps on 160 frames, one seed (CI).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[default: 4]")
@click.option("--limit", type=click.IntRange(min=20), default=None, help="[default: 600 frames]")
@click.option("--seeds", default=None, help="Comma-separated training seeds [default: 0,1,2].")
def main(
    data: Path,
    out: Path,
    groups: str,
    quick: bool,
    epochs: int | None,
    limit: int | None,
    seeds: str | None,
) -> None:
    """Train every ablation variant with one reduced budget; write ablations.md/.json/.png."""
    names = [g.strip() for g in groups.split(",") if g.strip()] or list(GROUPS)
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        raise click.BadParameter(
            f"unknown {unknown}; valid: {', '.join(GROUPS)}", param_hint="--groups"
        )
    budget = QUICK if quick else Budget()
    if epochs:
        budget = replace(budget, epochs=epochs)
    if limit:
        budget = replace(budget, limit=limit)
    if seeds:
        budget = replace(budget, seeds=tuple(int(s) for s in seeds.split(",")))
    rows = run_all(data, out, budget, names)
    stats = summarise(rows)
    runs = {r["run"]: r["seconds"] for r in rows}  # references shared by groups train once
    settings = (
        f"Data `{data}` (first {budget.limit} frames, fixed split); MarsSeg unless stated, width "
        f"{budget.width}, {budget.epochs} epoch(s)"
        f"{f' of {budget.steps_per_epoch} steps' if budget.steps_per_epoch else ''}, AdamW lr "
        f"{budget.lr}, batch {budget.batch_size}; seeds {', '.join(map(str, budget.seeds))}; "
        f"{len(runs)} training runs, {sum(runs.values()) / 60:.0f} min of training on this machine."
    )
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(stats, names, settings)
    atomic_write_bytes(out / "ablations.md", text.encode())
    summary = {"settings": settings, "budget": budget.__dict__, "rows": rows, "stats": stats}
    atomic_write_json(out / "ablations.json", summary)
    chart = bar_chart(stats, names, out / "ablations.png")
    click.echo(text)
    click.echo(f"written: {out}/ablations.md, ablations.json, {chart.name}")


if __name__ == "__main__":
    main()
