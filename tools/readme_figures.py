"""Make the README's pictures: overlays and the final screen of a finished demo, the default
regions of the rover's hazard rule drawn over a frame, and the shipped model on the sample frames.

python tools/readme_figures.py demo --out docs [--regions-frame FRAME]
python tools/readme_figures.py --shipped --out docs      # docs/shipped_overlays.png
python tools/readme_figures.py --hazards --out docs      # docs/hazard_overlays.png
python tools/readme_figures.py --mcap RUN.mcap --out docs  # docs/mcap_readback.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from edge.contract.labels import MARS, overlay
from edge.io.decode import read_frame
from edge.io.labels import LabelReader
from edge.run.hazards import RegionAnalyzer, RegionConfig
from edge.segmenter import Segmenter
from tools.demo_summary import summary_text

MONO = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")


def overlay_grid(demo: Path, frames: int = 4, scale: int = 3) -> Image.Image:
    """Rows of frame | int8 segmentation | truth, each upscaled ``scale`` times."""
    overlays = sorted((demo / "edge" / "overlays").glob("*.png"))[:frames]
    if not overlays:
        raise click.ClickException(f"no overlays in {demo}/edge/overlays: run the demo first")
    camera = {p.stem: p for p in (demo / "camera").iterdir()}
    labels = LabelReader(demo / "camera-labels", 5)
    rows = []
    for path in overlays:
        frame = read_frame(camera[path.stem])
        predicted = np.asarray(Image.open(path))
        truth = overlay(frame, labels.read_for(path.stem), MARS)
        grey = np.repeat(frame[..., None], 3, axis=-1)
        gap = np.full((frame.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([grey, gap, predicted, gap, truth], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return _titled(np.concatenate(rows[:-1], axis=0), scale, "int8 model (edge-seg run)")


SAMPLES = Path(__file__).resolve().parents[1] / "docs" / "samples" / "ai4mars"


def shipped_grid(model: Path | None = None, frames: int = 4) -> Image.Image:
    """Rows of frame | the shipped (or given) model's segmentation | truth, on the sample frames."""
    from edge.models import resolve_model

    segmenter = Segmenter(resolve_model(model)[0])
    labels = LabelReader(SAMPLES / "labels", segmenter.num_classes)
    paths = sorted((SAMPLES / "frames").glob("*.JPG"))
    step = max(1, len(paths) // frames)  # spread over the set: rocks, sand and bedrock
    rows = []
    for path in paths[::step][:frames]:
        frame = read_frame(path)
        predicted = overlay(frame, segmenter.segment(frame).labels, segmenter.labels)
        truth = overlay(frame, labels.read_for(path.stem), segmenter.labels)
        grey = np.repeat(frame[..., None], 3, axis=-1)
        gap = np.full((frame.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([grey, gap, predicted, gap, truth], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return _titled(np.concatenate(rows[:-1], axis=0), 1, "shipped int8 model")


def hazard_grid(model: Path | None = None, frames: int = 4, scale: int = 2) -> Image.Image:
    """The rover's annotated overlays (regions, rocks boxed, state, legend) of the shipped model
    on the sample frames with the most predicted rock, as ``edge-seg run --overlay`` writes them."""
    from edge.io.annotate import annotate
    from edge.models import resolve_model

    segmenter = Segmenter(resolve_model(model)[0])
    analyzer = RegionAnalyzer(RegionConfig(), segmenter.labels)
    drawn = []
    for path in sorted((SAMPLES / "frames").glob("*.JPG")):
        frame = read_frame(path)
        seg, record = analyzer.frame(segmenter, frame)
        picture = annotate(overlay(frame, seg.labels, segmenter.labels), record,
                           analyzer.config.regions, segmenter.labels)  # fmt: skip
        drawn.append((record["rocks_total"], path.name, picture))
    drawn.sort(key=lambda d: (-d[0], d[1]))
    pictures = [d[2] for d in drawn[:frames]]
    gap = np.full((pictures[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([x for p in pictures for x in (p, gap)][:-1], axis=1)
    return Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), Image.NEAREST)


def mcap_readback(recording: Path, frames: int = 3, scale: int = 2) -> Image.Image:
    """Frames read back from an ``edge-seg run --mcap`` recording with the mcap reader: per row
    the frame, the class map and the rock annotations drawn from their messages alone."""
    import base64
    import json

    from mcap.reader import make_reader

    by_time: dict[int, dict] = {}
    with open(recording, "rb") as handle:
        for _, channel, message in make_reader(handle).iter_messages():
            by_time.setdefault(message.log_time, {})[channel.topic] = json.loads(message.data)
    with_rocks = [
        m for _, m in sorted(by_time.items()) if m.get("/segmentation/rocks", {}).get("points")
    ]
    rows = []
    for msgs in with_rocks[:frames]:
        image, classes = msgs["/navcam/image"], msgs["/segmentation/class_map"]
        h, w = image["height"], image["width"]
        grey = np.frombuffer(base64.b64decode(image["data"]), np.uint8).reshape(h, w)
        colour = np.frombuffer(base64.b64decode(classes["data"]), np.uint8).reshape(h, w, 3)
        boxed = Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
        draw = ImageDraw.Draw(boxed)
        notes = msgs["/segmentation/rocks"]
        for shape in notes["points"]:
            c = shape["outline_color"]
            draw.line([(p["x"], p["y"]) for p in shape["points"] + shape["points"][:1]],
                      fill=tuple(int(255 * c[k]) for k in "rgb"), width=2)  # fmt: skip
        for text in notes["texts"]:
            draw.text((text["position"]["x"] + 2, text["position"]["y"] - 11), text["text"],
                      fill="white")  # fmt: skip
        gap = np.full((h, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([np.asarray(boxed), gap, colour, gap], axis=1)[:, :-4])
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    if not rows:
        raise click.ClickException(f"no frame with rocks in {recording}")
    grid = np.concatenate(rows[:-1], axis=0)
    return Image.fromarray(grid).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    )


def _titled(grid: np.ndarray, scale: int, model_title: str) -> Image.Image:
    image = Image.fromarray(grid).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST
    )
    canvas = Image.new("RGB", (image.width, image.height + 30), "white")
    canvas.paste(image, (0, 30))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.truetype(str(MONO), 16) if MONO.exists() else ImageFont.load_default()
    third = image.width // 3
    for i, title in enumerate(("camera frame", model_title, "truth (crowd labels)")):
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


def regions_picture(frame_path: Path, model: Path | None = None, scale: int = 2) -> Image.Image:
    """The default regions (near field, corridor) outlined over a frame; with a model, its
    segmentation under them and the frame's hazard verdict in the caption."""
    frame = read_frame(frame_path)
    rgb = np.repeat(frame[..., None], 3, axis=-1)
    caption = "default regions: near field (cyan), corridor (magenta)"
    config = RegionConfig()
    if model is not None:
        segmenter = Segmenter(model)
        seg = segmenter.segment(frame, with_confidence=True)
        rgb = overlay(frame, seg.labels, label_set=segmenter.labels)
        result = RegionAnalyzer(config, segmenter.labels).analyze(seg.labels, seg.top_probability)
        rule = result["hazards"][0] if result["hazards"] else None
        if rule and "fraction" in rule:
            caption += (
                f"; {rule['class']} covers {100 * rule['fraction']:.1f} % of the {rule['region']}"
                f" (hazard at >= {100 * rule['min_fraction']:g} %): "
                + ("HAZARD" if result["hazard"] else "clear")
            )
        elif rule:  # a rule on rocks
            caption += (
                f"; {len(rule['rocks'])} {rule['class']} of >= {rule['min_area_px']} px in the "
                f"{rule['region']}: " + ("HAZARD" if result["hazard"] else "clear")
            )
    image = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for polygon, colour in zip(config.regions.values(), ((0, 230, 230), (230, 0, 230))):
        points = [(x * (w - 1), y * (h - 1)) for x, y in polygon]
        draw.line([*points, points[0]], fill=colour, width=3)
    font = ImageFont.truetype(str(MONO), 13) if MONO.exists() else ImageFont.load_default()
    canvas = Image.new("RGB", (w, h + 24), "white")
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text((6, h + 5), caption, fill="black", font=font)
    return canvas


@click.command()
@click.argument(
    "demo", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("docs"))
@click.option(
    "--regions-frame",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Also draw the default regions over this frame (OUT/regions.png).",
)
@click.option(
    "--regions-model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Segment --regions-frame with this model under the regions.",
)
@click.option("--shipped", is_flag=True, help="Write OUT/shipped_overlays.png (no DEMO needed).")
@click.option("--hazards", is_flag=True, help="Write OUT/hazard_overlays.png (no DEMO needed).")
@click.option("--mcap", "recording", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Write OUT/mcap_readback.png from this recording.")  # fmt: skip
def main(
    demo: Path | None,
    out: Path,
    regions_frame: Path | None,
    regions_model: Path | None,
    shipped: bool,
    hazards: bool,
    recording: Path | None,
) -> None:
    """Write OUT/overlays.png and OUT/report_table.png from the DEMO folder (and with --shipped
    the shipped model on the sample frames)."""
    out.mkdir(parents=True, exist_ok=True)
    if recording is not None:
        mcap_readback(recording).save(out / "mcap_readback.png")
        click.echo(f"wrote {out}/mcap_readback.png")
    if hazards:
        hazard_grid().save(out / "hazard_overlays.png")
        click.echo(f"wrote {out}/hazard_overlays.png")
    if shipped:
        shipped_grid().save(out / "shipped_overlays.png")
        click.echo(f"wrote {out}/shipped_overlays.png")
    if demo is None and (shipped or hazards or recording is not None):
        return
    if demo is None:
        raise click.UsageError("give DEMO (a finished demo folder), or --shipped")
    overlay_grid(demo).save(out / "overlays.png")
    text_image(summary_text(demo)).save(out / "report_table.png")
    written = ["overlays.png", "report_table.png"]
    if regions_frame is not None:
        regions_picture(regions_frame, regions_model).save(out / "regions.png")
        written.append("regions.png")
    click.echo(f"wrote {', '.join(f'{out}/{n}' for n in written)}")


if __name__ == "__main__":
    main()
