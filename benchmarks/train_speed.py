"""Training frames/s of the rover model under each Keras backend, side by side in one run.

    python benchmarks/train_speed.py ../shared/data/ai4mars-msl-256 --out report/train_speed

Each configuration is one `trainer fit` in its own process (a backend is chosen at import time)
with the same settings: the rover preset (MarsSeg width 0.25, 128x128, batch 16, its loss and
augmentation), ``--limit`` frames, ``--epochs`` short epochs of ``--steps`` batches. The first
epoch holds the compilation; the figure is the median training speed of the later ones (from
the run's history, validation excluded), and the first epoch's time is reported beside it.
Configurations: ``tensorflow``, ``tensorflow+xla``, ``jax`` (XLA always), each optionally with
mixed precision (``+mp``). Run on a quiet machine; the CPU is named in the report.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from trainer.devices import cpu_name

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("tensorflow", "tensorflow+xla", "jax", "tensorflow+mp", "jax+mp")


def run_config(name: str, data: str, work: Path, limit: int, epochs: int, steps: int) -> dict:
    """One `trainer fit` under configuration ``name``; its speeds from the run's history."""
    backend, *flags = name.split("+")
    env = {**os.environ, "KERAS_BACKEND": backend}
    args = [
        sys.executable, "-m", "trainer.cli", "fit", data, "--preset", "rover", "--runs",
        str(work), "--name", name, "--limit", str(limit), "--epochs", str(epochs),
        "--steps-per-epoch", str(steps), "--warmup-epochs", "0",
    ]  # fmt: skip
    if "xla" in flags:
        args.append("--xla")
    if "mp" in flags:
        args.append("--mixed-precision")
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise click.ClickException(f"{name}: trainer fit failed:\n{proc.stderr[-2000:]}")
    rows = list(csv.DictReader(open(work / name / "history.csv")))
    speeds = [float(r["train_frames_per_s"]) for r in rows]
    devices = json.loads((work / name / "devices.json").read_text())
    return {
        "config": name,
        "frames_per_s": statistics.median(speeds[1:]) if len(speeds) > 1 else speeds[0],
        "first_epoch_s": float(rows[0]["epoch_s"]),
        "later_epoch_s": statistics.median(float(r["epoch_s"]) for r in rows[1:]),
        "epochs": len(rows),
        "wall_s": wall,
        "precision": devices["precision"],
        "xla": devices["xla"],
        "versions": devices["versions"],
    }


@click.command(context_settings={"show_default": True})
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", type=click.Path(), default="report/train_speed", help="Report folder.")
@click.option(
    "--configs", default="tensorflow,tensorflow+xla,jax", help=f"Of {', '.join(CONFIGS)}."
)
@click.option("--limit", default=800, help="Frames loaded (the split keeps ~80 % for training).")
@click.option("--epochs", default=4, help="Epochs per configuration (the first compiles).")
@click.option("--steps", default=60, help="Batches of 16 per epoch.")
def main(data: str, out: str, configs: str, limit: int, epochs: int, steps: int) -> None:
    """Time `trainer fit --preset rover` under each configuration, one after the other."""
    names = [c.strip() for c in configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: valid are {', '.join(CONFIGS)}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            click.echo(f"{name} ...", err=True)
            results.append(run_config(name, data, Path(tmp), limit, epochs, steps))
            click.echo(f"  {results[-1]['frames_per_s']:.1f} frames/s", err=True)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cpu = cpu_name()
    (out_dir / "results.json").write_text(json.dumps({"cpu": cpu, "results": results}, indent=2))
    lines = [
        "# Training speed of the rover model by backend",
        "",
        f"CPU: {cpu}, {os.cpu_count()} cores. `python benchmarks/train_speed.py {data} --out {out} "
        f"--configs {configs} --limit {limit} --epochs {epochs} --steps {steps}`: the rover preset "
        "(MarsSeg w0.25, 128x128, batch 16, loss afd+0.5*background, online augmentation).",
        "",
        "| configuration | frames/s | first epoch (compiles) s | later epoch s | precision |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['config']} | {r['frames_per_s']:.1f} | {r['first_epoch_s']:.1f} | "
            f"{r['later_epoch_s']:.1f} | {r['precision']} |"
        )
    versions = {k: v for r in results for k, v in r["versions"].items()}
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
