"""Where a restart resumes: the frames of the camera folder that an earlier run of the same output
handled.

The record is the telemetry itself: a frame's line is written after its files and before its
input is disposed of (:mod:`edge.run.writeback`), so a line means "handled", and a frame killed
before its line is simply done again. A run takes its backlog in name order, but while it
follows a folder it may take a frame out of name order (a half-written file waits while later
ones go ahead, a frame that failed is retried a grace period later, inotify reports files as
they arrive), so the last line alone is not a high-water mark. A restart reads the last
:data:`TAIL_LINES` lines instead (read backwards from the end: a few MB, whatever the run's
length) and judges each file of the folder:

- named in those lines and unchanged since (the same modification time): handled, skipped; with
  ``--delete-consumed``/``--move-consumed`` disposed of if its line says ``ok`` (the kill came
  between the line and the disposal);
- named before the *floor*: handled by an earlier part of the run, or left there on purpose (a
  bad frame, a dropped one): skipped and left alone. The floor is the smallest name of the lines
  read, leaving out the last :data:`OUT_OF_ORDER` lines and, unless the file was read whole, the
  first as many: a frame is never taken more than that many frames out of name order (a stall of
  ten grace periods at 150 frames/s), so a name before the floor was handled, and a handled name
  after it is among the lines read;
- anything else is new: processed.

Only lines of this camera folder count (each line names its folder; lines of older versions,
which do not, count when ``run.json`` recorded this folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

TAIL_LINES = 10_000  # lines a restart reads
OUT_OF_ORDER = 3_000  # frames a file may be taken out of name order, at most


@dataclass
class ResumePoint:
    """What the tail of the telemetry says was handled in one camera folder.

    Attributes:
        floor: every name before it was handled or left on purpose (see the module).
        handled: name -> (mtime_ns or None, status ok) of the frames in the lines read.
        last: the source of the last line (for the messages).
        lines: how many lines were read.
    """

    floor: str
    handled: dict[str, tuple[int | None, bool]] = field(default_factory=dict)
    last: str = ""
    lines: int = 0

    def before_floor(self, name: str) -> bool:
        return name < self.floor

    def done(self, name: str, mtime_ns: int | None) -> bool:
        """Whether this version of ``name`` has a line (a rewrite since has another time)."""
        entry = self.handled.get(name)
        if entry is None:
            return False
        seen = entry[0]
        return seen is None or mtime_ns is None or seen == mtime_ns

    def disposable(self, name: str) -> bool:
        """Whether the earlier run would have disposed of it (segmented: status ok)."""
        entry = self.handled.get(name)
        return entry is not None and entry[1]


def tail_lines(
    path: Path, max_lines: int = TAIL_LINES, block: int = 1 << 16
) -> tuple[list[bytes], bool]:
    """The last ``max_lines`` whole lines of a file, read backwards (the oldest first), and
    whether they are the whole file."""
    try:
        handle = open(path, "rb")
    except OSError:
        return [], True
    with handle:
        end = handle.seek(0, os.SEEK_END)
        chunks, newlines, pos = [], 0, end
        while pos > 0 and newlines <= max_lines:
            start = max(0, pos - block)
            handle.seek(start)
            chunk = handle.read(pos - start)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
            pos = start
    lines = [line for line in b"".join(reversed(chunks)).split(b"\n") if line.strip()]
    if pos > 0:
        lines = lines[1:]  # the first may be cut
    return lines[-max_lines:], pos == 0 and len(lines) <= max_lines


def resume_point(
    telemetry: Path, camera_dir: str, recorded_dir: str | None, max_lines: int = TAIL_LINES,
    out_of_order: int = OUT_OF_ORDER,
) -> ResumePoint | None:  # fmt: skip
    """The handled frames of ``camera_dir`` in the last ``max_lines`` lines of ``telemetry``
    (None: nothing of this folder there).

    Args:
        telemetry: the output's ``telemetry.jsonl``.
        camera_dir: this start's camera folder, resolved.
        recorded_dir: the folder ``run.json`` recorded (for lines that do not name theirs).
        out_of_order: the most frames a file is taken out of name order (see the module).
    """
    raw_lines, whole = tail_lines(telemetry, max_lines)
    order: list[str | None] = []  # the lines' sources, None for another folder's
    handled: dict[str, tuple[int | None, bool]] = {}
    for raw in raw_lines:
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("source"), str):
            continue
        order.append(record["source"])
        if record.get("camera_dir", recorded_dir) != camera_dir:
            order[-1] = None  # another folder's line: keeps its place in the order
            continue
        mtime = record.get("source_mtime_ns")
        handled[record["source"]] = (mtime if isinstance(mtime, int) else None,
                                     record.get("status") == "ok")  # fmt: skip
    if not handled:
        return None
    first = 0 if whole else out_of_order
    settled = [name for name in order[first : len(order) - out_of_order] if name is not None]
    last = next(name for name in reversed(order) if name is not None)
    return ResumePoint(min(settled, default=""), handled, last, len(order))


__all__ = ["OUT_OF_ORDER", "TAIL_LINES", "ResumePoint", "resume_point", "tail_lines"]
