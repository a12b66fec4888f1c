"""`edge-seg`: the rover command line (no TensorFlow)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from edge.io.decode import DEFAULT_MAX_PIXELS
from edge.run.driver import LOG_FORMAT


class Fatal(click.ClickException):
    """A problem with the command's inputs (model, folder, options): one line and exit code 2."""

    exit_code = 2


class OutputFatal(click.ClickException):
    """The outputs cannot be written at all (e.g. --out cannot be created): exit code 6."""

    exit_code = 6


class Interrupted(click.ClickException):
    """A second Ctrl-C: stopped at once, exit code 130 (the shell's for SIGINT)."""

    exit_code = 130


def _version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from edge.run.telemetry import package_version, software_versions

        versions = software_versions()
        click.echo(
            f"edge-seg {package_version()} (Python {versions['python']}, numpy "
            f"{versions['numpy']}, Pillow {versions['pillow']}, {versions['platform']})"
        )
        ctx.exit()


@click.group()
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_version,
    help="Show the version and exit.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="debug also logs each dropped frame's decision; info logs dropped frames' names.",
)
@click.option("-v", "--verbose", is_flag=True, help="The same as --log-level debug.")
def main(log_level: str, verbose: bool) -> None:
    """Run Mars terrain segmentation .tflite models on the rover.

    The model says what it is: its input size, classes (e.g. background, soil, bedrock, sand,
    big rock) and preprocessing are read from its metadata (see `edge-seg info`).
    """
    level = logging.DEBUG if verbose else getattr(logging, log_level.upper())
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger().setLevel(level)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--tensors", is_flag=True, help="Also list every tensor with its quantization.")
def info(model: Path, tensors: bool) -> None:
    """Describe MODEL (.tflite, or a model folder as `run --model` takes it: each of its files):
    input/output, quantization, classes, preprocessing, ops, size.

    Exit codes: 0 described, 2 not a readable model.
    """
    from edge.models import model_files
    from edge.runtimes.info import describe
    from edge.runtimes.interpreter import RuntimeUnavailable

    if model.is_dir():
        files = list(model_files(model).values())
        if not files:
            raise Fatal(f"no model_<precision>.tflite in {model} (trainer convert writes them)")
    elif model.is_file():
        files = [model]
    else:
        raise Fatal(f"no model at {model}")
    failed = []
    for i, file in enumerate(files):
        try:
            text = describe(file, tensors)
        except (ValueError, OSError, RuntimeUnavailable) as err:
            failed.append(f"{file}: {err}")
            continue
        header = f"{chr(10) if i else ''}== {file}\n" if len(files) > 1 else ""
        click.echo(header + text)
    if failed:  # every readable file described first, then each failure
        raise Fatal("; ".join(failed))


@main.command()
@click.option(
    "--camera-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder the camera writes frames into (PNG, JPEG, PGM, .npy, PDS3/PDS4 .IMG; taken in "
    "name order). Required unless --bag.",
)
@click.option(
    "--bag",
    type=click.Path(path_type=Path),
    default=None,
    help="Replay a recorded drive instead: a ROS 2 bag (mcap or sqlite3 storage) whose --topic "
    "holds sensor_msgs Image or CompressedImage frames (needs the [ros] extra).",
)
@click.option(
    "--topic",
    default="/navcam/image",
    show_default=True,
    help="The image topic of --bag.",
)
@click.option(
    "--model",
    default=None,
    type=click.Path(path_type=Path),
    help="A .tflite (int8 or float), or a folder holding model_int8.tflite (a trainer run after "
    "`trainer convert`; else its float32) [default: the rover model shipped with the package].",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "int8", "float32", "float16"]),
    default="auto",
    show_default=True,
    help="Which file of a model folder to run. auto: time those whose parity report passes "
    "(pixel agreement with float32 >= 99 %; float32 always does) on this CPU at start-up and "
    "take the fastest.",
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
@click.option(
    "--kernels",
    type=click.Choice(["auto", "xnnpack", "xnnpack-no-amx", "builtin"]),
    default="auto",
    show_default=True,
    help="CPU kernels. auto: XNNPACK; on a CPU with AMX, XNNPACK with or without AMX, whichever "
    "a short calibration at start-up finds faster. xnnpack-no-amx: the kernel refuses AMX to this "
    "process, so XNNPACK runs its VNNI kernels. builtin: TFLite's own kernels (comparison only). "
    "summary.json records what ran (execution).",
)
@click.option(
    "--flip-average",
    is_flag=True,
    help="Segment each frame twice, as it is and mirrored, and decide on the mean logits (a "
    "model with a logits output: the rover graph of `trainer convert`). On the shipped model and "
    "the real validation frames: +0.004 mIoU, +0.007 big-rock IoU, the same rocks found with "
    "fewer false rocks and false alarms, for twice the invoke time (docs/rover.md). Telemetry "
    "and summary.json record it.",
)
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
    "--regions",
    "regions_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON regions, rocks, hazard rules and an optional camera model [default: near field "
    "= bottom quarter, corridor = the path ahead; rocks = pixels the model gives rock at least "
    "0.06, 100 px or more; a rock of 300 px or more touching the corridor is a hazard; see "
    "docs/rover.md].",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Rewrite OUT/status.json every this many seconds, also while no frame comes (0: off).",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Stop after this many frames."
)
@click.option(
    "--mcap",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also record the run as MCAP for Foxglove: frames, class maps, rocks as image "
    "annotations and telemetry, stamped with the capture time; split into FILE-0001.mcap ... "
    "every 512 MiB (needs the [ros] extra).",
)
@click.option(
    "--reprocess",
    is_flag=True,
    help="A restart on the same --out and camera folder normally resumes: the frames up to the "
    "last one in its telemetry are skipped (and counted). This does them all again.",
)
def run(
    camera_dir: Path | None,
    bag: Path | None,
    topic: str,
    model: Path,
    precision: str,
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
    kernels: str,
    flip_average: bool,
    labels: Path | None,
    label_format: str,
    regions_file: Path | None,
    heartbeat: float,
    limit: int | None,
    mcap: Path | None,
    reprocess: bool,
) -> None:
    """Segment the frames of --camera-dir with --model; write masks, overlays and telemetry.

    A frame that cannot be read or segmented is logged and skipped; one whose outputs cannot be
    written (a full disk) is still segmented and counted. On the end of input, Ctrl-C or SIGTERM
    the summary (frames, errors, p50/p90/p99 latency, fps, mIoU with --labels) is printed and
    written to OUT/summary.json. Every telemetry line carries the schema, run id, model hash,
    a frame index that continues across restarts on the same OUT, region fractions, hazard flags
    and confidence (docs/rover.md; JSON Schemas in edge/schemas/). A restart on the same OUT and camera folder
    resumes after the last frame its telemetry records (--reprocess: from the start).

    \b
    Exit codes:
      0  done (or stopped by Ctrl-C/SIGTERM)
      2  bad model, camera folder or options: nothing ran
      3  the input held no frame
      4  frames came, none could be segmented
      5  --idle-timeout: the camera fell silent
      6  outputs could not all be written (e.g. a full disk)
      130  a second Ctrl-C: stopped at once, without the summary
    """
    from edge.run.driver import OutputError, RoverRun, RunOptions, StartError
    from edge.run.loop import exit_reason, format_summary, outcome
    from edge.run.memory import limit_arenas

    limit_arenas()  # before any thread (the model's, the watcher's) takes an arena of its own
    if delete_consumed and move_consumed is not None:
        raise Fatal("choose one of --delete-consumed and --move-consumed")
    opts = RunOptions(
        camera_dir=camera_dir, model=model, precision=precision, out=out, overlay=overlay, masks=not no_masks,
        keep=keep, watch=watch, idle_timeout=idle_timeout, notify=notify, grace=grace,
        max_fps=max_fps, max_queue=max_queue, max_frame_pixels=max_frame_pixels,
        consumed="delete" if delete_consumed else move_consumed, threads=threads,
        runtime=runtime, kernels=kernels, flip_average=flip_average, labels=labels,
        label_format=label_format, regions_file=regions_file, heartbeat=heartbeat, limit=limit,
        reprocess=reprocess, mcap=mcap, bag=bag, topic=topic,
    )  # fmt: skip
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    try:
        rover = RoverRun(opts, say)
    except StartError as err:
        raise Fatal(str(err)) from err
    except OutputError as err:
        raise OutputFatal(str(err)) from err
    try:
        summary, written = rover.execute()
    except KeyboardInterrupt:  # the second Ctrl-C
        raise Interrupted("stopped at once (a second interrupt): no summary written") from None
    click.echo(format_summary(summary))
    click.echo(rover.outputs(written))
    code = outcome(summary, written)
    if code:
        click.echo(exit_reason(code, summary, written), err=True)
        sys.exit(code)


@main.command(context_settings={"max_content_width": 100})
@click.argument("listed", metavar="MODELS...", nargs=-1,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@click.option(
    "--models",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The same as listing MODELS (kept for scripts): `--models A B` and `A B` are one list.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Eval npz (images + labels, from tools/export_frames.py) [default: synthetic frames "
    "at the model's size].",
)
@click.option("--frames", "n_frames", default=200, show_default=True, help="Eval frames to use.")
@click.option(
    "--camera-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Frame files for the pipeline rows (e.g. real NAVCAM JPEGs at their own size) [default: "
    "the eval frames, written as PNG].",
)
@click.option("--threads", default="1,2", show_default=True, help="Thread counts, comma-separated.")
@click.option(
    "--runs",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Timed invokes per model and thread count, and frames of each pipeline mode.",
)
@click.option(
    "--warmup",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Untimed invokes first (caches, the kernels' packing).",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "litert", "tflite-runtime"]),
    default="auto",
    show_default=True,
    help="The interpreter package: auto takes LiteRT, else tflite-runtime.",
)
@click.option(
    "--kernels",
    default="auto",
    show_default=True,
    help="CPU kernels to measure, comma-separated (each model runs with each): auto, xnnpack, "
    "xnnpack-no-amx, builtin (see edge-seg run --help). E.g. xnnpack,xnnpack-no-amx puts AMX and "
    "VNNI side by side on a CPU with AMX.",
)
@click.option(
    "--roofline/--no-roofline",
    "limit",
    default=True,
    show_default=True,
    help="Also time one large conv of each precision: the GMAC/s a model reaches against it, and "
    "the floor (its MACs at that rate).",
)
@click.option(
    "--op-profile",
    is_flag=True,
    help="Also time every op of each .tflite alone (one-op models, the kernels and first thread "
    "count of its measurement): time by op type and the ten costliest ops, in the report.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report/bench"),
    show_default=True,
    help="Folder for report.json, report.md and the charts (overwritten: in a checkout the "
    "default holds the committed report, so give another folder to keep it).",
)
@click.option("--emulated", is_flag=True, help="Mark the timings as emulated (qemu), not board.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic eval set.")
@click.option(
    "--in-process",
    is_flag=True,
    help="Measure every model in this process (no child processes, e.g. under qemu-user); the "
    "peak RSS is then the running maximum, not each model's own.",
)
def bench(
    listed: tuple[Path, ...],
    models: tuple[Path, ...],
    data: Path | None,
    n_frames: int,
    camera_dir: Path | None,
    threads: str,
    runs: int,
    warmup: int,
    runtime: str,
    kernels: str,
    limit: bool,
    op_profile: bool,
    out: Path,
    emulated: bool,
    seed: int,
    in_process: bool,
) -> None:
    """Benchmark MODELS side by side: latency, fps, memory, size, mIoU, agreement.

    MODELS are .tflite files, and .onnx peers (from `trainer convert --onnx`, run with ONNX
    Runtime when installed: pip install 'marsseg-edge[peers]'); the first is the reference (give
    float32 first). Each model and thread count runs in its own process (its peak RSS is its own). Writes
    OUT/report.json, OUT/report.md (ratios and changes against the first model) and charts.
    With .onnx peers, a section puts each model against the peer of its precision.
    """
    from edge.bench.runner import BenchConfig, run_benchmark
    from edge.runtimes.interpreter import KERNELS

    try:
        thread_counts = tuple(sorted({int(t) for t in threads.split(",") if t.strip()}))
    except ValueError as err:
        raise click.BadParameter(
            f"expected e.g. 1,2,4, got {threads!r}", param_hint="--threads"
        ) from err
    if not thread_counts or min(thread_counts) < 1:
        raise click.BadParameter("thread counts must be >= 1", param_hint="--threads")
    kernel_sets = tuple(dict.fromkeys(k.strip() for k in kernels.split(",") if k.strip()))
    unknown = [k for k in kernel_sets if k not in KERNELS]
    if unknown or not kernel_sets:
        raise click.BadParameter(
            f"unknown {', '.join(unknown) or 'empty list'}; valid: {', '.join(KERNELS)}",
            param_hint="--kernels",
        )
    every = [*models, *listed]
    if not every:
        raise click.UsageError("give the models to compare: edge-seg bench A.tflite B.tflite ...")
    from edge.runtimes import SUFFIXES

    strange = [p.name for p in every if p.suffix.lower() not in SUFFIXES]
    if strange:
        raise click.BadParameter(
            f"{', '.join(strange)}: not a {' or '.join(SUFFIXES)} model", param_hint="--models"
        )
    cfg = BenchConfig(
        models=every,
        data=data,
        frames=n_frames,
        threads=thread_counts,
        runs=runs,
        warmup=warmup,
        runtime=runtime,
        kernels=kernel_sets,
        limit=limit,
        op_profile=op_profile,
        out=out,
        emulated=emulated,
        seed=seed,
        in_process=in_process,
        camera_dir=camera_dir,
    )
    try:
        report = run_benchmark(cfg, progress=lambda line: click.echo(line, err=True))
    except ValueError as err:
        raise Fatal(str(err)) from err
    click.echo((out / "report.md").read_text())
    click.echo(f"written in {out}/: {', '.join(report['files'])}")


if __name__ == "__main__":
    main()
