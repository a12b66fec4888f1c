"""`edge-seg`: the rover command line (no TensorFlow)."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import click


class Fatal(click.ClickException):
    """A problem with the command's inputs (model, folder): one line and exit code 2."""

    exit_code = 2


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
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tensors", is_flag=True, help="Also list every tensor with its quantization.")
def info(model: Path, tensors: bool) -> None:
    """Describe MODEL (.tflite): input/output, quantization, ops, size."""
    from edge.modelinfo import describe

    try:
        click.echo(describe(model, tensors))
    except ValueError as err:
        raise click.ClickException(str(err)) from err


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
@click.option(
    "--watch",
    is_flag=True,
    help="After the frames already there, keep waiting for new ones (until Ctrl-C or SIGTERM).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --watch: stop after this many seconds without a new frame.",
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
    watch: bool,
    idle_timeout: float | None,
    max_fps: float | None,
    max_queue: int,
    threads: int,
    runtime: str,
    no_xnnpack: bool,
    labels: Path | None,
    label_format: str,
    limit: int | None,
) -> None:
    """Segment the frames of --camera-dir with --model; write masks, overlays and telemetry.

    A frame that cannot be read or segmented is logged and skipped; the summary counts it. On
    the end of input, Ctrl-C or SIGTERM, the summary (frames, errors, p50/p90/p99 latency, fps,
    mIoU with --labels) is printed and written to OUT/summary.json.

    Exit codes: 0 done, 2 bad model, camera folder or options.
    """
    from edge.frames import CameraDir, LabelReader
    from edge.pipeline import RunStats, StatusLine, format_summary, run_stream
    from edge.runtime import RuntimeUnavailable
    from edge.segmenter import Segmenter
    from edge.sinks import OutputWriter

    if not camera_dir.is_dir():
        raise Fatal(f"camera directory {camera_dir} does not exist or is not a folder")
    if labels is not None and not labels.is_dir():
        raise Fatal(f"--labels {labels} does not exist or is not a folder")
    if idle_timeout is not None and not watch:
        raise Fatal("--idle-timeout only applies with --watch")
    try:
        segmenter = Segmenter(model, threads=threads, runtime=runtime, xnnpack=not no_xnnpack)
        truth = None if labels is None else LabelReader(labels, segmenter.num_classes, label_format)
    except (ValueError, RuntimeUnavailable) as err:
        raise Fatal(str(err)) from err
    source = CameraDir(camera_dir, watch=watch, max_queue=max_queue, idle_timeout=idle_timeout)
    try:
        writer = OutputWriter(out, overlays=overlay)
    except OSError as err:
        raise Fatal(f"cannot write to --out {out}: {err.strerror or err}") from err
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
            run_stream(source, segmenter, writer, truth, status, stats, limit, max_fps)
            status.close()
            summary = stats.summary()
            summary["config"] = {
                "model": str(model),
                "camera_dir": str(camera_dir),
                "runtime": segmenter.runtime,
                "threads": threads,
                "xnnpack": not no_xnnpack,
                "watch": watch,
                "max_fps": max_fps,
                "max_queue": max_queue,
                "labels": str(labels) if labels else None,
                "label_format": truth.format if truth else None,
            }
            writer.write_json("summary.json", summary)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(format_summary(summary))
    click.echo(
        f"outputs in {out}/ (masks/{', overlays/' if overlay else ''}, telemetry.jsonl, "
        "summary.json)"
    )


if __name__ == "__main__":
    main()
