"""Plots a person looks at: class distribution, sample grids. matplotlib, headless."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.contract.labels import LabelSet, colourise


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend_handles(label_set: LabelSet):
    from matplotlib.patches import Patch

    colours = label_set.colour_table / 255
    return [Patch(color=colours[c], label=n) for c, n in enumerate(label_set.names)]


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure atomically (temp name, then rename) and close it."""
    from edge.io.sinks import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def class_distribution_chart(
    fractions: np.ndarray, path: str | Path, title: str = "", *, label_set: LabelSet
) -> Path:
    """Bar chart of per-class pixel fractions, with the percentages written on the bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(
        label_set.names,
        100 * np.asarray(fractions),
        color=label_set.colour_table / 255,
        edgecolor="k",
    )
    for bar, value in zip(bars, fractions):
        ax.annotate(
            f"{100 * value:.2f} %",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("pixels (%)")
    ax.set_title(title or "class pixel fractions")
    ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)


def sample_grid(
    images: np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
    path: str | Path,
    *,
    predictions: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    label_set: LabelSet,
) -> Path:
    """A grid of frames, each shown above its colourised labels (and prediction, when given).

    Args:
        images: (N, H, W) in [0, 1] or 0..255.
        labels: (N, H, W) label maps.
        path: PNG to write.
        predictions: optional (N, H, W) predicted label maps, shown under the labels.
        titles: optional caption per frame.
        ncols: frames per row.
    """
    plt = _pyplot()
    images = np.asarray(images, np.float32)
    if images.max(initial=0) > 1.0:
        images = images / 255.0
    n = len(images)
    rows_per = 3 if predictions is not None else 2
    nrows = int(np.ceil(n / ncols))
    height = (0.9 * rows_per + 0.25) * nrows + 0.6  # inches: 0.9 per panel, room for titles
    fig, axes = plt.subplots(nrows * rows_per, ncols, figsize=(1.9 * ncols, height), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, ncols)
        panels = [images[i], colourise(labels[i], label_set)]
        if predictions is not None:
            panels.append(colourise(predictions[i], label_set))
        for k, panel in enumerate(panels):
            ax = axes[r * rows_per + k, c]
            ax.imshow(
                panel, cmap="gray" if k == 0 else None, vmin=0, vmax=1, interpolation="nearest"
            )
        if titles is not None:
            axes[r * rows_per, c].set_title(titles[i], fontsize=7)
    fig.legend(
        handles=_legend_handles(label_set), loc="lower center", ncol=5, fontsize=8, frameon=False
    )
    fig.subplots_adjust(hspace=0.12, wspace=0.05, bottom=0.5 / height)
    return save_figure(fig, path)


def training_curves(history_csv: str | Path, path: str | Path, label_set: LabelSet) -> Path:
    """Loss, validation mean IoU and learning rate per epoch, from Keras' CSVLogger file."""
    import csv

    plt = _pyplot()
    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    col = lambda k: [float(r[k]) for r in rows] if rows and k in rows[0] else []  # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        if col(key):
            axes[0].plot(epochs, col(key), marker="o", ms=3, label=label)
    axes[0].set_title("loss")
    for key, label in (("miou", "train"), ("val_miou", "validation")):
        if col(key):
            axes[1].plot(epochs, col(key), marker="o", ms=3, label=label)
    for c in label_set.scored:
        name = label_set.names[c]
        if col(f"val_iou_{name}"):
            axes[1].plot(
                epochs,
                col(f"val_iou_{name}"),
                lw=0.8,
                ls="--",
                color=label_set.colour_table[c] / 255,
                label=f"val {name}",
            )
    axes[1].set_title("mean IoU (scored classes)")
    if col("learning_rate"):
        axes[2].plot(epochs, col("learning_rate"), marker="o", ms=3)
        axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def confusion_matrix_plot(cm: np.ndarray, path: str | Path, label_set: LabelSet) -> Path:
    """Row-normalized confusion matrix over the scored true classes (the ignored one is not)."""
    plt = _pyplot()
    rows = list(label_set.scored)
    cm = np.asarray(cm, dtype=np.float64)[rows, :]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5, 4))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(norm):
        ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if value > 0.5 else "black",
        )
    names = label_set.names
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    ax.set_yticks(range(len(rows)), [names[r] for r in rows], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("confusion (rows sum to 1)")
    return save_figure(fig, path)
