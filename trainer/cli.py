"""`trainer`: the workstation command line. Thin wrappers over the library; see --help."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click


class _ValueErrorsAsUsage(click.Group):
    """Turn the library's ValueErrors (bad input, with a fix in the message) into one clean line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ValueError as err:
            raise click.ClickException(str(err)) from err


@click.group(cls=_ValueErrorsAsUsage)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Train, evaluate and convert Mars terrain segmentation models (64x128 grayscale frames).

    Labels: 0 background/unlabelled (never scored), 1 soil, 2 bedrock, 3 sand, 4 big rock.
    The score is the mean IoU over classes 1-4.
    """
    os.environ.setdefault(
        "TF_CPP_MIN_LOG_LEVEL", "2"
    )  # keep TensorFlow's C++ banner out of the output
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s"
    )


@main.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the plots and inspect.json [default: inspect_<DATA name>].",
)
@click.option(
    "--min-repeats",
    type=click.IntRange(min=2),
    default=None,
    help="A mask shared by this many frames marks them as outliers [default: 0.5 % of frames, >= 3].",
)
def inspect(data: Path, out: Path | None, min_repeats: int | None) -> None:
    """Describe DATA (course npz or AI4Mars folder): counts, outliers, class fractions.

    Writes a class-distribution bar chart and a sample grid.
    """
    from trainer.inspection import inspect_dataset

    result = inspect_dataset(data, out or Path(f"inspect_{data.stem}"), min_repeats)
    click.echo(result.text())


@main.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--model", default="marsseg", show_default=True, help="A name from `trainer models`.")
@click.option(
    "--width",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 4.0),
    help="Channel multiplier (0.25 trains ~5x faster on a CPU).",
)
@click.option("--epochs", default=40, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Global batch."
)
@click.option(
    "--lr",
    "learning_rate",
    default=1e-4,
    show_default=True,
    type=float,
    help="AdamW learning rate.",
)
@click.option(
    "--loss",
    default="ce",
    show_default=True,
    help="ce (background ignored), plain_ce, weighted_ce, dice, focal, boundary, or sums like 'ce+0.5*dice'.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0.01, 0.9))
@click.option(
    "--keep-outliers",
    is_flag=True,
    help="Do not drop frames whose mask repeats (the alien pictures).",
)
@click.option(
    "--no-offline-aug", is_flag=True, help="Skip the flip/MaskDropout/big-rock offline recipe."
)
@click.option("--big-rock-repeats", default=4, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--pixel-aug",
    is_flag=True,
    help="Add online brightness/contrast/noise (the report found it hurts).",
)
@click.option(
    "--strategy",
    type=click.Choice(["auto", "default", "mirrored", "multiworker"]),
    default="auto",
    show_default=True,
    help="tf.distribute: mirrored = all local GPUs; multiworker reads TF_CONFIG.",
)
@click.option(
    "--mixed-precision", is_flag=True, help="mixed_float16 on GPUs (mixed_bfloat16 on CPUs)."
)
@click.option("--xla", is_flag=True, help="Compile with XLA (jit_compile); helps on GPUs.")
@click.option(
    "--steps-per-epoch", type=click.IntRange(min=1), default=None, help="Cap batches per epoch."
)
@click.option(
    "--limit", type=click.IntRange(min=2), default=None, help="Use only the first N frames."
)
@click.option(
    "--runs",
    "runs_dir",
    default=Path("runs"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--name", default=None, help="Run name [default: <model>-<timestamp>].")
@click.option("--resume", is_flag=True, help="Continue the run --name from its last epoch.")
def fit(
    data: Path,
    model: str,
    width: float,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    loss: str,
    seed: int,
    val_fraction: float,
    keep_outliers: bool,
    no_offline_aug: bool,
    big_rock_repeats: int,
    pixel_aug: bool,
    strategy: str,
    mixed_precision: bool,
    xla: bool,
    steps_per_epoch: int | None,
    limit: int | None,
    runs_dir: Path,
    name: str | None,
    resume: bool,
) -> None:
    """Train a model on DATA and write runs/<name>/ (best model, history, curves, metrics).

    AdamW, background-ignoring loss, ReduceLROnPlateau and EarlyStopping on the validation mean
    IoU (classes 1-4). Ctrl-C stops cleanly, keeping the best checkpoint and the history.
    """
    import time as _time

    from trainer.config import DataConfig, TrainConfig
    from trainer.train import fit as run_fit

    if resume and not name:
        raise click.UsageError("--resume needs --name of the run to continue")
    offline = not no_offline_aug
    cfg = TrainConfig(
        data=DataConfig(
            path=str(data),
            val_fraction=val_fraction,
            remove_outliers=not keep_outliers,
            flip=offline,
            mask_dropout_fraction=0.25 if offline else 0.0,
            big_rock_repeats=big_rock_repeats if offline else 1,
            online_pixel=pixel_aug,
            limit=limit,
        ),
        model=model,
        width=width,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        loss=loss,
        seed=seed,
        strategy=strategy,
        mixed_precision=mixed_precision,
        xla=xla,
        steps_per_epoch=steps_per_epoch,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    run_dir = runs_dir / (name or f"{model}-{_time.strftime('%Y%m%d-%H%M%S')}")
    result = run_fit(cfg, run_dir, resume=resume)
    click.echo(
        f"{'interrupted' if result.interrupted else 'done'} after {result.epochs_run} epoch(s) in "
        f"{result.seconds / 60:.1f} min; best validation mean IoU {result.best_miou:.4f}"
    )
    click.echo(
        f"run: {result.run_dir}  (model.keras, history.csv, curves.png, metrics.json, confusion.png)"
    )
    if result.interrupted:
        sys.exit(130)


@main.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--split",
    type=click.Choice(["val", "test"]),
    default="val",
    show_default=True,
    help="val: the run's own validation split; test: the labelled test set.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder [default: RUN/eval_<split>].",
)
def evaluate(run: Path, data: Path, split: str, out: Path | None) -> None:
    """Score RUN (a run folder or .keras file) on DATA: per-class IoU, confusion, worst frames."""
    from trainer.evaluate import evaluate_run, format_report

    click.echo(format_report(evaluate_run(run, data, split, out)))


@main.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--submission",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Kaggle CSV to write (header id,0,...,8191).",
)
@click.option(
    "--masks",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write colourised PNG masks here.",
)
def predict(run: Path, data: Path, submission: Path | None, masks: Path | None) -> None:
    """Predict the test set of DATA with RUN: a submission CSV and/or PNG masks."""
    from trainer.evaluate import predict_run

    result = predict_run(run, data, submission, masks)
    click.echo(
        f"predicted {result['frames']} test frames"
        + (f"; wrote {result['submission']}" if result["submission"] else "")
        + (f"; masks in {result['masks']}" if result["masks"] else "")
    )


@main.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--int8", is_flag=True, help="Full-integer int8 (int8 input and output), calibrated.")
@click.option("--float16", is_flag=True, help="float16 weights.")
@click.option("--float32", is_flag=True, help="Plain float32.")
@click.option(
    "--calib",
    default=200,
    show_default=True,
    type=int,
    help="Calibration frames from the training split (big rock oversampled).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Data set [default: the one recorded in RUN/config.json].",
)
@click.option(
    "--parity-frames",
    type=click.IntRange(min=1),
    default=None,
    help="Validation frames for the parity report [default: all].",
)
def convert(
    run: Path,
    int8: bool,
    float16: bool,
    float32: bool,
    calib: int,
    data: Path | None,
    parity_frames: int | None,
) -> None:
    """Convert RUN's best model to .tflite and report float-vs-int8 parity.

    Without a precision flag, writes float32 and int8. The int8 model must be integer-only
    (no float or Flex op), else the command fails naming the op and writes no int8 file.
    """
    from trainer.convert import ConvertConfig, convert_run, format_parity

    precisions = tuple(
        p for p, on in (("float32", float32), ("float16", float16), ("int8", int8)) if on
    )
    cfg = ConvertConfig(
        precisions=precisions or ("float32", "int8"),
        calibration_frames=calib,
        parity_frames=parity_frames,
    )
    report = convert_run(run, cfg, data)
    click.echo(format_parity(report))
    click.echo(
        f"wrote {', '.join(m['file'] for m in report['models'].values())} and parity.json beside {run}"
    )


@main.command()
@click.option("--width", default=1.0, show_default=True, type=click.FloatRange(0.05, 4.0))
def models(width: float) -> None:
    """List the registered models with parameters and MACs at 64x128."""
    from trainer.models import MODELS, build_model, count_macs

    click.echo(f"{'model':<15} {'parameters':>12} {'GMAC/frame':>11}")
    for name in MODELS:
        model = build_model(name, width=width)
        click.echo(f"{name:<15} {model.count_params():>12,} {count_macs(model) / 1e9:>11.2f}")


if __name__ == "__main__":
    main()
