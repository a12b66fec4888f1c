"""Rocks and hazard flags against labelled frames, at the object level, and the operating point.

    python tools/hazard_table.py FRAMES --labels LABELS [--model edge/models] [--precision int8]
        [--sweep] [--out report/hazards]

FRAMES is a folder of frames, LABELS their labels (AI4Mars values or the model's). Every frame is
segmented once with the rover's own code (:class:`edge.segmenter.Segmenter`); the rocks and the
hazard rule then come from :class:`edge.run.hazards.RegionAnalyzer`, as in ``edge-seg run``.

- A *labelled rock* is an 8-connected component of big rock in the labels (frame pixels). It is
  **found** when one predicted rock covers at least ``--overlap`` (default 10 %) of it.
- A predicted rock is **false** when at most ``--overlap`` of it lies on labelled rock; it is
  *on labelled ground* when at least half of it is labelled terrain (crowd labels leave many real
  rocks and most of the far field unlabelled, so a rock on unlabelled ground cannot be judged).
- A frame is a **true hazard** when its labels hold a rock of at least the rule's ``min_area_px``
  touching the corridor (the rule applied to the labels); the flag is the rule on the predicted
  rocks. A **false alarm** (the flag on another frame) is judged by the rocks that fired it: on
  *labelled rock* when one of them covers labelled rock (a rock the labels hold smaller than the
  rule, or outside the corridor), on *labelled terrain* when every one lies at least half on
  labelled ground and at most ``--overlap`` on labelled rock (wrong by the labels), else on
  *unlabelled ground* (cannot be judged).

``--sweep`` tries rock confidences, smallest rock and rule sizes and prints each operating
point; ``--out`` writes ``hazards.md`` and ``hazards.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

SIZE_BANDS = ((0, 100), (100, 400), (400, None))  # frame pixels (the 256x256 copies' frames)


def segment_all(frames: Path, labels: Path, model: Path | None, precision: str | None,
                flip_average: bool = False):  # fmt: skip
    """Each labelled frame once (``flip_average``: as ``edge-seg run --flip-average``):
    ``[(name, model_labels, model_top, pixel_map, truth, rock probability)]``."""
    from edge.io.decode import is_candidate, read_frame
    from edge.io.labels import LabelReader
    from edge.models import resolve_model
    from edge.segmenter import Segmenter

    path, _ = resolve_model(model, precision)
    seg = Segmenter(path, threads=2, flip_average=flip_average)
    reader = LabelReader(labels, seg.labels.num_classes)
    out = []
    for file in sorted(p for p in frames.iterdir() if is_candidate(p)):
        truth = reader.read_for(file.stem)
        if truth is None:
            continue
        image = read_frame(file)
        s = seg.segment(image, with_confidence=True, class_probability=seg.labels.index("big_rock"))
        out.append((file.stem, s.model_labels, s.model_top, seg.pixel_map(image.shape), truth,
                    s.model_class_probability))  # fmt: skip
    if not out:
        raise ValueError(f"no frame of {frames} has a label in {labels}")
    return path, seg.labels, out


def measure(segmented, label_set, min_probability: float | None, min_area_px: int,
            rule_area_px: int, overlap: float = 0.1, cache: dict | None = None,
            min_confidence: float = 0.5) -> dict:  # fmt: skip
    """The object-level table for one operating point (``min_probability`` None: rocks by arg
    max and ``min_confidence``; ``cache``: the labels' components, kept between points)."""
    cache = {} if cache is None else cache
    from edge.run.hazards import HazardRule, RegionAnalyzer, RegionConfig
    from edge.run.rocks import FrameGeometry, RockSettings, find_rocks, label_components

    rock = label_set.index("big_rock")
    config = RegionConfig(
        hazards=[HazardRule("big_rock", "corridor", None, rule_area_px)],
        rocks=RockSettings("big_rock", min_probability, min_confidence, min_area_px),
    )
    analyzer = RegionAnalyzer(config, label_set)
    truth_rule = RegionAnalyzer(
        RegionConfig(hazards=config.hazards, rocks=RockSettings("big_rock", None, 0.0, 1)),
        label_set,
    )
    bands = {band: [0, 0] for band in SIZE_BANDS}  # labelled rocks, found
    false_labelled = false_any = 0
    rock_free_frames = false_on_rock_free = false_any_on_rock_free = 0
    flags = {"true": [0, 0], "false": [0, 0]}  # frames, flag fired
    alarms = {"labelled_rock": 0, "labelled_terrain": 0, "unlabelled": 0}  # false alarms, by ground
    predicted_total = 0
    for name, small, top, pixel_map, truth, rock_p in segmented:
        result = analyzer.analyze_mapped(small, top, pixel_map, rock_p)
        geometry = FrameGeometry(pixel_map, small.shape)
        # the rover's own rocks (the ignored label is never rock), in its order: ids match
        predicted = find_rocks(small, top, geometry, rock, config.rocks, rock_p, label_set.ignore)
        predicted_total += len(predicted)
        masks = [np.isin(pixel_map, r["pixels"]) for r in predicted]
        if name not in cache:
            cache[name] = label_components(truth == rock)
        truth_rocks, count = cache[name]
        areas = np.bincount(truth_rocks.ravel(), minlength=count + 1)
        for n in range(1, count + 1):
            band = next(
                b for b in SIZE_BANDS if areas[n] >= b[0] and (b[1] is None or areas[n] < b[1])
            )
            bands[band][0] += 1
            inside = truth_rocks == n
            bands[band][1] += any((m & inside).sum() >= overlap * areas[n] for m in masks)
        labelled = truth != (label_set.ignore or 0)
        frame_false = frame_false_any = 0
        for m in masks:
            area = m.sum()
            if (m & (truth == rock)).sum() > overlap * area:
                continue
            frame_false_any += 1
            frame_false += (m & labelled).sum() >= 0.5 * area
        false_labelled += frame_false
        false_any += frame_false_any
        if count == 0:
            rock_free_frames += 1
            false_on_rock_free += frame_false
            false_any_on_rock_free += frame_false_any
        is_true = truth_rule.analyze(truth, np.ones(truth.shape, np.float32))["hazard"]
        flags["true" if is_true else "false"][0] += 1
        flags["true" if is_true else "false"][1] += int(result["hazard"])
        if result["hazard"] and not is_true:
            fired = {i for h in result["hazards"] for i in h.get("rocks", [])}
            alarms[_alarm_ground([masks[i] for i in fired], truth == rock, labelled, overlap)] += 1
    frames = len(segmented)
    return {
        "min_probability": min_probability,
        "min_confidence": min_confidence,
        "min_area_px": min_area_px,
        "rule_min_area_px": rule_area_px,
        "frames": frames,
        "recall_by_size": {
            f"{lo}-{hi if hi else 'up'} px": {
                "rocks": n,
                "found": k,
                "recall": k / n if n else None,
            }
            for (lo, hi), (n, k) in bands.items()
        },
        "predicted_rocks": predicted_total,
        "false_rocks_per_frame_on_labelled_ground": false_labelled / frames,
        "false_rocks_per_frame_any": false_any / frames,
        "rock_free_frames": rock_free_frames,
        "false_rocks_per_rock_free_frame_on_labelled_ground": false_on_rock_free
        / max(rock_free_frames, 1),
        "false_rocks_per_rock_free_frame_any": false_any_on_rock_free / max(rock_free_frames, 1),
        "true_hazard_frames": flags["true"][0],
        "hazard_recall": flags["true"][1] / flags["true"][0] if flags["true"][0] else None,
        "other_frames": flags["false"][0],
        "false_alarm_rate": flags["false"][1] / flags["false"][0] if flags["false"][0] else None,
        "false_alarms_by_ground": alarms,
        "false_alarm_rate_on_labelled_terrain": alarms["labelled_terrain"] / flags["false"][0]
        if flags["false"][0]
        else None,
    }


def _alarm_ground(fired: list[np.ndarray], rock: np.ndarray, labelled: np.ndarray,
                  overlap: float) -> str:  # fmt: skip
    """Where the rocks (frame-size masks) that fired a false alarm lie: ``labelled_rock`` when
    one covers labelled rock, ``labelled_terrain`` when all lie on labelled ground (at least
    half of each), else ``unlabelled`` (also when no rock fired it: a rule on a class's
    share, which no rock can judge)."""
    if not fired:
        return "unlabelled"
    if any((m & rock).sum() > overlap * m.sum() for m in fired):
        return "labelled_rock"
    if all((m & labelled).sum() >= 0.5 * m.sum() for m in fired):
        return "labelled_terrain"
    return "unlabelled"


def _pixels(row: dict) -> str:
    if row["min_probability"] is None:
        return f"arg max, top >= {row['min_confidence']:g}"
    return f"p(rock) >= {row['min_probability']:g}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| rock pixels | smallest rock px | rule px | recall 0-100 | 100-400 | 400+ | false rocks / rock-free frame (labelled ground; any) | hazard recall | false alarms | false alarm frames on labelled terrain; labelled rock; unlabelled ground |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        rec = [v["recall"] for v in r["recall_by_size"].values()]
        ground = r["false_alarms_by_ground"]
        lines.append(
            f"| {_pixels(r)} | {r['min_area_px']} | {r['rule_min_area_px']} | "
            f"{_pct(rec[0])} | {_pct(rec[1])} | {_pct(rec[2])} | "
            f"{r['false_rocks_per_rock_free_frame_on_labelled_ground']:.2f}; "
            f"{r['false_rocks_per_rock_free_frame_any']:.2f} | {_pct(r['hazard_recall'])} | "
            f"{_pct(r['false_alarm_rate'])} | {ground['labelled_terrain']} "
            f"({_pct(r['false_alarm_rate_on_labelled_terrain'])}); {ground['labelled_rock']}; "
            f"{ground['unlabelled']} |"
        )
    first = rows[0]
    counts = ", ".join(f"{k}: {v['rocks']}" for k, v in first["recall_by_size"].items())
    lines += ["", f"Labelled rocks by size: {counts}. Rock-free frames: "
              f"{first['rock_free_frames']}; true-hazard frames: {first['true_hazard_frames']} "
              f"of {first['frames']}."]  # fmt: skip
    return "\n".join(lines)


@click.command()
@click.argument("frames", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Labels of the frames (AI4Mars values or the model's).")  # fmt: skip
@click.option("--model", type=click.Path(exists=True, path_type=Path), default=None,
              help="A .tflite or a model folder  [default: the shipped model set].")  # fmt: skip
@click.option("--precision", default="int8", show_default=True,
              help="Which file of a model folder.")  # fmt: skip
@click.option(
    "--probability",
    default=0.06,
    show_default=True,
    help="A rock pixel's probability of rock (0: by arg max and --confidence).",
)
@click.option("--confidence", default=0.5, show_default=True,
              help="With --probability 0: a rock pixel's top probability.")  # fmt: skip
@click.option("--min-area", default=100, show_default=True, help="Smallest rock reported (px).")
@click.option("--rule-area", default=300, show_default=True, help="Hazard rule's rock size (px).")
@click.option("--overlap", default=0.1, show_default=True,
              help="Share of a rock another must cover to match it.")  # fmt: skip
@click.option("--sweep", is_flag=True, help="Try several operating points.")
@click.option(
    "--flip-average",
    is_flag=True,
    help="Segment as `edge-seg run --flip-average` does (frame and mirror image).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write hazards.md and hazards.json here.")  # fmt: skip
def main(frames, labels, model, precision, probability, confidence, min_area, rule_area, overlap,
         sweep, flip_average, out):  # fmt: skip
    """Rocks found by size, false rocks and the hazard flag against labelled frames."""
    t0 = time.perf_counter()
    try:
        path, label_set, segmented = segment_all(frames, labels, model, precision, flip_average)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    points = [(probability or None, min_area, rule_area)]
    if sweep:
        probabilities = (None, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3)  # None: by arg max
        points = [(p, a, r) for r in (200, 300, 400) for p in probabilities
                  for a in (50, 100, 200) if a <= r]  # fmt: skip
    cache: dict = {}
    rows = [measure(segmented, label_set, p, a, r, overlap, cache, confidence)
            for p, a, r in points]  # fmt: skip
    header = (
        f"{len(segmented)} labelled frames of {frames}; model {path}"
        f"{' (flip average: the frame and its mirror image)' if flip_average else ''}; "
        "a labelled rock is found "
        f"when one predicted rock covers {100 * overlap:g} % of it; the hazard rule: a rock of at "
        f"least the rule's size touching the corridor ({time.perf_counter() - t0:.0f} s)."
    )
    text = markdown(rows, header)
    click.echo(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        command = "python tools/hazard_table.py " + " ".join(sys.argv[1:])
        (out / "hazards.md").write_text(
            f"# Rocks and hazards at the object level\n\n    {command}\n\n{text}\n"
        )
        (out / "hazards.json").write_text(
            json.dumps({"model": str(path), "flip_average": flip_average, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
