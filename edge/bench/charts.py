"""Bar charts and histograms drawn with Pillow alone: the board has no matplotlib."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Okabe-Ito: distinguishable for colour-blind readers.
PALETTE = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233)]
WIDTH, HEIGHT, MARGIN = 900, 480, (70, 50, 30, 80)  # left, top, right, bottom


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _nice_step(top: float) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about five ticks up to ``top``."""
    raw = top / 5 if top > 0 else 1.0
    power = 10 ** np.floor(np.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def _frame(title: str, ylabel: str, top: float) -> tuple[Image.Image, ImageDraw.ImageDraw, float]:
    """A white canvas with title, y axis and grid; returns the pixels per y unit."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    left, upper, right, lower = MARGIN
    draw.text((WIDTH // 2, 18), title, fill="black", font=_font(18), anchor="mm")
    draw.text((12, upper - 28), ylabel, fill="black", font=_font(13))
    step = _nice_step(top)
    top = step * np.ceil(top / step)
    plot_h = HEIGHT - upper - lower
    scale = plot_h / top
    for tick in np.arange(0, top + step / 2, step):
        y = HEIGHT - lower - tick * scale
        draw.line([(left, y), (WIDTH - right, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{tick:.3g}", fill="black", font=_font(12), anchor="rm")
    draw.line([(left, upper), (left, HEIGHT - lower), (WIDTH - right, HEIGHT - lower)], "black")
    return image, draw, scale


def bar_chart(
    groups: list[str], series: dict[str, list[float]], title: str, ylabel: str, path: Path
) -> Path:
    """Grouped bars: one group per x label, one bar per series (e.g. per model).

    Args:
        groups: x labels (e.g. class names).
        series: name -> one value per group (None/NaN drawn as no bar).
        title: chart title.
        ylabel: y axis label.
        path: the PNG to write.
    """
    values = np.array([[np.nan if v is None else v for v in vs] for vs in series.values()], float)
    top = float(np.nanmax(values)) * 1.15 if np.isfinite(values).any() else 1.0
    image, draw, scale = _frame(title, ylabel, top)
    left, _, right, lower = MARGIN
    group_w = (WIDTH - left - right) / max(1, len(groups))
    bar_w = group_w * 0.8 / max(1, len(series))
    base = HEIGHT - lower
    for g, label in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for s, row in enumerate(values):
            if np.isfinite(row[g]):
                x = x0 + s * bar_w
                draw.rectangle(
                    [x, base - row[g] * scale, x + bar_w - 2, base], fill=PALETTE[s % len(PALETTE)]
                )
                draw.text(
                    (x + bar_w / 2, base - row[g] * scale - 4),
                    f"{row[g]:.3g}",
                    fill="black",
                    font=_font(11),
                    anchor="md",
                )
        draw.text((left + (g + 0.5) * group_w, base + 14), label, "black", _font(13), anchor="mm")
    _legend(draw, list(series))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def histogram(values: np.ndarray, title: str, xlabel: str, path: Path, bins: int = 40) -> Path:
    """A histogram of ``values`` with the p50/p90/p99 marked."""
    values = np.asarray(values, float)
    low, high = float(values.min()), float(np.percentile(values, 99.5))
    high = high if high > low else low + 1e-6
    counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    image, draw, scale = _frame(title, "frames", float(counts.max()) * 1.15)
    left, _, right, lower = MARGIN
    base, plot_w = HEIGHT - lower, WIDTH - left - right

    def x_of(v: float) -> float:
        return left + (v - low) / (high - low) * plot_w

    for count, a, b in zip(counts, edges[:-1], edges[1:]):
        draw.rectangle([x_of(a), base - count * scale, x_of(b) - 1, base], fill=PALETTE[0])
    for q, colour in ((50, PALETTE[2]), (90, PALETTE[1]), (99, PALETTE[3])):
        v = float(np.percentile(values, q))
        if v <= high:
            draw.line([(x_of(v), MARGIN[1]), (x_of(v), base)], fill=colour, width=2)
            draw.text((x_of(v) + 3, MARGIN[1] + 4), f"p{q} {v:.3g}", fill=colour, font=_font(12))
    for v in np.linspace(low, high, 6):
        draw.text((x_of(v), base + 12), f"{v:.3g}", fill="black", font=_font(12), anchor="mm")
    draw.text((WIDTH // 2, HEIGHT - 25), xlabel, fill="black", font=_font(13), anchor="mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _legend(draw: ImageDraw.ImageDraw, names: list[str]) -> None:
    x = WIDTH - MARGIN[2] - 10
    for i, name in enumerate(reversed(names)):
        colour = PALETTE[(len(names) - 1 - i) % len(PALETTE)]
        width = draw.textlength(name, font=_font(13))
        x -= width + 30
        draw.rectangle([x, 40, x + 14, 54], fill=colour)
        draw.text((x + 20, 47), name, fill="black", font=_font(13), anchor="lm")
