"""Float vs int8 on the board: latency, memory, size and accuracy of .tflite models.

Runs with the edge dependencies only (numpy, pillow, click, a TFLite runtime); no TensorFlow.

    python benchmarks/run.py --models model_float32.tflite model_int8.tflite \\
        --data eval.npz --threads 1,2,4 --runs 200 --warmup 20 --out report/bench

Each (model, thread count) is measured in its own process, so that its peak RSS is its own.
Latency is reported the way TFLite's ``benchmark_model`` does (init, first inference, warm-up
average, then count/avg/std/min/max), plus p50/p90/p99, for ``invoke`` alone and for the whole
frame pipeline (PNG frame read, preprocess, invoke, argmax, mask PNG and telemetry written).
With labelled data, each model's mIoU is computed and the first model is the reference the
others are compared with (pixel agreement and IoU drop, like ``inference_diff``).

The eval npz comes from the workstation: ``python tools/export_frames.py DATA --run RUN --npz
eval.npz``. Without ``--data`` a synthetic labelled set is generated here (numpy only).
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
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.metrics import score


def latency_stats(us: np.ndarray) -> dict:
    """benchmark_model's figures (count, avg, std, min, max) plus percentiles, in ms."""
    ms = np.asarray(us, float) / 1e3
    return {
        "count": len(ms),
        "avg": float(ms.mean()),
        "std": float(ms.std()),
        "min": float(ms.min()),
        "max": float(ms.max()),
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
    }


def measure(spec: dict) -> dict:
    """Measure one model at one thread count (run in a child process; see ``main``)."""
    from edge.frames import CameraDir
    from edge.pipeline import peak_rss_mb, run_stream
    from edge.runtime import runtime_version
    from edge.segmenter import Segmenter
    from edge.sinks import OutputWriter

    frames = np.load(spec["frames"])
    t0 = time.perf_counter_ns()
    seg = Segmenter(spec["model"], spec["threads"], spec["runtime"], spec["xnnpack"])
    init_us = (time.perf_counter_ns() - t0) / 1e3
    interp, index = seg.interpreter, seg.input_index
    tensors = [seg.preprocess(f) for f in frames[: min(len(frames), 64)]]

    def invoke(i: int) -> float:
        interp.set_tensor(index, tensors[i % len(tensors)])
        start = time.perf_counter_ns()
        interp.invoke()
        return (time.perf_counter_ns() - start) / 1e3

    first_us = invoke(0)
    warmup = [invoke(i) for i in range(spec["warmup"])]
    runs = np.array([invoke(i) for i in range(spec["runs"])])

    # The whole pipeline on PNG frames, as edge-seg run does it (minus the status line).
    with tempfile.TemporaryDirectory() as out:
        with OutputWriter(out) as writer:
            stats = run_stream(CameraDir(spec["frame_dir"]), seg, writer, limit=spec["runs"])
    pipeline = {"count": stats.frames, **stats.latency["total"].summary(digits=4)}
    pipeline["avg"] = pipeline.pop("mean")
    pipeline["fps"] = stats.fps

    result = {
        "runtime": f"{seg.runtime} {runtime_version(seg.runtime)}",
        "init_ms": init_us / 1e3,
        "first_inference_ms": first_us / 1e3,
        "warmup_avg_ms": float(np.mean(warmup)) / 1e3 if warmup else None,
        "invoke": latency_stats(runs),
        "invoke_fps": 1e6 / float(runs.mean()),
        "pipeline": pipeline,
        "pipeline_vs_invoke": stats.fps / (1e6 / float(runs.mean())),
        "invoke_us": runs.tolist(),
    }
    if spec.get("maps"):
        maps = np.stack([seg.segment(f).labels for f in frames])
        np.save(spec["maps"], maps)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def machine_info(emulated: bool) -> dict:
    """CPU model, cores, OS, Python and library versions."""
    cpu = platform.processor() or ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for key in ("model name", "Hardware", "Model", "CPU part"):
            line = next((ln for ln in text.splitlines() if ln.startswith(key)), None)
            if line:
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import PIL

    return {
        "cpu": cpu or "unknown",
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "emulated": emulated,
    }


def load_eval(
    data: Path | None, n: int, seed: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """uint8 frames and labels: from an npz (images/labels, or the course keys) or synthetic
    frames of ``size`` (the model's input)."""
    if data is not None:
        from edge.frames import NpzFrames

        source = NpzFrames(data, limit=n)
        frames = np.stack([f.image for f in source])
        return frames, source.labels, f"{data.name} ({len(frames)} frames)"
    from trainer.synthetic import SyntheticConfig, generate  # numpy only, no TensorFlow

    cfg = SyntheticConfig(
        n_train=0, n_test=n, height=size[0], width=size[1], seed=seed, big_rock_rate=0.1
    )
    made = generate(cfg, split="test")
    return (
        made.images,
        made.labels,
        f"synthetic (seed {seed}, {n} frames of {size[0]}x{size[1]}, big rock in 10 %)",
    )


def unique_names(paths: list[Path]) -> list[str]:
    names = [p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.stem}" for p in paths]
    return names


def compare(ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None) -> dict:
    """inference_diff for class maps: agreement over all pixels and over labelled ones."""
    out = {"pixel_agreement": float((ref == test).mean())}
    if labels is not None:
        scored = labels > 0
        out["pixel_agreement_labelled"] = float((ref == test)[scored].mean())
    return out


def write_markdown(report: dict) -> str:
    names = list(report["models"])
    ref = names[0]
    m = report["machine"]
    lines = [
        "# Float vs int8 benchmark",
        "",
        f"Machine: {m['cpu']} ({m['arch']}, {m['cores']} cores), {m['os']}, Python {m['python']}, "
        f"{report['runtime']}. Data: {report['data']}. {report['settings']['runs']} runs after "
        f"{report['settings']['warmup']} warm-up.",
        "",
    ]
    if m["emulated"]:
        lines += [
            "> **EMULATED** (qemu-user on another CPU): the timings below measure the emulator, "
            "not an ARM board. Only the class maps and accuracy are meaningful.",
            "",
        ]
    ratio_head = " | ".join(f"{n} / {ref}" for n in names[1:])
    for threads in report["settings"]["threads"]:
        lines += [
            f"## {threads} thread{'s' if threads > 1 else ''}",
            "",
            f"| | {' | '.join(names)} | {ratio_head} |",
            "|---" * (1 + 2 * len(names) - 1) + "|",
        ]
        rows = [
            ("invoke avg (ms)", lambda r: r["invoke"]["avg"]),
            ("invoke std (ms)", lambda r: r["invoke"]["std"]),
            ("invoke p50 (ms)", lambda r: r["invoke"]["p50"]),
            ("invoke p99 (ms)", lambda r: r["invoke"]["p99"]),
            ("invoke fps", lambda r: r["invoke_fps"]),
            ("pipeline p50 (ms)", lambda r: r["pipeline"]["p50"]),
            ("pipeline p99 (ms)", lambda r: r["pipeline"]["p99"]),
            ("pipeline fps", lambda r: r["pipeline"]["fps"]),
            ("pipeline / invoke fps", lambda r: r["pipeline_vs_invoke"]),
            ("init (ms)", lambda r: r["init_ms"]),
            ("first inference (ms)", lambda r: r["first_inference_ms"]),
            ("peak RSS (MiB)", lambda r: r["peak_rss_mb"] or float("nan")),
        ]
        for label, get in rows:
            values = [get(report["models"][n]["threads"][str(threads)]) for n in names]
            ratios = " | ".join(f"{v / values[0]:.2f}x" for v in values[1:])
            lines.append(f"| {label} | {' | '.join(f'{v:.2f}' for v in values)} | {ratios} |")
        lines.append("")
    sizes = [report["models"][n]["size_bytes"] for n in names]
    lines += [
        "## Size and accuracy",
        "",
        f"| | {' | '.join(names)} | {ratio_head} |",
        "|---" * (1 + 2 * len(names) - 1) + "|",
        f"| size (KiB) | {' | '.join(f'{s / 1024:.0f}' for s in sizes)} | "
        + " | ".join(f"{s / sizes[0]:.2f}x" for s in sizes[1:])
        + " |",
    ]
    accuracy = [report["models"][n].get("accuracy") for n in names]
    if all(accuracy):
        mious = [a["mean_iou"] for a in accuracy]
        lines.append(
            f"| mIoU | {' | '.join(f'{v:.4f}' for v in mious)} | "
            + " | ".join(f"{a['mean_iou'] - accuracy[0]['mean_iou']:+.4f}" for a in accuracy[1:])
            + " |"
        )
        for cls in accuracy[0]["per_class_iou"]:
            vals = [a["per_class_iou"][cls] for a in accuracy]
            lines.append(
                f"| IoU {cls} | {' | '.join('-' if v is None else f'{v:.4f}' for v in vals)} | "
                + " | ".join(
                    "-" if v is None or vals[0] is None else f"{v - vals[0]:+.4f}" for v in vals[1:]
                )
                + " |"
            )
    for pair in report["pairs"]:
        labelled = pair.get("pixel_agreement_labelled")
        lines.append(
            f"\n{pair['test']} vs {pair['reference']}: pixel agreement "
            f"{100 * pair['pixel_agreement']:.2f} %"
            + (f" ({100 * labelled:.2f} % on labelled pixels)" if labelled is not None else "")
            + (f", mIoU drop {pair['miou_drop']:+.4f}" if "miou_drop" in pair else "")
        )
    return "\n".join(lines) + "\n"


@click.command()
@click.option(
    "--models",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The .tflite files; the first is the reference (give float32 first). Repeat or list.",
)
@click.argument("more_models", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Eval npz (images + labels, from tools/export_frames.py) [default: synthetic].",
)
@click.option("--frames", "n_frames", default=200, show_default=True, help="Eval frames to use.")
@click.option("--threads", default="1,2", show_default=True, help="Thread counts, comma-separated.")
@click.option("--runs", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--warmup", default=20, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--runtime",
    type=click.Choice(["auto", "litert", "tflite-runtime"]),
    default="auto",
    show_default=True,
)
@click.option("--no-xnnpack", is_flag=True, help="Reference kernels instead of XNNPACK.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report/bench"),
    show_default=True,
)
@click.option("--emulated", is_flag=True, help="Mark the timings as emulated (qemu), not board.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic eval set.")
@click.option(
    "--in-process",
    is_flag=True,
    help="Measure every model in this process (no child processes, e.g. under qemu-user); the "
    "peak RSS is then the running maximum, not each model's own.",
)
def main(
    models: tuple[Path, ...],
    more_models: tuple[Path, ...],
    data: Path | None,
    n_frames: int,
    threads: str,
    runs: int,
    warmup: int,
    runtime: str,
    no_xnnpack: bool,
    out: Path,
    emulated: bool,
    seed: int,
    in_process: bool,
) -> None:
    """Benchmark .tflite models side by side: latency, fps, memory, size, mIoU, agreement."""
    from benchmarks.charts import bar_chart, histogram
    from edge.sinks import atomic_write_bytes, png_bytes

    paths = list(models) + [p for p in more_models if p.suffix == ".tflite"]
    try:
        thread_counts = sorted({int(t) for t in threads.split(",") if t.strip()})
    except ValueError as err:
        raise click.BadParameter(
            f"expected e.g. 1,2,4, got {threads!r}", param_hint="--threads"
        ) from err
    if not thread_counts or min(thread_counts) < 1:
        raise click.BadParameter("thread counts must be >= 1", param_hint="--threads")
    try:
        from edge.segmenter import Segmenter

        reference = Segmenter(paths[0])
        size, label_set = reference.input_shape, reference.labels
        frames, labels, data_name = load_eval(data, n_frames, seed, size)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    names = unique_names(paths)
    report = {
        "machine": machine_info(emulated),
        "data": data_name,
        "settings": {
            "threads": thread_counts,
            "runs": runs,
            "warmup": warmup,
            "runtime": runtime,
            "xnnpack": not no_xnnpack,
        },
        "models": {},
        "pairs": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    maps: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "frames.npy", frames)
        frame_dir = tmp / "frames"
        frame_dir.mkdir()
        for i, frame in enumerate(frames):
            atomic_write_bytes(frame_dir / f"{i:06d}.png", png_bytes(frame))
        total = len(paths) * len(thread_counts)
        with click.progressbar(length=total, label="measuring", file=sys.stderr) as bar:
            for path, name in zip(paths, names):
                entry = {"path": str(path), "size_bytes": path.stat().st_size, "threads": {}}
                for k, n_threads in enumerate(thread_counts):
                    spec = {
                        "model": str(path), "threads": n_threads, "runtime": runtime,
                        "xnnpack": not no_xnnpack, "runs": runs, "warmup": warmup,
                        "frames": str(tmp / "frames.npy"), "frame_dir": str(frame_dir),
                        "maps": str(tmp / f"maps_{len(maps)}.npy") if k == 0 else None,
                    }  # fmt: skip
                    result = measure(spec) if in_process else _in_child(spec)
                    result["isolated_process"] = not in_process
                    report["runtime"] = result.pop("runtime")
                    entry["threads"][str(n_threads)] = result
                    if spec["maps"]:
                        maps[name] = np.load(spec["maps"])
                    bar.update(1)
                if labels is not None:
                    entry["accuracy"] = score(labels, maps[name], label_set).as_dict()
                report["models"][name] = entry
    for name in names[1:]:
        pair = {"reference": names[0], "test": name, **compare(maps[names[0]], maps[name], labels)}
        if labels is not None:
            pair["miou_drop"] = (
                report["models"][names[0]]["accuracy"]["mean_iou"]
                - report["models"][name]["accuracy"]["mean_iou"]
            )
        report["pairs"].append(pair)

    charts = []
    for name in names:
        first = report["models"][name]["threads"][str(thread_counts[0])]
        charts.append(
            histogram(
                np.array(first["invoke_us"]) / 1e3,
                f"{name}: invoke latency, {thread_counts[0]} thread(s)"
                + (" (EMULATED)" if emulated else ""),
                "ms",
                out / f"latency_{name.replace('/', '_')}.png",
            )
        )
    if labels is not None:
        scored = [label_set.names[c] for c in label_set.scored]
        charts.append(
            bar_chart(
                scored,
                {
                    n: [report["models"][n]["accuracy"]["per_class_iou"][c] for c in scored]
                    for n in names
                },
                "Per-class IoU",
                "IoU",
                out / "iou_per_class.png",
            )
        )
    markdown = write_markdown(report)
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(out / "report.md", markdown.encode())
    click.echo(markdown)
    click.echo(f"written: {out}/report.json, report.md, " + ", ".join(c.name for c in charts))


def _in_child(spec: dict) -> dict:
    """Run :func:`measure` in a fresh interpreter so that its peak RSS is the model's own."""
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise click.ClickException(
            f"measuring {Path(spec['model']).name} with {spec['threads']} thread(s) failed: {tail[0]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        import logging

        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(measure(json.loads(sys.argv[2]))))
    else:
        main()
