"""The rover model set that ships with the package, and how a ``--model`` is resolved.

The files in this folder are package data: ``model_int8.tflite`` and ``model_float32.tflite``
(the same graph; ``edge-seg run --precision auto`` runs the faster of those at parity,
:mod:`edge.models.precision`), ``model.keras`` (the trained weights,
for ``trainer evaluate`` and ``trainer fit --init``) and ``parity.json``. They were trained by a
command of this repository on named data; ``docs/model_card.md`` says which, and how well they do.

A model is given as a file, or as a folder that holds a model set (a ``trainer fit`` run after
``trainer convert``, or this folder): the folder's ``model_<precision>.tflite`` is taken.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent
PRECISIONS = ("int8", "float32", "float16")
# what resolve_model() takes from a folder when asked for no precision (edge-seg run asks
# edge.models.precision instead): 4x smaller, and XNNPACK's int8 kernels where it has them
DEFAULT_PRECISION = "int8"


def model_files(folder: str | Path) -> dict[str, Path]:
    """The ``model_<precision>.tflite`` files of a model-set folder, by precision."""
    folder = Path(folder)
    found = {p: folder / f"model_{p}.tflite" for p in PRECISIONS}
    return {p: path for p, path in found.items() if path.is_file()}


def shipped_model(precision: str = DEFAULT_PRECISION) -> Path:
    """The shipped model file of ``precision``.

    Raises:
        ValueError: if this installation carries no such model (e.g. a checkout whose model was
            removed); the message says how to give one.
    """
    return resolve_model(None, precision)[0]


def resolve_model(model: str | Path | None, precision: str | None = None) -> tuple[Path, str]:
    """The model file to run, and a few words on where it came from.

    Args:
        model: a model file, a model-set folder (a trainer run after ``trainer convert``), or
            None for the shipped model set.
        precision: which file of a folder to take (``int8``, ``float32``, ``float16``); None:
            int8 where the folder has it, else the first of float32, float16. Ignored for a file.

    Raises:
        ValueError: for a missing path, an unknown precision, or a folder without the model
            asked for (the message lists what the folder holds).
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if model is not None and Path(model).is_file():
        return Path(model), "given"
    folder = SHIPPED_DIR if model is None else Path(model)
    what = "the shipped model set" if model is None else f"model folder {folder}"
    if not folder.is_dir():
        raise ValueError(f"no model at {folder}")
    found = model_files(folder)
    if precision is not None:
        if precision not in found:
            held = ", ".join(f.name for f in found.values()) or "no model_<precision>.tflite"
            raise ValueError(
                f"{what} has no model_{precision}.tflite (it holds: {held})"
                + ("; run `trainer convert RUN --int8 --float32` first" if model else "")
            )
        return found[precision], what
    for p in PRECISIONS:
        if p in found:
            return found[p], what
    if model is None:
        raise ValueError(
            "this installation ships no model (edge/models/ has no model_*.tflite): give --model "
            "FILE_OR_RUN_FOLDER, or reinstall the package"
        )
    raise ValueError(
        f"{what} holds no model_int8/float32/float16.tflite: give a .tflite file, or run "
        f"`trainer convert {folder} --int8 --float32` first"
    )


__all__ = [
    "DEFAULT_PRECISION",
    "PRECISIONS",
    "SHIPPED_DIR",
    "model_files",
    "resolve_model",
    "shipped_model",
]
