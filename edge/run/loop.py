"""The rover loop: frames in, masks, overlays and telemetry out, statistics kept.

One bad frame never ends a run: a frame that cannot be read or segmented is logged, counted in
the summary and skipped; a frame whose outputs cannot be written (a full disk) is segmented
anyway, its telemetry waits for room, and the summary counts it. Everything kept per run is
bounded: latency percentiles come from fixed-size histograms (:mod:`edge.run.quantiles`, 1 %
relative error), so memory and per-frame cost stay flat on an endless stream.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from edge.contract.labels import LabelSet
from edge.contract.metrics import class_fractions, confusion_matrix, report_from_confusion
from edge.io.decode import BadFrame, Frame
from edge.io.labels import LabelReader
from edge.io.sinks import OutputWriter
from edge.run.hazards import RegionAnalyzer
from edge.run.memory import TRIM_EVERY, AllocatorTrim
from edge.run.prefetch import Prefetch
from edge.run.quantiles import LogHistogram
from edge.run.telemetry import TELEMETRY_SCHEMA, RunIdentity
from edge.run.writeback import Job, Writeback
from edge.segmenter import Segmenter

log = logging.getLogger(__name__)
STAGES = ("read", "preprocess", "invoke", "postprocess", "analyze", "write", "total")
PERCENTILE_ERROR = 0.01  # relative error of every latency percentile in the summary


@dataclass
class RunContext:
    """What every telemetry line says about the run (all optional: a benchmark needs none).

    Attributes:
        run_id: the run (an output folder; see :class:`edge.run.telemetry.RunIdentity`).
        model: ``{"name", "sha256"}`` of the model.
        identity: gives each frame its index, continued across restarts of the run.
        analyzer: region fractions, hazard flags and confidence for every frame.
        camera_dir: the camera folder, resolved (each line names it: a restart resumes from the
            lines of its own folder, :mod:`edge.run.resume`).
    """

    run_id: str = ""
    model: dict = field(default_factory=dict)
    identity: RunIdentity | None = None
    analyzer: RegionAnalyzer | None = None
    camera_dir: str = ""


def _histograms() -> dict[str, LogHistogram]:
    return {s: LogHistogram(PERCENTILE_ERROR) for s in STAGES}


def _recent() -> dict[str, deque]:
    return {s: deque(maxlen=30) for s in STAGES}


@dataclass
class RunStats:
    """What a run has done so far; ``summary()`` turns it into the report."""

    frames: int = 0  # segmented
    errors: int = 0  # unreadable or unsegmentable frames
    dropped: int = 0  # live frames skipped because the model was behind the camera
    unwritten: int = 0  # segmented frames whose mask or overlay could not be written
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    cpu_started: float = field(default_factory=time.process_time)  # the process's, all threads
    cpu_ended: float | None = None
    latency: dict[str, LogHistogram] = field(default_factory=_histograms)
    recent: dict[str, deque] = field(default_factory=_recent)  # for the status line
    label_set: LabelSet | None = None  # the model's, set by run_stream
    confusion: np.ndarray | None = None  # (C, C), made at the first labelled frame
    scored_frames: int = 0
    labels_missing: int = 0  # frames whose label file was not found (with --labels)
    stopped_by: str = "end of input"
    telemetry_failures: int = 0  # writes the disk refused (the lines waited)
    telemetry_lost: int = 0  # lines dropped from the bounded waiting queue
    telemetry_unsaved: int = 0  # lines still waiting at the end
    hazard_frames: int = 0  # frames whose hazard flag fired
    last_frame_unix_s: float | None = None
    in_frame_since: float | None = None  # monotonic start of the frame in hand (None: between)
    warned_label_shape: bool = False

    @property
    def wall_s(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def cpu_s(self) -> float:
        """CPU seconds of the whole process since the run began (every thread: a pool that
        spins on another core counts, though the wall time hides it)."""
        return (self.cpu_ended or time.process_time()) - self.cpu_started

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def recent_ms(self, stage: str) -> float:
        values = self.recent[stage]
        return sum(values) / len(values) / 1e3 if values else 0.0

    def add_timings(self, timings_us: dict[str, float], stages: tuple = STAGES) -> None:
        for stage in stages:
            self.latency[stage].add(timings_us[stage] / 1e3)
            self.recent[stage].append(timings_us[stage])

    def summary(self) -> dict:
        """Counts, fps, per-stage latency percentiles (ms), mIoU when labelled, peak RSS."""
        latency = {s: h.summary() for s, h in self.latency.items() if h.count}
        invoke = self.latency["invoke"]
        out = {
            "frames": self.frames,
            "errors": self.errors,
            "dropped": self.dropped,
            "unwritten": self.unwritten,
            "telemetry_failures": self.telemetry_failures,
            "telemetry_lost": self.telemetry_lost,
            "telemetry_unsaved": self.telemetry_unsaved,
            "stopped_by": self.stopped_by,
            "wall_s": round(self.wall_s, 3),
            "fps": round(self.fps, 2),
            "cpu_s": round(self.cpu_s, 3),
            "cpu_ms_per_frame": round(self.cpu_s * 1e3 / self.frames, 3) if self.frames else None,
            "invoke_only_fps": round(1e3 / invoke.mean, 2) if invoke.count else None,
            "latency_ms": latency,
            "latency_relative_error": PERCENTILE_ERROR,
            "peak_rss_mb": peak_rss_mb(),
            "scored_frames": self.scored_frames,
            "labels_missing": self.labels_missing,
            "hazard_frames": self.hazard_frames,
        }
        out["miou"] = None  # present without labels too: a reader need not guess
        if self.scored_frames:
            report = report_from_confusion(self.confusion, self.label_set).as_dict()
            out["miou"] = report["mean_iou"]
            out["iou"] = report["per_class_iou"]
            out["hazards"] = report["hazards"]
            out["confusion"] = self.confusion.tolist()  # rows: labels; the run's totals add them
        return out


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (None where the OS cannot tell).

    Linux: ``VmHWM`` of ``/proc/self/status``. Not ``ru_maxrss``, which survives ``exec`` and so
    reports the parent's size for a child started by a big process (the benchmark's workers).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def run_stream(
    frames: Iterable[Frame],
    segmenter: Segmenter,
    writer: OutputWriter | None = None,
    labels: LabelReader | None = None,
    on_frame: Callable[[RunStats], None] | None = None,
    stats: RunStats | None = None,
    limit: int | None = None,
    max_fps: float | None = None,
    consumed: str | Path | None = None,
    context: RunContext | None = None,
    overlap: bool = True,
    trim_every: int = TRIM_EVERY,
) -> RunStats:
    """Segment every frame of ``frames``, write the outputs, keep the statistics.

    Args:
        frames: a frame source (:class:`edge.io.camera.CameraDir`, :class:`edge.io.npz.NpzFrames`).
            Its ``dropped`` and ``idle`` attributes, if any, are reported; its ``wait`` method,
            if any, paces the loop (so that :meth:`~edge.io.camera.CameraDir.stop` wakes it).
        segmenter: the model.
        writer: where masks, overlays and telemetry go (None: nowhere, e.g. a benchmark).
        labels: true label maps for the frames (named like them); they make the summary's mIoU.
        on_frame: called after every frame (a status line).
        stats: continue these statistics (the caller may hold them to report after a signal).
        limit: stop after this many frames (segmented or not).
        max_fps: take frames no faster than this; a live source drops what piles up meanwhile.
        consumed: what to do with an input file once segmented: ``"delete"``, a folder to move
            it into, or None (leave it). Unreadable frames stay, so that a rewrite is retried.
        context: run id, model and frame index for every telemetry line, and the region
            analysis (see :class:`RunContext`).
        overlap: read the next frame and write the last one in threads while this one is
            segmented (:class:`edge.run.prefetch.Prefetch`, :class:`edge.run.writeback.Writeback`);
            off, each frame is read, segmented and written in turn.
        trim_every: give the C allocator's free memory back every this many frames (0: never;
            :mod:`edge.run.memory`).

    Returns:
        The statistics; ``stats.summary()`` is the report.
    """
    stats = stats or RunStats()
    stats.label_set = segmenter.labels
    context = context or RunContext()
    period = 1.0 / max_fps if max_fps else 0.0
    wait = getattr(frames, "wait", None) or time.sleep
    taken = 0
    # the next frame is read and the last one written while this one is segmented (the source
    # itself stays the one whose drop count and pacing the loop reads)
    reading = Prefetch(frames) if overlap else contextlib.nullcontext(frames)
    trim = AllocatorTrim(trim_every)
    with Writeback(writer, stats, consumed, threaded=overlap) as outputs, reading as stream:
        for frame in stream:
            taken += 1
            frame_start = time.perf_counter()
            stats.in_frame_since = time.monotonic()  # systemd's watchdog reads it
            dropped_before = stats.dropped
            stats.dropped = (
                getattr(frames, "dropped", 0)
                if frame.dropped_before is None
                else frame.dropped_before  # the source may have read (and dropped) ahead
            )
            record = _header(frame, context)
            record["dropped"] = stats.dropped - dropped_before  # since the previous line
            job = _segment_one(frame, segmenter, writer, labels, stats, context.analyzer)
            job.record = {**record, **job.record}
            if frame.image is not None:  # an unreadable frame stays, for a rewrite
                job.source = frame.path
            outputs.submit(job)  # files, then the line, then the input's disposal
            stats.in_frame_since = None
            trim.frame()
            if on_frame:
                on_frame(stats)
            if limit is not None and taken >= limit:
                stats.stopped_by = f"limit of {limit} frames"
                break
            if period:
                wait(max(0.0, frame_start + period - time.perf_counter()))
    stats.dropped = getattr(frames, "dropped", stats.dropped)
    if getattr(frames, "idle", False):
        stats.stopped_by = "idle timeout"
    if writer is not None and writer.telemetry is not None:
        writer.telemetry.write_pending()
        stats.telemetry_lost = writer.telemetry.lost
        stats.telemetry_unsaved = len(writer.telemetry.pending)
    stats.ended, stats.cpu_ended = time.perf_counter(), time.process_time()
    if labels is not None and stats.frames and not stats.scored_frames:
        log.warning(
            "no label in %s matched any of the %d frames (looked for NAME.png, NAME_merged.png "
            "and NAME.npy): no mIoU",
            labels.folder,
            stats.frames,
        )
    return stats


def _header(frame: Frame, context: RunContext) -> dict:
    """The fields every telemetry line starts with."""
    record: dict = {"schema": TELEMETRY_SCHEMA}
    if context.run_id:
        record["run_id"] = context.run_id
    if context.model:
        record["model"] = context.model
    if context.identity is not None:
        record["frame_index"] = context.identity.take_index()
    record["stream_index"] = frame.index
    record["t_unix_s"] = round(time.time(), 3)
    record["frame"] = frame.name
    if frame.path is not None:
        if context.camera_dir:
            record["camera_dir"] = context.camera_dir
        record["source"] = frame.path.name
    if frame.mtime_ns is not None:
        record["source_mtime_ns"] = frame.mtime_ns  # a resumed run's mark (see CameraDir)
    if frame.capture is not None:
        record["capture"] = frame.capture  # when and by which camera (edge.io.capture)
    return record


def _segment_one(
    frame: Frame,
    segmenter: Segmenter,
    writer: OutputWriter | None,
    labels: LabelReader | None,
    stats: RunStats,
    analyzer: RegionAnalyzer | None = None,
) -> Job:
    """Segment, analyse and score one frame: its telemetry fields (status ok or error) and
    what to write, as a :class:`Job` for the write-back."""
    analysis = None
    try:
        if frame.image is None:
            raise BadFrame(frame.error or f"{frame.name}: unreadable")
        rock = None if analyzer is None else analyzer.rock_index
        seg = segmenter.segment(frame.image, with_confidence=analyzer is not None,
                                class_probability=rock)  # fmt: skip
        t1 = time.perf_counter_ns()
        # the analysis first: the navigation stack waits for it, the files can follow; it reads
        # the model-size maps (the same figures as the frame-size ones, at a fraction of the
        # pixels); it fails for this frame alone (e.g. a frame the camera model does not fit)
        if analyzer is not None:
            pixel_map = segmenter.pixel_map(frame.image.shape)
            analysis = analyzer.analyze_mapped(seg.model_labels, seg.model_top, pixel_map,
                                               seg.model_class_probability)  # fmt: skip
    except Exception as err:  # one bad frame must not end the run
        stats.errors += 1
        reason = str(err) if isinstance(err, BadFrame) else f"{type(err).__name__}: {err}"
        log.warning("skipped frame %s: %s", frame.name, reason)
        return Job({"status": "error", "error": reason})
    t2 = time.perf_counter_ns()
    name = frame.name if writer is None else writer.output_name(frame.name, frame.path)

    timings = dict(seg.timings_us)
    timings["read"] = frame.read_us
    timings["analyze"] = (t2 - t1) / 1e3
    stats.add_timings(timings, ("read", "preprocess", "invoke", "postprocess", "analyze"))
    stats.frames += 1
    stats.last_frame_unix_s = time.time()
    _score(frame, seg.labels, labels, stats)
    record = {
        "status": "ok",
        "output": name,
        "frame_shape_hw": list(seg.labels.shape),
        "timings_ms": {k: round(v / 1e3, 3) for k, v in timings.items()},  # + write, total
        "class_fractions": {
            n: round(float(f), 4)
            for n, f in zip(
                stats.label_set.names, class_fractions(seg.labels, stats.label_set.num_classes)
            )
        }
        if analysis is None
        else analysis.pop("class_fractions"),
    }
    grid = None
    if analysis is not None:
        grid = analysis.pop("_grid", None)  # a file, not a telemetry field
        record.update(analysis)
        stats.hazard_frames += analysis["hazard"]
    if frame.reduced > 1:
        record["decoded_reduced_by"] = frame.reduced
    return Job(record, name, frame.image, seg.labels, timings_us=timings, grid=grid)


def _score(frame: Frame, predicted: np.ndarray, labels: LabelReader | None, stats: RunStats):
    truth = _truth(frame, labels, stats)
    if truth is None:
        return
    n = stats.label_set.num_classes
    if truth.size and (truth.min() < 0 or truth.max() >= n):
        log.warning("label of %s holds values outside 0..%d: not scored", frame.name, n - 1)
        return
    if truth.shape != predicted.shape:
        if not stats.warned_label_shape:
            log.warning(
                "label %s is %s but the frame is %s: not scored (warned once)",
                frame.name,
                truth.shape,
                predicted.shape,
            )
            stats.warned_label_shape = True
        return
    if stats.confusion is None:
        stats.confusion = np.zeros((n, n), np.int64)
    stats.confusion += confusion_matrix(truth, predicted, n)
    stats.scored_frames += 1


def _truth(frame: Frame, labels: LabelReader | None, stats: RunStats) -> np.ndarray | None:
    if frame.label is not None:
        return frame.label
    if labels is None:
        return None
    try:
        truth = labels.read_for(frame.name)
    except BadFrame as err:
        log.warning("label for %s not used: %s", frame.name, err)
        return None
    if truth is None:
        stats.labels_missing += 1
        if stats.labels_missing == 20 and not stats.scored_frames:
            log.warning(
                "no label in %s for the first 20 frames (looked for NAME.png, NAME_merged.png, "
                "NAME.npy); is --labels the right folder?",
                labels.folder,
            )
    return truth


class StatusLine:
    """A live one-line status on a terminal (rewritten in place), a line every few s otherwise.

    Log messages go through :meth:`log_handler`, which clears the status line, writes the
    message on a line of its own and redraws the status, so warnings never garble it.

    Args:
        stream: where to write (stderr by default).
        every_s: the refresh period on a terminal; off a terminal, a line every 20x that.
    """

    def __init__(self, stream: TextIO | None = None, every_s: float = 0.25):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s if self.tty else every_s * 20
        self._last = 0.0
        self._text = ""

    def __call__(self, stats: RunStats) -> None:
        now = time.perf_counter()
        if now - self._last < self.every_s:
            return
        self._last = now
        line = (
            f"frames {stats.frames}  {stats.fps:5.1f} fps  "
            f"read {stats.recent_ms('read'):.2f}  pre {stats.recent_ms('preprocess'):.2f}  "
            f"invoke {stats.recent_ms('invoke'):.2f}  post {stats.recent_ms('postprocess'):.2f}  "
            f"analyze {stats.recent_ms('analyze'):.2f}  write {stats.recent_ms('write'):.2f} ms  "
            f"errors {stats.errors}  hazards {stats.hazard_frames}  "
            f"dropped {stats.dropped}"
            + (f"  unwritten {stats.unwritten}" if stats.unwritten else "")
        )
        if self.tty:
            self._text = line
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def log_handler(self, formatter: logging.Formatter | None = None) -> logging.Handler:
        """A logging handler that writes above the status line instead of through it."""
        status = self

        class Handler(logging.StreamHandler):
            def emit(self, record: logging.LogRecord) -> None:
                if status.tty and status._text:
                    self.stream.write("\r\x1b[K")
                super().emit(record)
                if status.tty and status._text:
                    self.stream.write(status._text)
                    self.flush()

        handler = Handler(self.stream)
        if formatter is not None:
            handler.setFormatter(formatter)
        return handler

    def close(self) -> None:
        if self.tty and self._text:
            self.stream.write("\n")
            self.stream.flush()
            self._text = ""


def format_summary(summary: dict) -> str:
    """The end-of-run screen."""
    lines = [
        f"frames {summary['frames']}  errors {summary['errors']}  dropped {summary['dropped']}"
        + (f"  unwritten {summary['unwritten']}" if summary.get("unwritten") else "")
        + f"  ({summary['stopped_by']}, {summary['wall_s']:.1f} s)",
        f"pipeline {summary['fps']:.1f} fps"
        + (
            f"  (invoke alone {summary['invoke_only_fps']:.1f} fps)"
            if summary.get("invoke_only_fps")
            else ""
        )
        + (
            f"  CPU {summary['cpu_ms_per_frame']:.1f} ms/frame"
            if summary.get("cpu_ms_per_frame")
            else ""
        )
        + (f"  peak RSS {summary['peak_rss_mb']:.0f} MiB" if summary.get("peak_rss_mb") else ""),
    ]
    if summary.get("skipped_files"):
        kinds = summary["skipped_files"]
        count = sum(kinds.values())
        what = "file that is not a frame" if count == 1 else "files that are not frames"
        lines.append(
            f"skipped {count} {what}: " + ", ".join(f"{n} {suffix}" for suffix, n in kinds.items())
        )
    if summary.get("resumed"):
        resumed = summary["resumed"]
        lines.append(
            f"resumed after {resumed['after']}: skipped {resumed['skipped']} frames the earlier "
            "run handled"
        )
    if summary["latency_ms"]:
        lines.append(f"{'latency ms':<12}{'mean':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
        for stage, row in summary["latency_ms"].items():
            lines.append(
                f"{stage:<12}"
                + "".join(f"{row[k]:8.2f}" for k in ("mean", "p50", "p90", "p99", "max"))
            )
    if summary.get("miou") is not None:
        per_class = "  ".join(
            f"{name} {'-' if v is None else f'{v:.3f}'}" for name, v in summary["iou"].items()
        )
        lines.append(
            f"mIoU {summary['miou']:.4f} over {summary['scored_frames']} labelled frames  "
            f"({per_class})"
        )
    totals = summary.get("run_totals") or {}
    if totals.get("starts", 1) > 1:
        miou = "" if totals.get("miou") is None else f", mIoU {totals['miou']:.4f}"
        lines.append(
            f"the run: start {totals['starts']}; since {totals.get('since_utc')} "
            f"{totals['starts_summarised']} start(s) summarised: frames {totals['frames']}, "
            f"errors {totals['errors']}, dropped {totals['dropped']}, hazard frames "
            f"{totals['hazard_frames']}{miou} (run_totals; earlier summaries in summaries/)"
        )
    if summary.get("telemetry_failures"):
        lines.append(
            f"telemetry: {summary['telemetry_failures']} refused writes (disk full?); "
            f"{summary['telemetry_lost'] + summary['telemetry_unsaved']} lines never written"
        )
    return "\n".join(lines)


# Exit codes of `edge-seg run` (and `edge-seg info` for a bad model), documented in the README.
EXIT_OK = 0
EXIT_BAD_INPUT = 2  # bad model, camera folder or options: nothing ran
EXIT_NO_FRAMES = 3  # the input held no frame
EXIT_ALL_FAILED = 4  # frames came, none could be segmented
EXIT_IDLE = 5  # --idle-timeout: the camera fell silent
EXIT_OUTPUT = 6  # outputs (masks, overlays, telemetry, summary) could not all be written


def outcome(summary: dict, summary_written: bool = True) -> int:
    """The exit code a supervisor reads from a finished run's summary."""
    lost = summary["telemetry_lost"] + summary["telemetry_unsaved"]
    if summary["unwritten"] or lost or not summary_written:
        return EXIT_OUTPUT
    if summary["errors"] and not summary["frames"]:
        return EXIT_ALL_FAILED
    if summary["stopped_by"] in ("SIGINT", "SIGTERM"):
        return EXIT_OK
    if summary["stopped_by"] == "idle timeout":
        return EXIT_IDLE
    if not summary["frames"] and not (summary.get("resumed") or {}).get("skipped"):
        return EXIT_NO_FRAMES  # (a restart that finds only frames already handled is fine)
    return EXIT_OK


def exit_reason(code: int, summary: dict, summary_written: bool = True) -> str:
    """One line for the log: why a run ends with ``code`` (an exit status other than 0 must
    never come without a word)."""
    lost = summary.get("telemetry_lost", 0) + summary.get("telemetry_unsaved", 0)
    missing = [f"{summary.get('unwritten', 0)} frames' files"] if summary.get("unwritten") else []
    missing += [f"{lost} telemetry lines"] if lost else []
    missing += [] if summary_written else ["summary.json"]
    reasons = {
        EXIT_OUTPUT: f"outputs not all written ({', '.join(missing) or 'see above'}; the disk "
        "full or read-only?)",
        EXIT_ALL_FAILED: f"none of the {summary.get('errors', 0)} frames could be segmented "
        "(the warnings above say why)",
        EXIT_IDLE: "no new frame within --idle-timeout",
        EXIT_NO_FRAMES: "the input held no frame",
    }
    return f"exit {code}: {reasons.get(code, 'see summary.json')}"
