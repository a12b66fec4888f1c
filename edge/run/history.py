"""A run's summaries across its restarts: each start's kept, and the run's totals over them.

``summary.json`` describes one start of ``edge-seg run``. A supervisor restarts the run after a
crash or a reboot (same ``--out``, same run id), and the restart skips the frames already
handled, so its own summary may count no frame at all. Before it writes anything, a start moves
the summary an earlier start of the same run left into ``summaries/summary-NNNN.json`` (NNNN:
that start's restart count; the newest :data:`KEEP` kept), and its own summary gains
``run_totals``: the counts and the mIoU of every start since the run began, or since its last
``--reprocess`` start (which does the frames again). A start killed before its summary (``kill
-9``) leaves none: ``starts_summarised`` below ``starts`` says so; the telemetry still holds
each of its frames.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from edge.contract.labels import LabelSet

log = logging.getLogger(__name__)

ARCHIVE = "summaries"
KEEP = 100  # a rover restarted daily for three months: a few MB at most
SUMMED = ("frames", "errors", "dropped", "hazard_frames", "scored_frames", "labels_missing")


def archive_previous(out_dir: Path, run_id: str) -> Path | None:
    """Move ``summary.json`` into ``summaries/`` when an earlier start of ``run_id`` wrote it.

    Returns:
        Where it went, or None (no summary, another run's, or unreadable: left in place).
    """
    current = Path(out_dir) / "summary.json"
    previous = _read(current)
    if previous is None or previous.get("run_id") != run_id:
        return None
    folder = Path(out_dir) / ARCHIVE
    try:
        folder.mkdir(exist_ok=True)
        target = folder / f"summary-{int(previous.get('restarts') or 0):04d}.json"
        os.replace(current, target)
    except (OSError, ValueError) as err:
        log.warning("could not keep the previous start's summary.json: %s", err)
        return None
    for old in sorted(folder.glob("summary-*.json"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return target


def run_totals(out_dir: Path, summary: dict, label_set: LabelSet) -> dict:
    """The run's totals: this start's ``summary`` and the kept summaries of its earlier
    starts, back to the last ``--reprocess`` start.

    Returns:
        ``{"starts", "starts_summarised", "since_utc", <SUMMED counts>, "miou"}``; ``miou`` from
        the summed confusion matrices (None when no start scored a frame).
    """
    earlier = []
    for file in sorted((Path(out_dir) / ARCHIVE).glob("summary-*.json")):
        record = _read(file)
        if record is not None and record.get("run_id") == summary["run_id"]:
            earlier.append(record)
    counted = [summary]
    if not (summary.get("config") or {}).get("reprocess"):
        for record in reversed(earlier):  # newest first, back to a start that redid the frames
            counted.append(record)
            if (record.get("config") or {}).get("reprocess"):
                break
    totals: dict = {
        "starts": int(summary.get("restarts") or 0) + 1,
        "starts_summarised": len(counted),
        "since_utc": counted[-1].get("started_utc"),
    }
    for key in SUMMED:
        totals[key] = sum(int(r.get(key) or 0) for r in counted)
    confusion = None
    for record in counted:
        if record.get("confusion") is not None:
            matrix = np.asarray(record["confusion"], np.int64)
            confusion = matrix if confusion is None else confusion + matrix
    totals["miou"] = None
    if confusion is not None and confusion.shape == (label_set.num_classes,) * 2:
        from edge.contract.metrics import report_from_confusion

        totals["miou"] = report_from_confusion(confusion, label_set).as_dict()["mean_iou"]
    return totals


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
