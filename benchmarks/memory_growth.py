"""Where a long run's memory goes: resident memory, what the C allocator would give back, and
Python's own allocations.

    python benchmarks/memory_growth.py --frames 70000 --out report/soak/memory_growth.md
    python benchmarks/memory_growth.py --frames 70000 --trim-every 0 --trace ...

Runs the rover loop of ``edge-seg run --watch`` in this process (the camera folder, inotify, the
read-ahead and write-back threads, the telemetry) on a tiny model while a thread writes frames
into the folder, and samples resident memory every ``--every`` frames. At each sample the C
allocator is asked to return its free memory to the system (glibc's ``malloc_trim``) and RSS is
read before and after: memory that a trim gives back was free but kept (fragmentation), memory
that stays is held. With ``--trace`` Python's allocations are traced from the start (tracemalloc,
about twice as slow) and the difference between the first sample after the warm-up and the end
names the lines that allocated what is still held.
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


def _arena_steps(samples: list[dict]) -> list[str]:
    """How much of the RSS's scatter the count of Python's arenas explains (a least-squares line
    of RSS on the count over the samples after the first)."""
    import numpy as np

    pairs = [(s["python_arenas"], s["rss_mib"]) for s in samples[1:] if s["python_arenas"]]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2:
        return []
    arenas, rss = (np.array(v, float) for v in zip(*pairs, strict=True))
    slope, intercept = np.polyfit(arenas, rss, 1)
    left = rss - (slope * arenas + intercept)
    return ["", f"Over {len(pairs)} samples: RSS spread {np.ptp(rss):.2f} MiB, Python's arenas "
            f"{int(arenas.min())}-{int(arenas.max())}; RSS = {slope:.2f} MiB per arena + "
            f"{intercept:.2f}, leaving a spread of {np.ptp(left):.2f} MiB "
            f"(correlation {np.corrcoef(arenas, rss)[0, 1]:.2f})."]  # fmt: skip


def obmalloc_arenas() -> int | None:
    """How many 1 MiB arenas Python's small-object allocator holds now (from
    ``sys._debugmallocstats``, which writes to the C stderr; None where it says nothing)."""
    import os
    import re

    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    found = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text)
    return int(found.group(1).replace(",", "")) if found else None


@click.command()
@click.option("--frames", "n_frames", default=70_000, show_default=True)
@click.option("--warmup", default=10_000, show_default=True, help="Frames before the baseline.")
@click.option("--every", default=10_000, show_default=True, help="Frames between samples.")
@click.option("--trace", is_flag=True, help="Trace Python's allocations from the start.")
@click.option("--loop-trim-every", default=None, type=int,
              help="The loop's own trim period in frames (0: none, and glibc's own arenas) "
                   "[default: the loop's].")  # fmt: skip
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("report/soak/memory_growth.md"), show_default=True)  # fmt: skip
def main(
    n_frames: int,
    warmup: int,
    every: int,
    trace: bool,
    loop_trim_every: int | None,
    model: Path | None,
    out: Path,
) -> None:
    """Sample a long in-process run's memory: RSS, RSS after a trim, Python's allocations."""
    import os

    from edge.io.camera import CameraDir
    from edge.io.sinks import OutputWriter
    from edge.run.hazards import RegionAnalyzer, RegionConfig
    from edge.run.loop import RunContext, run_stream
    from edge.run.memory import _malloc_trim, limit_arenas
    from edge.segmenter import Segmenter

    if loop_trim_every != 0:  # as `edge-seg run` does first; --loop-trim-every 0: glibc's own
        limit_arenas()

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
    trim = _malloc_trim()  # the loop's own (glibc's malloc_trim; None elsewhere)
    samples: list[dict] = []
    snapshots = {}
    handled = [0]
    if trace:
        tracemalloc.start(8)

    def feed() -> None:
        for i in range(n_frames):
            while i - handled[0] >= 8:
                time.sleep(0.0002)
            tmp = cam / f".f{i:08d}.png.tmp"
            tmp.write_bytes(payloads[i % len(payloads)])
            os.replace(tmp, cam / f"f{i:08d}.png")

    def on_frame(stats) -> None:
        handled[0] = stats.frames
        if stats.frames % every and stats.frames != warmup:
            return
        sample = {"frames": stats.frames, "rss_mib": proc_sample(os.getpid())["rss_mib"],
                  "python_arenas": obmalloc_arenas()}  # fmt: skip
        if trim is not None:
            trim(0)
            sample["rss_after_trim_mib"] = proc_sample(os.getpid())["rss_mib"]
        if trace:
            sample["python_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
            if stats.frames in (warmup, n_frames):
                snapshots[stats.frames] = tracemalloc.take_snapshot()
        samples.append(sample)
        click.echo(f"{stats.frames:>8} frames: {sample}", err=True)

    threading.Thread(target=feed, daemon=True).start()
    with OutputWriter(work / "out", keep=100, label_set=seg.labels) as writer:
        extra = {} if loop_trim_every is None else {"trim_every": loop_trim_every}
        run_stream(source, seg, writer, on_frame=on_frame, limit=n_frames,
                   context=RunContext(analyzer=RegionAnalyzer(RegionConfig(), seg.labels)),
                   **extra)  # fmt: skip
    lines = [
        "# Memory of a long run: resident, given back by a trim, Python's",
        "",
        f"`python benchmarks/memory_growth.py --frames {n_frames} --every {every}"
        f"{' --trace' if trace else ''}"
        f"{'' if loop_trim_every is None else f' --loop-trim-every {loop_trim_every}'}`: the loop of `edge-seg run --watch` in one process "
        f"(camera folder with inotify, read-ahead, write-back, masks, telemetry), model "
        f"{model.name}; after each sample glibc's `malloc_trim(0)`.",
        "",
        "| frames | RSS (MiB) | after the trim (MiB) | Python's 1 MiB arenas |"
        + (" Python traced (MiB) |" if trace else ""),
        "|---:|---:|---:|---:|" + ("---:|" if trace else ""),
    ]
    for sample in samples:
        lines.append(
            f"| {sample['frames']:,} | {sample['rss_mib']:.2f} | "
            f"{sample.get('rss_after_trim_mib', float('nan')):.2f} | "
            f"{sample['python_arenas'] if sample['python_arenas'] is not None else '-'} |"
            + (f" {sample['python_mib']:.2f} |" if trace else "")
        )
    lines += _arena_steps(samples)
    if trace and len(snapshots) == 2:
        growth = snapshots[n_frames].compare_to(snapshots[warmup], "traceback")
        lines += ["", f"Python allocations held at the end that were not at {warmup:,} frames:",
                  "", "| change (KiB) | blocks | where (innermost first) |", "|---:|---:|---|"]  # fmt: skip
        for stat in growth[:10]:
            innermost = list(stat.traceback)[::-1][:4]  # tracemalloc lists the oldest first
            where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in innermost)
            lines.append(f"| {stat.size_diff / 1024:+.1f} | {stat.count_diff:+d} | {where} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
