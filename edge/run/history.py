"""A run's summaries across its restarts: each start's kept, and the run's totals carried on.

``summary.json`` describes one start of ``edge-seg run``. A supervisor restarts the run after a
crash, a reboot or an idle timeout (same ``--out``, same run id), and the restart skips the
frames already handled, so its own counts may be zero. At its end a start therefore reads the
summary the previous start left, carries that one's ``run_totals`` on with its own counts, moves
it into ``summaries/`` (the newest :data:`KEEP` kept, by modification time) and only then writes
its own: ``summary.json`` always holds the latest complete start, and its ``run_totals`` the run
as a whole in constant work, however many starts there were.

The totals start over at a start that does frames again (``--reprocess``, or a bag, which is
replayed whole), so that no frame counts twice. A start killed before its summary (``kill -9``)
adds nothing: ``starts_summarised`` below ``starts`` says so, and the telemetry still holds each
of its frames. A previous summary that cannot be read or does not add up is left out, with a
warning, never fatal: a bad file must not stop every later start.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import numpy as np

from edge.contract.labels import LabelSet
from edge.io.sinks import read_json_object

log = logging.getLogger(__name__)

ARCHIVE = "summaries"
KEEP = 100  # the newest summaries kept for reading; the totals do not depend on them
SUMMED = ("frames", "errors", "dropped", "hazard_frames", "scored_frames", "labels_missing")
MAX_MODELS = 10  # the distinct models the totals name


def previous_summary(out_dir: Path) -> dict | None:
    """The ``summary.json`` an earlier start left in ``out_dir`` (of this run or another: both
    are kept by :func:`archive`; only this run's carries its totals on), or None."""
    return read_json_object(Path(out_dir) / "summary.json")


def run_totals(previous: dict | None, summary: dict, label_set: LabelSet) -> dict:
    """This start's counts added to the previous start's ``run_totals``.

    Args:
        previous: the previous start's summary (:func:`previous_summary`), or None; one of
            another run (another ``run_id``) carries nothing on.
        summary: this start's summary (its ``restarts``, ``config``, counts, ``confusion``).
        label_set: the model's classes (the confusion matrices' size).

    Returns:
        ``{"starts", "starts_summarised", "since_utc", <SUMMED counts>, "miou", "confusion",
        "models"}``; ``miou`` of the summed confusion matrices (None when none scored a frame).
    """
    n = label_set.num_classes
    mine = _counts(summary, n)
    if mine is None:  # cannot happen for a summary this code wrote; never fatal all the same
        raise ValueError("this start's summary has malformed counts")
    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    again = bool(config.get("reprocess") or config.get("bag"))  # its frames are done again
    carried = None
    if previous is not None and previous.get("run_id") == summary.get("run_id") and not again:
        carried = _counts(previous.get("run_totals"), n)
        if carried is None and previous.get("run_totals") is not None:
            log.warning("the previous summary's run_totals do not add up: counting from here")
    totals: dict = {
        "starts": int(summary.get("restarts") or 0) + 1,
        "starts_summarised": 1 + (carried["starts_summarised"] if carried else 0),
        "since_utc": (carried or {}).get("since_utc") or summary.get("started_utc"),
    }
    for key in SUMMED:
        totals[key] = mine[key] + (carried[key] if carried else 0)
    confusion = mine["confusion"]
    if carried and carried["confusion"] is not None:
        confusion = carried["confusion"] if confusion is None else confusion + carried["confusion"]
    totals["miou"] = None
    if confusion is not None:
        from edge.contract.metrics import report_from_confusion

        totals["miou"] = report_from_confusion(confusion, label_set).as_dict()["mean_iou"]
    totals["confusion"] = None if confusion is None else confusion.tolist()
    model = (summary.get("model") or {}).get("sha256")
    if model:  # with --flip-average a model answers otherwise: counted as another
        model = str(model)[:16] + ("+flip" if config.get("flip_average") else "")
    models = [m for m in (carried or {}).get("models", []) if m != model]
    totals["models"] = (models + ([model] if model else []))[-MAX_MODELS:]
    return totals


def archive(out_dir: Path, previous: dict) -> Path | None:
    """Move the previous start's ``summary.json`` into ``summaries/`` under a name no other
    start shares, and prune the folder to the newest :data:`KEEP`.

    Returns:
        Where it went, or None when it could not be moved (logged; the new summary replaces it).
    """
    folder = Path(out_dir) / ARCHIVE
    stamp = _stamp(previous.get("started_utc"))
    restarts = previous.get("restarts")
    count = restarts if isinstance(restarts, int) and 0 <= restarts < 10**9 else 0
    try:
        folder.mkdir(exist_ok=True)
        target = folder / f"summary-{count:06d}-{stamp}.json"
        if target.exists():  # a restart count seen twice (run.json lost, say): never overwrite
            target = folder / f"summary-{count:06d}-{stamp}-{os.getpid()}.json"
        os.replace(Path(out_dir) / "summary.json", target)
        kept = sorted(folder.glob("summary-*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in kept[:-KEEP]:
            old.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not keep the previous start's summary in %s/: %s", folder, err)
        return None
    return target


def _counts(record, n: int) -> dict | None:
    """The summed fields of a summary or of its ``run_totals``, checked: None when they do not
    add up (missing, negative, not integers, a confusion matrix of another size)."""
    if not isinstance(record, dict):
        return None
    out: dict = {}
    for key in (*SUMMED, "starts_summarised"):
        value = record.get(key, 0 if key != "starts_summarised" else 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        out[key] = value
    out["confusion"] = None
    if record.get("confusion") is not None:
        try:
            matrix = np.asarray(record["confusion"])
        except (TypeError, ValueError):
            return None
        if matrix.shape != (n, n) or matrix.dtype.kind not in "iu" or (matrix < 0).any():
            return None
        out["confusion"] = matrix.astype(np.int64)
    since = record.get("since_utc")
    out["since_utc"] = since if isinstance(since, str) else None
    models = record.get("models")
    out["models"] = [m for m in models if isinstance(m, str)] if isinstance(models, list) else []
    return out


def _stamp(started_utc) -> str:
    """A file-name-safe timestamp of a start (now, when it has none)."""
    if isinstance(started_utc, str) and started_utc:
        return "".join(c for c in started_utc if c.isalnum())[:20]
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
