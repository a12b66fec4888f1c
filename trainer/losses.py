"""Segmentation losses on softmax probabilities (B, H, W, C) and integer labels (B, H, W[, 1]).

The label set's ignored label (``LabelSet.ignore``: 0, background, for Mars) marks pixels that
are unlabelled, sky or rover hardware and never scored, so the class losses here take it as
``ignore`` and leave those pixels out: they contribute nothing and do not count in the mean (the
report found the background-ignoring cross-entropy best); ``ignore=None`` scores every pixel. A
model trained that way has no target on those pixels and labels them arbitrarily; the
``background`` term gives them one (the ignored class itself, "no terrain here"), which a rover
needs so that sky and its own wheels are not reported as rocks. Terms add up in a spec such as
``"afd+0.5*background"``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from keras import ops

EPS = 1e-7
LossFn = Callable[..., object]


def _prepare(y_true, y_pred):
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    num_classes = y_pred.shape[-1]
    return y_true, ops.clip(y_pred, EPS, 1.0), ops.one_hot(y_true, num_classes)


def _masked_mean(per_pixel, mask):
    return ops.sum(per_pixel * mask) / ops.maximum(ops.sum(mask), 1.0)


def _scored(labels, ignore: int | None):
    """1.0 on the pixels that count, (B, H, W): all but those of the ignored label."""
    if ignore is None:
        return ops.ones_like(labels, dtype="float32")
    return ops.cast(labels != ignore, "float32")


def _scored_classes(num_classes: int, ignore: int | None) -> list[int]:
    return [k for k in range(num_classes) if k != ignore]


def cross_entropy(y_true, y_pred, *, ignore: int | None, class_weights=None):
    """Sparse cross-entropy averaged over labelled pixels (optionally class-weighted).

    Args:
        y_true: labels (B, H, W) or (B, H, W, 1).
        y_pred: probabilities (B, H, W, C).
        ignore: the label whose pixels are left out (the task's definition of the score), or
            None.
        class_weights: optional per-class weights (C,); pixels are weighted by their true class.
    """
    labels, probs, onehot = _prepare(y_true, y_pred)
    nll = -ops.sum(onehot * ops.log(probs), axis=-1)
    mask = _scored(labels, ignore)
    if class_weights is not None:
        mask = mask * ops.take(ops.convert_to_tensor(np.asarray(class_weights, "float32")), labels)
    return _masked_mean(nll, mask)


def dice(y_true, y_pred, *, ignore: int | None, smooth: float = 1.0):
    """1 - mean soft Dice over the scored classes, on the scored pixels."""
    labels, probs, onehot = _prepare(y_true, y_pred)
    mask = _scored(labels, ignore)[..., None]
    keep = _scored_classes(probs.shape[-1], ignore)
    p = ops.take(probs * mask, keep, axis=-1)
    t = ops.take(onehot * mask, keep, axis=-1)
    intersection = ops.sum(p * t, axis=(0, 1, 2))
    total = ops.sum(p, axis=(0, 1, 2)) + ops.sum(t, axis=(0, 1, 2))
    return 1.0 - ops.mean((2.0 * intersection + smooth) / (total + smooth))


def focal(y_true, y_pred, *, ignore: int | None, gamma: float = 2.0):
    """Focal loss (Lin et al. 2017): cross-entropy down-weighted on easy pixels by (1 - p)^gamma."""
    labels, probs, onehot = _prepare(y_true, y_pred)
    p_true = ops.sum(onehot * probs, axis=-1)
    per_pixel = -((1.0 - p_true) ** gamma) * ops.log(p_true)
    return _masked_mean(per_pixel, _scored(labels, ignore))


def boundary(y_true, y_pred, *, ignore: int | None, weight: float = 4.0):
    """Boundary-weighted cross-entropy: pixels next to a class edge count ``1 + weight`` times.

    A pixel is on a boundary when its 3x3 neighbourhood holds another label (found with max- and
    min-pooling of the label map), which sharpens region edges without distance transforms.
    """
    labels, probs, onehot = _prepare(y_true, y_pred)
    nll = -ops.sum(onehot * ops.log(probs), axis=-1)
    lab = ops.cast(labels, "float32")[..., None]
    hi = ops.max_pool(lab, 3, strides=1, padding="same")
    lo = -ops.max_pool(-lab, 3, strides=1, padding="same")
    edge = ops.cast(ops.squeeze(hi - lo, axis=-1) > 0, "float32")
    return _masked_mean(nll * (1.0 + weight * edge), _scored(labels, ignore))


def background(y_true, y_pred, *, ignore: int | None):
    """Cross-entropy towards the ignored class on its own pixels only (mean over them).

    Added to a class loss it teaches the model to answer "background" where there is no
    terrain to label (sky, far field, rover hardware), instead of an arbitrary class.

    Raises:
        ValueError: for a label set without an ignored label (nothing to teach).
    """
    if ignore is None:
        raise ValueError("the background term needs a label set with an ignored label")
    labels, probs, _ = _prepare(y_true, y_pred)
    return _masked_mean(-ops.log(probs[..., ignore]), ops.cast(labels == ignore, "float32"))


def adaptive_focal_dice(
    y_true, y_pred, *, weights, ignore: int | None, gamma: float = 2.0, smooth: float = 1.0
):
    """The MarsSeg paper's loss: per-class focal + Dice terms weighted by w_k = 1/(IoU_k + a).

    Every scored class counts equally (its focal term is the mean over its own pixels), and a
    class the model gets wrong (low IoU) counts more; the weights come from
    :class:`AdaptiveWeights`, updated from the training IoU after every epoch. Pixels of the
    ignored label are left out.

    Args:
        weights: per-class weights (C,), the ignored class's unused; normalized here to mean 1.
        ignore: the ignored label, or None.
    """
    labels, probs, onehot = _prepare(y_true, y_pred)
    mask = _scored(labels, ignore)[..., None]  # (B, H, W, 1)
    keep = _scored_classes(probs.shape[-1], ignore)
    t = ops.take(onehot * mask, keep, axis=-1)  # scored classes only: (B, H, W, C-1)
    p = ops.take(probs * mask, keep, axis=-1)
    p_true = ops.sum(onehot * probs, axis=-1, keepdims=True)  # (B, H, W, 1)
    focal_px = -((1.0 - p_true) ** gamma) * ops.log(p_true)
    axes = (0, 1, 2)
    focal_k = ops.sum(focal_px * t, axis=axes) / ops.maximum(ops.sum(t, axis=axes), 1.0)
    dice_k = 1.0 - (2.0 * ops.sum(p * t, axis=axes) + smooth) / (
        ops.sum(p, axis=axes) + ops.sum(t, axis=axes) + smooth
    )
    w = ops.take(ops.cast(weights, "float32"), keep)
    w = w / ops.maximum(ops.mean(w), EPS)
    return ops.mean(w * (focal_k + dice_k))


LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,  # background ignored: the report's best
    "plain_ce": lambda t, p, ignore: cross_entropy(t, p, ignore=None),
    "weighted_ce": cross_entropy,  # with class weights from label frequencies
    "dice": dice,
    "focal": focal,
    "boundary": boundary,
    "afd": adaptive_focal_dice,  # the MarsSeg paper's adaptive focal + Dice
    "background": background,  # class 0 on background pixels (sky, rover): see the module doc
}


class AdaptiveWeights:
    """The class weights of ``afd``: w_k = 1 / (IoU_k + alpha), kept in a variable so that a
    compiled training step sees each update.

    Args:
        num_classes: size of the label set.
        alpha: keeps the weight of a class at IoU 0 finite (1/alpha).
    """

    def __init__(self, num_classes: int, alpha: float = 0.5):
        import keras

        self.alpha = alpha
        self.variable = keras.Variable(
            np.full(num_classes, 1.0 / alpha, np.float32), trainable=False, name="afd_weights"
        )

    def update(self, ious: np.ndarray) -> np.ndarray:
        """Set the weights from per-class IoU (C,); NaN (class unseen) counts as IoU 0."""
        weights = 1.0 / (np.nan_to_num(np.asarray(ious, np.float64), nan=0.0) + self.alpha)
        self.variable.assign(weights.astype(np.float32))
        return weights


def class_weights_from_labels(
    labels: np.ndarray, num_classes: int, ignore: int | None
) -> np.ndarray:
    """Median-frequency balancing over the scored classes; the ignored one gets 0.

    Classes absent from ``labels`` get the largest weight seen, not infinity.
    """
    counts = np.bincount(np.asarray(labels).ravel(), minlength=num_classes)[:num_classes].astype(
        np.float64
    )
    keep = np.array(_scored_classes(num_classes, ignore))
    freq = counts[keep] / max(counts[keep].sum(), 1.0)
    present = freq > 0
    scored = np.zeros(len(keep))
    scored[present] = np.median(freq[present]) / freq[present]
    scored[~present] = scored[present].max() if present.any() else 1.0
    weights = np.zeros(num_classes)
    weights[keep] = scored
    return weights


def parse_loss_spec(spec: str) -> dict[str, float]:
    """Parse ``"ce"`` or ``"ce+0.5*dice"`` into {name: weight}.

    Raises:
        ValueError: for an unknown loss name (the message lists the valid ones) or a bad weight.
    """
    terms: dict[str, float] = {}
    for part in spec.replace(" ", "").split("+"):
        weight, _, name = part.rpartition("*")
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r} in {spec!r}; valid names: {', '.join(LOSSES)}")
        try:
            terms[name] = terms.get(name, 0.0) + (float(weight) if weight else 1.0)
        except ValueError as err:
            raise ValueError(
                f"bad weight {weight!r} in loss {spec!r}; write e.g. 'ce+0.5*dice'"
            ) from err
    return terms


def make_loss(
    spec: str | dict[str, float],
    class_weights: np.ndarray | None = None,
    adaptive: AdaptiveWeights | None = None,
    *,
    ignore: int | None,
) -> LossFn:
    """A Keras loss function from a spec such as ``"ce"`` or ``"afd+0.5*background"``.

    Args:
        spec: ``+``-separated terms, each ``[weight*]name`` with a name from :data:`LOSSES`, or
            the dict :func:`parse_loss_spec` made of one.
        class_weights: needed by ``weighted_ce``.
        adaptive: the weights of ``afd`` (default: equal weights that never change).
        ignore: the label set's ignored label (``LabelSet.ignore``), or None.

    Raises:
        ValueError: for a bad spec, or ``weighted_ce`` without class weights.
    """
    terms = parse_loss_spec(spec) if isinstance(spec, str) else dict(spec)
    if "weighted_ce" in terms and class_weights is None:
        raise ValueError(
            "weighted_ce needs class weights; compute them with class_weights_from_labels"
        )

    def loss(y_true, y_pred):
        total = 0.0
        for name, weight in terms.items():
            fn = LOSSES[name]
            if name == "weighted_ce":
                value = fn(y_true, y_pred, ignore=ignore, class_weights=class_weights)
            elif name == "afd":
                w = adaptive.variable if adaptive is not None else ops.ones((y_pred.shape[-1],))
                value = fn(y_true, y_pred, weights=w, ignore=ignore)
            else:
                value = fn(y_true, y_pred, ignore=ignore)
            total = total + weight * value
        return total

    loss.__name__ = "loss_" + "_".join(terms)
    return loss


def per_frame(loss_fn: LossFn) -> LossFn:
    """``loss_fn`` as Keras' ``fit`` needs it under ``tf.distribute``: one value per frame.

    The losses here are means over the whole batch (Dice needs the batch), so a scalar. Keras
    divides a loss by the number of replicas (the all-reduced sum of their gradients is then the
    mean) only when it reduces per-frame values itself; a scalar passes unscaled, so under
    MirroredStrategy every step applied the sum of the replicas' gradients and the log showed
    the loss times the replicas. Broadcast to ``(batch,)`` the mean is the same and scales.
    """

    def loss(y_true, y_pred):
        return ops.broadcast_to(loss_fn(y_true, y_pred), ops.shape(y_pred)[:1])

    loss.__name__ = getattr(loss_fn, "__name__", "loss")
    return loss
