"""`edge-seg`: the rover command line (no TensorFlow)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

from edge.frames import DEFAULT_MAX_PIXELS


class Fatal(click.ClickException):
    """A problem with the command's inputs (model, folder, options): one line and exit code 2."""

    exit_code = 2


class OutputFatal(click.ClickException):
    """The outputs cannot be written at all (e.g. --out cannot be created): exit code 6."""

    exit_code = 6


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages (e.g. each dropped frame).")
def main(verbose: bool) -> None:
    """Run Mars terrain segmentation .tflite models on the rover.

    Labels: 0 background, 1 soil, 2 bedrock, 3 sand, 4 big rock.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s"
    )


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tensors", is_flag=True, help="Also list every tensor with its quantization.")
def info(model: Path, tensors: bool) -> None:
    """Describe MODEL (.tflite): input/output, quantization, classes, preprocessing, ops, size.

    Exit codes: 0 described, 2 not a readable model.
    """
    from edge.modelinfo import describe
    from edge.runtime import RuntimeUnavailable

    if not model.is_file():
        raise Fatal(f"no model at {model}")
    try:
        click.echo(describe(model, tensors))
    except (ValueError, OSError, RuntimeUnavailable) as err:
        raise Fatal(str(err)) from err


@main.command()
@click.option(
    "--camera-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder the camera writes frames into (PNG, JPEG, PGM or .npy; taken in name order).",
)
@click.option(
    "--model", required=True, type=click.Path(path_type=Path), help="The .tflite (int8 or float)."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("edge-seg-out"),
    show_default=True,
    help="Where masks/, overlays/, telemetry.jsonl (appended to) and summary.json go.",
)
@click.option("--overlay", is_flag=True, help="Also write colour overlays (overlays/<frame>.png).")
@click.option("--no-masks", is_flag=True, help="Do not write masks (telemetry only).")
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=None,
    help="Keep only the newest N masks and overlays (a bounded footprint on an endless run).",
)
@click.option(
    "--watch",
    is_flag=True,
    help="After the frames already there, keep following new ones (until Ctrl-C or SIGTERM).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --watch: stop after this many seconds without a new frame (exit code 5).",
)
@click.option(
    "--notify",
    type=click.Choice(["auto", "inotify", "poll"]),
    default="auto",
    show_default=True,
    help="With --watch: how new files are noticed. inotify (Linux, with the watchdog package) "
    "takes a file when its writer closes it, at a cost independent of the folder's size; poll "
    "lists the folder when it changes and takes names after the last one taken.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="With --watch: seconds a file that does not look complete may stay unchanged before it "
    "is taken (and reported bad); a frame that fails right after being written waits as long.",
)
@click.option(
    "--max-fps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Segment at most this many frames per second (power budget); with --watch, frames "
    "arriving faster are dropped oldest first and counted.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="With --watch: new frames allowed to wait; older ones beyond this are dropped.",
)
@click.option(
    "--max-frame-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse larger frames (and label files) unread: decompression bombs and frames that "
    "would exhaust memory are reported as bad frames.",
)
@click.option(
    "--delete-consumed", is_flag=True, help="Delete each input frame once it has been handled."
)
@click.option(
    "--move-consumed",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Move each input frame into this folder once it has been handled.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=min(4, os.cpu_count() or 1),
    show_default="min(4, CPU cores)",
    help="Interpreter threads.",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "litert", "tflite-runtime"]),
    default="auto",
    show_default=True,
    help="auto: LiteRT (ai-edge-litert), else tflite-runtime.",
)
@click.option("--no-xnnpack", is_flag=True, help="Use the reference kernels (for comparison).")
@click.option(
    "--labels",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of true label files named like the frames (NAME.png, NAME_merged.png or "
    "NAME.npy): adds the mIoU and the big-rock figures to the summary.",
)
@click.option(
    "--label-format",
    type=click.Choice(["auto", "ai4mars", "model"]),
    default="auto",
    show_default=True,
    help="ai4mars: 0-3 soil, bedrock, sand, big rock and 255 unlabelled (the release's PNGs); "
    "model: the model's own values; auto: ai4mars for a folder that looks like the release's.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Stop after this many frames."
)
def run(
    camera_dir: Path,
    model: Path,
    out: Path,
    overlay: bool,
    no_masks: bool,
    keep: int | None,
    watch: bool,
    idle_timeout: float | None,
    notify: str,
    grace: float,
    max_fps: float | None,
    max_queue: int,
    max_frame_pixels: int,
    delete_consumed: bool,
    move_consumed: Path | None,
    threads: int,
    runtime: str,
    no_xnnpack: bool,
    labels: Path | None,
    label_format: str,
    limit: int | None,
) -> None:
    """Segment the frames of --camera-dir with --model; write masks, overlays and telemetry.

    A frame that cannot be read or segmented is logged and skipped; one whose outputs cannot be
    written (a full disk) is still segmented and counted. On the end of input, Ctrl-C or SIGTERM
    the summary (frames, errors, p50/p90/p99 latency, fps, mIoU with --labels) is printed and
    written to OUT/summary.json.

    \b
    Exit codes:
      0  done (or stopped by Ctrl-C/SIGTERM)
      2  bad model, camera folder or options: nothing ran
      3  the input held no frame
      4  frames came, none could be segmented
      5  --idle-timeout: the camera fell silent
      6  outputs could not all be written (e.g. a full disk)
    """
    from edge.frames import CameraDir, LabelReader
    from edge.pipeline import RunStats, StatusLine, format_summary, outcome, run_stream
    from edge.runtime import RuntimeUnavailable
    from edge.segmenter import Segmenter
    from edge.sinks import OutputWriter

    if not camera_dir.is_dir():
        raise Fatal(f"camera directory {camera_dir} does not exist or is not a folder")
    if labels is not None and not labels.is_dir():
        raise Fatal(f"--labels {labels} does not exist or is not a folder")
    if idle_timeout is not None and not watch:
        raise Fatal("--idle-timeout only applies with --watch")
    if delete_consumed and move_consumed is not None:
        raise Fatal("choose one of --delete-consumed and --move-consumed")
    if no_masks and keep is not None and not overlay:
        raise Fatal("--keep applies to masks and overlays, and both are off")
    try:
        segmenter = Segmenter(model, threads=threads, runtime=runtime, xnnpack=not no_xnnpack)
        truth = None if labels is None else LabelReader(labels, segmenter.num_classes, label_format)
        source = CameraDir(
            camera_dir,
            watch=watch,
            grace_s=grace,
            max_queue=max_queue,
            idle_timeout=idle_timeout,
            max_pixels=max_frame_pixels,
            notify=notify,
        )
    except (ValueError, RuntimeUnavailable) as err:
        raise Fatal(str(err)) from err
    try:
        if move_consumed is not None:
            move_consumed.mkdir(parents=True, exist_ok=True)
        writer = OutputWriter(
            out, overlays=overlay, masks=not no_masks, keep=keep, label_set=segmenter.labels
        )
    except OSError as err:
        raise OutputFatal(f"cannot write to --out {out}: {err.strerror or err}") from err
    consumed = "delete" if delete_consumed else move_consumed
    status = StatusLine()
    stats = RunStats()

    def stop(signum, _frame):
        if source.stopped:  # the second Ctrl-C: stop now, without the summary
            raise KeyboardInterrupt
        stats.stopped_by = signal.Signals(signum).name
        source.stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    size = "{}x{}".format(*segmenter.input_shape)
    click.echo(
        f"{model.name} ({size} {segmenter.input_dtype.name} in, {segmenter.num_classes} classes, "
        f"{segmenter.runtime}, {threads} threads) on {camera_dir}"
        f"{' (watching)' if watch else ''} -> {out}",
        err=True,
    )
    if truth is not None:
        click.echo(truth.describe(), err=True)
    try:
        with writer:
            run_stream(source, segmenter, writer, truth, status, stats, limit, max_fps, consumed)
            status.close()
            summary = stats.summary()
            summary["config"] = {
                "model": str(model),
                "camera_dir": str(camera_dir),
                "runtime": segmenter.runtime,
                "threads": threads,
                "xnnpack": not no_xnnpack,
                "watch": watch,
                "notify": source.mode if watch else None,
                "max_fps": max_fps,
                "max_queue": max_queue,
                "labels": str(labels) if labels else None,
                "label_format": truth.format if truth else None,
            }
            try:
                writer.write_json("summary.json", summary)
                written = True
            except OSError as err:
                written = False
                click.echo(
                    f"summary.json not written ({err.strerror or err}); the summary follows",
                    err=True,
                )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(format_summary(summary))
    click.echo(
        f"outputs in {out}/ ({'' if no_masks else 'masks/, '}{'overlays/, ' if overlay else ''}"
        "telemetry.jsonl, summary.json)"
    )
    code = outcome(summary, written)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
