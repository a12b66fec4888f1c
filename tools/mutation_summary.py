"""The mutation score of each module from mutmut's results (``mutants/**/*.meta``).

    python tools/mutation_summary.py [--module edge/segmenter.py ...] [--survivors]

Score = killed / (killed + survived); timeouts count as killed (the mutant hung the tests) and
are listed apart; mutants that no fast test reaches ("no tests") and unchecked ones are shown,
not scored.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

# mutmut 3's exit codes (mutmut/stats.py)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
TIMEOUTS = {-24, 24, 152, 255, 36}


def _status(code) -> str:
    if code is None:
        return "not checked"
    return "timeout" if code in TIMEOUTS else STATUS.get(code, "suspicious")


@click.command()
@click.option("--mutants", default="mutants", type=click.Path(path_type=Path), show_default=True)
@click.option("--module", "modules", multiple=True, help="Only these (e.g. edge/segmenter.py).")
@click.option("--survivors", is_flag=True, help="Also list the surviving mutants.")
def main(mutants: Path, modules: tuple[str, ...], survivors: bool) -> None:
    """Print a Markdown table of mutation scores per module."""
    metas = sorted(mutants.rglob("*.py.meta"))
    if not metas:
        raise click.ClickException(f"no mutmut results under {mutants}: run `make mutation` first")
    print("| module | mutants | killed | timeout | survived | no tests | not checked | score |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    left = []
    for meta in metas:
        module = str(meta.relative_to(mutants))[: -len(".meta")]
        if modules and module not in modules:
            continue
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        counts = Counter(_status(code) for code in codes.values())
        if not codes or counts["not checked"] == len(codes):
            continue
        killed = counts["killed"] + counts["timeout"]
        scored = killed + counts["survived"]
        score = f"{100 * killed / scored:.1f} %" if scored else "-"
        print(
            f"| {module} | {len(codes)} | {counts['killed']} | {counts['timeout']} | "
            f"{counts['survived']} | {counts['no tests']} | {counts['not checked']} | {score} |"
        )
        left += [key for key, code in codes.items() if _status(code) == "survived"]
    if survivors:
        print("\nsurvivors:\n" + "\n".join(f"- {key}" for key in left))


if __name__ == "__main__":
    main()
