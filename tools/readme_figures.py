"""Make the README's pictures from a finished demo: overlays and the final screen.

python tools/readme_figures.py demo --out docs
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.classes import overlay
from tools.demo_summary import summary_text

MONO = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")


def overlay_grid(demo: Path, frames: int = 4, scale: int = 3) -> Image.Image:
    """Rows of frame | int8 segmentation | truth, each upscaled ``scale`` times."""
    names = sorted(p.name for p in (demo / "edge" / "overlays").glob("*.png"))[:frames]
    if not names:
        raise click.ClickException(f"no overlays in {demo}/edge/overlays: run the demo first")
    rows = []
    for name in names:
        frame = np.asarray(Image.open(demo / "camera" / name).convert("L"))
        predicted = np.asarray(Image.open(demo / "edge" / "overlays" / name))
        truth = overlay(frame, np.asarray(Image.open(demo / "camera-labels" / name)))
        grey = np.repeat(frame[..., None], 3, axis=-1)
        gap = np.full((frame.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([grey, gap, predicted, gap, truth], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows[:-1], axis=0)
    image = Image.fromarray(grid).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    )
    canvas = Image.new("RGB", (image.width, image.height + 30), "white")
    canvas.paste(image, (0, 30))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.truetype(str(MONO), 16) if MONO.exists() else ImageFont.load_default()
    third = image.width // 3
    for i, title in enumerate(("camera frame", "int8 model (edge-seg run)", "truth")):
        draw.text((i * third + third // 2, 15), title, fill="black", font=font, anchor="mm")
    return canvas


def text_image(text: str, size: int = 15) -> Image.Image:
    """Render monospaced text as a terminal-like picture."""
    font = ImageFont.truetype(str(MONO), size) if MONO.exists() else ImageFont.load_default()
    lines = text.splitlines()
    width = int(max(font.getlength(line) for line in lines)) + 40
    height = (size + 5) * len(lines) + 30
    image = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((20, 15 + i * (size + 5)), line, fill=(230, 230, 230), font=font)
    return image


@click.command()
@click.argument("demo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("docs"))
def main(demo: Path, out: Path) -> None:
    """Write OUT/overlays.png and OUT/report_table.png from the DEMO folder."""
    out.mkdir(parents=True, exist_ok=True)
    overlay_grid(demo).save(out / "overlays.png")
    text_image(summary_text(demo)).save(out / "report_table.png")
    click.echo(f"wrote {out}/overlays.png and {out}/report_table.png")


if __name__ == "__main__":
    main()
