"""``--precision auto``: the faster precision of a model folder on this CPU, among those at parity.

Why measure: which precision is faster depends on the CPU and the graph, by a wide margin. With
AVX-512 VNNI the rover graph ran int8 at a third of float32's time; on an AVX2-only EPYC a small
MarsSeg ran int8 1.2x *slower* than float32 (XNNPACK has no fast int8 dot product there). Nothing
but a measurement on the rover's own CPU can say which to run.

Why a parity bar: a faster model that labels the ground differently is not the same model. A
folder's ``parity.json`` (written by ``trainer convert``) says on what share of the validation
pixels each file agrees with the trained float model; only files at or above
:data:`MIN_AGREEMENT` compete (float32 is the reference and always does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge.contract.metadata import read_model_metadata
from edge.models import PRECISIONS, SHIPPED_DIR, model_files, resolve_model

CHOICES = ("auto", *PRECISIONS)
MIN_AGREEMENT = 0.99  # share of pixels on which a file must agree with the float model


@dataclass
class PrecisionChoice:
    """Which file of a model folder runs, and why.

    Attributes:
        precision: ``int8``, ``float32`` or ``float16``.
        chosen_by: ``asked``, ``timing``, ``a file was given``, or why nothing was timed.
        timings_ms: median invoke (ms) of each competing file, when timed.
        agreement: each file's pixel agreement with the float model (``parity.json``).
        refused: the files left out, with the reason.
    """

    precision: str
    chosen_by: str
    timings_ms: dict[str, float] | None = None
    agreement: dict[str, float] | None = None
    refused: dict[str, str] | None = None

    def record(self) -> dict:
        return {
            "precision": self.precision,
            "chosen_by": self.chosen_by,
            "timings_ms": self.timings_ms,
            "agreement": self.agreement,
            "min_agreement": MIN_AGREEMENT,
            "refused": self.refused or None,
        }


def parity_agreement(folder: Path) -> dict[str, float]:
    """Each precision's pixel agreement with the float model, from the folder's parity.json
    (empty when there is none or it is unreadable)."""
    path = Path(folder) / "parity.json"
    try:
        models = json.loads(path.read_text())["models"]
        return {p: float(m["pixel_agreement"]) for p, m in models.items() if p in PRECISIONS}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def contenders(
    found: dict[str, Path], agreement: dict[str, float]
) -> tuple[list[str], dict[str, str]]:
    """The precisions that may run (float32 first) and why each other one may not."""
    allowed, refused = [], {}
    for p in sorted(found, key=lambda p: p != "float32"):
        if p == "float32":
            allowed.append(p)
        elif p not in agreement:
            refused[p] = "no parity report (parity.json) for it"
        elif agreement[p] < MIN_AGREEMENT:
            refused[p] = (
                f"agrees with float32 on {agreement[p]:.2%} of pixels (< {MIN_AGREEMENT:.0%})"
            )
        else:
            allowed.append(p)
    return allowed, refused


def choose_precision(
    model: str | Path | None,
    requested: str = "auto",
    *,
    threads: int = 1,
    runtime: str = "auto",
    kernels: str = "auto",
    runs: int = 30,
    keep: str | Path | None = None,
) -> tuple[Path, str, PrecisionChoice]:
    """Resolve ``--model`` and ``--precision``: the file to run, where it came from, and why.

    ``auto`` on a folder times each file that passes parity in a child process (the same worker
    as the kernel calibration, ``runs`` invokes after warm-up) and takes the fastest; a single
    contender is taken untimed. A named precision takes that file. ``keep``: the file an
    earlier start of the same run ran; ``auto`` takes it again, untimed, while it is one of
    the folder's files that may run, so that a restart never switches models on a timing that
    came out the other way.

    Raises:
        ValueError: for an unknown precision, a precision asked of a file that is another, or a
            folder without the file asked for.
    """
    from edge.runtimes.interpreter import calibrate

    if requested not in CHOICES:
        raise ValueError(f"unknown precision {requested!r}; valid: {', '.join(CHOICES)}")
    if model is not None and Path(model).is_file():
        path, origin = resolve_model(model)
        meta = read_model_metadata(path)
        own = meta.info.get("precision") if meta else None
        if requested != "auto" and own != requested:
            raise ValueError(
                f"--precision {requested} picks a file of a model folder, and --model {path} is "
                f"one file ({own or 'its precision not recorded'}): give the folder, or the "
                f"{requested} file itself"
            )
        return path, origin, PrecisionChoice(own or "unknown", "a file was given")
    if requested != "auto":
        path, origin = resolve_model(model, requested)
        return path, origin, PrecisionChoice(requested, "asked")
    folder = SHIPPED_DIR if model is None else Path(model)
    path, origin = resolve_model(model)  # raises the folder's own errors, with their fixes
    found = model_files(folder)
    agreement = parity_agreement(folder)
    allowed, refused = contenders(found, agreement)
    if not allowed:  # only an int8 without parity: run it, and say so
        only = next(iter(found))
        return found[only], origin, PrecisionChoice(only, "the only file", None, agreement, refused)
    kept = [p for p in allowed if keep is not None and _same_file(found[p], keep)]
    if kept and len(allowed) > 1:
        choice = PrecisionChoice(kept[0], "kept from the run's earlier start", None, agreement,
                                 refused)  # fmt: skip
        return found[kept[0]], origin, choice
    if len(allowed) == 1:
        reason = "the only file at parity" if refused else "the only file"
        choice = PrecisionChoice(allowed[0], reason, None, agreement, refused)
        return found[allowed[0]], origin, choice
    timing_kernels = "xnnpack" if kernels == "auto" else kernels
    timings = {
        p: calibrate(found[p], [timing_kernels], threads, runtime, runs)[timing_kernels]
        for p in allowed
    }
    choice = by_timing(timings, agreement, refused)
    return found[choice.precision], origin, choice


def _same_file(path: Path, other: str | Path) -> bool:
    try:
        return Path(path).resolve() == Path(other).resolve()
    except OSError:
        return False


def by_timing(
    timings_ms: dict[str, float], agreement: dict[str, float], refused: dict[str, str]
) -> PrecisionChoice:
    """The fastest of the timed contenders (what ``auto`` takes; ``edge-seg bench`` applies it
    to its own timings)."""
    fastest = min(timings_ms, key=timings_ms.get)
    return PrecisionChoice(fastest, "timing", timings_ms, agreement, refused)


def auto_in_bench(models: dict[str, dict], threads: list[int]) -> list[dict]:
    """What ``--precision auto`` takes for each model folder of a bench run, from the bench's
    own median invoke times and the folder's parity report.

    Args:
        models: the bench report's ``models`` ({column: {"path", "threads": {n: result}}}).
        threads: the thread counts measured.

    Returns:
        One record per folder with two precisions or more benchmarked: ``folder``, and per thread
        count the :meth:`PrecisionChoice.record`.
    """
    folders: dict[Path, dict[str, str]] = {}
    for column, entry in models.items():
        first = next(iter(entry["threads"].values()))
        precision = first.get("precision")
        if precision in PRECISIONS and entry.get("kernels", "auto") in ("auto", "xnnpack"):
            folders.setdefault(Path(entry["path"]).parent, {}).setdefault(precision, column)
    out = []
    for folder, columns in folders.items():
        if len(columns) < 2:
            continue
        agreement = parity_agreement(folder)
        allowed, refused = contenders(dict(columns), agreement)
        by_threads = {}
        for n in threads:
            timings = {p: models[columns[p]]["threads"][str(n)]["invoke"]["p50"] for p in allowed}
            by_threads[str(n)] = by_timing(timings, agreement, refused).record()
        out.append({"folder": str(folder), "threads": by_threads})
    return out
