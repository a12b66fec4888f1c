"""What a module costs the rover to import: wall time and resident memory, in a fresh process.

    python benchmarks/import_cost.py [--repeat 5] [--out report/import_cost]

Each module is imported alone in a new interpreter (``python -c``), ``--repeat`` times; the
table gives the median import time and the peak resident memory after it (VmHWM), against a bare
interpreter. The rover's own PDS reader (``edge.io.pds``) is measured beside ``pdr``, which reads
the same files but brings pandas.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

MODULES = (
    "edge",
    "edge.cli",
    "edge.io.pds",
    "edge.segmenter",
    "pdr",
    "mcap.writer",
    "rosbags.rosbag2",
    "rosbags.typesys",
)
# a PDS3 frame read after the import: pdr loads pandas only when it reads
READS = {
    "edge.io.pds": "from edge.io.pds import read_pds; read_pds(Path(FILE), 10**8)",
    "pdr": "import pdr; pdr.read(FILE)['IMAGE']",
}

PROBE = """
import time, sys
from pathlib import Path
FILE = {file!r}
t0 = time.perf_counter()
if {module!r}:
    __import__({module!r})
{read}
t = time.perf_counter() - t0
peak = 0
for line in open('/proc/self/status'):
    if line.startswith('VmHWM:'):
        peak = int(line.split()[1]) / 1024
print(t, peak, 'tensorflow' in sys.modules, 'pandas' in sys.modules)
"""


def cost(module: str, repeat: int, read: str = "", file: str = "") -> dict | None:
    times, peaks = [], []
    probe = PROBE.format(module=module, read=read, file=file)
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        if done.returncode != 0:
            return None  # not installed
        t, peak, tf, pandas = done.stdout.split()
        times.append(float(t) * 1e3)
        peaks.append(float(peak))
    return {"import_ms": round(statistics.median(times), 1),
            "peak_rss_mib": round(statistics.median(peaks), 1),
            "imports_tensorflow": tf == "True", "imports_pandas": pandas == "True"}  # fmt: skip


@click.command()
@click.option("--repeat", default=5, show_default=True, help="Fresh processes per module.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write import_cost.md and .json here.")  # fmt: skip
def main(repeat: int, out: Path | None) -> None:
    """Import time and resident memory of the rover's modules and its optional readers."""
    import tempfile

    from trainer.devices import cpu_name

    base = cost("", repeat)
    rows = {m: cost(m, repeat) for m in MODULES}
    with tempfile.TemporaryDirectory() as tmp:  # a 1024x1024 8-bit PDS3 frame, label attached
        frame = Path(tmp) / "frame.IMG"
        label = ("PDS_VERSION_ID = PDS3\r\nRECORD_TYPE = FIXED_LENGTH\r\nRECORD_BYTES = 1024\r\n"
                 "^IMAGE = 2\r\nOBJECT = IMAGE\r\n LINES = 1024\r\n LINE_SAMPLES = 1024\r\n"
                 " SAMPLE_BITS = 8\r\n SAMPLE_TYPE = UNSIGNED_INTEGER\r\nEND_OBJECT = IMAGE\r\n"
                 "END\r\n")  # fmt: skip
        frame.write_bytes(label.encode().ljust(1024) + bytes(1024 * 1024))
        for module, read in READS.items():
            rows[f"{module} + read a 1024x1024 PDS3 frame"] = cost(module, repeat, read, str(frame))
    lines = [
        f"Fresh `python -c 'import MODULE'`, median of {repeat}; Python {platform.python_version()}"
        f" on {cpu_name()}. Bare interpreter: {base['import_ms']} ms, {base['peak_rss_mib']} MiB.",
        "",
        "    python benchmarks/import_cost.py",
        "",
        "| module | import ms | peak RSS MiB | over bare | pulls pandas | pulls TensorFlow |",
        "|---|---:|---:|---:|---|---|",
    ]
    for module, row in rows.items():
        if row is None:
            lines.append(f"| {module} | not installed | | | | |")
            continue
        lines.append(
            f"| {module} | {row['import_ms']} | {row['peak_rss_mib']} | "
            f"+{row['peak_rss_mib'] - base['peak_rss_mib']:.1f} | "
            f"{'yes' if row['imports_pandas'] else 'no'} | {'yes' if row['imports_tensorflow'] else 'no'} |"
        )
    text = "\n".join(lines)
    click.echo(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "import_cost.md").write_text("# Import cost on the rover side\n\n" + text + "\n")
        (out / "import_cost.json").write_text(json.dumps({"bare": base, "modules": rows}, indent=1))


if __name__ == "__main__":
    main()
