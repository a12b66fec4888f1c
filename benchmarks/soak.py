"""Soak test of `edge-seg run --watch`: a million frames into a folder never emptied, with restarts.

    python benchmarks/soak.py --out report/soak        # 20 kill -9 restarts, then 1,000,000 frames

A bounded writer (at most ``--backlog`` frames ahead of the run, written camera-style to a
temporary name and renamed into place) puts frames ``f00000000.png, f00000001.png, ...`` into a
watched folder and never removes one. The run goes through two phases:

1. **Restarts.** During the first ``--kill-phase`` frames a supervisor kills the run with SIGKILL
   at ``--kills`` moments drawn at random (seeded) and starts it again at once on the same
   ``--out``, as systemd would; each start resumes after the last frame its telemetry recorded.
2. **Endurance.** The last start runs ``--frames`` frames more without interruption and is
   sampled: resident memory (VmRSS) every 10,000 of its frames (the table: 1k, 10k, 100k, 500k,
   1M; goal: flat within 2 MiB after 10k), and the loop's CPU time per frame excluding
   ``invoke`` (process CPU minus the invoke times of the same frames, from the telemetry) over a
   window near its start and one at its end (goal: within 10 %).

Every telemetry line is checked as it is written: a frame's number (its name) must be above the
previous line's (no frame twice, whatever the kills), and the frames skipped over must be the
ones the lines count as dropped (none lost). At the end, lines + dropped == frames written.

The model is a tiny int8 net made here (two convolutions at 32x64; TensorFlow needed) so that the
loop, not the model, is what is soaked: a million frames take about half an hour. ``--model``
soaks another. Not a test: run it on a quiet machine.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.io.sinks import atomic_write_bytes, atomic_write_json

CHECKPOINTS = (1_000, 10_000, 100_000, 500_000, 1_000_000)
TRACE_EVERY = 10_000


def proc_sample(pid: int) -> dict:
    """RSS (MiB) and CPU seconds (user + system) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": rss / 1024, "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


def tiny_model(path: Path) -> Path:
    """A two-convolution int8 segmenter at 32x64 with the Mars classes in its metadata."""
    import keras

    from edge.contract.labels import MARS
    from edge.contract.metadata import ModelMetadata
    from edge.contract.preprocess import Preprocessing
    from trainer.convert import convert_saved_model, embed_metadata, export_saved_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 64, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem_conv")(inputs)
    x = keras.layers.Conv2D(MARS.num_classes, 1, name="head_conv")(x)
    model = keras.Model(inputs, keras.layers.Softmax(name="head_softmax")(x), name="soak_tiny")
    with tempfile.TemporaryDirectory() as tmp:
        saved = export_saved_model(model, Path(tmp) / "saved", (32, 64, 1))
        frames = np.random.default_rng(0).random((16, 32, 64), np.float32)
        flatbuffer = convert_saved_model(saved, "int8", frames)
    meta = ModelMetadata(MARS, Preprocessing(32, 64), {"name": "soak-tiny", "precision": "int8"})
    path.write_bytes(embed_metadata(flatbuffer, meta))
    return path


def frames_for(model: Path, n: int = 32) -> list[bytes]:
    """``n`` PNG-encoded synthetic frames at the model's input size."""
    from edge.io.sinks import png_bytes
    from edge.segmenter import Segmenter
    from edge.synthetic import SyntheticConfig, generate

    h, w = Segmenter(model).input_shape
    made = generate(SyntheticConfig(n_train=0, n_test=n, height=h, width=w, seed=3), "test")
    return [png_bytes(image) for image in made.images]


class TelemetryCheck:
    """Reads telemetry lines as they are appended and checks them one by one.

    ``handled`` counts the frames accounted for (lines + dropped); ``repeated`` the lines of a
    frame that already had one; ``lost`` the frames skipped over without being counted dropped.
    """

    def __init__(self, path: Path):
        self.path, self.offset, self._rest = path, 0, b""
        self.lines = self.errors = self.dropped = self.repeated = self.lost = 0
        self.last = -1  # the number of the last frame with a line
        self.invoke_ms = 0.0

    @property
    def handled(self) -> int:
        return self.last + 1

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return self.handled
        self.offset += len(data)
        *whole, self._rest = (self._rest + data).split(b"\n")
        for line in whole:
            self._check(json.loads(line))
        return self.handled

    def _check(self, record: dict) -> None:
        self.lines += 1
        self.errors += record["status"] == "error"
        self.dropped += record.get("dropped", 0)
        self.invoke_ms += record.get("timings_ms", {}).get("invoke", 0.0)
        number = int(Path(record["source"]).stem[1:])
        if number <= self.last:
            self.repeated += 1
            return
        self.lost += max(0, number - self.last - 1 - record.get("dropped", 0))
        self.last = number


class Sampler:
    """RSS of the endurance process every ``TRACE_EVERY`` of its frames and at the checkpoints,
    and loop CPU over a window after its first 1,000 frames and one ending at its last frame."""

    def __init__(self, pid: int, check: TelemetryCheck, first: int, n_frames: int, window: int):
        self.pid, self.check, self.first, self.window = pid, check, first, window
        self.checkpoints = [c for c in CHECKPOINTS if c <= n_frames] or [n_frames]
        self.next_trace = TRACE_EVERY
        self.starts = {1_000: "start", max(n_frames - window, 1_000 + window): "end"}
        self.samples: list[dict] = []
        self.trace: list[dict] = []
        self.windows: dict[str, dict] = {}
        self._open: tuple | None = None

    def update(self, files: int) -> None:
        done = self.check.poll() - self.first  # frames of this process
        label = next(
            (v for k, v in self.starts.items() if done >= k and v not in self.windows), None
        )
        if self._open is None and label is not None:
            self._open = (label, done, proc_sample(self.pid), self.check.invoke_ms)
        elif self._open is not None and done >= self._open[1] + self.window:
            label, first, before, invoke_before = self._open
            after, frames = proc_sample(self.pid), done - first
            invoke = self.check.invoke_ms - invoke_before
            self.windows[label] = {
                "after_frames": first,
                "files_in_folder": files,
                "frames": frames,
                "loop_cpu_ms_per_frame": ((after["cpu_s"] - before["cpu_s"]) * 1e3 - invoke)
                / frames,
                "invoke_ms_per_frame": invoke / frames,
            }
            self._open = None
        if done >= self.next_trace:
            self.trace.append({"frames": done, **proc_sample(self.pid)})
            self.next_trace += TRACE_EVERY
        if self.checkpoints and done >= self.checkpoints[0]:
            self.samples.append({"frames": done, "files_in_folder": files, **proc_sample(self.pid)})
            click.echo(f"{done:>8} frames: {self.samples[-1]['rss_mib']:.2f} MiB RSS", err=True)
            self.checkpoints.pop(0)


class Supervisor:
    """Starts ``cmd``, kills it with SIGKILL when the run has handled each of ``kill_at`` frames
    (then starts it again at once), and keeps the last start running."""

    def __init__(self, cmd: list[str], log_path: Path, kill_at: list[int]):
        self.cmd, self.log_path, self.kill_at = cmd, log_path, sorted(kill_at)
        self.kills: list[dict] = []
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        with open(self.log_path, "a") as log:
            return subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)

    def update(self, handled: int) -> bool:
        """Kill and restart when a kill point is reached; True when the last start is running."""
        if self.proc.poll() is not None:
            raise click.ClickException(f"edge-seg ended early; see {self.log_path}")
        if self.kill_at and handled >= self.kill_at[0]:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills.append({"at_frames": handled, "planned": self.kill_at.pop(0)})
            self.proc = self._start()
        return not self.kill_at


@click.command()
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The .tflite to soak [default: a tiny int8 net made here, so that the loop is soaked].",
)
@click.option("--frames", "n_frames", default=1_000_000, show_default=True,
              help="Frames of the endurance phase (after the restarts).")  # fmt: skip
@click.option("--kills", default=20, show_default=True, help="kill -9 restarts before it.")
@click.option("--kill-phase", default=100_000, show_default=True,
              help="Frames over which the kills are spread (at random, seeded).")  # fmt: skip
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--backlog", default=8, show_default=True, help="Most frames written ahead of the run."
)
@click.option("--threads", default=1, show_default=True)
@click.option(
    "--notify", default="auto", show_default=True, type=click.Choice(["auto", "inotify", "poll"])
)
@click.option("--window", default=20_000, show_default=True, help="Frames per CPU measurement.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report/soak"),
    show_default=True,
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the camera folder and the run's output go (kept) [default: a temporary folder, "
    "removed at the end].",
)
def main(
    model: Path | None,
    n_frames: int,
    kills: int,
    kill_phase: int,
    seed: int,
    backlog: int,
    threads: int,
    notify: str,
    window: int,
    out: Path,
    workdir: Path | None,
) -> None:
    """Feed a restarted, then endless stream into a watched folder; check and sample the run."""
    work = Path(workdir or tempfile.mkdtemp(prefix="soak-"))
    cam, seg_out = work / "cam", work / "out"
    cam.mkdir(parents=True, exist_ok=True)
    model = model or tiny_model(work / "soak_tiny_int8.tflite")
    payloads = frames_for(model)
    cmd = [sys.executable, "-m", "edge.cli", "run", "--camera-dir", str(cam), "--model", str(model),
           "--out", str(seg_out), "--watch", "--idle-timeout", "10", "--threads", str(threads),
           "--keep", "100", "--max-queue", str(backlog), "--notify", notify]  # fmt: skip
    rng = np.random.default_rng(seed)
    kill_at = sorted(int(k) for k in rng.integers(1_000, max(kill_phase, 1_001), kills))
    total = (kill_phase if kills else 0) + n_frames
    check = TelemetryCheck(seg_out / "telemetry.jsonl")
    supervisor = Supervisor(cmd, work / "edge-seg.log", kill_at)
    sampler = None
    started = time.perf_counter()
    try:
        for i in range(total):
            while i - check.poll() >= backlog:  # bounded: never more than backlog ahead
                supervisor.update(check.handled)
                time.sleep(0.0002)
            if supervisor.update(check.handled) and sampler is None:
                sampler = Sampler(supervisor.proc.pid, check, check.handled, total - i, window)
                endurance = {"first_frame": check.handled, "pid": supervisor.proc.pid}
            if sampler is not None:
                sampler.update(i)
            tmp = cam / f".f{i:08d}.png.tmp"  # camera-style: a temporary name, then a rename
            tmp.write_bytes(payloads[i % len(payloads)])
            os.replace(tmp, cam / f"f{i:08d}.png")
        while supervisor.proc.poll() is None:  # the run ends itself on its idle timeout
            sampler.update(total)
            time.sleep(0.02)
    finally:
        if supervisor.proc.poll() is None:
            supervisor.proc.terminate()
            supervisor.proc.wait(timeout=30)
    check.poll()
    summary = json.loads((seg_out / "summary.json").read_text())
    trailing = summary["dropped"]  # the last start's drops after its last line, if any
    report = {
        "machine": {"cpu": _cpu(), "python": platform.python_version()},
        "model": str(model),
        "command": " ".join(cmd),
        "written": total,
        "files_in_folder_at_end": sum(1 for _ in os.scandir(cam)),
        "kills": supervisor.kills,
        "restarts_seen_by_run": summary["restarts"],
        "lines": check.lines,
        "ok": check.lines - check.errors,
        "errors": check.errors,
        "dropped": check.dropped + trailing,
        "repeated": check.repeated,
        "lost": check.lost + max(0, total - check.handled - trailing),
        "endurance": {**endurance, "frames": summary["frames"], "resumed": summary["resumed"]},
        "wall_s": time.perf_counter() - started,
        "rss": sampler.samples,
        "rss_trace": sampler.trace,
        "cpu_windows": sampler.windows,
        "summary": summary,
    }
    report["accounted"] = (
        report["lines"] + report["dropped"] == total
        and not report["repeated"]
        and not report["lost"]
    )
    _write(out, report)
    if workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def _cpu() -> str:
    try:
        return next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


ENVELOPE_WINDOW = 100_000  # frames of the endurance run per row of the envelope table


def _envelope(trace: list[dict]) -> list[str]:
    """The samples per window of frames: a sample catches the allocator somewhere between two
    trims, so single samples scatter by whole steps; a creep shows as a rising floor or peak."""
    windows: dict[int, list[float]] = {}
    for s in trace:
        windows.setdefault(s["frames"] // ENVELOPE_WINDOW, []).append(s["rss_mib"])
    if len(windows) < 2:
        return []
    rows = [(k, sorted(v)) for k, v in sorted(windows.items())]
    full = [v for _, v in rows if len(v) >= 3] or [v for _, v in rows]  # not a last sample alone
    peaks = [v[-1] for v in full]
    floors = [v[0] for v in full]
    return [
        f"The same samples per {ENVELOPE_WINDOW:,} frames (a creep raises the floor or the peak "
        "window after window; a sample that catches the allocator between two trims scatters "
        "within the window):",
        "",
        "| its frames | samples | min | median | max (MiB) |",
        "|---|---|---|---|---|",
        *[f"| {k * ENVELOPE_WINDOW:,}-{(k + 1) * ENVELOPE_WINDOW:,} | {len(v)} | {v[0]:.2f} | "
          f"{v[len(v) // 2]:.2f} | {v[-1]:.2f} |" for k, v in rows],
        "",
        f"Peak per window: first {peaks[0]:.2f}, then {min(peaks[1:]):.2f}-{max(peaks[1:]):.2f} "
        f"(spread of the peaks {max(peaks) - min(peaks):.2f} MiB); floor per window "
        f"{min(floors):.2f}-{max(floors):.2f} (windows of at least 3 samples).",
        "",
    ]  # fmt: skip


def _write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "soak.json", report)
    rss, kills = report["rss"], report["kills"]
    warm = [s["rss_mib"] for s in report["rss_trace"]] or [s["rss_mib"] for s in rss]
    end = report["endurance"]
    lines = [
        "# Soak: restarts, then an endless stream into a folder never emptied",
        "",
        f"{report['written']:,} frames written to a watched folder ({report['summary']['config']['notify']}), "
        f"{report['files_in_folder_at_end']:,} files in it at the end; {report['machine']['cpu']}; "
        f"model {Path(report['model']).name}; {report['wall_s'] / 60:.1f} min.",
        "",
        f"**Restarts**: {len(kills)} kill -9 at random moments (after "
        + ", ".join(f"{k['at_frames']:,}" for k in kills)
        + f" frames handled), each followed by a start on the same output; the last start saw "
        f"restart {report['restarts_seen_by_run']} and resumed after "
        f"{(end['resumed'] or {}).get('after', '-')}.",
        "",
        f"**Endurance**: the last start handled {end['frames']:,} frames without interruption.",
        "",
        "| its frames | files in folder | RSS (MiB) |",
        "|---|---|---|",
        *[f"| {s['frames']:,} | {s['files_in_folder']:,} | {s['rss_mib']:.2f} |" for s in rss],
        "",
        f"RSS sampled every {TRACE_EVERY:,} frames from {TRACE_EVERY:,} on: min {min(warm):.2f}, "
        f"max {max(warm):.2f}, spread **{max(warm) - min(warm):.2f} MiB** (goal: within 2 MiB).",
        "",
        *_envelope(report["rss_trace"]),
        "| window | after frames | files in folder | loop CPU ms/frame (excl. invoke) | invoke ms/frame |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {w['after_frames']:,} | {w['files_in_folder']:,} | {w['loop_cpu_ms_per_frame']:.3f} | {w['invoke_ms_per_frame']:.3f} |"
            for k, w in report["cpu_windows"].items()
        ],
    ]
    cpu = [w["loop_cpu_ms_per_frame"] for w in report["cpu_windows"].values()]
    if len(cpu) == 2:
        lines.append(
            f"\nLoop CPU at the end vs the start: {100 * (cpu[1] / cpu[0] - 1):+.1f} % (goal: within 10 %)."
        )
    lines.append(
        f"\nAccounting over all starts: {report['lines']:,} telemetry lines ({report['ok']:,} ok, "
        f"{report['errors']:,} errors) + {report['dropped']:,} dropped = "
        f"{report['lines'] + report['dropped']:,} {'==' if report['accounted'] else '!='} "
        f"{report['written']:,} written; frames with two lines: {report['repeated']}; frames "
        f"lost: {report['lost']}."
    )
    atomic_write_bytes(out / "soak.md", ("\n".join(lines) + "\n").encode())
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
