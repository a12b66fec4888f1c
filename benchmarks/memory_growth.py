"""Where a long run's memory goes: Python allocations (tracemalloc) against resident memory.

    python benchmarks/memory_growth.py --frames 200000 --out report/soak/memory_growth.md

Runs the rover loop of ``edge-seg run --watch`` in this process (the camera folder, inotify, the
read-ahead and write-back threads, the telemetry) on a tiny model while a thread writes frames
into the folder, and takes a tracemalloc snapshot after the warm-up and at the end. If resident
memory grows and the Python allocations do not, the growth is native (the allocator, numpy, the
interpreter); otherwise the snapshot's difference names the lines that hold the memory.

tracemalloc slows Python code about twofold; the figures of ``benchmarks/soak.py`` are taken
without it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import frames_for, proc_sample

from edge.io.sinks import atomic_write_bytes


@click.command()
@click.option("--frames", "n_frames", default=200_000, show_default=True)
@click.option("--warmup", default=20_000, show_default=True, help="Frames before the baseline.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("report/soak/memory_growth.md"), show_default=True)  # fmt: skip
def main(n_frames: int, warmup: int, model: Path | None, out: Path) -> None:
    """Trace a long in-process run's memory: tracemalloc and RSS after the warm-up and at the end."""
    import os

    from edge.io.camera import CameraDir
    from edge.io.sinks import OutputWriter
    from edge.run.hazards import RegionAnalyzer, RegionConfig
    from edge.run.loop import RunContext, run_stream
    from edge.segmenter import Segmenter

    work = Path(tempfile.mkdtemp(prefix="memgrowth-"))
    cam = work / "cam"
    cam.mkdir()
    if model is None:  # made in a child: TensorFlow stays out of the process measured
        model = work / "tiny.tflite"
        here = Path(__file__).resolve().parent
        subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{str(here)!r}, "
                        f"{str(here.parent)!r}]; import soak; soak.tiny_model(soak.Path("
                        f"{str(model)!r}))"], check=True, capture_output=True)  # fmt: skip
    payloads = frames_for(model)
    seg = Segmenter(model, threads=1)
    source = CameraDir(cam, watch=True, idle_timeout=5, max_queue=8)
    points: dict[str, dict] = {}
    handled = [0]

    def feed() -> None:
        for i in range(n_frames):
            while i - handled[0] >= 8:
                time.sleep(0.0002)
            tmp = cam / f".f{i:08d}.png.tmp"
            tmp.write_bytes(payloads[i % len(payloads)])
            os.replace(tmp, cam / f"f{i:08d}.png")

    def on_frame(stats) -> None:
        handled[0] = stats.frames
        if stats.frames == warmup:
            tracemalloc.start(8)
            points["warm"] = {"frames": stats.frames, **proc_sample(os.getpid()),
                              "snapshot": tracemalloc.take_snapshot()}  # fmt: skip
        elif stats.frames == n_frames:
            points["end"] = {"frames": stats.frames, **proc_sample(os.getpid()),
                             "snapshot": tracemalloc.take_snapshot()}  # fmt: skip

    writer_thread = threading.Thread(target=feed, daemon=True)
    writer_thread.start()
    with OutputWriter(work / "out", keep=100, label_set=seg.labels) as writer:
        run_stream(source, seg, writer, on_frame=on_frame, limit=n_frames,
                   context=RunContext(analyzer=RegionAnalyzer(RegionConfig(), seg.labels)))  # fmt: skip
    warm, end = points["warm"], points["end"]
    growth = end["snapshot"].compare_to(warm["snapshot"], "traceback")
    traced = sum(s.size_diff for s in growth)
    frames = end["frames"] - warm["frames"]
    lines = [
        "# Memory of a long run: Python allocations against resident memory",
        "",
        f"`python benchmarks/memory_growth.py --frames {n_frames} --warmup {warmup}`: the loop of "
        f"`edge-seg run --watch` in one process, {frames:,} frames after a warm-up of "
        f"{warmup:,}, model {model.name}.",
        "",
        "| | after warm-up | at the end | change |",
        "|---|---:|---:|---:|",
        f"| RSS (MiB) | {warm['rss_mib']:.2f} | {end['rss_mib']:.2f} | "
        f"{end['rss_mib'] - warm['rss_mib']:+.2f} |",
        f"| Python allocations traced (MiB) | - | - | {traced / 2**20:+.3f} |",
        "",
        f"Per 100,000 frames: RSS {100_000 * (end['rss_mib'] - warm['rss_mib']) / frames:+.2f} MiB, "
        f"Python allocations {100_000 * traced / frames / 2**20:+.3f} MiB.",
        "",
        "Largest changes of Python allocations (by the line that allocated, innermost first):",
        "",
        "| change (KiB) | blocks | where |",
        "|---:|---:|---|",
    ]
    for stat in growth[:12]:
        innermost = list(stat.traceback)[::-1][:4]  # tracemalloc lists the oldest frame first
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in innermost)
        lines.append(f"| {stat.size_diff / 1024:+.1f} | {stat.count_diff:+d} | {where} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
