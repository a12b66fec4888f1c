"""`trainer inspect`: what is in a data set, before anyone trains on it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.contract.metrics import class_fractions
from edge.io.sinks import atomic_write_json
from trainer import data as D
from trainer import viz


@dataclass
class Inspection:
    """Counts, outliers and class statistics of one data set, and the plots written."""

    summary: dict
    outliers: D.OutlierReport | None
    files: list[Path]

    def text(self) -> str:
        s = self.summary
        lines = [
            f"source:        {s['source']} ({s['layout']})"
            + ("  (the official course file)" if s["course_file"] else ""),
            f"frames:        {s['n_train']} labelled ({s['height']}x{s['width']}), {s['n_test']} test"
            + (" with labels" if s["test_labelled"] else ""),
        ]
        if s.get("described") == "test":
            lines.append(
                "described:     the expert test frames (this folder has no training labels)"
            )
        if s.get("groups"):
            lines.append(
                f"positions:     {s['groups']} rover positions (a split keeps each on one side)"
            )
        if self.outliers is not None:
            lines += [
                self.outliers.summary(),
                f"after removal: {s['n_clean']} frames, {s['big_rock_frames']} contain big rock",
                "class pixel fractions (after removal):",
            ]
        else:
            lines += [
                "outliers:      not looked for (the course file's filter; AI4Mars frames are real)",
                f"big rock:      in {s['big_rock_frames']} frames",
                "class pixel fractions:",
            ]
        for name, value in s["class_fractions"].items():
            lines.append(f"  {name:<11} {100 * value:6.2f} %")
        lines += [f"wrote {p}" for p in self.files]
        return "\n".join(lines)


def inspect_dataset(
    path: str | Path,
    out_dir: str | Path,
    min_repeats: int | None = None,
    size: tuple[int, int] | None = None,
    remove_outliers: bool | None = None,
) -> Inspection:
    """Load, validate and describe a data set; write a bar chart and a sample grid.

    Args:
        path: npz or AI4Mars folder (its root or any folder under it).
        out_dir: where ``class_distribution.png``, ``samples.png`` and ``inspect.json`` go.
        min_repeats: outlier threshold (see :func:`trainer.data.find_outliers`).
        size: frame size for folder data sets.
        remove_outliers: look for the course file's outliers (default: course layout only).

    Returns:
        The inspection; its ``text()`` is what the CLI prints.
    """
    path, out_dir = Path(path), Path(out_dir)
    mars = D.load_dataset(path, size)
    if len(mars.images) == 0 and mars.test_labels is not None:
        # an expert-test-only folder: describe the frames it has
        mars = replace(mars, images=mars.test_images, labels=mars.test_labels,
                       names=mars.test_names, index=np.arange(len(mars.test_images)),
                       groups=None)  # fmt: skip
        described = "test"
    else:
        described = "train"
    outliers = None
    clean = mars
    if D.removes_outliers(mars, remove_outliers):
        outliers = D.find_outliers(mars.labels, min_repeats)
        clean = D.drop_outliers(mars, outliers)
    label_set = mars.label_set
    fractions = class_fractions(clean.labels, label_set.num_classes)
    rock = D.has_hazard(clean.labels, label_set)
    summary = {
        "source": str(path),
        "layout": mars.layout,
        "groups": None if mars.groups is None else len(np.unique(mars.groups)),
        "course_file": path.is_file() and D.is_course_file(path),
        "n_train": len(mars.images) if described == "train" else 0,
        "n_test": 0 if mars.test_images is None else len(mars.test_images),
        "described": described,
        "test_labelled": mars.test_labels is not None,
        "height": mars.frame_shape[0],
        "width": mars.frame_shape[1],
        "outliers": None if outliers is None else outliers.count,
        "n_clean": len(clean.images),
        "big_rock_frames": int(rock.sum()),
        "class_fractions": {n: float(f) for n, f in zip(label_set.names, fractions)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    # Samples: show big-rock frames first when there are any, since they are the rare class.
    rng = np.random.default_rng(0)
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(rock))[:4], rng.permutation(np.flatnonzero(~rock))]
    )
    pick = order[:16]
    files = [
        viz.class_distribution_chart(
            fractions,
            out_dir / "class_distribution.png",
            f"{path.name}: class pixel fractions",
            label_set=label_set,
        ),
        viz.sample_grid(
            clean.images[pick],
            clean.labels[pick],
            out_dir / "samples.png",
            titles=[
                clean.names[i][:16] if clean.names else f"frame {clean.index[i]}" for i in pick
            ],
            label_set=label_set,
        ),
    ]
    report_path = out_dir / "inspect.json"
    outlier_report = None if outliers is None else outliers.as_dict()
    atomic_write_json(report_path, {**summary, "outlier_report": outlier_report})
    files.append(report_path)
    return Inspection(summary, outliers, files)
