"""The final screen of `make demo`: where everything is and the float-vs-int8 figures.

python tools/demo_summary.py demo [--seconds N]
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _load(path: Path) -> dict:
    if not path.is_file():
        raise click.ClickException(f"{path} is missing: did every demo step run?")
    return json.loads(path.read_text())


def summary_text(out: Path, seconds: int | None = None) -> str:
    """The demo's one screen, built from the JSON files the steps wrote."""
    run = out / "runs" / "marsseg"
    metrics = _load(run / "metrics.json")
    config = _load(run / "config.json")
    prep = _load(run / "data.json")["preprocessing"]
    parity = _load(run / "parity.json")
    edge = _load(out / "edge" / "summary.json")
    bench = _load(out / "report" / "report.json")
    models = parity["models"]
    names = list(bench["models"])  # float32 first, then int8
    f32, i8 = (bench["models"][n] for n in names[:2])
    rule = "=" * 78
    lines = [
        rule,
        "marsseg-edge demo" + (f"  ({seconds // 60} min {seconds % 60:02d} s)" if seconds else ""),
        rule,
        f"data      {config['data']['path']}",
        f"model     MarsSeg width {config['width']}, {config['epochs']} epochs at "
        f"{prep['height']}x{prep['width']}, loss {config['loss']}: "
        f"validation mIoU {metrics['mean_iou']:.4f} (Keras)",
        "",
        f"{'':<26}{'float32':>12}{'int8':>12}{'int8/float32':>15}",
        f"{'size (KiB)':<26}{models['float32']['size_bytes'] / 1024:>12.0f}"
        f"{models['int8']['size_bytes'] / 1024:>12.0f}"
        f"{models['int8']['size_bytes'] / models['float32']['size_bytes']:>14.2f}x",
        f"{'val mIoU (LiteRT)':<26}{models['float32']['mean_iou']:>12.4f}"
        f"{models['int8']['mean_iou']:>12.4f}"
        f"{models['int8']['mean_iou'] - models['float32']['mean_iou']:>+15.4f}",
    ]
    for threads in bench["settings"]["threads"]:
        a, b = f32["threads"][str(threads)], i8["threads"][str(threads)]
        lines.append(
            f"{f'invoke ms, {threads} thread(s)':<26}{a['invoke']['mean']:>12.2f}"
            f"{b['invoke']['mean']:>12.2f}{b['invoke']['mean'] / a['invoke']['mean']:>14.2f}x"
        )
        lines.append(
            f"{f'pipeline fps, {threads} thr.':<26}{a['pipeline']['fps']:>12.1f}"
            f"{b['pipeline']['fps']:>12.1f}{b['pipeline']['fps'] / a['pipeline']['fps']:>14.2f}x"
        )
    lines += [
        f"{'pixel agreement':<26}{'':>12}{100 * models['int8']['pixel_agreement']:>11.2f}%"
        f"   ({100 * models['int8'].get('pixel_agreement_labelled', float('nan')):.2f} % on scored pixels)",
        "",
        f"rover run (int8, {edge['config']['threads']} threads): {edge['frames']} frames, "
        f"{edge['errors']} errors, {edge['fps']:.0f} fps, p50 "
        f"{edge['latency_ms']['total']['p50']:.2f} ms, p99 {edge['latency_ms']['total']['p99']:.2f} ms"
        + (f", mIoU {edge['miou']:.4f}" if edge.get("miou") is not None else "")
        + (f", peak RSS {edge['peak_rss_mb']:.0f} MiB" if edge.get("peak_rss_mb") else ""),
        "",
        "where things are:",
        f"  training run        {run}/ (curves.png, confusion.png, metrics.json)",
        f"  models              {run}/model_int8.tflite, model_float32.tflite, parity.json",
        f"  overlays            {out}/edge/overlays/*.png   (masks/, telemetry.jsonl)",
        f"  benchmark report    {out}/report/report.md  (+ latency_*.png, iou_per_class.png)",
        f"  data overview       {out}/inspect/ (class_distribution.png, samples.png)",
        f"  logs                {out}/logs/",
        rule,
    ]
    return "\n".join(lines)


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--seconds", type=int, default=None, help="Wall time of the demo, to print.")
def main(out: Path, seconds: int | None) -> None:
    """Print the demo's final screen from the files in OUT."""
    click.echo(summary_text(out, seconds))


if __name__ == "__main__":
    main()
