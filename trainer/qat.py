"""Quantization-aware int8: an int8 model made to agree with its float32 model.

Post-training int8 (``trainer convert --int8``) rounds every weight and every activation once and
leaves the network to live with it; on the rover model that flips about 2 % of the pixels against
float32. Here the rounding is simulated in Keras 3 and corrected for (the TF Model Optimization
Toolkit does not support Keras 3, and Keras' own int8 path does not cover convolutions):

1. **The graph the converter quantizes**: the rover graph (:mod:`trainer.export_graph`) with each
   BatchNorm folded into the conv before it, as the converter folds it, so that the weights
   changed are the weights that get rounded.
2. **Fake quantization where TFLite's int8 graph rounds** (:mod:`trainer.fake_quant`): conv
   kernels per output channel, symmetric (scale ``max|w| / 127``, the converter's rule), and
   every tensor the int8 graph holds, asymmetric over its calibrated ``[min, max]`` (conv outputs
   after their fused ReLU, sums, products, concatenations, means, the sigmoid's fixed 1/256 grid,
   the logits). Ops that keep their input's scale (max pool, nearest resize) add none.
3. **The logit window** (the default): the head conv's int8 output spans only the logits that
   decide a pixel's class (:mod:`trainer.logit_window`), chosen before anything is rounded.
4. **Bias correction** (the default, no training): each conv's bias moves by the float model's
   output mean minus the simulated int8 model's, per channel, conv after conv
   (:func:`correct_biases`).
5. **Distillation** (``--epochs N``, off by default: on the rover model it did not generalise):
   the fake-quantized logits learn the float model's decisions on the training split
   (straight-through gradients; ``--target margin`` adds a hinge that keeps the float model's
   class ahead by a margin, since soft targets alone teach the student the float model's ties,
   which the rounding flips).
6. **Export**: the kernels are snapped to their int8 grid (the converter's per-channel rounding
   then changes nothing) and the converter calibrates on the same frames with the same min/max
   rule, so the int8 file has the simulated grid; ``simulation_agreement`` in ``qat.json`` says
   how often the simulated Keras model and the TFLite file agree.

The float32 model is the teacher, unchanged; only the int8 file comes from here.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from trainer.config import QatConfig
from trainer.export_graph import DilatedConv, HeadLogits, SubPixelUpsample, rover_graph
from trainer.fake_quant import (
    ActivationQuant,
    QuantKernel,
    fake_quant,
    fake_quant_kernel,
    snap_kernel,
)
from trainer.logit_window import apply_window, choose_window, head_conv

log = logging.getLogger(__name__)

KERNEL_LAYERS = (layers.Conv2D, DilatedConv, SubPixelUpsample)  # no Conv2DTranspose left


class FoldedNorm(layers.Layer):
    """Where a BatchNorm was before it was folded into its conv: passes its input through (the
    call signature of ``BatchNormalization``)."""

    def call(self, inputs, training=None, mask=None):
        return inputs


# ops whose int8 output keeps the input's scale (TFLite requires it): no rounding of their own
SAME_SCALE = (layers.MaxPooling2D, layers.UpSampling2D, FoldedNorm, HeadLogits, layers.Reshape)
SIGMOID_GRID = (0.0, 255.0 / 256.0)  # TFLite's LOGISTIC output: scale 1/256, zero point -128
TARGETS = ("margin", "soft", "hard")  # what the student learns of the teacher (QatConfig.target)


def kernel_layers(model: keras.Model) -> list:
    """The built convs of ``model`` whose kernels the int8 graph rounds."""
    return [layer for layer in model.layers
            if isinstance(layer, KERNEL_LAYERS) and getattr(layer, "kernel", None) is not None]  # fmt: skip


# --- the graph ------------------------------------------------------------------------------------


def _consumers(model: keras.Model) -> dict[str, list]:
    """Layer name -> the layers that read its output, within ``model`` only."""
    readers: dict[str, list] = {}
    for nodes in model._nodes_by_depth.values():  # this model's nodes, not the layers' others
        for node in nodes:
            for tensor in node.arguments.keras_tensors:
                readers.setdefault(tensor._keras_history.operation.name, []).append(node.operation)
    return readers


def _activation_name(layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "linear")


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """The model with each BatchNorm folded into the conv that alone feeds it (a new model with
    its own weights; the BatchNorms become :class:`FoldedNorm` layers of the same names).

    Raises:
        ValueError: a BatchNorm that does not follow a linear conv read by it alone.
    """
    readers = _consumers(model)
    producer: dict[str, keras.layers.Layer] = {}
    for layer in model.layers:
        for reader in readers.get(layer.name, []):
            if isinstance(reader, layers.BatchNormalization):
                if not isinstance(layer, KERNEL_LAYERS) or len(readers[layer.name]) != 1:
                    raise ValueError(f"cannot fold {reader.name}: {layer.name} is not a conv "
                                     "read by it alone")  # fmt: skip
                if _activation_name(layer) != "linear":
                    raise ValueError(f"cannot fold {reader.name}: {layer.name} has an activation")
                producer[reader.name] = layer
    bn_of = {conv.name: model.get_layer(bn) for bn, conv in producer.items()}
    new_weights: dict[str, list[np.ndarray]] = {}

    def clone(layer):
        if isinstance(layer, layers.BatchNormalization):
            return FoldedNorm(name=layer.name)
        if isinstance(layer, layers.InputLayer):
            return layer
        kernel = getattr(layer, "kernel", None)
        if isinstance(layer, KERNEL_LAYERS) and kernel is not None:
            k = np.asarray(layer.kernel.numpy(), np.float32)
            b = np.asarray(layer.bias.numpy(), np.float32) if layer.bias is not None else None
            if layer.name in bn_of:
                k, b = _fold(k, b, bn_of[layer.name])
            if isinstance(layer, SubPixelUpsample):
                fresh = SubPixelUpsample(k, None, layer.stride, layer.padding, name=layer.name)
                return _with_bias(fresh, b)
            if isinstance(layer, DilatedConv):
                return DilatedConv(k, b, layer.dilation, _activation_name(layer), name=layer.name)
            config = {**layer.get_config(), "use_bias": b is not None}
            fresh = layer.__class__.from_config(config)
            new_weights[layer.name] = [k] + ([b] if b is not None else [])
            return fresh
        fresh = layer.__class__.from_config(layer.get_config())
        if layer.weights:
            new_weights[layer.name] = [w.numpy() for w in layer.weights]
        return fresh

    folded = keras.models.clone_model(model, clone_function=clone)
    for name, weights in new_weights.items():
        folded.get_layer(name).set_weights(weights)
    return folded


def _with_bias(layer: SubPixelUpsample, bias: np.ndarray | None) -> SubPixelUpsample:
    """A SubPixelUpsample takes its bias untiled; the folded one is tiled already."""
    if bias is not None:
        layer.bias = layer.add_weight(
            shape=bias.shape, initializer=keras.initializers.Constant(bias), name="bias"
        )
    return layer


def _fold(kernel: np.ndarray, bias: np.ndarray | None, bn) -> tuple[np.ndarray, np.ndarray]:
    """conv -> BN as one conv: w * g / sqrt(v + eps), (b - m) * g / sqrt(v + eps) + beta."""
    gamma = bn.gamma.numpy() if bn.scale else np.ones(kernel.shape[-1], np.float32)
    beta = bn.beta.numpy() if bn.center else np.zeros(kernel.shape[-1], np.float32)
    factor = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    b = np.zeros(kernel.shape[-1], np.float32) if bias is None else bias
    return (kernel * factor).astype(np.float32), (
        (b - bn.moving_mean.numpy()) * factor + beta
    ).astype(np.float32)


def _fuses_relu(name: str, readers: dict[str, list]) -> bool:
    """The conv's output is read only by a plain ReLU (through folded BatchNorms): TFLite fuses
    them, and the int8 tensor is the ReLU's."""
    while True:
        after = readers.get(name, [])
        if len(after) != 1:
            return False
        (reader,) = after
        if isinstance(reader, FoldedNorm):
            name = reader.name
            continue
        return (
            isinstance(reader, layers.ReLU)
            and reader.max_value is None
            and not reader.negative_slope
            and not reader.threshold
        )


def quantized_student(folded: keras.Model) -> tuple[keras.Model, list[ActivationQuant]]:
    """The folded graph as the int8 graph computes it; shares its weights with ``folded``.

    Returns:
        The student (outputs: fake-quantized logits) and its activation quantizers.
    """
    readers = _consumers(folded)
    quantizers: list[ActivationQuant] = []

    def quant(x, name: str, fixed=None):
        q = ActivationQuant(fixed, name=f"{name}_aq")
        quantizers.append(q)
        return q(x)

    def call(layer, *args, **kwargs):
        if isinstance(layer, KERNEL_LAYERS) and getattr(layer, "kernel", None) is not None:
            y = QuantKernel(layer)(*args)
            activation = _activation_name(layer)
            if activation == "linear":
                return y if _fuses_relu(layer.name, readers) else quant(y, layer.name)
            if activation in ("relu", "relu6"):  # both fused into the conv by TFLite
                return quant(getattr(ops, activation)(y), layer.name)
            if activation == "sigmoid":  # CONV_2D, then LOGISTIC on its fixed grid
                y = layers.Activation("sigmoid", name=f"{layer.name}_sigmoid")(
                    quant(y, f"{layer.name}_pre")
                )
                return quant(y, layer.name, SIGMOID_GRID)
            raise ValueError(f"{layer.name}: no int8 model of the activation {activation!r}")
        y = layer(*args, **kwargs)
        return y if isinstance(layer, SAME_SCALE) else quant(y, layer.name)

    student = keras.models.clone_model(
        folded, clone_function=lambda layer: layer, call_function=call
    )
    return student, quantizers


def calibrate(student: keras.Model, quantizers: list[ActivationQuant], frames: np.ndarray) -> None:
    """Set every range to the min/max of its tensor over ``frames`` with the activations in float
    (kernels on their grid), the converter's calibration rule."""
    free = [q for q in quantizers if q.fixed is None]
    probe = keras.Model(student.input, [q.input for q in free])
    for q in quantizers:
        q.on.assign(0.0)
    lo = np.full(len(free), np.inf)
    hi = np.full(len(free), -np.inf)
    for start in range(0, len(frames), 32):
        outs = probe(frames[start : start + 32, :, :, None], training=False)
        outs = outs if isinstance(outs, list | tuple) else [outs]
        for i, t in enumerate(outs):
            t = keras.ops.convert_to_numpy(t)
            lo[i], hi[i] = min(lo[i], float(t.min())), max(hi[i], float(t.max()))
    for q, a, b in zip(free, lo, hi, strict=True):
        q.lo.assign(a)
        q.hi.assign(b)
    for q in quantizers:
        q.on.assign(1.0)


def correct_biases(
    reference: keras.Model,
    folded: keras.Model,
    student: keras.Model,
    quantizers: list[ActivationQuant],
    frames: np.ndarray,
    *,
    sweeps: int = 2,
    batch_size: int = 50,
) -> list[dict]:
    """Empirical bias correction (Nagel et al., "Data-Free Quantization", 2019, sec. 4.2, with
    calibration frames): rounding shifts each conv's output mean per channel; move its bias so
    that the student's mean (kernels on their grid, activations rounded, every earlier conv
    corrected) equals the float model's, conv after conv, in graph order.

    Args:
        reference: the float folded graph (:func:`export_graph` of the teacher), unchanged.
        folded: the graph whose biases change (the student's weights).
        student: :func:`quantized_student` of ``folded``, with its ``quantizers``.
        frames: calibration frames (N, H, W) in [0, 1].
        sweeps: passes over the convs (a later pass corrects what the earlier one moved).

    Returns:
        Per conv and sweep: the mean absolute shift before the correction.
    """
    convs = [layer for layer in kernel_layers(folded)
             if layer.bias is not None and _activation_name(layer) == "linear"]  # fmt: skip
    by_inner = {
        layer.inner.name: layer for layer in student.layers if isinstance(layer, QuantKernel)
    }
    x = frames[..., None]

    def means(model) -> list[np.ndarray]:
        sums = None
        for start in range(0, len(x), batch_size):
            outs = model(x[start : start + batch_size], training=False)
            outs = outs if isinstance(outs, list | tuple) else [outs]  # one output: a tensor
            outs = [keras.ops.convert_to_numpy(o).mean(axis=(1, 2)).sum(axis=0) for o in outs]
            sums = outs if sums is None else [a + b for a, b in zip(sums, outs, strict=True)]
        return [s / len(x) for s in sums]  # each output over its own pixels

    want = means(keras.Model(reference.input, [reference.get_layer(c.name).output for c in convs]))
    # one probe per conv: it computes only the graph above that conv
    probes = [keras.Model(student.input, [by_inner[c.name].output]) for c in convs]
    record = []
    for sweep in range(sweeps):
        for i, conv in enumerate(convs):
            (got,) = means(probes[i])  # after the corrections upstream
            shift = want[i] - got
            if isinstance(conv, SubPixelUpsample):  # one bias per phase: the same shift to each
                shift = np.tile(shift, conv.stride * conv.stride)
            conv.bias.assign(conv.bias.numpy() + shift.astype(np.float32))
            record.append({"conv": conv.name, "sweep": sweep + 1,
                           "mean_abs_shift": float(np.abs(shift).mean())})  # fmt: skip
            # the next conv is measured with the ranges the converter will find for this graph
            calibrate(student, quantizers, frames)
    return record


def snap_kernels(folded: keras.Model) -> None:
    """Put every kernel of ``folded`` on its int8 grid, in place (for export)."""
    for layer in kernel_layers(folded):
        layer.kernel.assign(snap_kernel(np.asarray(layer.kernel.numpy(), np.float32)))


def export_graph(teacher: keras.Model) -> tuple[keras.Model, dict[str, int]]:
    """The teacher's rover graph, folded: what the student trains and the converter receives."""
    rewritten, rewrites = rover_graph(teacher)
    return fold_batch_norms(rewritten), rewrites


# --- the fine-tune --------------------------------------------------------------------------------


def distill(
    teacher: keras.Model,
    folded: keras.Model,
    student: keras.Model,
    quantizers: list[ActivationQuant],
    images: np.ndarray,
    calibration: np.ndarray,
    cfg: QatConfig,
    *,
    out_dir: Path,
    start_epoch: int = 0,
    history: list[dict] | None = None,
) -> tuple[keras.Model, list[ActivationQuant], list[dict]]:
    """Fine-tune ``folded`` (in place) so that the fake-quantized logits of ``student`` (its
    :func:`quantized_student`) take the teacher's decisions on ``images`` (training frames,
    (N, H, W) in [0, 1], flipped at random).

    Checkpoints ``qat_weights.npz`` and ``qat.json`` after every epoch (``--resume`` continues).

    Returns:
        The history (the quantizers are calibrated on the final weights).
    """
    import tensorflow as tf

    if cfg.epochs <= start_epoch:
        return list(history or [])
    steps = cfg.steps_per_epoch or max(1, len(images) // cfg.batch_size)
    total = steps * cfg.epochs
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, total)
    optimizer = keras.optimizers.Adam(schedule)
    variables = student.trainable_variables
    optimizer.build(variables)
    state = out_dir / "qat_optimizer.npz"
    if start_epoch and state.is_file():
        saved = np.load(state)
        for i, v in enumerate(optimizer.variables):
            v.assign(saved[f"v{i}"])

    if cfg.target not in TARGETS:
        raise ValueError(f"unknown distillation target {cfg.target!r}; valid: {', '.join(TARGETS)}")

    @tf.function
    def step(x):
        probs = teacher(x, training=False)
        decided = tf.one_hot(tf.argmax(probs, -1), tf.shape(probs)[-1])
        with tf.GradientTape() as tape:
            logits = student(x, training=True)
            target = decided if cfg.target == "hard" else probs
            loss = -tf.reduce_mean(tf.reduce_sum(target * tf.nn.log_softmax(logits), -1))
            if cfg.target == "margin":
                own = tf.reduce_sum(decided * logits, -1)
                runner_up = tf.reduce_max(logits - 1e9 * decided, -1)
                loss += tf.reduce_mean(tf.nn.relu(cfg.margin - (own - runner_up)))
        optimizer.apply(tape.gradient(loss, variables), variables)
        agree = tf.reduce_mean(tf.cast(tf.argmax(logits, -1) == tf.argmax(target, -1), tf.float32))
        return loss, agree

    rng = np.random.default_rng(cfg.seed + start_epoch)
    history = list(history or [])
    for epoch in range(start_epoch, cfg.epochs):
        calibrate(student, quantizers, calibration)  # ranges of the current weights
        t0, losses, agrees = time.perf_counter(), [], []
        for i in range(steps):
            pick = rng.integers(0, len(images), cfg.batch_size)
            batch = images[pick]
            flip = rng.random(cfg.batch_size) < 0.5
            batch[flip] = batch[flip, :, ::-1]
            loss, agree = step(tf.constant(batch[..., None]))
            losses.append(float(loss))
            agrees.append(float(agree))
            if (i + 1) % 50 == 0 or i + 1 == steps:
                log.info("epoch %d/%d step %d/%d: distillation %.4f, agreement %.4f (%.1f frames/s)",
                         epoch + 1, cfg.epochs, i + 1, steps, np.mean(losses[-50:]),
                         np.mean(agrees[-50:]),
                         (i + 1) * cfg.batch_size / (time.perf_counter() - t0))  # fmt: skip
        seconds = time.perf_counter() - t0
        history.append({
            "epoch": epoch + 1,
            "distillation": float(np.mean(losses)),
            "train_agreement": float(np.mean(agrees)),
            "seconds": round(seconds, 1),
            "frames_per_s": round(steps * cfg.batch_size / seconds, 2),
        })  # fmt: skip
        _checkpoint(out_dir, folded, optimizer, cfg, history)
    calibrate(student, quantizers, calibration)
    return history


def _checkpoint(out_dir: Path, folded, optimizer, cfg: QatConfig, history: list[dict]) -> None:
    """Weights, optimizer state and the record, each written whole (temp file, then rename)."""
    import io

    from edge.io.sinks import atomic_write_bytes

    def save_npz(path: Path, arrays: dict) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    save_npz(
        out_dir / "qat_weights.npz", {f"w{i}": w.numpy() for i, w in enumerate(folded.weights)}
    )
    save_npz(out_dir / "qat_optimizer.npz",
             {f"v{i}": v.numpy() for i, v in enumerate(optimizer.variables)})  # fmt: skip
    record = {"config": asdict(cfg), "history": history}
    atomic_write_bytes(out_dir / "qat.json", (json.dumps(record, indent=2) + "\n").encode())


def load_checkpoint(out_dir: Path, folded) -> tuple[int, list[dict]]:
    """Restore ``folded``'s weights from ``out_dir``; returns (epochs done, history)."""
    record = json.loads((out_dir / "qat.json").read_text())
    saved = np.load(out_dir / "qat_weights.npz")
    for i, w in enumerate(folded.weights):
        w.assign(saved[f"w{i}"])
    return len(record["history"]), record["history"]


def predict_logits(model: keras.Model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([
        keras.ops.convert_to_numpy(model(images[i : i + batch_size, :, :, None], training=False))
        for i in range(0, len(images), batch_size)
    ])  # fmt: skip


def adopt_teacher(teacher: Path, out_dir: Path) -> None:
    """Copy the teacher's model and records into ``out_dir`` so that it reads as a run (its split,
    its scores, its config for the manifest); the shipped folder keeps them in manifest.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(teacher / "model.keras", out_dir / "model.keras")
    manifest = teacher / "manifest.json"
    records = json.loads(manifest.read_text()) if manifest.is_file() else {}
    for name, key in (
        ("config.json", "config"),
        ("data.json", "data"),
        ("metrics.json", "validation"),
    ):
        if (teacher / name).is_file():
            shutil.copy2(teacher / name, out_dir / name)
        elif records.get(key) is not None:
            (out_dir / name).write_text(json.dumps(records[key], indent=1) + "\n")
    if not (out_dir / "config.json").is_file():
        raise ValueError(f"{teacher} has neither config.json nor manifest.json: not a run")


def qat_run(
    teacher: Path,
    out_dir: Path,
    cfg: QatConfig,
    *,
    resume: bool = False,
    data_path: Path | None = None,
) -> dict:
    """Distil ``teacher`` (a run folder or the shipped model folder) into an int8 student in
    ``out_dir``: the teacher's float32 .tflite, the student's int8 .tflite (integer-only
    checked), ``parity.json`` against the teacher and ``qat.json`` (config, epochs, simulation).

    ``out_dir`` then reads as a run (the teacher's model.keras and records are copied in), so
    that ``tools/ship_model.py`` and ``trainer evaluate`` take it.

    Raises:
        ValueError: ``out_dir`` holds a QAT run and ``resume`` is off (or the reverse), or the
            teacher is not a run.
    """
    from edge.io.sinks import atomic_write_bytes
    from edge.segmenter import Segmenter
    from trainer.convert import _provenance, calibration_frames, convert_model, parity_report
    from trainer.evaluate import load_model, run_split
    from trainer.rundir import RunDir

    if cfg.epochs and cfg.logit_window:
        raise ValueError("the distillation (--epochs) learns the logits, which the logit window "
                         "clips: give --logit-window 0 with --epochs")  # fmt: skip
    out_dir = Path(out_dir)
    started = (out_dir / "qat.json").is_file()
    if started and not resume:
        raise ValueError(f"{out_dir} holds a quantization-aware run already: add --resume to "
                         "continue it, or give another --out")  # fmt: skip
    if resume and not (out_dir / "qat_weights.npz").is_file():
        raise ValueError(
            f"nothing to resume in {out_dir} (no fine-tuned epoch): leave out --resume"
        )
    if not started:
        adopt_teacher(Path(teacher), out_dir)
    mars, train_idx, val_idx = run_split(out_dir, data_path)
    model = load_model(out_dir / "model.keras")
    calib = calibration_frames(mars.images[train_idx], mars.labels[train_idx],
                               cfg.calibration_frames, 0.25, cfg.seed, label_set=mars.label_set)  # fmt: skip
    folded, rewrites = export_graph(model)
    reference, _ = export_graph(model)  # stays float: what the rounding steps aim at
    # before anything is rounded, exact in float, the same on both graphs
    equalized = window = None
    if cfg.equalize:
        from trainer.equalize import equalize

        equalized = equalize([folded, reference], calib, readers=_consumers(folded),
                             passthrough=(FoldedNorm, layers.ReLU, layers.UpSampling2D),
                             kernels=KERNEL_LAYERS)  # fmt: skip
        log.info("equalized %d activations", len(equalized))
    if cfg.logit_window:
        window = choose_window(predict_logits(folded, calib), cfg.logit_window)
        for graph in (folded, reference):
            apply_window(head_conv(graph), *window)
        log.info("logit window [%.3f, %.3f]: int8 output steps of %.4f", *window,
                 (window[1] - window[0]) / 255)  # fmt: skip
    student, quantizers = quantized_student(folded)
    start, history = load_checkpoint(out_dir, folded) if resume else (0, [])
    calibrate(student, quantizers, calib)
    corrections = rounding = None
    if start:
        log.info("resuming after epoch %d of %d", start, cfg.epochs)
    if not start and cfg.adaround:
        from trainer.adaround import adaround

        log.info("adaptive rounding: %d iterations per conv on %d calibration frames",
                 cfg.adaround_iterations, len(calib))  # fmt: skip
        rounding = adaround(reference, kernel_layers(folded), student, calib,
                            calibrate=lambda f: calibrate(student, quantizers, f),
                            activation_of=_activation_name, iterations=cfg.adaround_iterations,
                            seed=cfg.seed)  # fmt: skip
    if not start and cfg.bias_correction:
        log.info("bias correction: %d sweeps over the convs on %d calibration frames",
                 cfg.bias_sweeps, len(calib))  # fmt: skip
        corrections = correct_biases(reference, folded, student, quantizers, calib,
                                     sweeps=cfg.bias_sweeps)  # fmt: skip
    history = distill(model, folded, student, quantizers, mars.images[train_idx], calib, cfg,
                      out_dir=out_dir, start_epoch=start, history=history)  # fmt: skip
    snap_kernels(folded)  # what the student computed on the fly, now in the weights

    info = _provenance(out_dir / "model.keras", RunDir(out_dir).config_values(), mars)
    produced = convert_model(model, out_dir, ("float32",), None, mars.label_set,
                             mars.preprocessing, info)  # fmt: skip
    qat_info = {**info, "quantization_aware": {**asdict(cfg), "epochs_done": len(history)}}
    if window:  # how the rover reads the output back as logits (edge.segmenter)
        qat_info["logit_window"] = {"low": window[0], "high": window[1]}
    produced |= convert_model(folded, out_dir, ("int8",), calib, mars.label_set,
                              mars.preprocessing, qat_info, rewrites=rewrites)  # fmt: skip
    images, labels = mars.images[val_idx], mars.labels[val_idx]
    report = parity_report(model, produced, images, labels, mars.label_set, out_dir)

    # how faithfully the fake quantization stood for TFLite's int8 arithmetic
    probe = images[:200]
    simulated = predict_logits(student, probe).argmax(-1)
    segmenter = Segmenter(produced["int8"])
    tflite = np.stack([segmenter.segment(f).labels for f in np.rint(probe * 255).astype(np.uint8)])
    record = {
        "config": asdict(cfg),
        "history": history,
        "adaptive_rounding": rounding,
        "bias_correction": corrections,
        "logit_window": qat_info.get("logit_window"),
        "equalization": equalized,
        "simulation_agreement": float((simulated == tflite).mean()),
        "simulation_frames": len(probe),
        "parity": {p: {k: m[k] for k in ("pixel_agreement", "miou_change_vs_keras", "mean_iou")}
                   for p, m in report["models"].items()},
    }  # fmt: skip
    atomic_write_bytes(out_dir / "qat.json", (json.dumps(record, indent=2) + "\n").encode())
    return record


__all__ = [
    "ActivationQuant",
    "FoldedNorm",
    "QatConfig",
    "QuantKernel",
    "adopt_teacher",
    "calibrate",
    "distill",
    "export_graph",
    "fake_quant",
    "fake_quant_kernel",
    "fold_batch_norms",
    "qat_run",
    "quantized_student",
    "snap_kernel",
    "snap_kernels",
]
