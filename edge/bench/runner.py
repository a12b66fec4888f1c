"""Float vs int8 on the board: latency, memory, size and accuracy of .tflite models.

The library behind ``edge-seg bench`` (and ``benchmarks/run.py``); it needs the edge
dependencies only, so that a plain ``pip install 'marsseg-edge[edge]'`` on a board has it.

Each (model, thread count) is measured in its own process, so that its peak RSS is its own.
Latency is reported the way TFLite's ``benchmark_model`` does (init, first inference, warm-up
average, then count/avg/std/min/max), plus p50/p90/p99 (within 1 %, the streaming histogram of
:mod:`edge.run.quantiles`), for ``invoke`` alone and for the whole frame pipeline (PNG frame read,
preprocess, invoke, argmax, region analysis, mask PNG and telemetry written). With labelled data,
each model's mIoU is computed and the first model is the reference the others are compared with
(pixel agreement and mIoU change, like ``inference_diff``). The machine's load average is
recorded before and after, since another process on the board skews every timing.

Every measurement records its execution path (kernels, the int8 instruction set XNNPACK used,
AMX or not: :mod:`edge.runtimes.kernels`); with several ``kernels`` each model runs with each. The limit
(:mod:`edge.bench.roofline`): one large conv of each precision, timed in the same run with the same
kernels, gives the GMAC/s a model reaches as a share of what the machine does for a conv, and
the model's floor (its MACs at that rate).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.bench.report import graph_name, peer_ratios, write_markdown
from edge.contract.metrics import score
from edge.run.quantiles import LogHistogram
from edge.runtimes import model_format


@dataclass
class BenchConfig:
    """What to measure.

    Attributes:
        models: .tflite files, and .onnx peers (:mod:`edge.bench.onnx_peer`, run with ONNX Runtime);
            the first is the reference (give float32 first).
        data: an eval npz (images + labels), or None for a synthetic labelled set.
        frames: eval frames to use.
        threads: interpreter thread counts.
        runs: timed invokes (and pipeline frames) per model and thread count.
        warmup: untimed invokes first.
        runtime: ``auto``, ``litert`` or ``tflite-runtime``.
        kernels: kernel choices (:data:`edge.runtimes.interpreter.KERNELS`); each model runs with each.
        limit: also time the limit convs (:mod:`edge.bench.roofline`; not when ``emulated``).
        op_profile: also time each op of each .tflite alone, at the first thread count with the
            kernels its measurement used (:mod:`edge.bench.op_profile`).
        out: where report.json, report.md and the charts go.
        emulated: the timings measure an emulator (qemu), not a board.
        seed: of the synthetic set.
        in_process: measure in this process (no children, e.g. under qemu-user).
        camera_dir: frame files for the pipeline measurement (e.g. real NAVCAM JPEGs at their own
            size) instead of the eval frames written as PNG.
    """

    models: list[Path]
    data: Path | None = None
    frames: int = 200
    threads: tuple[int, ...] = (1, 2)
    runs: int = 200
    warmup: int = 20
    runtime: str = "auto"
    kernels: tuple[str, ...] = ("auto",)
    limit: bool = True
    op_profile: bool = False
    out: Path = Path("report/bench")
    emulated: bool = False
    seed: int = 0
    in_process: bool = False
    camera_dir: Path | None = None


def run_benchmark(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Measure every model at every thread count; write report.json, report.md and charts.

    Args:
        cfg: what to measure.
        progress: called with a short line before each measurement.

    Returns:
        The report (also in ``cfg.out/report.json``).

    Raises:
        ValueError: for a model or data set that cannot be used, or a failed measurement.
    """
    from edge.bench.charts import bar_chart, histogram
    from edge.io.sinks import atomic_write_bytes, atomic_write_json, png_bytes
    from edge.segmenter import Segmenter

    if not cfg.models:
        raise ValueError("give at least one model")
    peers = [p for p in cfg.models if model_format(p).own_kernels]
    if peers:  # before anything is timed: the peer column needs ONNX Runtime here
        try:
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise ValueError(
                f"{peers[0].name} is an ONNX peer and needs onnxruntime: pip install "
                "'marsseg-edge[peers]' (or leave the .onnx models out)"
            ) from err
    reference = Segmenter(cfg.models[0], xnnpack=False)  # XNNPACK starts in the children only
    label_set = reference.labels
    frames, labels, data_name = load_eval(cfg.data, cfg.frames, cfg.seed, reference.input_shape)
    columns = [
        (path, kernels, name if len(cfg.kernels) == 1 or peer else f"{name} [{kernels}]")
        for path, name in zip(cfg.models, unique_names(cfg.models))
        for peer in [model_format(path).own_kernels]  # ONNX Runtime: its own kernels, once
        for kernels in (cfg.kernels[:1] if peer else cfg.kernels)
    ]
    names = [name for _, _, name in columns]
    report = {
        "machine": machine_info(cfg.emulated),
        "load_average_before": _load(),
        "data": data_name,
        "settings": {
            "threads": list(cfg.threads),
            "runs": cfg.runs,
            "warmup": cfg.warmup,
            "runtime": cfg.runtime,
            "kernels": list(cfg.kernels),
            "latency_relative_error": 0.01,
        },
        "models": {},
        "pairs": [],
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    maps: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "frames.npy", frames)
        frame_dir = tmp / "frames"
        frame_dir.mkdir()
        for i, frame in enumerate(frames):
            atomic_write_bytes(frame_dir / f"{i:06d}.png", png_bytes(frame))
        if cfg.limit and not cfg.emulated:  # an emulator's GMAC/s say nothing of a board
            report["limit"] = measure_limits(cfg, tmp, progress)
        for path, kernels, name in columns:
            entry = {"path": str(path), "size_bytes": path.stat().st_size, "threads": {}}
            entry["kernels"] = kernels
            entry["graph"] = graph_name(path)
            for k, n_threads in enumerate(cfg.threads):
                if progress:
                    progress(f"measuring {name} with {n_threads} thread(s)")
                spec = {
                    "model": str(path), "threads": n_threads,
                    # --runtime picks among the TFLite runtimes; a peer has its own
                    "runtime": "auto" if model_format(path).own_kernels else cfg.runtime,
                    "kernels": kernels, "runs": cfg.runs, "warmup": cfg.warmup,
                    "frames": str(tmp / "frames.npy"),
                    "frame_dir": str(cfg.camera_dir or frame_dir),
                    "maps": str(tmp / f"maps_{len(maps)}.npy") if k == 0 else None,
                }  # fmt: skip
                result = measure(spec) if cfg.in_process else _in_child(spec)
                result["isolated_process"] = not cfg.in_process
                entry["runtime"] = result.pop("runtime")
                entry["macs"] = result.pop("macs")
                limit = report.get("limit", {}).get(kernels, {}).get(str(n_threads))
                if limit and entry["macs"]:  # a float16 model is compared with float32's
                    own = limit["int8" if result["precision"] == "int8" else "float32"]
                    result.update(versus_limit(entry["macs"], result, own))
                entry["threads"][str(n_threads)] = result
                if spec["maps"]:
                    maps[name] = np.load(spec["maps"])
            if labels is not None:
                entry["accuracy"] = score(labels, maps[name], label_set).as_dict()
            if cfg.op_profile and not model_format(path).own_kernels:
                from edge.bench.op_profile import profile_in_child

                if progress:
                    progress(f"profiling the ops of {name} with {cfg.threads[0]} thread(s)")
                used = entry["threads"][str(cfg.threads[0])]["execution"]["kernels"]
                entry["op_profile"] = profile_in_child(path, cfg.threads[0], used)
            report["models"][name] = entry
    for name in names[1:]:
        pair = {"reference": names[0], "test": name, **compare(maps[names[0]], maps[name], labels)}
        if labels is not None:
            pair["miou_change"] = (
                report["models"][name]["accuracy"]["mean_iou"]
                - report["models"][names[0]]["accuracy"]["mean_iou"]
            )
        report["pairs"].append(pair)
    report["peers"] = peer_ratios(report)
    from edge.models.precision import auto_in_bench

    report["precision_auto"] = auto_in_bench(report["models"], list(cfg.threads))
    report["runtime"] = ", ".join(dict.fromkeys(e["runtime"] for e in report["models"].values()))
    report["load_average_after"] = _load()

    charts = []
    first = cfg.threads[0]
    for name in names:
        run = report["models"][name]["threads"][str(first)]
        charts.append(
            histogram(
                np.array(run.pop("invoke_us")) / 1e3,
                f"{name}: invoke latency, {first} thread(s)"
                + (" (EMULATED)" if cfg.emulated else ""),
                "ms",
                cfg.out / f"latency_{_file_name(name)}.png",
            )
        )
        for other in report["models"][name]["threads"].values():
            other.pop("invoke_us", None)
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
                cfg.out / "iou_per_class.png",
            )
        )
    report["files"] = ["report.json", "report.md", *[c.name for c in charts]]
    atomic_write_json(cfg.out / "report.json", report)
    atomic_write_bytes(cfg.out / "report.md", write_markdown(report).encode())
    return report


def measure(spec: dict) -> dict:
    """Measure one model at one thread count (run in a child process; see :func:`_in_child`)."""
    from edge.io.camera import CameraDir
    from edge.io.sinks import OutputWriter
    from edge.run.hazards import RegionAnalyzer, RegionConfig
    from edge.run.loop import RunContext, peak_rss_mb, run_stream
    from edge.runtimes.interpreter import runtime_version
    from edge.segmenter import Segmenter

    frames = np.load(spec["frames"])
    t0 = time.perf_counter_ns()
    seg = Segmenter(spec["model"], spec["threads"], spec["runtime"], kernels=spec["kernels"])
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
    runs_us = [invoke(i) for i in range(spec["runs"])]
    invoke_ms = LogHistogram.of(np.array(runs_us) / 1e3)

    # The whole pipeline on frame files, as edge-seg run does it (minus the status line): each
    # frame in turn, then with the next read and the last written while the model runs
    context = RunContext(analyzer=RegionAnalyzer(RegionConfig(), seg.labels))
    modes = {}
    for mode, overlap in (("in_turn", False), ("overlapped", True)):
        with tempfile.TemporaryDirectory() as out:
            with OutputWriter(out, label_set=seg.labels) as writer:
                stats = run_stream(CameraDir(spec["frame_dir"]), seg, writer, limit=spec["runs"],
                                   context=context, overlap=overlap)  # fmt: skip
        modes[mode] = pipeline_stages(stats)
    pipeline = stats.latency["total"].summary(digits=4, full=True)
    pipeline["fps"] = stats.fps
    pipeline["modes"] = modes
    result = {
        "runtime": f"{seg.runtime} {runtime_version(seg.runtime)}",
        "execution": seg.execution,
        "precision": seg.precision,
        "macs": _macs(spec["model"], spec["runtime"]),
        "init_ms": init_us / 1e3,
        "first_inference_ms": first_us / 1e3,
        "warmup_avg_ms": float(np.mean(warmup)) / 1e3 if warmup else None,
        "invoke": invoke_ms.summary(digits=4, full=True),
        "invoke_fps": 1e3 / invoke_ms.mean,
        "pipeline": pipeline,
        "pipeline_vs_invoke": stats.fps / (1e3 / invoke_ms.mean),
        "invoke_us": runs_us,
    }
    if spec.get("maps"):
        maps = np.stack([seg.segment(f).labels for f in frames])
        np.save(spec["maps"], maps)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def pipeline_stages(stats) -> dict:
    """Mean time of each stage (ms, on whichever thread it ran), the wall time per frame, what
    the frame cost the loop beyond ``invoke`` (wall per frame minus the mean invoke), and the
    process's CPU time per frame."""
    stages = {s: h.mean for s, h in stats.latency.items() if h.count and s != "total"}
    wall = stats.wall_s * 1e3 / max(stats.frames, 1)
    return {
        "stages_ms": stages,
        "wall_ms": wall,
        "outside_invoke_ms": wall - stages.get("invoke", 0.0),
        "cpu_ms": stats.cpu_s * 1e3 / max(stats.frames, 1),  # the process's: every thread
        "fps": stats.fps,
    }


def _macs(model: str | Path, runtime: str) -> int | None:
    """The model's MACs per invoke, read from its graph before delegation (None for an ONNX
    peer: its GMAC/s are not compared with the limit)."""
    from edge.bench.roofline import graph_macs
    from edge.runtimes.interpreter import make_interpreter

    if model_format(model).own_kernels:
        return None
    interpreter, _ = make_interpreter(model, 1, runtime, xnnpack=False)
    return graph_macs(interpreter)


def measure_limits(cfg: BenchConfig, tmp: Path, progress=None) -> dict:
    """Time the limit convs of both precisions per kernel choice and thread count, each in its
    own process like the models: {kernels: {threads: {precision: {...}}}}; {} when LiteRT's
    schema module (needed to write them) is missing."""
    from edge.bench.roofline import conv_model, limit_macs
    from edge.runtimes.interpreter import calibrate, time_invoke

    try:
        paths = {}
        for precision in ("int8", "float32"):
            paths[precision] = tmp / f"limit_{precision}.tflite"
            paths[precision].write_bytes(conv_model(precision))
    except ImportError as err:
        if progress:
            progress(f"no limit column: {err} (it needs ai-edge-litert)")
        return {}
    out: dict = {}
    for kernels in cfg.kernels:
        for n_threads in cfg.threads:
            row = out.setdefault(kernels, {}).setdefault(str(n_threads), {})
            for precision, path in paths.items():
                if progress:
                    progress(f"measuring the {precision} limit conv with {n_threads} thread(s)")
                spec = {"model": str(path), "kernels": kernels, "threads": n_threads,
                        "runtime": cfg.runtime, "runs": max(5, cfg.runs // 4)}  # fmt: skip
                if cfg.in_process:
                    ms = time_invoke(spec)
                else:  # a child process, like the models: one run, one interpreter
                    ms = calibrate(str(path), [kernels], n_threads, cfg.runtime, spec["runs"])[
                        kernels
                    ]
                row[precision] = {
                    "macs": limit_macs(),
                    "invoke_ms": round(ms, 4),
                    "gmac_per_s": round(limit_macs() / ms / 1e6, 1),
                }
    return out


def versus_limit(macs: int, result: dict, limit: dict) -> dict:
    """A model's GMAC/s, its share of the limit conv's, its floor and how far above it it runs
    (medians on both sides: a few slow invokes on a shared board do not move them)."""
    median_ms = result["invoke"]["p50"]
    gmacs = macs / median_ms / 1e6
    floor_ms = macs / limit["gmac_per_s"] / 1e6
    return {
        "gmac_per_s": gmacs,
        "limit_share": gmacs / limit["gmac_per_s"],
        "floor_ms": floor_ms,
        "vs_floor": median_ms / floor_ms,
    }


def machine_info(emulated: bool) -> dict:
    """CPU model, cores, OS, Python and library versions."""
    import PIL

    from edge.runtimes.kernels import cpu_features

    features = cpu_features()
    return {
        "cpu": features.model,
        "cpu_features": sorted(features.flags),
        "int8_isa_available": features.int8_isa(amx=True),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "emulated": emulated,
    }


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def load_eval(
    data: Path | None, n: int, seed: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """uint8 frames and labels: from an npz (images/labels, or the course keys) or synthetic
    frames of ``size`` (the model's input).

    Raises:
        ValueError: for an npz without usable frames, or frames of several sizes.
    """
    if data is not None:
        from edge.io.npz import NpzFrames

        source = NpzFrames(data, limit=n)
        frames = np.stack([f.image for f in source])
        return frames, source.labels, f"{Path(data).name} ({len(frames)} frames)"
    from edge.synthetic import SyntheticConfig, generate  # numpy only, no TensorFlow

    cfg = SyntheticConfig(
        n_train=0, n_test=n, height=size[0], width=size[1], seed=seed, big_rock_rate=0.1
    )
    made = generate(cfg, split="test")
    return (
        made.images,
        made.labels,
        f"synthetic (seed {seed}, {n} frames of {size[0]}x{size[1]}, big rock in 10 %)",
    )


def _file_name(name: str) -> str:
    """A column name as a file name: "int8 [xnnpack-no-amx]" -> "int8_xnnpack-no-amx"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def unique_names(paths: list[Path]) -> list[str]:
    """Column names: file stems (an ONNX peer keeps its suffix), parent-qualified if needed."""
    names = [p.stem if model_format(p).role == "rover" else p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{n}" for p, n in zip(paths, names)]
    return names


def compare(ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None) -> dict:
    """inference_diff for class maps: agreement over all pixels and over labelled ones."""
    out = {"pixel_agreement": float((ref == test).mean())}
    if labels is not None:
        scored = labels > 0
        out["pixel_agreement_labelled"] = float((ref == test)[scored].mean())
    return out


def _in_child(spec: dict) -> dict:
    """Run :func:`measure` in a fresh interpreter so that its peak RSS is the model's own.

    Raises:
        ValueError: naming the model and thread count when the child fails.
    """
    result = subprocess.run(
        [sys.executable, "-m", "edge.bench.runner", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise ValueError(
            f"measuring {Path(spec['model']).name} with {spec['threads']} thread(s) failed: {tail[0]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        import logging

        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(measure(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: edge-seg bench --help (this module's entry point is for its own workers)")
