"""Make a trained and converted run the model set that ships with the package (edge/models/).

    python tools/ship_model.py runs/rover

Copies the run's ``model_int8.tflite``, ``model_float32.tflite``, ``model.keras`` and
``parity.json`` into ``edge/models/`` and writes ``edge/models/manifest.json``: each file's size
and SHA-256, the run's resolved config, its data record (split, preprocessing, classes), its
validation metrics and, for a ``trainer qat`` run, its record (``qat.json``), so that the shipped files say which training made them. Checked first:
every file is there, the .tflite files carry metadata, and int8 passed the integer-only check
(``trainer convert`` refuses otherwise). Nothing is replaced unless all of it can be.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.contract.metadata import read_model_metadata
from edge.models import SHIPPED_DIR
from edge.run.telemetry import file_sha256

FILES = ("model_int8.tflite", "model_float32.tflite", "model.keras", "parity.json")


def manifest(run: Path) -> dict:
    """What the shipped set records about the run that made it."""

    def load(name: str):
        path = run / name
        return json.loads(path.read_text()) if path.is_file() else None

    data = load("data.json") or {}
    data.pop("val_source_index", None)  # the names say the same, and are what a user checks
    return {
        "run": run.name,
        "files": {
            n: {"bytes": (run / n).stat().st_size, "sha256": file_sha256(run / n)} for n in FILES
        },
        "config": load("config.json"),
        "data": data,
        "validation": load("metrics.json"),
        # `trainer qat`: the int8 file is the quantization-aware student of the float model
        "quantization_aware": load("qat.json"),
    }


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=SHIPPED_DIR,
              show_default=True, help="The package's model folder.")  # fmt: skip
def main(run: Path, dest: Path) -> None:
    """Copy RUN's converted models into the package's model folder, with a manifest."""
    missing = [n for n in FILES if not (run / n).is_file()]
    if missing:
        raise click.ClickException(
            f"{run} lacks {', '.join(missing)}: run `trainer convert {run} --int8 --float32` first"
        )
    for name in FILES[:2]:
        try:
            read_model_metadata(run / name)
        except ValueError as err:
            raise click.ClickException(f"{run / name}: {err}") from err
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        staged = Path(tmp)
        for name in FILES:
            shutil.copy2(run / name, staged / name)
        text = json.dumps(manifest(run), indent=1, sort_keys=True)
        (staged / "manifest.json").write_text(text + "\n")
        for name in (*FILES, "manifest.json"):
            (staged / name).replace(dest / name)
    click.echo(f"shipped {run} -> {dest} ({', '.join(FILES)}, manifest.json)")


if __name__ == "__main__":
    main()
