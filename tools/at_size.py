"""A trained run's weights at another frame size, as a new run folder (no training).

    python tools/at_size.py edge/models --size 64x128 --crop centre --out runs/shipped-64x128

The models of ``trainer models`` are fully convolutional, so the same weights run at any size
whose sides are multiples of 4; what changes with the size is the graph's cost, and with it which
precision is faster on a CPU (issue 27's 64x128 case). The new folder holds ``model.keras`` rebuilt
at the size with the run's weights, and the run's ``config.json`` (with ``data.size`` and
``data.crop`` set), ``data.json`` and ``metrics.json`` (the run's, at its own size: scores at the
new size come from ``trainer evaluate`` or ``trainer convert``). The teacher may be a run folder or
the shipped model folder (its records are in ``manifest.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--size", required=True, help="The new frame size HxW (multiples of 4).")
@click.option("--crop", type=click.Choice(["none", "centre"]), default="centre", show_default=True,
              help="How folder data reach the new aspect (see trainer fit --crop).")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def main(run: Path, size: str, crop: str, out: Path) -> None:
    """Write RUN's model at --size into OUT, with RUN's records."""
    from edge.contract.preprocess import parse_size

    h, w = parse_size(size)
    if h % 4 or w % 4:
        raise click.BadParameter(f"{h}x{w}: both sides must be multiples of 4", param_hint="--size")
    if out.exists() and any(out.iterdir()):
        raise click.ClickException(f"{out} is not empty: give a new folder")

    from trainer.evaluate import load_model
    from trainer.models import build_model
    from trainer.qat import adopt_teacher

    adopt_teacher(run, out)  # model.keras and the records
    config = json.loads((out / "config.json").read_text())
    source = load_model(out / "model.keras")
    model = build_model(config["model"], (h, w, 1), source.output_shape[-1], width=config["width"])
    model.set_weights(source.get_weights())
    model.save(out / "model.keras")
    config["data"] = {**config["data"], "size": f"{h}x{w}", "crop": crop}
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    click.echo(f"wrote {out}/model.keras: {run}'s weights at {h}x{w} (crop {crop})")


if __name__ == "__main__":
    main()
