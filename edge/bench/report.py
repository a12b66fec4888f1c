"""The report of ``edge-seg bench`` as Markdown: the side-by-side table, the execution path of each
column, the peer runtime's ratios and the accuracy rows."""

from __future__ import annotations

from pathlib import Path


def write_markdown(report: dict) -> str:
    """report.md: per thread count, every model side by side with ratios to the reference.

    Differences are always "model minus reference" with their sign, in the table and in the
    agreement lines alike.
    """
    names = list(report["models"])
    ref = names[0]
    m = report["machine"]
    load = report.get("load_average_before"), report.get("load_average_after")
    lines = [
        "# Float vs int8 benchmark",
        "",
        f"Machine: {m['cpu']} ({m['arch']}, {m['cores']} cores), {m['os']}, Python {m['python']}, "
        f"{report['runtime']}. Data: {report['data']}. {report['settings']['runs']} runs after "
        f"{report['settings']['warmup']} warm-up.",
    ]
    if load[0] is not None:
        lines.append(
            f"Load average (1/5/15 min) before: {' / '.join(map(str, load[0]))}, after: "
            f"{' / '.join(map(str, load[1]))} (timings are only comparable on an idle board)."
        )
    lines.append("")
    if m["emulated"]:
        lines += [
            "> **EMULATED** (qemu-user on another CPU): the timings below measure the emulator, "
            "not an ARM board. Only the class maps and accuracy are meaningful.",
            "",
        ]
    lines += _execution_lines(report)
    ratio_head = " | ".join(f"{n} / {ref}" for n in names[1:])
    rule = "|---" * (1 + 2 * len(names) - 1) + "|"
    for threads in report["settings"]["threads"]:
        lines += [
            f"## {threads} thread{'s' if threads > 1 else ''}",
            "",
            f"| | {' | '.join(names)} | {ratio_head} |",
            rule,
        ]
        rows = [
            ("invoke avg (ms)", lambda r: r["invoke"]["mean"]),
            ("invoke std (ms)", lambda r: r["invoke"]["std"]),
            ("invoke p50 (ms)", lambda r: r["invoke"]["p50"]),
            ("invoke p99 (ms)", lambda r: r["invoke"]["p99"]),
            ("invoke fps", lambda r: r["invoke_fps"]),
            ("pipeline p50 (ms)", lambda r: r["pipeline"]["p50"]),
            ("pipeline p99 (ms)", lambda r: r["pipeline"]["p99"]),
            ("pipeline fps", lambda r: r["pipeline"]["fps"]),
            ("pipeline / invoke fps", lambda r: r["pipeline_vs_invoke"]),
            ("init (ms)", lambda r: r["init_ms"]),
            ("first inference (ms)", lambda r: r["first_inference_ms"]),
            ("peak RSS (MiB)", lambda r: r["peak_rss_mb"] or float("nan")),
        ]
        if report.get("limit"):
            rows += [
                ("GMAC/s (at p50)", lambda r: r.get("gmac_per_s", float("nan"))),
                ("limit share", lambda r: r.get("limit_share", float("nan"))),
                ("floor (ms)", lambda r: r.get("floor_ms", float("nan"))),
                ("invoke p50 / floor", lambda r: r.get("vs_floor", float("nan"))),
            ]
        for label, get in rows:
            values = [get(report["models"][n]["threads"][str(threads)]) for n in names]
            ratios = " | ".join(_ratio(v, values[0]) for v in values[1:])
            lines.append(f"| {label} | {' | '.join(f'{v:.2f}' for v in values)} | {ratios} |")
        lines.append("")
    lines += _stage_lines(report)
    lines += _peer_lines(report)
    lines += _auto_lines(report)
    sizes = [report["models"][n]["size_bytes"] for n in names]
    change_head = " | ".join(f"{n} - {ref}" for n in names[1:])
    lines += [
        "## Size and accuracy",
        "",
        f"| | {' | '.join(names)} | {ratio_head} |",
        rule,
        f"| size (KiB) | {' | '.join(f'{s / 1024:.0f}' for s in sizes)} | "
        + " | ".join(_ratio(s, sizes[0]) for s in sizes[1:])
        + " |",
    ]
    accuracy = [report["models"][n].get("accuracy") for n in names]
    if all(accuracy):
        if str(report.get("data", "")).startswith("synthetic"):
            lines += ["", "Accuracy on the synthetic frames (a smoke test of agreement, not the "
                      "models' accuracy on Mars: give --data an eval npz of real frames):"]  # fmt: skip
        lines += ["", f"| | {' | '.join(names)} | {change_head} |", rule]
        lines.append(_accuracy_row("mIoU", [a["mean_iou"] for a in accuracy]))
        for cls in accuracy[0]["per_class_iou"]:
            lines.append(_accuracy_row(f"IoU {cls}", [a["per_class_iou"][cls] for a in accuracy]))
    for pair in report["pairs"]:
        labelled = pair.get("pixel_agreement_labelled")
        lines.append(
            f"\n{pair['test']} vs {pair['reference']}: pixel agreement "
            f"{100 * pair['pixel_agreement']:.2f} %"
            + (f" ({100 * labelled:.2f} % on labelled pixels)" if labelled is not None else "")
            + (
                f", mIoU change {pair['miou_change']:+.4f} ({pair['test']} - {pair['reference']})"
                if "miou_change" in pair
                else ""
            )
        )
    profiles = {n: report["models"][n]["op_profile"] for n in names
                if "op_profile" in report["models"][n]}  # fmt: skip
    if profiles:
        from edge.bench.op_profile import markdown

        lines += ["", *markdown(profiles)]
    return "\n".join(lines) + "\n"


def _execution_lines(report: dict) -> list[str]:
    """Which kernels and instruction set each column ran with, and the limit convs' rates."""
    from edge.bench.roofline import describe

    isa = report["machine"].get("int8_isa_available")
    lines = [
        "## Execution",
        "",
        f"CPU int8 instruction sets: best available {isa or 'unknown'}; features: "
        f"{', '.join(report['machine'].get('cpu_features', [])) or 'unknown'}.",
        "",
        "| model | runtime | kernels | chosen by | int8 path | AMX in use |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in report["models"].items():
        first = next(iter(entry["threads"].values()))
        ex = first.get("execution", {})
        lines.append(
            f"| {name} | {entry.get('runtime', report.get('runtime', '?'))} | "
            f"{ex.get('kernels', '?')} | {ex.get('chosen_by', '?')} | "
            f"{ex.get('cpu', {}).get('int8_isa', '?')} | {'yes' if ex.get('amx_in_use') else 'no'} |"
        )
    if report.get("limit"):
        lines += [
            "",
            f"Limit: {describe()}, timed in this run:",
            "",
            "| kernels | threads | int8 GMAC/s | float32 GMAC/s | int8 ms | float32 ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for kernels, by_threads in report["limit"].items():
            for threads, row in by_threads.items():
                i8, f32 = row["int8"], row["float32"]
                lines.append(
                    f"| {kernels} | {threads} | {i8['gmac_per_s']:.0f} | {f32['gmac_per_s']:.0f} | "
                    f"{i8['invoke_ms']:.3f} | {f32['invoke_ms']:.3f} |"
                )
        lines.append(
            "\nGMAC/s counts the MACs of the model's graph as its kernels compute them; a model "
            "is compared with the limit of its own precision; floor = its MACs at the limit's rate."
        )
    return [*lines, ""]


STAGE_ROWS = ("read", "preprocess", "invoke", "postprocess", "analyze", "write")


def _ratio(value: float, reference: float) -> str:
    """``value / reference`` as "1.23x"; "n/a" against a zero reference (a spread of 0 ms over
    a few runs that fell in one histogram bin) or a missing one."""
    if not reference or reference != reference:  # 0, or NaN
        return "n/a"
    return f"{value / reference:.2f}x"


def _stage_lines(report: dict) -> list[str]:
    """Where a frame's time goes: each stage, in turn and overlapped (read ahead, written
    behind), per model, at each thread count."""
    names = list(report["models"])
    first = report["models"][names[0]]["threads"]
    if "modes" not in next(iter(first.values()))["pipeline"]:
        return []  # a report of before the stages were kept
    lines = [
        "## Where a frame's time goes",
        "",
        "Mean ms per frame of each stage (on whichever thread it ran), the wall time per frame, "
        "the frame's cost to the loop beyond `invoke` (wall minus invoke), and the CPU time of the "
        "whole process per frame (every thread, any core); *in turn*: read, "
        "segment, write one after the other; *overlapped*: the next frame read and the last one "
        "written while the model runs (`edge-seg run`).",
        "",
    ]
    for threads in report["settings"]["threads"]:
        cols = [(n, m) for n in names for m in ("in_turn", "overlapped")]
        head = " | ".join(f"{n} {m.replace('_', ' ')}" for n, m in cols)
        lines += [f"**{threads} thread{'s' if threads > 1 else ''}**", "",
                  f"| ms | {head} |", "|---" * (1 + len(cols)) + "|"]  # fmt: skip
        modes = [report["models"][n]["threads"][str(threads)]["pipeline"]["modes"][m]
                 for n, m in cols]  # fmt: skip
        for stage in STAGE_ROWS:
            lines.append(f"| {stage} | " + " | ".join(
                f"{m['stages_ms'].get(stage, float('nan')):.2f}" for m in modes) + " |")  # fmt: skip
        lines.append(
            "| wall per frame | " + " | ".join(f"{m['wall_ms']:.2f}" for m in modes) + " |"
        )
        lines.append("| **beyond invoke** | " + " | ".join(
            f"**{m['outside_invoke_ms']:.2f}**" for m in modes) + " |")  # fmt: skip
        if all("cpu_ms" in m for m in modes):
            lines.append("| CPU per frame, all threads | " + " | ".join(
                f"{m['cpu_ms']:.2f}" for m in modes) + " |")  # fmt: skip
        lines.append("")
    return lines


def _auto_lines(report: dict) -> list[str]:
    """What ``edge-seg run --precision auto`` would take on this CPU, from these timings."""
    records = report.get("precision_auto") or []
    if not records:
        return []
    lines = ["## --precision auto", ""]
    for record in records:
        for threads, choice in record["threads"].items():
            timed = ", ".join(f"{p} {ms:.2f} ms" for p, ms in choice["timings_ms"].items())
            refused = "; ".join(f"{p}: {why}" for p, why in (choice["refused"] or {}).items())
            lines.append(
                f"- `{record['folder']}`, {threads} thread(s): **{choice['precision']}** "
                f"(median invoke: {timed})" + (f"; left out: {refused}" if refused else "")
            )
    lines.append(
        f"\nOnly files whose parity report agrees with float32 on at least "
        f"{records[0]['threads'][next(iter(records[0]['threads']))]['min_agreement']:.0%} of "
        "pixels compete; `edge-seg run` times them again at start-up."
    )
    return [*lines, ""]


def graph_name(path: Path) -> str | None:
    """The graph a model was exported as (``rover`` or ``keras``, from its metadata)."""
    from edge.contract.metadata import read_model_metadata

    meta = read_model_metadata(path)
    graph = meta.info.get("graph") if meta else None
    return graph.get("name") if isinstance(graph, dict) else None


def peer_ratios(report: dict) -> list[dict]:
    """Each model against each peer-runtime model of the same graph and precision (ONNX Runtime
    beside LiteRT): invoke p50 ratio per thread count, "model / peer" (below 1: ours is faster).
    A peer translates one graph: the Keras graph's models are not set against the rover
    graph's peer."""
    from edge.runtimes.interpreter import PEER_RUNTIME

    models = report["models"]
    by_runtime = {n: m.get("runtime", "").split(" ")[0] for n, m in models.items()}
    out = []
    for peer, peer_entry in models.items():
        if by_runtime[peer] != PEER_RUNTIME:
            continue
        for name, entry in models.items():
            if by_runtime[name] == PEER_RUNTIME:
                continue
            mine, theirs = entry["threads"], peer_entry["threads"]
            precision = next(iter(mine.values()))["precision"]
            if precision != next(iter(theirs.values()))["precision"]:
                continue
            if entry.get("graph") != peer_entry.get("graph"):
                continue
            out.append({
                "model": name, "peer": peer, "precision": precision,
                "p50_ratio": {t: mine[t]["invoke"]["p50"] / theirs[t]["invoke"]["p50"]
                              for t in mine if t in theirs},
            })  # fmt: skip
    return out


def _peer_lines(report: dict) -> list[str]:
    rows = peer_ratios(report)
    if not rows:
        return []
    threads = [str(t) for t in report["settings"]["threads"]]
    lines = [
        "## Against the peer runtime",
        "",
        "Invoke p50 of each model over the peer-runtime model of the same precision (below 1: "
        "ours is faster).",
        "",
        f"| model / peer | precision | {' | '.join(f'{t} thr' for t in threads)} |",
        "|---|---|" + "---:|" * len(threads),
    ]
    for row in rows:
        cells = " | ".join(
            f"{row['p50_ratio'][t]:.2f}x" if t in row["p50_ratio"] else "-" for t in threads
        )
        lines.append(f"| {row['model']} / {row['peer']} | {row['precision']} | {cells} |")
    return [*lines, ""]


def _accuracy_row(label: str, values: list[float | None]) -> str:
    cells = " | ".join("-" if v is None else f"{v:.4f}" for v in values)
    changes = " | ".join(
        "-" if v is None or values[0] is None else f"{v - values[0]:+.4f}" for v in values[1:]
    )
    return f"| {label} | {cells} | {changes} |"
