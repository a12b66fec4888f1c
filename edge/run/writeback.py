"""Write a frame's files and its telemetry line while the model runs on the next frame.

A frame's outputs cost the loop as much as its analysis (PNG encoding, a file created and renamed,
a line appended); none of it is needed by the next frame, and most of it runs without the GIL
(zlib, system calls). So one thread takes finished frames from a short queue and, for each in
order: writes its mask and overlay, then appends its telemetry line, then disposes of the input
file (``--delete-consumed``/``--move-consumed``). The order is what makes a restart exact: a line
exists only for a frame whose files were written, and the last line is where a restart resumes.

The queue is bounded (``depth``), so a slow disk slows the loop instead of filling memory; a
failure to write is counted and logged, never raised.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.io.sinks import OutputWriter, consume

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One frame's outputs: its telemetry record, and the images to write (None: none)."""

    record: dict
    name: str | None = None
    image: np.ndarray | None = None
    labels: np.ndarray | None = None
    source: Path | None = None  # the input file, to dispose of once its line is written
    timings_us: dict | None = None  # the frame's stage times, completed with ``write``
    grid: np.ndarray | None = None  # the bird's-eye grid's uint8 cells (edge.run.ground)


class Writeback:
    """Does :class:`Job` s in order, in a thread (``threaded``) or at once.

    Args:
        writer: masks, overlays and telemetry (None: nothing written, inputs still disposed of).
        stats: a :class:`edge.run.loop.RunStats`; its write counters and the ``write`` and
            ``total`` latencies are kept here (only here: the loop keeps the other stages).
        consumed: ``"delete"``, a folder to move inputs into, or None.
        threaded: write in a thread (the rover); off, :meth:`submit` writes before returning.
        depth: jobs waiting at most.
    """

    def __init__(
        self,
        writer: OutputWriter | None,
        stats,
        consumed: str | Path | None = None,
        threaded: bool = True,
        depth: int = 2,
    ):
        self.writer, self.stats, self.consumed = writer, stats, consumed
        self.move_to = None if consumed in (None, "delete") else Path(consumed)
        self._queue: queue.Queue | None = queue.Queue(maxsize=depth) if threaded else None
        self._thread = None
        self._failure: BaseException | None = None
        self._abandon = threading.Event()
        if threaded:
            self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a frame's outputs (blocks while ``depth`` jobs wait: the disk sets the pace).

        Raises:
            BaseException: what ended the thread (a bug; write failures are never raised).
        """
        if self._queue is None:
            self._do(job)
        else:
            self._put(job)

    def _put(self, item) -> None:
        while True:
            if self._failure is not None:
                raise self._failure
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise RuntimeError("the write-back thread ended") from self._failure

    def close(self) -> None:
        """Write everything queued, then stop the thread."""
        if self._queue is not None and self._thread is not None and self._thread.is_alive():
            self._put(None)
            self._thread.join()
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        while not self._abandon.is_set():
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if job is None:
                return
            try:
                self._do(job)
            except BaseException as err:  # kept, raised in the loop at the next submit
                self._failure = err
                return

    def _do(self, job: Job) -> None:
        writer, stats, record = self.writer, self.stats, job.record
        write_us = 0.0
        if writer is not None and job.labels is not None:
            t0 = time.perf_counter_ns()
            try:
                writer.write_images(job.name, job.image, job.labels, record, job.grid)
                record["written"] = True
            except OSError as err:
                stats.unwritten += 1
                record["written"] = False
                writer.warn_write_failure(f"the outputs of {record.get('frame')}", err)
            write_us = (time.perf_counter_ns() - t0) / 1e3
        if job.timings_us is not None:
            timings = job.timings_us
            timings["write"] = write_us
            # total: the frame's work on any thread (read, segment, analysis, write)
            timings["total"] = sum(v for k, v in timings.items() if k != "total")
            record["timings_ms"]["write"] = round(write_us / 1e3, 3)
            record["timings_ms"]["total"] = round(timings["total"] / 1e3, 3)
            stats.add_timings(timings, ("write", "total"))  # the loop keeps the other stages
        logged = writer is None or writer.log(record)
        if not logged:  # the line waits in memory: the input stays until it is written
            stats.telemetry_failures += 1
        if self.consumed is not None and job.source is not None and logged:
            try:
                consume(job.source, self.move_to)
            except OSError as err:
                log.warning("could not dispose of %s: %s", job.source.name, err.strerror or err)

    def __enter__(self) -> Writeback:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        elif self._thread is not None and self._thread.is_alive():
            # stopped at once (a second Ctrl-C, an error): the frame being written finishes,
            # the queued ones are left (done again by a restart: they have no line)
            self._abandon.set()
            self._thread.join(timeout=30)
