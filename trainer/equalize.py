"""Cross-layer equalization: every channel of an int8 activation gets a fair share of its levels.

TFLite rounds an activation tensor on one grid for all its channels, spanning the widest
channel; on the rover model a tensor's median channel reaches about half the widest one's
values and the narrowest a fifth, so they are rounded two to five times coarser, relative to
their own values, than the widest. A ReLU commutes with a positive scale per channel, so a conv
``A`` whose output (through its folded BatchNorm and ReLU) is read only by a conv ``B`` can have
its output channel ``c`` multiplied by ``s_c`` and ``B``'s input channel ``c`` divided by it: the
float model is unchanged (Nagel et al., "Data-Free Quantization", 2019, sec. 4.1). The same holds
through a concatenation read only by ``B``, each source conv scaling its own slice.

``B``'s kernels are rounded per output channel over all its inputs, so dividing an input
channel's weights makes them coarser in turn; the scale balances both, as the paper's rule does
with the activation's range in the place of the first kernel's (whose per-channel rounding is
indifferent to ``s``): ``s_c = sqrt(w_c / a_c)`` with ``a_c`` the channel's calibrated range and
``w_c`` the largest weight that reads it, relative to its output channel's largest. After it
both are ``sqrt(a_c w_c)``, one share of the grid each.

Applied to the folded rover graph before anything is rounded (``trainer qat --equalize``).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

SCALE_LIMITS = (1.0 / 16, 16.0)  # a dead or exploding channel is left nearly as it was


@dataclass
class Group:
    """Convs whose ReLU outputs (concatenated in this order, or one alone) only ``reader`` reads.

    Attributes:
        sources: the producing convs (linear Conv2D or DilatedConv, each with a bias).
        reader: the conv that reads them (its kernel's input axis is 2).
        tensor: the layer whose output is the activation both share (the ReLU or the concat).
    """

    sources: list
    reader: object
    tensor: str


def find_groups(
    model: keras.Model, readers: dict[str, list], passthrough: tuple, kernels: tuple
) -> list[Group]:
    """Every equalizable group of ``model``.

    Args:
        readers: layer name -> the layers reading its output (:func:`trainer.qat._consumers`).
        passthrough: the layers between a conv and its activation tensor (folded BatchNorms,
            plain ReLUs).
        kernels: the conv classes whose kernels ``B`` may be (input axis 2).
    """

    def end_of(layer):
        """Follow a lone path of passthrough layers: (last layer, its single reader or None)."""
        while True:
            after = readers.get(layer.name, [])
            if len(after) != 1 or not _homogeneous(after[0]):
                return layer, None
            if isinstance(after[0], passthrough):
                layer = after[0]
                continue
            return layer, after[0]

    def relu_source(layer) -> bool:
        is_conv = type(layer).__name__ in ("Conv2D", "DilatedConv")
        linear = getattr(getattr(layer, "activation", None), "__name__", "linear") == "linear"
        return is_conv and linear and getattr(layer, "bias", None) is not None

    groups = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Concatenate) and not relu_source(layer):
            continue
        if isinstance(layer, keras.layers.Concatenate):
            tensor, reader = end_of(layer)
            inputs = [t._keras_history.operation for t in layer.input]
            chains = [_chain_back(x, passthrough) for x in inputs]
            ok = all(
                relu_source(c) and end_of(c)[1] is layer and _relu_between(c, end_of(c)[0], readers)
                for c in chains
            )
            if ok and isinstance(reader, kernels) and tensor is layer and layer.axis in (-1, 3):
                groups.append(Group(chains, reader, layer.name))
            continue
        tensor, reader = end_of(layer)
        if tensor is not layer and isinstance(reader, kernels) and _relu_between(layer, tensor, readers):  # fmt: skip
            groups.append(Group([layer], reader, tensor.name))
    return groups


def _homogeneous(layer) -> bool:
    """Not a ReLU with a cap, a slope or a threshold: those do not commute with a scale."""
    if not isinstance(layer, keras.layers.ReLU):
        return True
    return layer.max_value is None and not layer.negative_slope and not layer.threshold


def _chain_back(layer, passthrough):
    """From a concat's input back through passthrough layers to the conv that made it."""
    while isinstance(layer, passthrough):
        layer = layer.input._keras_history.operation
    return layer


def _relu_between(conv, tensor, readers) -> bool:
    """A ReLU lies on the lone path from ``conv`` to ``tensor``. Only ReLU outputs are taken:
    their int8 grid starts at 0, so a channel's range is its maximum (a scale would commute
    without the ReLU too, but the grid of a signed tensor is not what this rule balances)."""
    layer = conv
    while layer is not tensor:
        layer = readers[layer.name][0]
        if isinstance(layer, keras.layers.ReLU):
            return True
    return False


def channel_ranges(model: keras.Model, groups: list[Group], frames: np.ndarray) -> list[np.ndarray]:  # fmt: skip
    """Each group's activation range per channel (max over ``frames``; ReLU outputs start at 0)."""
    probe = keras.Model(model.input, [model.get_layer(g.tensor).output for g in groups])
    ranges = [np.zeros(0)] * len(groups)
    for start in range(0, len(frames), 16):
        outs = probe(frames[start : start + 16, :, :, None], training=False)
        outs = outs if isinstance(outs, list | tuple) else [outs]
        for i, t in enumerate(outs):
            top = keras.ops.convert_to_numpy(keras.ops.max(t, axis=(0, 1, 2)))
            ranges[i] = top if not ranges[i].size else np.maximum(ranges[i], top)
    return ranges


def group_scales(group: Group, ranges: np.ndarray) -> np.ndarray:
    """``s_c = sqrt(w_c / a_c)`` (module docstring), normalised so that the widest activation
    channel keeps its range, and clipped to :data:`SCALE_LIMITS`."""
    kernel = np.abs(np.asarray(group.reader.kernel.numpy(), np.float32))  # (kh, kw, in, out)
    per_out = np.maximum(kernel.max(axis=(0, 1, 2)), 1e-12)  # each output channel's largest
    weights = (kernel / per_out).max(axis=(0, 1, 3))  # per input channel, in (0, 1]
    ranges = np.maximum(ranges, 1e-6 * max(float(ranges.max()), 1e-12))
    s = np.sqrt(np.maximum(weights, 1e-6) / ranges)
    s *= ranges.max() / float((ranges * s).max())  # the tensor's widest value stays
    return np.clip(s, *SCALE_LIMITS).astype(np.float32)


def apply_scales(model: keras.Model, group: Group, s: np.ndarray) -> None:
    """Scale the sources' output channels by ``s`` and the reader's input channels by 1/s."""
    offset = 0
    for source in group.sources:
        layer = model.get_layer(source.name)
        n = layer.kernel.shape[-1]
        part = s[offset : offset + n]
        layer.kernel.assign(layer.kernel.numpy() * part)
        layer.bias.assign(layer.bias.numpy() * part)
        offset += n
    reader = model.get_layer(group.reader.name)
    if offset != reader.kernel.shape[2]:
        raise ValueError(f"{group.reader.name} reads {reader.kernel.shape[2]} channels, the "
                         f"group gives {offset}")  # fmt: skip
    reader.kernel.assign(reader.kernel.numpy() / s[None, None, :, None])


def equalize(
    models: list[keras.Model], frames: np.ndarray, *, readers, passthrough, kernels
) -> list[dict]:
    """Equalize ``models[0]``'s groups on ``frames`` and the same layers of the other models
    (copies of the same graph) with the same scales, in place.

    Returns:
        Per group: its tensor, its channels, and the share of the tensor's range its median
        channel used before and after.
    """
    groups = find_groups(models[0], readers, passthrough, kernels)
    record = []
    for group, ranges in zip(groups, channel_ranges(models[0], groups, frames), strict=True):
        s = group_scales(group, ranges)
        for model in models:
            apply_scales(model, group, s)
        after = ranges * s
        record.append({
            "tensor": group.tensor,
            "sources": [x.name for x in group.sources],
            "reader": group.reader.name,
            "channels": len(s),
            "median_share_before": float(np.median(ranges) / max(ranges.max(), 1e-12)),
            "median_share_after": float(np.median(after) / max(after.max(), 1e-12)),
        })  # fmt: skip
    return record


__all__ = ["Group", "apply_scales", "channel_ranges", "equalize", "find_groups", "group_scales"]
