"""Overlays a person reads at a glance: regions outlined, rocks boxed, the verdict, a legend.

Drawn over the colour wash of :func:`edge.contract.labels.overlay` from the frame's own
telemetry record, so the picture shows exactly what the navigation stack was told: the
regions' outlines (the corridor yellow, others cyan), the horizon when a camera model gives one,
each rock's box (red when a hazard rule fired on it, orange otherwise) with its range or area,
a banner with the hazard state, and a legend of the classes.
"""

from __future__ import annotations

import numpy as np

from edge.contract.labels import LabelSet

HAZARD_RED = (230, 40, 40)
ROCK_ORANGE = (255, 160, 0)
CORRIDOR_YELLOW = (255, 230, 0)
REGION_CYAN = (0, 220, 255)
CLEAR_GREEN = (40, 170, 60)


def annotate(
    rgb: np.ndarray,
    record: dict,
    regions: dict[str, list[list[float]]],
    label_set: LabelSet,
    horizon_row: float | None = None,
) -> np.ndarray:
    """The overlay ``rgb`` (H, W, 3) uint8 with the record's analysis drawn on it."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    line = max(1, round(min(h, w) / 256))
    for name, polygon in regions.items():
        points = [(x * (w - 1), y * (h - 1)) for x, y in polygon]
        colour = CORRIDOR_YELLOW if name == "corridor" else REGION_CYAN
        draw.line([*points, points[0]], fill=colour, width=line)
    if horizon_row is not None and 0 <= horizon_row < h:
        for x in range(0, w, 8):  # dashed
            draw.line([(x, horizon_row), (min(w - 1, x + 4), horizon_row)], fill=REGION_CYAN)
    fired = {i for rule in record.get("hazards", []) if rule.get("hazard")
             for i in rule.get("rocks", [])}  # fmt: skip
    for rock in record.get("rocks", []):
        x0, y0, x1, y1 = rock["box"]
        colour = HAZARD_RED if rock["id"] in fired else ROCK_ORANGE
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line + (rock["id"] in fired))
        text = f"{rock['range_m']:.1f} m" if "range_m" in rock else f"{rock['area_px']} px"
        # above the box; below it when the banner's row would hide the text
        _label(draw, font, (x0, y0 - 11 if y0 >= 26 else min(h - 11, y1 + 2)), text, colour)
    hazard = bool(record.get("hazard"))
    shares = [
        f"{rule['class']} in {rule['region']}"
        for rule in record.get("hazards", []) if rule.get("hazard")
    ]  # fmt: skip
    banner = "HAZARD: " + ", ".join(shares) if hazard else "clear"
    _label(draw, font, (2, 2), banner, HAZARD_RED if hazard else CLEAR_GREEN)
    _legend(draw, font, label_set, w, h)
    return np.asarray(img)


def _label(draw, font, xy, text: str, colour) -> None:
    """White text on a box of ``colour``."""
    x, y = xy
    left, top, right, bottom = draw.textbbox((x + 2, y), text, font=font)
    draw.rectangle([left - 2, top - 1, right + 2, bottom + 1], fill=colour)
    draw.text((x + 2, y), text, fill=(255, 255, 255), font=font)


def _legend(draw, font, label_set: LabelSet, w: int, h: int) -> None:
    """The classes' colours, bottom right (the ignored class is left uncoloured)."""
    names = [(i, n) for i, n in enumerate(label_set.names) if i != label_set.ignore]
    widths = [draw.textlength(n, font=font) for _, n in names]
    box_w = int(max(widths, default=0)) + 16
    row = 11
    x0, y0 = w - box_w - 2, h - row * len(names) - 4
    draw.rectangle([x0, y0, w - 2, h - 2], fill=(0, 0, 0))
    for k, (i, name) in enumerate(names):
        y = y0 + 2 + k * row
        colour = tuple(int(c) for c in label_set.colour_table[i])
        draw.rectangle([x0 + 3, y + 1, x0 + 10, y + 8], fill=colour)
        draw.text((x0 + 13, y - 1), name, fill=(255, 255, 255), font=font)
