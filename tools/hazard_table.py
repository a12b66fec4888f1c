"""How often the hazard flag of an `edge-seg run` fires, against the truth of the labels.

    python tools/hazard_table.py OUT --labels LABELS [--regions regions.json] [--markdown]

OUT is an `edge-seg run` output folder (its telemetry.jsonl); LABELS the label folder the run was
scored with. Every segmented frame counts once: whether its labels hold big rock at all, whether
the labels themselves satisfy the hazard rule (big rock over the rule's share of the corridor,
"a true hazard"), and whether the flag fired.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install


def hazard_table(out: Path, labels_dir: Path, regions: Path | None = None) -> dict:
    """Counts of frames by truth and by flag.

    Raises:
        ValueError: when the telemetry has no region analysis or no label matches.
    """
    from edge.contract.labels import MARS
    from edge.io.labels import LabelReader
    from edge.run.hazards import RegionAnalyzer, RegionConfig

    reader = LabelReader(labels_dir, MARS.num_classes)
    analyzer = RegionAnalyzer(RegionConfig.load(regions) if regions else RegionConfig(), MARS)
    rows = {"rock": [0, 0], "no rock": [0, 0], "true hazard": [0, 0], "no true hazard": [0, 0]}
    frames = 0
    with open(out / "telemetry.jsonl") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("status") != "ok":
                continue
            if "hazard" not in record:
                raise ValueError(f"{out}/telemetry.jsonl has no hazard analysis (an older run?)")
            truth = reader.read_for(record["frame"])
            if truth is None:
                continue
            frames += 1
            fired = int(record["hazard"])
            rock = bool((truth == MARS.index("big_rock")).any())
            # the rule applied to the labels themselves: every labelled pixel is "confident"
            true_hazard = analyzer.analyze(truth, np.ones(truth.shape))["hazard"]
            rows["rock" if rock else "no rock"][0] += 1
            rows["rock" if rock else "no rock"][1] += fired
            rows["true hazard" if true_hazard else "no true hazard"][0] += 1
            rows["true hazard" if true_hazard else "no true hazard"][1] += fired
    if not frames:
        raise ValueError(f"no label in {labels_dir} matches a segmented frame of {out}")
    return {
        "frames": frames,
        "rule": analyzer.rules[0].__dict__ if analyzer.rules else None,
        "rows": rows,
    }


def markdown(table: dict) -> str:
    rule = table["rule"]
    lines = [
        f"{table['frames']} labelled frames; hazard rule: {rule['cls']} over "
        f"{100 * rule['min_fraction']:g} % of the {rule['region']} (confident pixels)",
        "",
        "| frames whose labels ... | frames | flag fired | share |",
        "|---|---|---|---|",
    ]
    names = {
        "rock": "hold big rock (anywhere)",
        "no rock": "hold no big rock",
        "true hazard": "satisfy the rule themselves (a true hazard)",
        "no true hazard": "do not satisfy the rule",
    }
    for key, (count, fired) in table["rows"].items():
        share = f"{100 * fired / count:.1f} %" if count else "-"
        lines.append(f"| {names[key]} | {count} | {fired} | {share} |")
    return "\n".join(lines)


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--labels", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--regions", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a Markdown table.")
def main(out: Path, labels: Path, regions: Path | None, as_json: bool) -> None:
    """Tabulate the hazard flag of an edge-seg run against the labels."""
    try:
        table = hazard_table(out, labels, regions)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    click.echo(json.dumps(table, indent=2) if as_json else markdown(table))


if __name__ == "__main__":
    main()
