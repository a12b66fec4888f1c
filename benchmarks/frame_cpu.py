"""A frame's CPU time, thread by thread: what the rover loop costs the whole machine.

    python benchmarks/frame_cpu.py --camera-dir DIR --frames 600 --out report/frame_cpu
    python benchmarks/frame_cpu.py --json -              # synthetic 256x256 frames, to stdout

Wall time per frame hides work done on another core: a thread that spins after a call costs
the loop nothing on a two-core machine with a core to spare, but it takes that core from the
rest of the rover. Here the loop of ``edge-seg run`` (the shipped int8 model by default, masks
and telemetry written, the default region analysis) runs in this process on frame files, and
each thread's CPU time (user + system, from ``/proc/self/task``, in clock ticks of 10 ms summed
over the run; Linux) is read before and after: the loop's own thread, the read-ahead and
write-back threads it starts when overlapped (``run's own``), and every thread alive before the
run (``other``: the interpreter's workers, a BLAS pool). With 1 interpreter thread and the
frames in turn, all the work is the loop's own: ``other`` is what numpy or a library does
behind its back. It was 7.1 ms per frame (600 real frames, measured under a training's load),
more than the loop itself, when the region counts were a matrix product, which numpy hands to
OpenBLAS, whose threads then spin for a while after every call; ``tests/test_frame_cpu.py``
keeps it near zero. ``cpu_ms`` here is the process's CPU per frame, as ``edge-seg run``'s
``summary.json`` (``cpu_ms_per_frame``) and ``edge-seg bench`` (``cpu_ms``) report it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

MODES = {"in_turn": False, "overlapped": True}


def thread_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process, by native thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def cpu_description() -> str:
    """The CPU's name with its family and model numbers (two CPUs may share a name)."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or info.get("Hardware") or "unknown CPU"
    if "cpu family" in info:
        name += f", family {info['cpu family']} model {info.get('model', '?')}"
    return f"{name}, {os.cpu_count()} cores"


def measure(
    model: Path,
    frame_dir: Path,
    frames: int,
    threads: int,
    overlap: bool,
    warmup: int = 20,
    outputs: Path | None = None,
) -> dict:
    """Run the loop on ``frames`` files of ``frame_dir`` and return ms per frame: wall, invoke,
    process CPU, and CPU by thread: ``loop`` (this one), ``other`` (threads alive before the run:
    the interpreter's workers, a BLAS pool) and ``run's own`` (read-ahead, write-back). The
    masks and telemetry go to a temporary folder in ``outputs`` (None: the system's)."""
    from edge.io.camera import CameraDir
    from edge.io.sinks import OutputWriter
    from edge.run.hazards import RegionAnalyzer, RegionConfig
    from edge.run.loop import RunContext, run_stream
    from edge.segmenter import Segmenter

    seg = Segmenter(model, threads)
    context = RunContext(analyzer=RegionAnalyzer(RegionConfig(), seg.labels))
    with tempfile.TemporaryDirectory(dir=outputs) as out:
        with OutputWriter(out, label_set=seg.labels) as writer:  # warm: caches, pages, pools
            run_stream(CameraDir(frame_dir), seg, writer, limit=warmup, context=context)
        before, cpu0, wall0 = thread_cpu_s(), time.process_time(), time.perf_counter()
        with OutputWriter(out, label_set=seg.labels) as writer:
            stats = run_stream(CameraDir(frame_dir), seg, writer, limit=frames, context=context,
                               overlap=overlap)  # fmt: skip
        after, cpu1, wall1 = thread_cpu_s(), time.process_time(), time.perf_counter()
    n = max(stats.frames, 1)
    main = threading.main_thread().native_id
    by_thread = {"loop": 0.0, "other": 0.0, "run's own": 0.0}
    for tid, seconds in after.items():
        spent = (seconds - before.get(tid, 0.0)) * 1e3 / n
        by_thread["loop" if tid == main else "other" if tid in before else "run's own"] += spent
    # the run's read-ahead and write-back threads may have ended and left /proc: the rest of the
    # process's CPU time is theirs
    rest = (cpu1 - cpu0) * 1e3 / n - sum(by_thread.values())
    by_thread["run's own"] += max(rest, 0.0)
    invoke = stats.latency["invoke"].mean
    wall = (wall1 - wall0) * 1e3 / n
    return {
        "frames": stats.frames,
        "errors": stats.errors,
        "wall_ms": round(wall, 3),
        "invoke_ms": round(invoke, 3),
        "wall_beyond_invoke_ms": round(wall - invoke, 3),
        "cpu_ms": round((cpu1 - cpu0) * 1e3 / n, 3),
        "cpu_beyond_invoke_ms": round((cpu1 - cpu0) * 1e3 / n - invoke, 3),
        "cpu_by_thread_ms": {k: round(v, 3) for k, v in by_thread.items()},
        "other_ms": round(by_thread["other"], 3),
        # each stage's mean, on whichever thread it ran (overlapped: read and write off the loop)
        "stages_ms": {
            k: round(h.mean, 3) for k, h in stats.latency.items() if h.count and k != "total"
        },
    }


def synthetic_frames(folder: Path, n: int, size: int = 256) -> Path:
    """``n`` PNG synthetic terrain frames of ``size`` x ``size`` (NAVCAM's AI4Mars size)."""
    from edge.io.sinks import png_bytes
    from edge.synthetic import SyntheticConfig, generate

    made = generate(SyntheticConfig(n_train=0, n_test=n, height=size, width=size, seed=5), "test")
    for i, image in enumerate(made.images):
        (folder / f"f{i:05d}.png").write_bytes(png_bytes(image))
    return folder


def _filesystem(folder: Path) -> str:
    """``"/tmp (ext4)"``: the folder and the type of the file system it is on (from
    /proc/mounts: the longest mount point that holds it)."""
    folder = folder.resolve()
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            point, fs = line.split()[1:3]
            if (folder == Path(point) or Path(point) in folder.parents) and len(point) > len(best):
                best, kind = point, fs
    except (OSError, ValueError, IndexError):
        pass
    return f"{folder} ({kind})"


def _shown(path: Path) -> str:
    """A path as the reader of a report in this checkout would type it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _markdown(report: dict) -> str:
    lines = [
        "# A frame's CPU time, thread by thread",
        "",
        f"`{report['command']}` on {report['cpu']}; model `{report['model']}`, "
        f"{report['threads']} interpreter thread(s), {report['frames']} frames of "
        f"`{report['frames_from']}`; masks and telemetry written to {report['outputs_on']}.",
        "",
        "| ms per frame | " + " | ".join(m.replace("_", " ") for m in report["modes"]) + " |",
        "|---" * (1 + len(report["modes"])) + "|",
    ]
    modes = list(report["modes"].values())

    def row(label: str, values) -> str:
        return f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |"

    for key in ["wall_ms", "invoke_ms", "wall_beyond_invoke_ms", "cpu_ms", "cpu_beyond_invoke_ms"]:
        lines.append(row(key.replace("_ms", "").replace("_", " "), [m[key] for m in modes]))
    for stage in [k for k in modes[0]["stages_ms"] if k != "invoke"]:
        lines.append(row(f"stage `{stage}`", [m["stages_ms"].get(stage, 0.0) for m in modes]))
    for name in sorted({k for m in modes for k in m["cpu_by_thread_ms"]}):
        lines.append(
            row(f"CPU of thread `{name}`", [m["cpu_by_thread_ms"].get(name, 0.0) for m in modes])
        )
    lines += [
        "",
        "CPU is user + system time of the threads, in clock ticks (10 ms) summed over the run; "
        "*beyond invoke* subtracts the mean invoke once (1 interpreter thread: invoke runs on "
        "the loop's thread). Stages: mean wall time, on whichever thread ran them (overlapped: "
        "`read` and `write` off the loop). `other`: threads alive before the run (interpreter "
        "workers, a BLAS pool); `run's own`: the read-ahead and write-back threads it started.",
        "",
    ]
    return "\n".join(lines)


@click.command(context_settings={"show_default": True})
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=ROOT / "edge" / "models" / "model_int8.tflite",
    help="The model to run.",
)
@click.option(
    "--camera-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Frame files to run on [default: synthetic 256x256 PNGs].",
)
@click.option("--frames", default=400, help="Frames timed per mode (after 20 of warm-up).")
@click.option("--threads", default=1, help="Interpreter threads.")
@click.option(
    "--mode",
    "modes",
    type=click.Choice([*MODES, "both"]),
    default="both",
    help="Frames in turn, or read ahead and written behind as edge-seg run does.",
)
@click.option("--outputs", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Where the run writes its masks and telemetry (a temporary "
              "folder inside; e.g. /dev/shm to leave the disk out) [default: the system's "
              "temporary folder].")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for frame_cpu.json and frame_cpu.md.")  # fmt: skip
@click.option("--json", "json_to", type=click.File("w"), default=None,
              help="Also write the report as JSON here ('-': stdout).")  # fmt: skip
def main(model, camera_dir, frames, threads, modes, outputs, out, json_to) -> None:
    """Measure a frame's CPU time by thread in the rover loop (Linux)."""
    if not Path("/proc/self/task").is_dir():
        raise click.ClickException("per-thread CPU times come from /proc/self/task: Linux only")
    chosen = list(MODES) if modes == "both" else [modes]
    with tempfile.TemporaryDirectory() as tmp:
        frame_dir = camera_dir or synthetic_frames(Path(tmp), frames)
        report = {
            "command": "python benchmarks/frame_cpu.py " + " ".join(sys.argv[1:]),
            "cpu": cpu_description(),
            "model": _shown(model),
            "threads": threads,
            "frames": frames,
            "frames_from": str(camera_dir) if camera_dir else "synthetic 256x256 PNGs",
            "outputs_on": _filesystem(outputs or Path(tempfile.gettempdir())),
            "modes": {
                m: measure(model, frame_dir, frames, threads, MODES[m], outputs=outputs)
                for m in chosen
            },
        }
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "frame_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "frame_cpu.md").write_text(_markdown(report))
        click.echo(f"wrote {out / 'frame_cpu.md'}", err=True)
    if json_to:
        json_to.write(json.dumps(report, indent=2) + "\n")
    if not json_to or json_to.name != "<stdout>":
        click.echo(_markdown(report))


if __name__ == "__main__":
    main()
