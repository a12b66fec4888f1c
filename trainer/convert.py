"""`trainer convert`: Keras model -> .tflite (int8 full-integer, float16, float32), an
integer-only check, and a float-vs-int8 parity report through the real LiteRT interpreter.

Export uses a fixed (1, H, W, 1) signature and, by default, the rover graph
(:mod:`trainer.export_graph`: sub-pixel decoder, logits head, dilated convs as single ops, which
lets every BatchNorm fold into its conv).
The SavedModel is written by ``keras.export.ExportArchive`` and converted with
``TFLiteConverter.from_saved_model`` (a bare ``from_concrete_functions`` can silently lose the
variables).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.contract.labels import LabelSet
from edge.contract.metadata import METADATA_KEY, ModelMetadata
from edge.contract.metrics import score
from edge.io.sinks import atomic_write_bytes
from edge.runtimes.interpreter import list_ops, make_interpreter
from edge.segmenter import Segmenter
from trainer import data as D
from trainer.export_graph import GRAPHS, rover_graph
from trainer.native_log import native_log
from trainer.rundir import RunDir

log = logging.getLogger(__name__)
PRECISIONS = ("float32", "float16", "int8")


@dataclass
class ConvertConfig:
    """What to produce and how to calibrate."""

    precisions: tuple[str, ...] = ("float32", "int8")
    calibration_frames: int = 200  # from the training split, every class represented
    big_rock_share: float = 0.25  # of the calibration frames, when that many contain big rock
    seed: int = 0
    parity_frames: int | None = None  # None: the whole validation split
    graph: str = (
        "rover"  # "rover": export-time rewrites (trainer.export_graph); "keras": as trained
    )
    # also the ONNX Runtime peer (edge.bench.onnx_peer): onnx/model_{float32,int8}.onnx, translated
    # from the float32 .tflite and calibrated on the same frames (needs the [peers] extra)
    onnx: bool = False


class IntegerCheckError(ValueError):
    """An int8 model still holds float or Flex ops."""


def export_saved_model(model, directory: Path, input_shape: tuple[int, int, int]) -> Path:
    """Write a SavedModel with one fixed-shape ``serving_default`` endpoint (batch 1).

    ``model`` is exported as given: pass :func:`trainer.export_graph.rover_graph`'s model for the
    rover graph.
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((1, *input_shape), tf.float32, name="image")],
    )
    archive.write_out(str(directory), verbose=False)
    return directory


def make_converter(saved_model: Path, precision: str, calibration: np.ndarray | None = None):
    """TFLite's converter for a SavedModel, set for ``precision`` (see
    :func:`convert_saved_model`); also what ``benchmarks/int8_parity.py`` varies.

    Raises:
        ValueError: for an unknown precision or an empty calibration set.
    """
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ValueError("int8 needs a non-empty calibration set (--calib N with N >= 1)")

        def representative():
            for frame in calibration:
                yield [frame[None, :, :, None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter


def convert_saved_model(
    saved_model: Path, precision: str, calibration: np.ndarray | None = None
) -> bytes:
    """Convert a SavedModel to a .tflite flatbuffer.

    Args:
        saved_model: from :func:`export_saved_model`.
        precision: ``float32``, ``float16`` (weights) or ``int8`` (full integer, int8 in and out).
        calibration: float32 frames (N, H, W) in [0, 1] for ``int8``.

    Raises:
        ValueError: for an unknown precision or an empty calibration set.
    """
    return make_converter(saved_model, precision, calibration).convert()


def check_integer_only(model_path: Path) -> list[str]:
    """Every op of an int8 model must read and write integer tensors only.

    Returns:
        The sorted op names (for the report).

    Raises:
        IntegerCheckError: naming each float or Flex op and its float tensors.
    """
    interpreter, _ = make_interpreter(model_path, xnnpack=False)  # the graph before delegation
    ops = list_ops(interpreter)
    bad = [op for op in ops if not op.is_integer]
    if bad:
        details = "; ".join(
            f"{op.name} (op {op.index}: in {','.join(op.input_types)} -> out {','.join(op.output_types)})"
            for op in bad[:8]
        )
        raise IntegerCheckError(
            f"{model_path.name} is not integer-only: {len(bad)} float/Flex op(s): {details}"
        )
    return sorted({op.name for op in ops})


def calibration_frames(
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    big_rock_share: float,
    seed: int,
    *,
    label_set: LabelSet,
) -> np.ndarray:
    """Pick ``n`` calibration frames so that every class present is represented, big rock too.

    Up to ``big_rock_share * n`` frames containing big rock come first (they are ~3 % of the
    data and would otherwise be nearly absent), then a random draw of the rest; if a class is
    still missing, one frame with it replaces a random pick.
    """
    if n < 1:
        raise ValueError(f"the calibration set must have at least 1 frame, got {n}")
    if len(images) == 0:
        raise ValueError("no training frames to calibrate with")
    rng = np.random.default_rng(seed)
    rock = np.flatnonzero(D.has_hazard(labels, label_set))
    picked = list(rng.permutation(rock)[: round(big_rock_share * n)])
    rest = rng.permutation(np.setdiff1d(np.arange(len(images)), picked))
    picked += list(rest[: max(0, n - len(picked))])
    picked = picked[:n]
    slot = len(picked) - 1  # missing classes replace random picks from the end, one each
    for cls in np.unique(labels):
        if slot < 0 or (labels[picked] == cls).any():
            continue
        having = np.flatnonzero((labels == cls).any(axis=(1, 2)))
        picked[slot] = int(rng.choice(having))
        slot -= 1
    return images[np.array(picked)]


def convert_model(
    model,
    out_dir: Path,
    precisions: tuple[str, ...],
    calibration: np.ndarray | None,
    label_set,
    preprocessing,
    info: dict,
    graph: str = "rover",
    onnx: bool = False,
    rewrites: dict[str, int] | None = None,
) -> dict[str, Path]:
    """Write ``model_<precision>.tflite`` (metadata embedded) and its sidecar for each precision.

    Args:
        model: the trained Keras model.
        out_dir: created if missing.
        precisions: among :data:`PRECISIONS`.
        calibration: float32 frames (N, H, W) in [0, 1], for int8.
        label_set: the classes (:class:`edge.contract.labels.LabelSet`).
        preprocessing: how frames become inputs (:class:`edge.contract.preprocess.Preprocessing`).
        info: provenance recorded in the metadata (the graph, output kind and precision are
            added).
        graph: ``rover`` (:func:`trainer.export_graph.rover_graph`) or ``keras`` (as trained).
        onnx: also write the ONNX Runtime peer (:func:`edge.bench.onnx_peer.export_onnx`) under
            ``out_dir/onnx``, from the float32 .tflite and ``calibration``.
        rewrites: ``model`` is the rover graph already, made by these rewrites (the
            quantization-aware student of :mod:`trainer.qat`); ``graph`` names it.

    Returns:
        {precision: path}, with ``onnx-float32`` and ``onnx-int8`` for the peer.

    Raises:
        IntegerCheckError: an int8 model that is not integer-only (no file is written for it).
        ValueError: ``onnx`` without float32 or calibration frames, or without the packages.
    """
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; valid: {', '.join(GRAPHS)}")
    if onnx:  # checked before anything is written
        check_onnx_peer(precisions, calibration, graph)
    if rewrites is not None:
        exported = model
    else:
        exported, rewrites = rover_graph(model) if graph == "rover" else (model, {})
    info = {
        **info,
        "output": "logits" if rewrites.get("logits") else "probabilities",
        "graph": {"name": graph, "rewrites": rewrites},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    produced: dict[str, Path] = {}
    native = out_dir / "convert.log"
    with tempfile.TemporaryDirectory() as tmp:
        with native_log(native):
            saved = export_saved_model(exported, Path(tmp) / "saved_model", model.input_shape[1:])
        for precision in precisions:
            int8 = precision == "int8"
            with native_log(native):
                flatbuffer = convert_saved_model(saved, precision, calibration if int8 else None)
            target = out_dir / f"model_{precision}.tflite"
            ops = None
            if int8:  # checked before it gets a name: never a float "int8"
                staging = Path(tmp) / target.name
                staging.write_bytes(flatbuffer)
                ops = check_integer_only(staging)
            meta = ModelMetadata(
                label_set,
                preprocessing,
                {
                    **info,
                    "precision": precision,
                    "file": target.name,
                    "calibration": {
                        "frames": len(calibration),
                        "from": "training split, big rock oversampled",
                    }
                    if int8 and calibration is not None
                    else None,
                    "ops": ops,
                },
            )
            atomic_write_bytes(target, embed_metadata(flatbuffer, meta))
            atomic_write_bytes(target.with_suffix(".json"), meta.to_bytes())
            produced[precision] = target
            log.info("wrote %s (%.1f KiB)", target, target.stat().st_size / 1024)
    if onnx:
        from edge.bench.onnx_peer import export_onnx

        peer = export_onnx(produced["float32"], calibration, out_dir / "onnx")
        produced.update({f"onnx-{p}": path for p, path in peer.items()})
        log.info("wrote the ONNX Runtime peer in %s", out_dir / "onnx")
    return produced


def check_onnx_peer(
    precisions: tuple[str, ...], calibration: np.ndarray | None, graph: str = "rover"
) -> None:
    """What the ONNX peer needs: the rover graph's float32 .tflite, calibration frames, onnx and
    onnxruntime.

    Raises:
        ValueError: saying what is missing and how to get it.
    """
    import importlib.util

    if graph != "rover":  # the Keras graph's SPACE_TO_BATCH_ND / TRANSPOSE_CONV have no peer
        raise ValueError("--onnx translates the rover graph only: leave out --graph keras")
    if "float32" not in precisions:
        raise ValueError("--onnx translates the float32 .tflite: convert float32 too")
    if calibration is None or len(calibration) == 0:
        raise ValueError("--onnx quantizes with the int8 calibration frames: --calib must be >= 1")
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--onnx needs {' and '.join(missing)}: pip install 'marsseg-edge[peers]'")


def convert_run(
    run: str | Path, cfg: ConvertConfig, data_path: Path | None = None, out_dir: Path | None = None
) -> dict:
    """Convert a run's best model to every asked precision, check int8, and write the parity report.

    Args:
        run: a run directory (``model.keras`` inside) or a ``.keras`` file beside a config.json.
        cfg: precisions and calibration.
        data_path: override the data recorded in the run's config.
        out_dir: where the .tflite files go (default: the run directory).

    Returns:
        The parity report (also written to ``parity.json``).

    Raises:
        ValueError: a missing or unreadable model, no data, an empty calibration set.
        IntegerCheckError: an int8 model that is not integer-only (its file is removed).
    """
    from trainer.evaluate import load_model, resolve_model_path, run_split

    model_path = resolve_model_path(run)
    run_dir = model_path.parent
    out_dir = Path(out_dir or run_dir)
    if cfg.graph not in GRAPHS:
        raise ValueError(f"unknown graph {cfg.graph!r}; valid: {', '.join(GRAPHS)}")
    unknown = set(cfg.precisions) - set(PRECISIONS)
    if unknown or not cfg.precisions:
        raise ValueError(
            f"precisions must be among {', '.join(PRECISIONS)}; got {list(cfg.precisions)}"
        )
    if "int8" in cfg.precisions and cfg.calibration_frames < 1:
        raise ValueError("the calibration set is empty: --calib must be at least 1")
    model = load_model(model_path)
    mars, train_idx, val_idx = run_split(run_dir, data_path)
    if tuple(model.input_shape[1:3]) != mars.preprocessing.size:
        raise ValueError(
            f"the model takes {model.input_shape[1]}x{model.input_shape[2]} frames but the data "
            f"are prepared at {mars.preprocessing.height}x{mars.preprocessing.width}; give the "
            "run's own data (or --size in its config.json)"
        )
    run_config = RunDir(run_dir).config_values()
    calib = None
    if "int8" in cfg.precisions or cfg.onnx:
        calib = calibration_frames(
            mars.images[train_idx],
            mars.labels[train_idx],
            cfg.calibration_frames,
            cfg.big_rock_share,
            cfg.seed,
            label_set=mars.label_set,
        )
    info = _provenance(model_path, run_config, mars)
    if cfg.onnx:
        check_onnx_peer(cfg.precisions, calib, cfg.graph)
    produced = convert_model(
        model, out_dir, cfg.precisions, calib, mars.label_set, mars.preprocessing, info,
        cfg.graph, cfg.onnx,
    )  # fmt: skip

    images, labels = mars.images[val_idx], mars.labels[val_idx]
    if cfg.parity_frames:
        images, labels = images[: cfg.parity_frames], labels[: cfg.parity_frames]
    return parity_report(model, produced, images, labels, mars.label_set, out_dir)


def parity_report(
    model,
    produced: dict[str, Path],
    images: np.ndarray,
    labels: np.ndarray,
    label_set,
    out_dir: Path,
) -> dict:
    """Score each converted file against the Keras ``model`` through the real interpreter and
    write ``out_dir/parity.json``: mIoU, its change, pixel agreement, probability differences.

    Args:
        model: the float Keras model (probabilities) that is the reference.
        produced: {precision: .tflite path} (under ``out_dir``).
        images, labels: the validation frames (N, H, W) in [0, 1] and their labels.
    """
    from trainer.evaluate import predict_probabilities

    keras_probs = predict_probabilities(model, images)
    keras_pred = keras_probs.argmax(-1)
    keras_score = score(labels, keras_pred, label_set)
    report = {
        "frames": len(images),
        "keras": _scores(keras_score),
        "models": {},
    }
    frames_u8 = np.rint(images * 255.0).astype(np.uint8)  # the training frames were uint8 / 255
    for precision, path in produced.items():
        segmenter = Segmenter(path)
        pred = np.empty(labels.shape, np.uint8)
        max_diff, sum_diff = 0.0, 0.0
        for i, frame in enumerate(frames_u8):
            result = segmenter.segment(frame, with_probabilities=True)
            pred[i] = result.labels
            diff = np.abs(result.probabilities - keras_probs[i])
            max_diff, sum_diff = max(max_diff, float(diff.max())), sum_diff + float(diff.mean())
        s = score(labels, pred, label_set)
        report["models"][precision] = {
            "file": path.relative_to(out_dir).as_posix(),  # onnx/... for the peer
            "size_bytes": path.stat().st_size,
            **_scores(s),
            "miou_change_vs_keras": s.mean_iou - keras_score.mean_iou,
            "pixel_agreement": float((pred == keras_pred).mean()),
            # the pixels the score counts: background is never scored nor trained for
            "pixel_agreement_labelled": float((pred == keras_pred)[labels > 0].mean()),
            "max_abs_prob_diff": max_diff,
            "mean_abs_prob_diff": sum_diff / max(len(frames_u8), 1),
        }
    if "float32" in produced:
        f32 = report["models"]["float32"]["size_bytes"]
        for entry in report["models"].values():
            entry["size_vs_float32"] = entry["size_bytes"] / f32
    atomic_write_bytes(out_dir / "parity.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def _scores(report) -> dict:
    d = report.as_dict()
    return {k: d[k] for k in ("mean_iou", "per_class_iou", "hazards")}


def embed_metadata(flatbuffer: bytes, meta: ModelMetadata) -> bytes:
    """The flatbuffer with ``meta`` in its metadata table (entry :data:`METADATA_KEY`), replacing
    an earlier entry of that name."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta.to_bytes(), dtype=np.uint8)
    entries = [m for m in (model.metadata or []) if _name(m.name) != METADATA_KEY]
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    model.buffers.append(buffer)
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*entries, entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _provenance(model_path: Path, run_config: dict, mars: D.MarsData) -> dict:
    """What a model document records of where the model came from."""
    import datetime

    import tensorflow as tf

    from trainer.losses import parse_loss_spec

    config_hash = hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest()[:16]
    loss = run_config.get("loss", "ce")
    terms = parse_loss_spec(loss)
    metrics_path = model_path.parent / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return {
        "name": model_path.parent.name,
        "architecture": run_config.get("model"),
        "width": run_config.get("width"),
        "loss": loss,
        # whether training gave the ignored label a target: only then does the model say
        # "background" on sky and rover hardware instead of an arbitrary class
        "predicts_ignored_label": bool({"background", "plain_ce"} & set(terms)),
        "source_run": str(model_path.parent),
        "data": {"source": mars.source, "layout": mars.layout},
        "validation_mean_iou": metrics.get("mean_iou"),
        "training_config_sha256": config_hash,
        "converted_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "converter": f"tensorflow {tf.__version__}",
    }


def format_parity(report: dict) -> str:
    """The parity table printed by `trainer convert`."""
    head = (
        f"{'model':<12} {'size KiB':>9} {'mIoU':>7} {'change':>7} {'agree %':>8} {'labelled':>9} "
        f"{'max|dp|':>8} {'mean|dp|':>9}"
    )
    lines = [
        f"parity on {report['frames']} validation frames (Keras mIoU {report['keras']['mean_iou']:.4f})",
        head,
    ]
    for name, m in report["models"].items():
        lines.append(
            f"{name:<12} {m['size_bytes'] / 1024:>9.1f} {m['mean_iou']:>7.4f} {m['miou_change_vs_keras']:>+7.4f} "
            f"{100 * m['pixel_agreement']:>8.2f} {100 * m['pixel_agreement_labelled']:>9.2f} "
            f"{m['max_abs_prob_diff']:>8.4f} {m['mean_abs_prob_diff']:>9.5f}"
        )
    return "\n".join(lines)


__all__ = [
    "ConvertConfig",
    "IntegerCheckError",
    "check_integer_only",
    "convert_model",
    "convert_run",
    "format_parity",
]
