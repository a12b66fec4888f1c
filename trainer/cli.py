"""`trainer`: the workstation command line. Thin wrappers over the library; see --help."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from trainer.cli_options import config_options, given_settings
from trainer.config import QatConfig, TrainConfig

# What `trainer` needs beyond the rover's packages: the [train] extra.
TRAIN_MODULES = ("tensorflow", "keras", "albumentations", "matplotlib")
JAX_MODULES = ("jax", "keras", "albumentations", "matplotlib")  # KERAS_BACKEND=jax


class Fatal(click.ClickException):
    """Bad input, a missing package or a failed run: one line and exit code 2 (as edge-seg's)."""

    exit_code = 2


class _ValueErrorsAsUsage(click.Group):
    """Turn the library's ValueErrors (bad input, with a fix in the message) into one clean line,
    and Ctrl-C during start-up into one line and exit 130 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ValueError as err:  # with its notes (e.g. where TensorFlow's messages went)
            raise Fatal(" ".join([str(err), *getattr(err, "__notes__", ())])) from err
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _terminal():
    """A stream on a copy of the process's stderr, for our log: `trainer convert` points file
    descriptor 2 at convert.log while TensorFlow's C++ code talks, and our lines must still
    reach the terminal."""
    try:
        return os.fdopen(os.dup(2), "w", buffering=1)
    except (OSError, ValueError):  # no real stderr (embedded): the default stream
        return sys.stderr


def missing_train_modules() -> list[str]:
    """The [train] extra's modules that cannot be imported here."""
    import importlib.util

    wanted = JAX_MODULES if os.environ.get("KERAS_BACKEND") == "jax" else TRAIN_MODULES
    return [name for name in wanted if importlib.util.find_spec(name) is None]


@click.group(cls=_ValueErrorsAsUsage)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="marsseg-edge", prog_name="trainer")
def main(verbose: bool) -> None:
    """Train, evaluate and convert Mars terrain segmentation models (grayscale frames).

    Data: the course npz (64x128 frames), a synthetic npz, or AI4Mars (any size, --size).
    Labels: 0 background/unlabelled (never scored), 1 soil, 2 bedrock, 3 sand, 4 big rock.
    The score is the mean IoU over classes 1-4.

    Exit codes: 0 done, 2 bad input or a failed step (one line says why), 130 interrupted.
    """
    # before anything imports TensorFlow: its C++ banner (oneDNN, absl) stays out of the output
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    missing = missing_train_modules()
    if missing:
        raise Fatal(
            f"trainer needs the [train] extra ({', '.join(missing)} not installed): "
            "pip install 'marsseg-edge[train]' (the rover needs only [edge] and edge-seg)"
        )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=_terminal(),
    )
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" at start-up
    if not verbose:  # TensorFlow's Python-side notes ("Assets written to ...")
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.WARNING)


@main.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the plots and inspect.json [default: inspect_<DATA name>].",
)
@click.option(
    "--size",
    default=None,
    help="Frame size HxW for folder data sets [default: 128x128 for AI4Mars].",
)
@click.option(
    "--min-repeats",
    type=click.IntRange(min=2),
    default=None,
    help="A mask shared by this many frames marks them as outliers [default: 0.5 % of frames, >= 3].",
)
@click.option(
    "--outliers/--no-outliers",
    "outliers",
    default=None,
    help="Look for the course file's outliers (frames sharing one mask) [default: npz only].",
)
def inspect(
    data: Path, out: Path | None, size: str | None, min_repeats: int | None, outliers: bool | None
) -> None:
    """Describe DATA (course npz or AI4Mars folder): counts, outliers, class fractions.

    Writes a class-distribution bar chart and a sample grid.
    """
    from edge.contract.preprocess import parse_size
    from trainer.inspection import inspect_dataset

    result = inspect_dataset(
        data,
        out or Path(f"inspect_{data.name}"),
        min_repeats,
        parse_size(size) if size else None,
        outliers,
    )
    click.echo(result.text())


@main.command(context_settings={"max_content_width": 100})
@click.argument("data", type=click.Path(exists=True, path_type=Path), required=False)
@click.option(
    "--preset",
    default=None,
    help="A named recipe under the other settings: rover (the shipped model's: MarsSeg "
    "width 0.25, 128x128, cosine), course (the report's MarsSeg), marsseg-small (the earlier README's) "
    "[default: none: the dataclass defaults].",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON settings (nested like a run's config.json, or flat dotted keys); options win.",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set any setting by its dotted key, e.g. --set data.size=96x96 (repeatable).",
)
@click.option(
    "--no-offline-aug",
    is_flag=True,
    help="Skip the report's offline recipe (flip, MaskDropout, big-rock copies).",
)
@click.option(
    "--runs",
    "runs_dir",
    default=Path("runs"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of run directories.",
)
@click.option("--name", default=None, help="Run name [default: <model>-<timestamp>].")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run --name from its last epoch; the schedule (epochs, --lr, patience, "
    "strategy...) may change, the model and data come from the run.",
)
@config_options(TrainConfig)
def fit(
    data: Path | None,
    preset: str | None,
    config_file: Path | None,
    assignments: tuple[str, ...],
    no_offline_aug: bool,
    runs_dir: Path,
    name: str | None,
    resume: bool,
    **options,
) -> None:
    """Train a model on DATA and write runs/<name>/ (best model, history, curves, metrics).

    DATA is the course npz, a synthetic npz or an AI4Mars folder (its root or any folder under
    it). AdamW, ReduceLROnPlateau and EarlyStopping on the validation mean IoU (background not
    scored); Ctrl-C stops cleanly, keeping the best checkpoint and the history. The resolved
    settings are saved as config.json in the run.
    """
    import time as _time

    from trainer.config import load_config_file, parse_assignments, preset_values, with_values
    from trainer.train import fit as run_fit
    from trainer.train import resume_config

    values = preset_values(preset) if preset else {}
    values.update(load_config_file(config_file) if config_file else {})
    values.update(parse_assignments(assignments))
    values.update(given_settings(options))
    if no_offline_aug:
        values.update({"data.flip": False, "data.mask_dropout_fraction": 0.0})
        values.update({"data.big_rock_repeats": 1})
    if data is not None:
        values["data.path"] = str(data)
    values.setdefault("verbose", 1 if sys.stdout.isatty() else 2)
    if resume:
        if not name:
            raise click.UsageError("--resume needs --name of the run to continue")
        if preset:
            raise click.UsageError("--preset starts a run; --resume continues one from its config")
        run_dir = runs_dir / name
        values.pop("verbose", None)
        cfg, changes = resume_config(run_dir, values)
        cfg.verbose = 1 if sys.stdout.isatty() else 2
        click.echo(
            f"resuming {run_dir}: " + ("; ".join(changes) if changes else "no setting changed"),
            err=True,
        )
    else:
        if "data.path" not in values:
            raise click.UsageError("give DATA (a data set path), or --config with data.path")
        cfg = with_values(TrainConfig(), values)
        run_dir = runs_dir / (name or f"{cfg.model}-{_time.strftime('%Y%m%d-%H%M%S')}")
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
@click.option(
    "--test-agreement",
    type=click.Choice(["1", "2", "3"]),
    default=None,
    help="AI4Mars expert test labels of --split test: masked-gold-min<N>-100agree "
    "[default: the run's data.test_agreement, 3].",
)
def evaluate(
    run: Path, data: Path, split: str, out: Path | None, test_agreement: str | None
) -> None:
    """Score RUN (a run folder or .keras file) on DATA: per-class IoU, confusion, worst frames.

    DATA may be an AI4Mars folder that holds only the expert test labels (--split test).
    """
    from trainer.evaluate import evaluate_run, format_report

    agreement = int(test_agreement) if test_agreement else None
    click.echo(format_report(evaluate_run(run, data, split, out, agreement)))


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="The run's data set [default: the one recorded in the run].",
)
@click.option(
    "--frames",
    type=click.IntRange(min=1),
    default=1500,
    show_default=True,
    help="Training frames to tune on (drawn from the run's training split, never validation).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the frame draw.")
def calibrate(run: Path, data: Path | None, frames: int, seed: int) -> None:
    """Tune one logit bias per class of RUN on training frames and fold it into model.keras.

    The rover recipe buys big-rock recall with precision (rock frames repeated, a focal + Dice
    loss); a bias per class, chosen for the mean IoU on training frames, moves the decision
    boundaries back. The ignored class keeps 0. The model as trained stays in
    model_uncalibrated.keras (a second call starts from it); metrics.json and confusion.png are
    rewritten; class_bias.json records the bias and validation before and after. Convert after.
    """
    from trainer.class_bias import calibrate_run

    record = calibrate_run(run, data, frames=frames, seed=seed)
    before, after = record.val_before, record.val_after
    click.echo(f"class bias (on {record.frames} training frames of {run}):")
    click.echo(f"  {'class':<12} {'bias':>6} {'val IoU before':>15} {'after':>7}")
    for name, bias in record.bias.items():
        if name not in after["per_class_iou"]:
            continue
        was, now = before["per_class_iou"][name], after["per_class_iou"][name]
        click.echo(f"  {name:<12} {bias:>+6.2f} {_num(was):>15} {_num(now):>7}")
    click.echo(
        f"  {'mean IoU':<12} {'':>6} {_num(before['mean_iou']):>15} {_num(after['mean_iou']):>7}"
    )
    if "hazard_pixels_on_unlabelled" in after:
        click.echo(
            "  hazard pixels on unlabelled ground: "
            f"{before['hazard_pixels_on_unlabelled']:.2%} -> "
            f"{after['hazard_pixels_on_unlabelled']:.2%}"
        )
    click.echo(f"wrote {run / 'model.keras'} (as trained: {run / 'model_uncalibrated.keras'})")


@main.command()
@click.argument("teacher", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder of the quantization-aware run (it then reads as a run).",
)
@click.option(
    "--bias-correction/--no-bias-correction",
    default=QatConfig.bias_correction,
    show_default=True,
    help="First move each conv's bias so that its int8 output mean per channel is the float "
    "model's (calibration frames; no training).",
)
@click.option("--bias-sweeps", type=click.IntRange(min=1), default=QatConfig.bias_sweeps,
              show_default=True, help="Passes of the bias correction over the convs.")  # fmt: skip
@click.option("--equalize/--no-equalize", default=QatConfig.equalize, show_default=True, help="First "
              "scale each activation's channels to share its int8 grid fairly (exact in float).")  # fmt: skip
@click.option("--logit-window", type=click.FloatRange(0, 0.5, max_open=True), show_default=True,
              default=QatConfig.logit_window, help="Spend the int8 output's levels on the logits "
              "that decide a class: the share of pixels whose top two may fall outside (0: off).")  # fmt: skip
@click.option(
    "--adaround/--no-adaround",
    default=QatConfig.adaround,
    show_default=True,
    help="Before the bias correction, learn for each weight whether to round it up or down so "
    "that each conv's output stays the float model's (AdaRound; calibration frames, no labels).",
)
@click.option("--adaround-iterations", type=click.IntRange(min=1), show_default=True,
              default=QatConfig.adaround_iterations, help="Steps per conv of --adaround.")  # fmt: skip
@click.option(
    "--epochs",
    type=click.IntRange(min=0),
    default=QatConfig.epochs,
    show_default=True,
    help="Then passes of quantization-aware distillation (cosine learning rate to 0 over them; "
    "0: none).",
)
@click.option(
    "--steps-per-epoch",
    type=click.IntRange(min=1),
    default=None,
    help="Batches per epoch [default: one pass over the training split].",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=QatConfig.batch_size, show_default=True
)
@click.option(
    "--lr",
    "learning_rate",
    type=click.FloatRange(min=0, min_open=True),
    default=QatConfig.learning_rate,
    show_default=True,
    help="Peak learning rate.",
)
@click.option(
    "--calib",
    "calibration_frames",
    type=click.IntRange(min=1),
    default=QatConfig.calibration_frames,
    show_default=True,
    help="Calibration frames (the draw of `trainer convert`).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="The teacher's data set [default: the one it recorded].",
)
@click.option(
    "--target",
    type=click.Choice(["margin", "soft", "hard"]),
    default=QatConfig.target,
    show_default=True,
    help="What the student learns of TEACHER: margin (its probabilities, and its class ahead of "
    "the next by --margin logits), soft (the probabilities), hard (its class).",
)
@click.option(
    "--margin",
    type=click.FloatRange(min=0),
    default=QatConfig.margin,
    show_default=True,
    help="The lead of TEACHER's class, in logits (--target margin).",
)
@click.option("--resume", is_flag=True, help="Continue OUT after its last finished epoch.")
@click.option("--seed", type=int, default=0, show_default=True)
def qat(teacher: Path, out: Path, data: Path | None, resume: bool, **options) -> None:  # fmt: skip
    """Quantization-aware int8: an int8 model made to agree with TEACHER's float32.

    TEACHER is a converted run folder or the shipped model folder (edge/models). Its rover graph,
    BatchNorms folded, is simulated with int8 rounding where TFLite rounds; each conv's bias is
    corrected for the rounding's shift of its mean, and with --epochs N it is fine-tuned,
    distilled from TEACHER on its training split; then OUT gets TEACHER's float32 .tflite
    (unchanged), the student's int8 .tflite and parity.json against TEACHER. Checkpointed every
    epoch (--resume). Ship it with tools/ship_model.py OUT.
    """
    from trainer.native_log import native_log

    with native_log(out / "convert.log"):  # TensorFlow's import banner
        from trainer.qat import qat_run

    cfg = QatConfig(teacher=str(teacher), **options)
    record = qat_run(teacher, out, cfg, resume=resume, data_path=data)
    for precision, entry in record["parity"].items():
        click.echo(f"  {precision:<8} mIoU {entry['mean_iou']:.4f} "
                   f"({entry['miou_change_vs_keras']:+.4f}), agreement {entry['pixel_agreement']:.2%}")  # fmt: skip
    click.echo(f"  fake quantization vs the TFLite int8 file: {record['simulation_agreement']:.2%} "
               f"of pixels agree ({record['simulation_frames']} frames)")  # fmt: skip
    click.echo(f"wrote {out}/model_int8.tflite, model_float32.tflite, parity.json, qat.json")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@main.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--submission",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Kaggle CSV to write (header id,0,...,H*W-1).",
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
@click.option(
    "--graph",
    type=click.Choice(["rover", "keras"]),
    default="rover",
    show_default=True,
    help="rover: exact export-time rewrites for speed (sub-pixel decoder instead of transposed "
    "convs, logits instead of the softmax, dilated convs that fold their BatchNorm); keras: the "
    "model as trained.",
)
@click.option(
    "--onnx",
    is_flag=True,
    help="Also write the ONNX Runtime peer for edge-seg bench: OUT/onnx/model_float32.onnx "
    "(the float32 .tflite translated op for op) and model_int8.onnx (ONNX Runtime's QDQ "
    "quantization, calibrated on the same frames); needs pip install 'marsseg-edge[peers]'.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the .tflite files and parity.json [default: RUN].",
)
def convert(
    run: Path,
    int8: bool,
    float16: bool,
    float32: bool,
    calib: int,
    data: Path | None,
    parity_frames: int | None,
    graph: str,
    onnx: bool,
    out: Path | None,
) -> None:
    """Convert RUN's best model to .tflite and report float-vs-int8 parity.

    Without a precision flag, writes float32 and int8. The int8 model must be integer-only
    (no float or Flex op), else the command fails naming the op and writes no int8 file.
    The rover graph's output is logits (the metadata says so; edge-seg computes probabilities
    where it needs them); its parity is measured against the Keras model's probabilities.
    """
    from trainer.native_log import native_log

    precisions = tuple(
        p for p, on in (("float32", float32), ("float16", float16), ("int8", int8)) if on
    )
    native = (out or (run if run.is_dir() else run.parent)) / "convert.log"
    with native_log(native):  # TensorFlow's import banner and the converter's C++ lines
        from trainer.convert import ConvertConfig, convert_run, format_parity

        cfg = ConvertConfig(
            precisions=precisions or ("float32", "int8"),
            calibration_frames=calib,
            parity_frames=parity_frames,
            graph=graph,
            onnx=onnx,
        )
        report = convert_run(run, cfg, data, out_dir=out)
    click.echo(format_parity(report))
    click.echo(
        f"wrote {', '.join(m['file'] for m in report['models'].values())} and parity.json "
        f"in {out or run} (the converter's own messages: {native})"
    )


@main.command()
@click.option(
    "--width",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 4.0),
    help="Channel multiplier of every model.",
)
@click.option(
    "--size",
    default="128x128",
    show_default=True,
    help="Frame size HxW (the AI4Mars default; the course file is 64x128).",
)
@click.option(
    "--classes",
    default=5,
    show_default=True,
    type=click.IntRange(min=2),
    help="Output classes (background included).",
)
def models(width: float, size: str, classes: int) -> None:
    """List the registered models with parameters and MACs at one frame size."""
    from edge.contract.preprocess import parse_size
    from trainer.models import MODELS, STRIDES, build_model, count_macs

    h, w = parse_size(size)
    click.echo(f"at {h}x{w}, {classes} classes, width {width:g}")
    click.echo(f"{'model':<15} {'parameters':>12} {'GMAC/frame':>11}  sides")
    for name in MODELS:
        try:
            model = build_model(name, (h, w, 1), classes, width=width)
        except ValueError:
            click.echo(f"{name:<15} {'-':>12} {'-':>11}  need multiples of {STRIDES[name]}")
            continue
        click.echo(
            f"{name:<15} {model.count_params():>12,} {count_macs(model) / 1e9:>11.2f}  "
            f"multiples of {STRIDES[name]}"
        )


if __name__ == "__main__":
    main()
