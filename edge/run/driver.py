"""What ``edge-seg run`` does, as one object: open the model, the camera folder, the labels and the
outputs (:class:`RoverRun`), stream the frames through the loop with signals and the heartbeat
in place (:meth:`RoverRun.execute`), and build the summary. The command only turns options into
:class:`RunOptions` and errors into exit codes.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.io.decode import DEFAULT_MAX_PIXELS
from edge.run.telemetry import SUMMARY_SCHEMA

log = logging.getLogger(__name__)
LOG_FORMAT = "%(levelname)s %(message)s"


class StartError(ValueError):
    """A problem with the run's inputs (model, folder, options): nothing ran."""


class OutputError(OSError):
    """The outputs cannot be written at all (e.g. --out cannot be created)."""


@dataclass
class RunOptions:
    """Everything a run takes; the defaults are ``edge-seg run``'s."""

    camera_dir: Path | None  # None: frames from --bag
    model: Path | None = None  # None: the shipped model set
    out: Path = Path("edge-seg-out")
    overlay: bool = False
    masks: bool = True
    keep: int | None = None
    watch: bool = False
    idle_timeout: float | None = None
    notify: str = "auto"
    grace: float = 2.0
    max_fps: float | None = None
    max_queue: int = 2
    max_frame_pixels: int = DEFAULT_MAX_PIXELS
    consumed: str | Path | None = None  # "delete", a folder to move frames to, or None
    threads: int = 1
    runtime: str = "auto"
    kernels: str = "auto"
    precision: str = "auto"
    flip_average: bool = False  # two invokes a frame, the mean of it and its mirror image
    labels: Path | None = None
    label_format: str = "auto"
    regions_file: Path | None = None
    heartbeat: float = 5.0  # seconds between status.json writes; 0: none
    limit: int | None = None
    reprocess: bool = False  # a restart on the same --out does again the frames already handled
    mcap: Path | None = None  # also record the run as MCAP (edge.io.mcap_sink)
    bag: Path | None = None  # frames from a ROS 2 bag instead of a camera folder
    topic: str = "/navcam/image"  # the bag's image topic

    @property
    def input_name(self) -> str:
        """The frames' source, for the start-up line and systemd's status."""
        return str(self.camera_dir) if self.bag is None else f"{self.bag} {self.topic}"

    def check(self) -> None:
        """Refuse inconsistent options before anything is opened.

        Raises:
            StartError: naming the option and the fix.
        """
        if (self.camera_dir is None) == (self.bag is None):
            raise StartError("give --camera-dir (a folder of frames) or --bag (a ROS 2 bag)")
        if self.bag is not None:
            if not self.bag.exists():
                raise StartError(f"--bag {self.bag} does not exist")
            if self.watch or self.consumed is not None:
                raise StartError("--watch, --delete-consumed and --move-consumed are for a "
                                 "camera folder, not a --bag")  # fmt: skip
        elif not self.camera_dir.is_dir():
            raise StartError(
                f"camera directory {self.camera_dir} does not exist or is not a folder"
            )
        if self.labels is not None and not self.labels.is_dir():
            raise StartError(f"--labels {self.labels} does not exist or is not a folder")
        if self.idle_timeout is not None and not self.watch:
            raise StartError("--idle-timeout only applies with --watch")
        if not self.masks and self.keep is not None and not self.overlay:
            raise StartError("--keep applies to masks and overlays, and both are off")


def _recorded_model(record) -> dict:
    """run.json's ``model``, its fields checked (a damaged file must not stop every start)."""
    if not isinstance(record, dict):
        return {}
    text = ("file", "sha256", "precision", "kernels", "runtime", "name")
    kept = {k: record[k] for k in text if isinstance(record.get(k), str)}
    if isinstance(record.get("threads"), int) and not isinstance(record.get("threads"), bool):
        kept["threads"] = record["threads"]
    if isinstance(record.get("flip_average"), bool):
        kept["flip_average"] = record["flip_average"]
    return kept


def _keepable(before: dict, opts) -> tuple[str | None, str | None]:
    """``(file, None)`` when ``--precision auto`` may take the earlier start's file again
    untimed: the same file, unchanged, under the same threads, kernels and runtime (which the
    timing depended on); else ``(None, why not)``."""
    from edge.run.telemetry import file_sha256

    file = before.get("file")
    if not file or opts.precision != "auto":
        return None, None
    changed = [k for k in ("threads", "kernels", "runtime") if before.get(k, getattr(opts, k))
               != getattr(opts, k)]  # fmt: skip
    if changed:
        return None, f"{', '.join(changed)} changed, so the files were timed again"
    try:
        if file_sha256(Path(file)) != before.get("sha256"):
            return None, f"{file} was replaced since"
    except OSError:
        return None, f"{file} is gone"
    return file, None


def _precision_line(choice) -> str:
    """``int8, timing: float32 3.90 ms, int8 1.10 ms`` and the like."""
    line = f"{choice.precision}, {choice.chosen_by}"
    if choice.timings_ms:
        line += ": " + ", ".join(f"{p} {ms:.2f} ms" for p, ms in choice.timings_ms.items())
    for p, why in (choice.refused or {}).items():
        line += f"; not {p}: {why}"
    return line


def rounded(value, digits: int = 4):
    """A JSON document with every float rounded to ``digits`` significant decimals."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


class RoverRun:
    """One run of the rover's segmentation over a camera folder.

    Args:
        opts: the run's options.
        say: where the start-up lines go (the command passes click's echo to stderr).

    Raises:
        StartError: for a bad model, folder, labels, regions file or option.
        OutputError: when the output folder cannot be written.
    """

    def __init__(self, opts: RunOptions, say: Callable[[str], None] = print):
        from edge.io.camera import CameraDir
        from edge.io.labels import LabelReader
        from edge.io.sinks import OutputWriter
        from edge.models.precision import choose_precision
        from edge.run.hazards import RegionAnalyzer, RegionConfig
        from edge.run.loop import RunContext
        from edge.run.telemetry import RunIdentity, file_sha256, utc_now
        from edge.runtimes.interpreter import RuntimeUnavailable
        from edge.segmenter import Segmenter

        opts.check()
        self.opts, self.say = opts, say
        # what an earlier start of this run ran: --precision auto keeps it (one run, one model)
        before = _recorded_model(RunIdentity.previous_state(opts.out).get("model"))
        keep, self._not_kept = _keepable(before, opts)
        try:
            self.model, self.origin, self.precision = choose_precision(
                opts.model, opts.precision, threads=opts.threads, runtime=opts.runtime,
                kernels=opts.kernels, keep=keep,
            )  # fmt: skip
            if self.origin != "given" or self.precision.chosen_by != "a file was given":
                say(f"model: {self.model} ({self.origin}; {_precision_line(self.precision)})")
            model_sha256 = file_sha256(self.model)  # before loading: the file that runs
            self.segmenter = Segmenter(
                self.model, threads=opts.threads, runtime=opts.runtime, kernels=opts.kernels,
                flip_average=opts.flip_average,
            )  # fmt: skip
            if opts.flip_average:
                say("flip average: each frame segmented as it is and mirrored (two invokes)")
            seg = self.segmenter
            self.truth = (
                None
                if opts.labels is None
                else LabelReader(opts.labels, seg.num_classes, opts.label_format,
                                 opts.max_frame_pixels)
            )  # fmt: skip
            if opts.bag is not None:
                from edge.io.bag import BagFrames

                self.source = BagFrames(opts.bag, opts.topic, opts.max_frame_pixels)
            else:
                self.source = CameraDir(
                    opts.camera_dir,
                    watch=opts.watch,
                    grace_s=opts.grace,
                    max_queue=opts.max_queue,
                    idle_timeout=opts.idle_timeout,
                    max_pixels=opts.max_frame_pixels,
                    notify=opts.notify,
                )
            self.regions = (
                RegionConfig.load(opts.regions_file) if opts.regions_file else RegionConfig()
            )
            # a model never taught "no terrain here" answers sky and hardware with a terrain
            # class: its hazard flags stay off unless a regions file asks for rules explicitly
            self.untaught = seg.metadata.info.get("predicts_ignored_label") is False
            self.hazards = not self.untaught or self.regions.hazards is not None
            self.analyzer = RegionAnalyzer(self.regions, seg.labels, hazards=self.hazards)
        except (ValueError, RuntimeUnavailable) as err:
            raise StartError(str(err)) from err
        except OSError as err:  # e.g. --kernels xnnpack-no-amx where the kernel has no seccomp
            raise StartError(f"cannot start: {err}") from err
        try:
            if isinstance(opts.consumed, Path):
                opts.consumed.mkdir(parents=True, exist_ok=True)
            self.writer = OutputWriter(
                opts.out, overlays=opts.overlay, masks=opts.masks, keep=opts.keep,
                label_set=seg.labels, regions=self.regions.regions, camera=self.regions.camera,
            )  # fmt: skip
        except OSError as err:
            raise OutputError(f"cannot write to --out {opts.out}: {err.strerror or err}") from err
        if opts.mcap is not None:
            from edge.io.mcap_sink import McapSink

            try:
                self.writer.mcap = self._mcap_sink = McapSink(opts.mcap, seg.labels)
            except RuntimeError as err:
                raise StartError(str(err)) from err
            except OSError as err:
                raise OutputError(
                    f"cannot write --mcap {opts.mcap}: {err.strerror or err}"
                ) from err
        self.started_utc = utc_now()
        self._previous: dict | None = None  # the summary.json found at the end, kept then
        last = self.writer.telemetry.last_record if self.writer.telemetry else None
        self.identity = RunIdentity(
            opts.out, last.get("frame_index") if last else None, opts.camera_dir or opts.bag
        )
        self.resume = None
        if not opts.reprocess and opts.bag is None:  # a bag is replayed whole
            from edge.run.resume import resume_point

            self.resume = resume_point(opts.out / "telemetry.jsonl", self.identity.camera_dir,
                                       self.identity.previous_camera_dir)  # fmt: skip
        if self.resume is not None:
            self.source.resume = self.resume
            if opts.consumed is not None:
                self.source.dispose = self._dispose
            say(
                f"resuming run {self.identity.run_id} (restart {self.identity.restarts}): the "
                f"frames of {opts.camera_dir} its last {self.resume.lines} lines record (up to "
                f"{self.resume.last}) are skipped (--reprocess: do them again)"
            )
        self.identity.save()
        meta = seg.metadata
        self.model_info = {"name": meta.info.get("name") or self.model.stem, "sha256": model_sha256}
        precision = meta.info.get("precision") or self.precision.precision
        self._note_model_change(before, precision)
        self.identity.model = {
            "file": str(self.model.resolve()), **self.model_info, "precision": precision,
            "threads": opts.threads, "kernels": opts.kernels, "runtime": opts.runtime,
            "flip_average": opts.flip_average,
        }  # fmt: skip
        self.identity.save()
        short = {
            **self.model_info,
            "sha256": self.model_info["sha256"][:16],
            "precision": precision,
        }
        if opts.flip_average:  # its frames are told apart from a start without it
            short["flip_average"] = True
        self.context = RunContext(self.identity.run_id, short, self.identity, self.analyzer,
                                  self.identity.camera_dir)  # fmt: skip
        if self.untaught:
            log.warning(
                "%s was trained without a background target (loss %s): it labels sky and rover "
                "hardware arbitrarily, so %s",
                self.model.name,
                meta.info.get("loss"),
                "its hazard flags may fire there (the regions file asks for them)"
                if self.hazards
                else "its hazard flags are off (give --regions with hazard rules to force them)",
            )

    def _note_model_change(self, before: dict, precision: str) -> None:
        """Warn when this start of a run runs another model, or the same with --flip-average
        switched, than the last start did: its frames are then told apart only by the
        telemetry's ``model`` field."""
        flip = before.get("flip_average")
        if isinstance(flip, bool) and flip != self.opts.flip_average:
            log.warning(
                "run %s ran %s --flip-average before this start; it now runs %s: the telemetry's "
                "model.flip_average (present only with it) tells their frames apart (a new --out "
                "starts a new run)",
                self.identity.run_id, "with" if flip else "without",
                "with it" if self.opts.flip_average else "without it",
            )  # fmt: skip
        if not before.get("sha256") or before["sha256"] == self.model_info["sha256"]:
            return
        log.warning(
            "run %s ran %s (%s, sha256 %s) before this start; it now runs %s (%s, sha256 %s)%s: "
            "the telemetry's model field tells their frames apart (a new --out starts a new "
            "run)",
            self.identity.run_id, before.get("file"), before.get("precision"),
            before["sha256"][:16], self.model, precision, self.model_info["sha256"][:16],
            f", not kept: {self._not_kept}" if self._not_kept else "",
        )  # fmt: skip

    def _dispose(self, path: Path) -> None:
        """--delete-consumed/--move-consumed for a frame the earlier run handled."""
        from edge.io.sinks import consume

        consume_to = None if self.opts.consumed == "delete" else Path(self.opts.consumed)
        try:
            consume(path, consume_to)
        except OSError as err:
            log.warning("could not dispose of %s: %s", path.name, err.strerror or err)

    def execute(self) -> tuple[dict, bool]:
        """Stream the frames until the input ends, Ctrl-C/SIGTERM or the idle timeout.

        Returns:
            ``(summary, written)``: the summary document and whether summary.json was written.

        Raises:
            KeyboardInterrupt: on a second Ctrl-C (stopped at once, no summary).
        """
        from edge.run.loop import RunStats, StatusLine, run_stream
        from edge.run.telemetry import Heartbeat

        opts, seg = self.opts, self.segmenter
        status, stats = StatusLine(), RunStats()
        # console logging goes above the status line; other handlers (files, tests) stay
        root = logging.getLogger()
        handlers = root.handlers[:]
        console = [
            h for h in handlers if getattr(h, "stream", None) in (sys.stderr, sys.__stderr__)
        ]
        root.handlers = [h for h in handlers if h not in console]
        if console:
            root.addHandler(status.log_handler(logging.Formatter(LOG_FORMAT)))
        beat = None
        if opts.heartbeat:
            beat = Heartbeat(opts.out / "status.json", lambda: self._beat(stats), opts.heartbeat)
            beat.start()
        from edge.run.systemd import Notifier, Watchdog, loop_health

        notifier = Notifier()  # systemd's Type=notify (nothing without NOTIFY_SOCKET)
        watchdog = Watchdog(notifier, lambda: loop_health(stats, self.source, notifier.watchdog_s or 60.0),
                            lambda: _status_text(stats))  # fmt: skip

        signalled = []

        def stop(signum, _frame):
            if signalled:  # the second Ctrl-C: stop now, without the summary
                raise KeyboardInterrupt
            signalled.append(signum)
            stats.stopped_by = signal.Signals(signum).name
            self.source.stop()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        size = "{}x{}".format(*seg.input_shape)
        self.say(
            f"{self.model.name} ({size} {seg.input_dtype.name} in, {seg.num_classes} classes, "
            f"{seg.runtime}, {opts.threads} threads) on {opts.input_name}"
            f"{' (watching)' if opts.watch else ''} -> {opts.out}"
        )
        if self.truth is not None:
            self.say(self.truth.describe())
        from edge.run.history import archive

        ended = None
        notifier.send("READY=1", f"STATUS=segmenting {opts.input_name} with {self.model.name}")
        watchdog.start()
        try:
            with self.writer:
                run_stream(self.source, seg, self.writer, self.truth, status, stats, opts.limit,
                           opts.max_fps, opts.consumed, self.context)  # fmt: skip
                status.close()
                self.identity.save()
                summary = rounded(self.summary(stats))
                try:
                    if self._previous is not None:  # kept in summaries/ (edge/run/history.py)
                        archive(opts.out, self._previous)
                    self.writer.write_json("summary.json", summary)
                    written = True
                except OSError as err:
                    written = False
                    self.say(
                        f"summary.json not written ({err.strerror or err}); the summary follows"
                    )
        except KeyboardInterrupt:
            ended = "stopped: interrupted twice, no summary"
            raise
        except BaseException as err:
            ended = f"failed: {type(err).__name__}"
            raise
        finally:
            watchdog.stop()
            notifier.send("STOPPING=1", f"STATUS={ended or 'stopped: ' + stats.stopped_by}")
            notifier.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            root.handlers = handlers
            if beat is not None:
                beat.stop(ended or f"stopped: {stats.stopped_by}")
        return summary, written

    def summary(self, stats) -> dict:
        """The summary document (schema ``SUMMARY_SCHEMA``) of the run so far."""
        from edge.run.telemetry import software_versions, utc_now

        opts, seg, meta = self.opts, self.segmenter, self.segmenter.metadata
        summary = {
            "schema": SUMMARY_SCHEMA,
            "run_id": self.identity.run_id,
            "restarts": self.identity.restarts,
            "resumed": None
            if self.resume is None
            else {
                "after": self.resume.last,
                "skipped": self.source.skipped,
                "lines_read": self.resume.lines,
            },
            "started_utc": self.started_utc,
            "ended_utc": utc_now(),
            "model": {
                **self.model_info,
                "file": str(self.model),
                "chosen": self.origin,
                "precision": meta.info.get("precision"),
                "architecture": meta.info.get("architecture"),
                "loss": meta.info.get("loss"),
                "metadata": meta.source,
                "input_hw": list(seg.input_shape),
                "classes": list(seg.labels.names),
                "flip_average": opts.flip_average,
            },
            "software": software_versions(seg.runtime),
            "execution": {**seg.execution, "precision": self.precision.record()},
            **stats.summary(),
        }
        unknown = getattr(self.source, "unknown", None)
        summary["skipped_files"] = dict(sorted(unknown.items())) if unknown else {}
        summary["regions"] = self.analyzer.settings()  # the rules applied
        summary["config"] = {
            "model": str(self.model),
            "camera_dir": None if opts.camera_dir is None else str(opts.camera_dir),
            "bag": None if opts.bag is None else {"path": str(opts.bag), "topic": opts.topic},
            "runtime": seg.runtime,
            "threads": opts.threads,
            "kernels": opts.kernels,
            "precision": opts.precision,
            "flip_average": opts.flip_average,
            "watch": opts.watch,
            "notify": self.source.mode if opts.watch else None,
            "max_fps": opts.max_fps,
            "max_queue": opts.max_queue,
            "labels": str(opts.labels) if opts.labels else None,
            "label_format": self.truth.format if self.truth else None,
            "reprocess": opts.reprocess,
            "mcap": [str(p) for p in self._mcap_files] or None,
        }
        from edge.run.history import previous_summary, run_totals

        self._previous = previous_summary(opts.out)
        try:
            summary["run_totals"] = run_totals(self._previous, summary, seg.labels)
        except (ValueError, TypeError, OverflowError) as err:  # never at the price of the summary
            log.warning("run totals left out: %s", err)
            summary["run_totals"] = None
        return summary

    def outputs(self, written: bool) -> str:
        """The closing line: what was written where (summary.json only when it was)."""
        parts = ["masks/"] if self.opts.masks else []
        parts += ["overlays/"] if self.opts.overlay else []
        parts += ["telemetry.jsonl"] + (["summary.json"] if written else [])
        parts += ["run.json"] + (["status.json"] if self.opts.heartbeat else [])
        if (self.opts.out / "summaries").is_dir():
            parts.append("summaries/")
        line = f"outputs in {self.opts.out}/ ({', '.join(parts)})"
        if self._mcap_files:
            line += "; MCAP: " + ", ".join(str(p) for p in self._mcap_files)
        return line

    @property
    def _mcap_files(self) -> list:
        sink = getattr(self, "_mcap_sink", None)
        return list(sink.files) if sink is not None else []

    def _beat(self, stats) -> dict:
        age = None if stats.last_frame_unix_s is None else time.time() - stats.last_frame_unix_s
        return {
            "run_id": self.identity.run_id,
            "model": self.model_info["name"],
            "camera_dir": self.opts.input_name,
            "frames": stats.frames,
            "errors": stats.errors,
            "dropped": stats.dropped,
            "unwritten": stats.unwritten,
            "hazard_frames": stats.hazard_frames,
            "next_frame_index": self.identity.next_index,
            "last_frame_unix_s": stats.last_frame_unix_s,
            "last_frame_age_s": None if age is None else round(age, 1),
        }


def _status_text(stats) -> str:
    """systemd's STATUS= line: what `systemctl status` shows."""
    return (f"{stats.frames} frames, {stats.errors} errors, {stats.dropped} dropped, "
            f"{stats.hazard_frames} hazard frames, {stats.fps:.1f} fps")  # fmt: skip
