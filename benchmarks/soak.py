"""Soak test of `edge-seg run --watch`: an endless stream into a folder that is never emptied.

    python benchmarks/soak.py --model runs/rover/model_int8.tflite --frames 100000 --out report/soak

A bounded writer (at most ``--backlog`` frames ahead of the run, written camera-style to a
temporary name and renamed into place) puts ``--frames`` frames into a watched folder and never
removes one, so the folder ends with that many files. Meanwhile the run is sampled:

- resident memory (VmRSS) at 1k, 10k, 50k and 100k frames handled (goal: flat within 5 MiB
  after the warm-up);
- CPU time per frame of the loop excluding ``invoke`` (process CPU minus the invoke times of the
  same frames, from the telemetry), around 1k and around 100k files in the folder (goal: within
  10 %);
- at the end, frames processed + dropped + errors == frames written.

Not a test: it takes minutes. Run it on a quiet machine, with ``--threads 1`` so that invoke
time is CPU time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.io.sinks import atomic_write_bytes, atomic_write_json

CHECKPOINTS = (1_000, 10_000, 50_000, 100_000)


def proc_sample(pid: int) -> dict:
    """RSS (MiB) and CPU seconds (user + system) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": rss / 1024, "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


class TelemetryTail:
    """Reads new telemetry lines as they are appended: count and invoke times."""

    def __init__(self, path: Path):
        self.path, self.offset, self.lines, self.invoke_ms = path, 0, 0, 0.0
        self._rest = b""

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return self.lines
        self.offset += len(data)
        data = self._rest + data
        *whole, self._rest = data.split(b"\n")
        for line in whole:
            self.lines += 1
            record = json.loads(line)
            self.invoke_ms += record.get("timings_ms", {}).get("invoke", 0.0)
        return self.lines


def frames_for(model: Path, n: int = 32) -> list[bytes]:
    """``n`` PNG-encoded synthetic frames at the model's input size."""
    from edge.io.sinks import png_bytes
    from edge.segmenter import Segmenter
    from edge.synthetic import SyntheticConfig, generate

    h, w = Segmenter(model).input_shape
    made = generate(SyntheticConfig(n_train=0, n_test=n, height=h, width=w, seed=3), "test")
    return [png_bytes(image) for image in made.images]


class Sampler:
    """Samples RSS at the checkpoints and loop CPU over two windows of ``window`` frames: the
    first after 1k frames, the last ending at the final frame."""

    def __init__(self, pid: int, tail: TelemetryTail, n_frames: int, window: int):
        self.pid, self.tail, self.window = pid, tail, window
        self.checkpoints = [c for c in CHECKPOINTS if c <= n_frames] or [n_frames]
        self.starts = {
            1_000: "~1k files",
            max(n_frames - window, 1_000 + window): f"~{n_frames // 1000}k files",
        }
        self.samples: list[dict] = []
        self.windows: dict[str, dict] = {}
        self._open: tuple | None = None

    def update(self, files: int) -> None:
        done = self.tail.poll()
        label = next(
            (v for k, v in self.starts.items() if done >= k and v not in self.windows), None
        )
        if self._open is None and label is not None:
            self._open = (label, done, proc_sample(self.pid), self.tail.invoke_ms)
        elif self._open is not None and done >= self._open[1] + self.window:
            label, first, before, invoke_before = self._open
            after, frames = proc_sample(self.pid), done - first
            invoke = self.tail.invoke_ms - invoke_before
            self.windows[label] = {
                "files_in_folder": files,
                "frames": frames,
                "loop_cpu_ms_per_frame": ((after["cpu_s"] - before["cpu_s"]) * 1e3 - invoke)
                / frames,
                "invoke_ms_per_frame": invoke / frames,
            }
            self._open = None
        if self.checkpoints and done >= self.checkpoints[0]:
            self.samples.append({"frames": done, "files_in_folder": files, **proc_sample(self.pid)})
            click.echo(f"{done:>7} frames: {self.samples[-1]['rss_mib']:.1f} MiB RSS", err=True)
            self.checkpoints.pop(0)


@click.command()
@click.option(
    "--model", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--frames", "n_frames", default=100_000, show_default=True)
@click.option(
    "--backlog", default=8, show_default=True, help="Most frames written ahead of the run."
)
@click.option("--threads", default=1, show_default=True)
@click.option(
    "--notify", default="auto", show_default=True, type=click.Choice(["auto", "inotify", "poll"])
)
@click.option("--window", default=500, show_default=True, help="Frames per CPU measurement.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report/soak"),
    show_default=True,
)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None)
def main(
    model: Path,
    n_frames: int,
    backlog: int,
    threads: int,
    notify: str,
    window: int,
    out: Path,
    workdir: Path | None,
) -> None:
    """Feed an endless stream into a watched folder and sample memory and CPU."""
    payloads = frames_for(model)
    work = Path(workdir or tempfile.mkdtemp(prefix="soak-"))
    cam, seg_out = work / "cam", work / "out"
    cam.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "edge.cli", "run", "--camera-dir", str(cam), "--model", str(model),
           "--out", str(seg_out), "--watch", "--idle-timeout", "10", "--threads", str(threads),
           "--keep", "100", "--max-queue", str(backlog), "--notify", notify]  # fmt: skip
    log_path = work / "edge-seg.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    tail = TelemetryTail(seg_out / "telemetry.jsonl")
    sampler = Sampler(proc.pid, tail, n_frames, window)
    started = time.perf_counter()
    try:
        for i in range(n_frames):
            while i - tail.poll() >= backlog:  # bounded: never more than backlog ahead
                if proc.poll() is not None:
                    raise click.ClickException(f"edge-seg ended early; see {log_path}")
                time.sleep(0.0005)
            sampler.update(i)
            tmp = cam / f".f{i:07d}.png.tmp"  # camera-style: a temporary name, then a rename
            tmp.write_bytes(payloads[i % len(payloads)])
            os.replace(tmp, cam / f"f{i:07d}.png")
        while proc.poll() is None:  # the run ends itself on its idle timeout
            sampler.update(n_frames)
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    summary = json.loads((seg_out / "summary.json").read_text())
    report = {
        "machine": {"cpu": _cpu(), "python": platform.python_version()},
        "model": str(model),
        "command": " ".join(cmd),
        "written": n_frames,
        "files_in_folder_at_end": sum(1 for _ in os.scandir(cam)),
        "processed": summary["frames"],
        "dropped": summary["dropped"],
        "errors": summary["errors"],
        "accounted": summary["frames"] + summary["dropped"] + summary["errors"] == n_frames,
        "notify": summary["config"]["notify"],
        "wall_s": time.perf_counter() - started,
        "rss": sampler.samples,
        "cpu_windows": sampler.windows,
        "summary": summary,
    }
    _write(out, report)


def _cpu() -> str:
    try:
        return next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "soak.json", report)
    rss = report["rss"]
    warm = [s["rss_mib"] for s in rss[1:]] or [s["rss_mib"] for s in rss]
    lines = [
        "# Soak: an endless stream into a folder never emptied",
        "",
        f"{report['written']:,} frames written to a watched folder ({report['notify']}), "
        f"{report['files_in_folder_at_end']:,} files in it at the end; {report['machine']['cpu']}; "
        f"model {Path(report['model']).name}; {report['wall_s'] / 60:.1f} min.",
        "",
        "| frames handled | files in folder | RSS (MiB) |",
        "|---|---|---|",
        *[f"| {s['frames']:,} | {s['files_in_folder']:,} | {s['rss_mib']:.1f} |" for s in rss],
        "",
        f"RSS after warm-up (from {rss[1]['frames'] if len(rss) > 1 else rss[0]['frames']:,} frames): "
        f"spread {max(warm) - min(warm):.2f} MiB (goal: within 5 MiB).",
        "",
        "| window | files in folder | loop CPU ms/frame (excl. invoke) | invoke ms/frame |",
        "|---|---|---|---|",
        *[
            f"| {k} | {w['files_in_folder']:,} | {w['loop_cpu_ms_per_frame']:.3f} | {w['invoke_ms_per_frame']:.3f} |"
            for k, w in report["cpu_windows"].items()
        ],
    ]
    cpu = [w["loop_cpu_ms_per_frame"] for w in report["cpu_windows"].values()]
    if len(cpu) == 2:
        lines.append(
            f"\nLoop CPU at the end vs the start: {100 * (cpu[1] / cpu[0] - 1):+.1f} % (goal: within 10 %)."
        )
    lines.append(
        f"\nAccounting: processed {report['processed']:,} + dropped {report['dropped']:,} + errors "
        f"{report['errors']:,} = {report['processed'] + report['dropped'] + report['errors']:,} "
        f"{'==' if report['accounted'] else '!='} {report['written']:,} written."
    )
    atomic_write_bytes(out / "soak.md", ("\n".join(lines) + "\n").encode())
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
