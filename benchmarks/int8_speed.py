"""int8 vs float32 before and after the rover graph, against the machine's limit.

    python benchmarks/int8_speed.py --run runs/rover --data eval_200.npz --out report/int8_speed

For the trained rover model (its run folder) and for MarsSeg at widths 0.25 and 1.0 (untrained
weights, seed 0: the time does not depend on them; calibrated on the eval frames), each at the
rover's input size: the Keras graph ("before", ``trainer convert --graph keras``) and the rover
graph ("after", ``--graph rover``), float32 and int8, and the ONNX Runtime peer of the rover graph
(``--onnx``: the same float32 graph, quantized by ONNX Runtime on the same calibration frames),
all six measured side by side by ``edge-seg bench`` (each in its own process, same run, with the
limit conv). The rover model's conversions also write parity.json on its whole validation split
(real frames), the peer's included.
Writes OUT/summary.md and OUT/summary.json, and each set's bench report under OUT/<set>/bench.

Needs TensorFlow (it converts) and the ``[peers]`` extra; the timings need a quiet machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.io.sinks import atomic_write_bytes, atomic_write_json

GRAPHS = ("keras", "rover")
PAIR = ("float32", "int8")
COLUMNS = (*GRAPHS, "onnx")  # before, after, the ONNX Runtime peer of after


def convert_sets(run: Path, data: Path, widths: list[float], out: Path) -> dict[str, dict]:
    """{set name: {graph: {precision: path}}} for the rover run and each width."""
    import keras

    from edge.contract.metadata import read_model_metadata
    from trainer.convert import ConvertConfig, convert_model, convert_run
    from trainer.models import build_model

    sets: dict[str, dict] = {"rover": {}}
    for graph in GRAPHS:  # the trained model: also its parity on the real validation split
        target = out / "rover" / graph
        convert_run(run, ConvertConfig(graph=graph, onnx=graph == "rover"), out_dir=target)
        sets["rover"][graph] = {p: target / f"model_{p}.tflite" for p in ("float32", "int8")}
    sets["rover"]["onnx"] = {p: out / "rover" / "rover" / "onnx" / f"model_{p}.onnx" for p in PAIR}
    meta = read_model_metadata(sets["rover"]["keras"]["int8"])
    prep = meta.preprocessing
    frames = np.load(data)["images"]
    calib = np.stack([prep.prepare(f) for f in frames]).astype(np.float32) * prep.scale
    for width in widths:
        keras.utils.set_random_seed(0)
        model = build_model("marsseg", (*prep.size, 1), meta.labels.num_classes, width=width)
        name = f"marsseg_w{width:g}"
        info = {"name": name, "architecture": "marsseg", "width": width, "weights": "untrained"}
        sets[name] = {}
        for graph in GRAPHS:
            produced = convert_model(
                model,
                out / name / graph,
                ("float32", "int8"),
                calib,
                meta.labels,
                prep,
                info,
                graph,
                onnx=graph == "rover",
            )
            sets[name][graph] = {p: produced[p] for p in PAIR}
            if graph == "rover":
                sets[name]["onnx"] = {p: produced[f"onnx-{p}"] for p in PAIR}
    return sets


def bench_sets(sets: dict, data: Path, threads: tuple[int, ...], runs: int, out: Path) -> dict:
    """One edge-seg bench per set: Keras float32 and int8, rover float32 and int8, and the
    ONNX Runtime peer's float32 and int8."""
    from edge.bench.runner import BenchConfig, run_benchmark

    reports = {}
    for name, graphs in sets.items():
        models = [graphs[g][p] for g in COLUMNS for p in PAIR]
        cfg = BenchConfig(
            models=models, data=data, threads=threads, runs=runs, out=out / name / "bench"
        )
        reports[name] = run_benchmark(cfg, progress=lambda line: click.echo(line, err=True))
    return reports


def summarize(reports: dict, threads: tuple[int, ...]) -> tuple[list[dict], str]:
    """Rows of before/after int8/float32 ratios (median invokes), with the limit figures of the
    int8 models."""
    from edge.bench.runner import versus_limit

    rows = []
    for name, report in reports.items():
        columns = list(report["models"])  # keras f32/int8, rover f32/int8, ONNX peer f32/int8
        for t in threads:
            r = [report["models"][c]["threads"][str(t)] for c in columns]
            ms = [x["invoke"]["p50"] for x in r]
            limit = report.get("limit", {}).get("auto", {}).get(str(t))
            if limit:  # from the medians (reports written before edge.bench.runner used them too)
                r[3].update(versus_limit(report["models"][columns[3]]["macs"], r[3], limit["int8"]))
            rows.append(
                {
                    "model": name,
                    "threads": t,
                    "keras_float32_ms": ms[0],
                    "keras_int8_ms": ms[1],
                    "before_int8_over_float32": ms[1] / ms[0],
                    "rover_float32_ms": ms[2],
                    "rover_int8_ms": ms[3],
                    "after_int8_over_float32": ms[3] / ms[2],
                    "int8_speedup": ms[1] / ms[3],
                    "int8_gmac_per_s": r[3].get("gmac_per_s"),
                    "int8_limit_share": r[3].get("limit_share"),
                    "int8_floor_ms": r[3].get("floor_ms"),
                    "int8_vs_floor": r[3].get("vs_floor"),
                    "int8_path": r[3]["execution"]["cpu"]["int8_isa"],
                    "ort_float32_ms": ms[4] if len(ms) > 4 else None,
                    "ort_int8_ms": ms[5] if len(ms) > 5 else None,
                    "litert_over_ort_int8": ms[3] / ms[5] if len(ms) > 5 else None,
                }
            )
    any_report = next(iter(reports.values()))
    m = any_report["machine"]
    lines = [
        "# int8 vs float32, Keras graph (before) and rover graph (after)",
        "",
        f"Machine: {m['cpu']} ({m['arch']}, {m['cores']} cores), {any_report['runtime']}; int8 "
        f"path: {rows[0]['int8_path']}. Median invoke (ms), each model in its own process; limit "
        "= one large int8 conv timed in the same run (edge.bench.roofline). ORT int8: ONNX Runtime on the "
        "rover graph's float32 model translated to ONNX and quantized by ONNX Runtime (QDQ, "
        "uint8 activations, int8 per-channel weights) on the same calibration frames "
        "(edge.bench.onnx_peer), in the same run; below 1x, LiteRT is faster.",
        "",
        "| model | threads | f32 before | int8 before | int8/f32 before | f32 after | int8 after "
        "| int8/f32 after | int8 speed-up | int8 GMAC/s | limit share | floor ms | int8 / floor "
        "| ORT int8 | LiteRT int8 / ORT int8 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lim = r["int8_limit_share"] is not None
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['keras_float32_ms']:.3f} | "
            f"{r['keras_int8_ms']:.3f} | {r['before_int8_over_float32']:.2f}x | "
            f"{r['rover_float32_ms']:.3f} | {r['rover_int8_ms']:.3f} | "
            f"{r['after_int8_over_float32']:.2f}x | {r['int8_speedup']:.2f}x | "
            + (
                f"{r['int8_gmac_per_s']:.0f} | {r['int8_limit_share']:.2f} | "
                f"{r['int8_floor_ms']:.3f} | {r['int8_vs_floor']:.2f}x |"
                if lim
                else "- | - | - | - |"
            )
            + (
                f" {r['ort_int8_ms']:.3f} | {r['litert_over_ort_int8']:.2f}x |"
                if r["ort_int8_ms"] is not None
                else " - | - |"
            )
        )
    return rows, "\n".join(lines) + "\n"


@click.command()
@click.option("--run", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Eval npz (tools/export_frames.py): timing frames, mIoU, and the untrained models' "
    "calibration.",
)
@click.option("--widths", default="0.25,1.0", show_default=True)
@click.option("--threads", default="1,2", show_default=True)
@click.option("--runs", default=200, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report/int8_speed"),
    show_default=True,
)
@click.option(
    "--summarize-only",
    is_flag=True,
    help="Summarize the bench reports already under OUT (no conversion, no timing).",
)
def main(
    run: Path, data: Path, widths: str, threads: str, runs: int, out: Path, summarize_only: bool
) -> None:
    """Convert, benchmark and summarize (see the module docstring)."""
    thread_counts = tuple(int(t) for t in threads.split(","))
    if summarize_only:
        names = ["rover", *(f"marsseg_w{float(w):g}" for w in widths.split(","))]
        reports = {n: json.loads((out / n / "bench" / "report.json").read_text()) for n in names}
    else:
        sets = convert_sets(run, data, [float(w) for w in widths.split(",")], out)
        reports = bench_sets(sets, data, thread_counts, runs, out)
    rows, text = summarize(reports, thread_counts)
    parity = {
        g: json.loads((out / "rover" / g / "parity.json").read_text())["models"] for g in GRAPHS
    }
    text += "\nParity of the rover model on its validation split (real frames), vs Keras:\n\n"
    text += "| graph | precision | mIoU | change vs Keras | pixel agreement |\n|---|---|---:|---:|---:|\n"
    for g in GRAPHS:
        for p, m in parity[g].items():
            text += (
                f"| {g} | {p} | {m['mean_iou']:.4f} | {m['miou_change_vs_keras']:+.4f} | "
                f"{100 * m['pixel_agreement']:.2f} % |\n"
            )
    atomic_write_json(out / "summary.json", {"rows": rows, "parity": parity})
    atomic_write_bytes(out / "summary.md", text.encode())
    click.echo(text)


if __name__ == "__main__":
    main()
