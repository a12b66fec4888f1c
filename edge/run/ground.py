"""Where a pixel lies on the ground: a pinhole camera over a flat ground plane.

The camera sits ``height_m`` above flat ground, looks forward, pitched down by ``pitch_deg``
(no roll), with a horizontal field of view ``hfov_deg`` over the frame's width, square pixels
and the principal point at the frame's centre. A pixel's ray meets the ground at a range and
bearing (0 straight ahead, positive to the right); rays at or above the horizon never meet it,
so nothing there can be a hazard. The flat plane is the assumption a single camera affords:
slopes and the rock's own height make ranges approximate (a rock's *base*, where it meets the
ground, is the point used, which keeps the error small near the rover).

Curiosity's NAVCAM (Maki et al. 2012): 45 x 45 degree field of view, 1024 x 1024 pixels, on the
remote-sensing mast about 1.9 m above the ground, pitched as each drive's imaging sequence
commands (often 25-45 degrees down for terrain ahead)::

    "camera": {"height_m": 1.9, "pitch_deg": 30, "hfov_deg": 45, "image_size": [1024, 1024]}

``image_size`` is optional: when given, a frame of another aspect ratio is refused (a frame of
the same aspect at another size, e.g. the 256x256 copies, is fine: the field of view scales).

The traversability grid is a bird's-eye map ahead of the rover in cells of ``cell_m`` metres:
each cell holds the mean cost of the pixels whose ground point falls in it (a cost per class,
1.0 for the hazard classes; unknown where no labelled pixel falls), and 1.0 where a rock's base
lies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

UNKNOWN = 255  # a grid cell no pixel sees (the grid file's uint8 value)
DEFAULT_COSTS = {"soil": 0.1, "bedrock": 0.3, "sand": 0.6}  # hazard classes cost 1.0


@dataclass(frozen=True)
class Camera:
    """A forward-looking camera over flat ground (see the module doc)."""

    height_m: float
    pitch_deg: float
    hfov_deg: float
    image_size: tuple[int, int] | None = None  # (width, height) the field of view was given for

    @classmethod
    def from_dict(cls, doc: dict) -> Camera:
        unknown = set(doc) - {"height_m", "pitch_deg", "hfov_deg", "image_size"}
        if unknown:
            raise ValueError(f"camera: unknown keys {sorted(unknown)}")
        try:
            size = doc.get("image_size")
            camera = cls(
                float(doc["height_m"]),
                float(doc["pitch_deg"]),
                float(doc["hfov_deg"]),
                None if size is None else (int(size[0]), int(size[1])),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(
                f"camera: needs height_m, pitch_deg, hfov_deg (and optionally image_size "
                f"[width, height]); {err}"
            ) from err
        camera.validate()
        return camera

    def as_dict(self) -> dict:
        doc = {"height_m": self.height_m, "pitch_deg": self.pitch_deg, "hfov_deg": self.hfov_deg}
        if self.image_size is not None:
            doc["image_size"] = list(self.image_size)
        return doc

    def validate(self) -> None:
        if not self.height_m > 0:
            raise ValueError(f"camera.height_m must be above 0, got {self.height_m}")
        if not -90.0 < self.pitch_deg < 90.0:
            raise ValueError(f"camera.pitch_deg (down from level) must be in (-90, 90), got "
                             f"{self.pitch_deg}")  # fmt: skip
        if not 0.0 < self.hfov_deg < 180.0:
            raise ValueError(f"camera.hfov_deg must be in (0, 180), got {self.hfov_deg}")
        if self.image_size is not None and min(self.image_size) < 1:
            raise ValueError(f"camera.image_size must be [width, height] in pixels, got "
                             f"{list(self.image_size)}")  # fmt: skip

    def check_frame(self, shape: tuple[int, int]) -> None:
        """Raises ValueError when a frame's aspect ratio differs from ``image_size``'s."""
        if self.image_size is None:
            return
        w, h = self.image_size
        if abs(shape[1] * h - shape[0] * w) > max(w, h):  # a pixel of rounding allowed
            raise ValueError(
                f"the camera model is for {w}x{h} frames; a {shape[1]}x{shape[0]} frame has "
                "another aspect ratio (set the regions file's camera.image_size)"
            )

    def focal_px(self, width: int) -> float:
        return (width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    def horizon_row(self, shape: tuple[int, int]) -> float:
        """The frame row of the horizon (rows above it, smaller, never meet the ground)."""
        h, w = shape
        return (h - 1) / 2.0 - self.focal_px(w) * math.tan(math.radians(self.pitch_deg))

    def ground(self, x, y, shape: tuple[int, int]):
        """Ground points of frame pixels ``(x, y)`` (arrays or numbers).

        Returns:
            ``(forward_m, lateral_m)``, NaN where the ray does not meet the ground.
        """
        h, w = shape
        f = self.focal_px(w)
        u = (np.asarray(x, np.float64) - (w - 1) / 2.0) / f
        v = (np.asarray(y, np.float64) - (h - 1) / 2.0) / f
        pitch = math.radians(self.pitch_deg)
        down = v * math.cos(pitch) + math.sin(pitch)  # the ray's downward component
        ahead = math.cos(pitch) - v * math.sin(pitch)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(down > 1e-9, self.height_m / down, np.nan)
        return t * ahead, t * u

    def range_bearing(self, x: float, y: float, shape: tuple[int, int]) -> tuple[float, float]:
        """Range (m) and bearing (degrees, right positive) of one pixel's ground point; NaN
        above the horizon."""
        forward, lateral = self.ground(x, y, shape)
        return float(np.hypot(forward, lateral)), float(np.degrees(np.arctan2(lateral, forward)))

    def size_m(self, rock: dict, shape: tuple[int, int]) -> float:
        """The width on the ground of a rock's box, at its base's distance along the view
        axis (NaN above the horizon)."""
        h, w = shape
        f = self.focal_px(w)
        v = (rock["base"][1] - (h - 1) / 2.0) / f
        pitch = math.radians(self.pitch_deg)
        down = v * math.cos(pitch) + math.sin(pitch)
        if down <= 1e-9:
            return float("nan")
        depth = self.height_m / down  # along the ray per unit of the image plane's z
        x0, _, x1, _ = rock["box"]
        return float((x1 - x0 + 1) / f * depth)


@dataclass(frozen=True)
class GridSettings:
    """The bird's-eye traversability grid (needs a camera)."""

    cell_m: float = 0.5
    forward_m: float = 10.0  # cells from the camera's foot to this far ahead
    lateral_m: float = 5.0  # and this far to each side
    costs: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_COSTS))

    @classmethod
    def from_dict(cls, doc: dict) -> GridSettings:
        unknown = set(doc) - {"cell_m", "forward_m", "lateral_m", "costs"}
        if unknown:
            raise ValueError(f"grid: unknown keys {sorted(unknown)}")
        try:
            grid = cls(
                float(doc.get("cell_m", 0.5)),
                float(doc.get("forward_m", 10.0)),
                float(doc.get("lateral_m", 5.0)),
                {str(k): float(v) for k, v in doc.get("costs", DEFAULT_COSTS).items()},
            )
        except (TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"grid: {err}") from err
        grid.validate()
        return grid

    def as_dict(self) -> dict:
        return {"cell_m": self.cell_m, "forward_m": self.forward_m,
                "lateral_m": self.lateral_m, "costs": self.costs}  # fmt: skip

    def validate(self) -> None:
        if not self.cell_m > 0 or not self.forward_m > 0 or not self.lateral_m > 0:
            raise ValueError("grid: cell_m, forward_m and lateral_m must be above 0")
        if (self.forward_m / self.cell_m) * (2 * self.lateral_m / self.cell_m) > 250_000:
            raise ValueError("grid: more than 250,000 cells; use larger cells or a smaller area")
        bad = {k: v for k, v in self.costs.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"grid.costs must be in [0, 1]: {bad}")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns): row 0 is the far edge, the middle column straight ahead."""
        return (
            math.ceil(self.forward_m / self.cell_m),
            2 * math.ceil(self.lateral_m / self.cell_m),
        )


class GroundGrid:
    """Projects model pixels into grid cells once per frame geometry, then makes each frame's
    grid with two bincounts.

    Args:
        camera: the camera model.
        settings: the grid.
        class_costs: (C,) cost per class, NaN for a class that says nothing (the ignored one).
        col_mid, row_mid: the frame coordinates of each model column and row (from
            :class:`edge.run.rocks.FrameGeometry`).
        frame_shape: (H, W) of the input frame.
        seen: (h, w) bool, the model pixels that stand for some frame pixel (others are left
            out), or None for all.
    """

    def __init__(self, camera, settings, class_costs, col_mid, row_mid, frame_shape, seen=None):
        self.settings = settings
        self.costs = np.asarray(class_costs, np.float64)
        xs, ys = np.meshgrid(col_mid, row_mid)
        forward, lateral = camera.ground(xs.ravel(), ys.ravel(), frame_shape)
        rows, cols = settings.shape
        with np.errstate(invalid="ignore"):
            r = rows - 1 - np.floor(forward / settings.cell_m)
            c = np.floor(lateral / settings.cell_m) + cols // 2
            inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols) & np.isfinite(forward)
        if seen is not None:  # model pixels no frame pixel stands for (a crop, a small frame)
            inside &= np.asarray(seen, bool).ravel()
        self.cell = np.where(inside, r * cols + c, -1).astype(np.int64)  # per model pixel
        self.camera = camera
        self.frame_shape = frame_shape

    def make(self, small_labels: np.ndarray, rocks: list[dict]) -> np.ndarray:
        """(rows, cols) float cost in [0, 1], NaN where unknown."""
        rows, cols = self.settings.shape
        cost = self.costs[small_labels.ravel()]
        use = (self.cell >= 0) & np.isfinite(cost)
        n = np.bincount(self.cell[use], minlength=rows * cols)
        total = np.bincount(self.cell[use], weights=cost[use], minlength=rows * cols)
        with np.errstate(invalid="ignore", divide="ignore"):
            grid = (total / n).reshape(rows, cols)
        for rock in rocks:
            if rock.get("hazard_eligible", True) and "range_m" in rock:
                forward, lateral = self.camera.ground(*rock["base"], self.frame_shape)
                r = rows - 1 - math.floor(forward / self.settings.cell_m)
                c = math.floor(lateral / self.settings.cell_m) + cols // 2
                if 0 <= r < rows and 0 <= c < cols:
                    grid[r, c] = 1.0
        return grid

    def summary(self, grid: np.ndarray) -> dict:
        """The telemetry's view of a grid: size, how much is known, and the forward distance
        (along the ground ahead, not the range) to the nearest blocked cell straight ahead (the
        two middle columns) and anywhere."""
        rows, cols = grid.shape
        known = np.isfinite(grid)
        blocked = known & (grid >= 1.0)
        ahead_m = (rows - 1 - np.arange(rows)) * self.settings.cell_m  # each row's near edge
        nearest = float(ahead_m[blocked.any(axis=1)].min()) if blocked.any() else None
        middle = blocked[:, cols // 2 - 1 : cols // 2 + 1].any(axis=1)
        nearest_ahead = float(ahead_m[middle].min()) if middle.any() else None
        return {
            "cell_m": self.settings.cell_m,
            "shape": [rows, cols],
            "known_fraction": round(float(known.mean()), 4),
            "blocked_cells": int(blocked.sum()),
            "mean_cost": None if not known.any() else round(float(grid[known].mean()), 3),
            "nearest_blocked_m": nearest,
            "nearest_blocked_ahead_m": nearest_ahead,
        }


def grid_png_values(grid: np.ndarray) -> np.ndarray:
    """A grid as uint8 for its PNG: cost x 254, 255 unknown (row 0 the far edge)."""
    out = np.full(grid.shape, UNKNOWN, np.uint8)
    known = np.isfinite(grid)
    out[known] = np.round(np.clip(grid[known], 0, 1) * 254).astype(np.uint8)
    return out
