"""Which model should the rover fly? Accuracy against cost, at an equal training budget.

    python benchmarks/pareto.py --data ../shared/data/ai4mars-msl-256 --out report/pareto

Each candidate (architecture, width, frame size) is trained by ``trainer fit`` on the real frames
with the same budget (epochs x steps x batch: the same number of training frames for every
candidate), converted by ``trainer convert`` (int8, rover graph, parity on the validation split),
and measured: validation mIoU and big-rock IoU (Keras and int8), int8 MACs per frame (read from
the .tflite graph) and int8 invoke time (LiteRT + XNNPACK, 1 thread, on this CPU). The table
marks the Pareto frontier (no other candidate is both more accurate and cheaper) and the rover's
pick: the most accurate int8 model within the MAC budget (2 GMAC a frame: about 30 ms on one
Cortex-A76 core in int8).

Every step is kept in OUT/runs/<candidate>/ and skipped when it is already there, so the sweep
continues where it stopped (run it again after an interruption, in another sitting). Run it on a
quiet machine: training and timing share the CPU with anything else running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.io.sinks import atomic_write_bytes, atomic_write_json

# (model, width, frame side): two widths and two sizes of the design made for this regime, the
# course's MarsSeg at the rover's width at two sizes; more with --candidate.
CANDIDATES = (
    ("twobranch", 1.0, 256),
    ("twobranch", 1.0, 192),
    ("twobranch", 1.0, 128),
    ("twobranch", 0.5, 192),
    ("marsseg", 0.25, 128),
    ("marsseg", 0.25, 192),
)
MAC_BUDGET = 2.0e9  # per frame: ~30 ms int8 on one Cortex-A76 core


def candidate_name(model: str, width: float, side: int) -> str:
    return f"{model}-w{width:g}-{side}"


def parse_candidate(text: str) -> tuple[str, float, int]:
    """``model:width:side``, e.g. ``deeplabv3plus:0.25:192``."""
    try:
        model, width, side = text.split(":")
        return model, float(width), int(side)
    except ValueError as err:
        raise click.BadParameter(f"expected MODEL:WIDTH:SIDE, got {text!r}") from err


def trainer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer.cli", *args]


def run_logged(cmd: list[str], log_path: Path) -> None:
    """Run ``cmd`` at low priority with its output in ``log_path``; a failure names the log."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_nice)
    if done.returncode != 0:
        raise click.ClickException(f"{cmd[3]} failed (exit {done.returncode}); see {log_path}")


def _nice() -> None:
    os.nice(10)


def train_and_convert(
    data: Path, runs: Path, cand: tuple[str, float, int], budget: dict, lr: float
) -> Path:
    """Train and convert one candidate unless its run already holds the results."""
    model, width, side = cand
    run = runs / candidate_name(*cand)
    log_path = runs / f"{run.name}.log"
    if not (run / "metrics.json").exists():
        # a run that stopped part-way continues; a finished one is never trained again
        resume = (run / "state.json").exists()
        args = ["fit", "--runs", str(runs), "--name", run.name]
        args += ["--resume"] if resume else [str(data), "--arch", model, "--width", str(width)]
        if not resume:
            args += ["--size", f"{side}x{side}", "--lr", str(lr), "--seed", "0"]
        args += ["--epochs", str(budget["epochs"]), "--steps-per-epoch", str(budget["steps"])]
        args += ["--batch-size", str(budget["batch"])]
        run_logged(trainer_command(*args), log_path)
    if not (run / "model_int8.tflite").exists() or not (run / "parity.json").exists():
        run_logged(trainer_command("convert", str(run), "--int8", "--float32"), log_path)
    return run


def measure(run: Path) -> dict:
    """Accuracy from the run's files, MACs and int8 invoke time from its .tflite."""
    import csv

    import keras

    import trainer.models  # noqa: F401  (registers the custom layers for loading)
    from edge.bench.roofline import graph_macs
    from edge.runtimes.interpreter import make_interpreter, time_invoke

    config = json.loads((run / "config.json").read_text())
    keras_metrics = json.loads((run / "metrics.json").read_text())
    int8 = json.loads((run / "parity.json").read_text())["models"]["int8"]
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    seconds = sum(float(row.get("epoch_s") or 0) for row in history)
    fps = [float(row["train_frames_per_s"]) for row in history if row.get("train_frames_per_s")]
    last = [float(row["val_miou"]) for row in history[-3:] if row.get("val_miou")]
    params = keras.models.load_model(run / "model.keras", compile=False).count_params()
    interpreter, _ = make_interpreter(run / "model_int8.tflite", 1, xnnpack=False)
    spec = {"model": str(run / "model_int8.tflite"), "kernels": "xnnpack", "threads": 1}
    return {
        "candidate": run.name,
        "model": config["model"],
        "width": config["width"],
        "size": config["data"]["size"],
        "params": params,
        "epochs": len(history),
        "train_seconds": seconds or None,
        "train_frames_per_s": max(fps) if fps else None,
        # how much validation mIoU moves from epoch to epoch at the end of the budget: the
        # resolution at which two candidates can be told apart
        "val_noise": float(np.std(last)) if len(last) > 1 else None,
        "keras_miou": keras_metrics["mean_iou"],
        "keras_big_rock_iou": keras_metrics["per_class_iou"]["big_rock"],
        "int8_miou": int8["mean_iou"],
        "int8_big_rock_iou": int8["per_class_iou"]["big_rock"],
        "int8_agreement": int8.get("pixel_agreement"),
        "int8_gmac": graph_macs(interpreter) / 1e9,
        "int8_invoke_ms": time_invoke({**spec, "runtime": "auto", "runs": 50}),
    }


def on_frontier(row: dict, rows: list[dict], cost: str) -> bool:
    """No other row is both at most as costly (by ``cost``) and more accurate."""
    return not any(
        o is not row and o[cost] <= row[cost] and o["int8_miou"] > row["int8_miou"] for o in rows
    )


def frontier(rows: list[dict]) -> float:
    """Mark each row on the frontier (no row is both cheaper and more accurate) and the pick:
    within the MAC budget, the cheapest candidate whose int8 mIoU is within the measurement's
    resolution of the best (the median epoch-to-epoch noise of the candidates' validation
    mIoU): a difference smaller than the noise does not tell two candidates apart, and then the
    cheaper one wins on the rover and trains faster. Returns that resolution."""
    for row in rows:
        row["frontier"] = on_frontier(row, rows, "int8_gmac")
    noise = [r["val_noise"] for r in rows if r.get("val_noise") is not None]
    resolution = float(np.median(noise)) if noise else 0.0
    within = [r for r in rows if r["int8_gmac"] * 1e9 <= MAC_BUDGET]
    best = max((r["int8_miou"] for r in within), default=None)
    tied = [r for r in within if best is not None and r["int8_miou"] >= best - resolution]
    pick = min(tied, key=lambda r: r["int8_gmac"], default=None)
    for row in rows:
        row["pick"] = row is pick
    return resolution


def render(rows: list[dict], info: dict) -> str:
    lines = [
        "# Accuracy against cost at an equal training budget",
        "",
        f"Data: {info['data']} (grouped validation split, crowd labels). Budget per candidate: "
        f"{info['budget']['epochs']} epochs x {info['budget']['steps']} steps x batch "
        f"{info['budget']['batch']} = {info['budget_frames']:,} training frames, lr "
        f"{info['lr']}, the trainer's default loss and augmentation. Invoke: int8, LiteRT + "
        f"XNNPACK, 1 thread, on {info['cpu']}. Pick: within {MAC_BUDGET / 1e9:g} GMAC a frame, "
        "the cheapest candidate whose int8 mIoU is within the measurement's resolution "
        f"({info['resolution']:.3f}: the median std of the last three epochs' validation mIoU) "
        "of the best.",
        "",
        f"    {info['command']}",
        "",
        "| candidate | GMAC (int8) | int8 ms | params | Keras mIoU | int8 mIoU | big rock (int8) "
        "| agreement | val noise | train frames/s | train min | frontier |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: r["int8_gmac"]):
        agreement = "-" if r["int8_agreement"] is None else f"{100 * r['int8_agreement']:.2f} %"
        minutes = "-" if not r["train_seconds"] else f"{r['train_seconds'] / 60:.0f}"
        fps = "-" if not r["train_frames_per_s"] else f"{r['train_frames_per_s']:.1f}"
        noise = "-" if r.get("val_noise") is None else f"{r['val_noise']:.3f}"
        mark = "**pick**" if r["pick"] else ("yes" if r["frontier"] else "")
        lines.append(
            f"| {r['candidate']} | {r['int8_gmac']:.2f} | {r['int8_invoke_ms']:.2f} | "
            f"{r['params'] or '-'} | {r['keras_miou']:.4f} | {r['int8_miou']:.4f} | "
            f"{r['int8_big_rock_iou']:.4f} | {agreement} | {noise} | {fps} | {minutes} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path, cpu: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "int8_gmac", "int8 GMAC per frame"),
        (axes[1], "int8_invoke_ms", f"int8 invoke ms (1 thread, {cpu})"),
    ):
        for r in rows:
            colour = {"twobranch": "tab:blue", "marsseg": "tab:orange"}.get(r["model"], "tab:grey")
            ax.scatter(r[key], r["int8_miou"], s=40 + 30 * r["pick"], color=colour, zorder=3)
            ax.annotate(r["candidate"], (r[key], r["int8_miou"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
        front = sorted((r for r in rows if on_frontier(r, rows, key)), key=lambda r: r[key])
        ax.plot([r[key] for r in front], [r["int8_miou"] for r in front], "--", color="grey")
        ax.set_xlabel(label)
        ax.set_ylabel("validation mIoU (int8)")
        ax.grid(alpha=0.3)
    axes[0].axvline(MAC_BUDGET / 1e9, color="tab:red", lw=1)
    axes[0].text(MAC_BUDGET / 1e9, axes[0].get_ylim()[0], " rover budget", color="tab:red",
                 fontsize=8, va="bottom")  # fmt: skip
    fig.suptitle(
        "Rover candidates at an equal training budget (AI4Mars MSL, real frames)\n"
        "blue twobranch, orange marsseg, large: the pick, dashed: the frontier"
    )
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="AI4Mars folder (real frames).")  # fmt: skip
@click.option("--out", default=Path("report/pareto"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path))  # fmt: skip
@click.option("--epochs", default=6, show_default=True, help="Budget: epochs per candidate.")
@click.option("--steps", default=100, show_default=True, help="Budget: steps per epoch.")
@click.option("--batch", default=16, show_default=True, help="Budget: batch size.")
@click.option("--lr", default=1e-3, show_default=True, help="AdamW learning rate for all.")
@click.option("--candidate", "extra", multiple=True, help="MODEL:WIDTH:SIDE, added to the set.")
@click.option("--only", is_flag=True, help="Measure only the --candidate ones.")
def main(data: Path, out: Path, epochs: int, steps: int, batch: int, lr: float, extra, only):
    """Train, convert and measure each candidate, then write OUT/pareto.md, .json and .png."""
    from edge.runtimes.kernels import cpu_features

    budget = {"epochs": epochs, "steps": steps, "batch": batch}
    candidates = [parse_candidate(t) for t in extra]
    if not only:
        candidates = list(CANDIDATES) + candidates
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cand in enumerate(candidates, 1):
        start = time.perf_counter()
        click.echo(f"[{i}/{len(candidates)}] {candidate_name(*cand)}", err=True)
        run = train_and_convert(data, runs, cand, budget, lr)
        rows.append(measure(run))
        click.echo(
            f"    int8 mIoU {rows[-1]['int8_miou']:.4f}, {rows[-1]['int8_gmac']:.2f} GMAC, "
            f"{rows[-1]['int8_invoke_ms']:.2f} ms ({time.perf_counter() - start:.0f} s)",
            err=True,
        )
    resolution = frontier(rows)
    cpu = cpu_features().model
    info = {
        "data": str(data),
        "budget": budget,
        "budget_frames": epochs * steps * batch,
        "lr": lr,
        "cpu": cpu,
        "resolution": resolution,
        "command": "python benchmarks/pareto.py " + " ".join(sys.argv[1:]),
    }
    atomic_write_json(out / "pareto.json", {**info, "rows": rows})
    atomic_write_bytes(out / "pareto.md", render(rows, info).encode())
    chart(rows, out / "pareto.png", cpu)
    click.echo(render(rows, info))


if __name__ == "__main__":
    main()
