"""What a navigation stack reads off a class map: regions, rocks, hazards and confidence.

Regions are polygons in frame coordinates scaled to [0, 1] (x to the right, y down), so one
definition fits any frame size. The defaults (see the README's picture) suit a forward-looking
NAVCAM: the *near field* is the bottom quarter of the frame, the ground the rover is about to
drive over; the *corridor* is the path ahead in perspective, wide at the bottom and narrowing
towards the middle of the frame. The ignored label (background: sky, rover parts) is never a
hazard.

Rocks are objects (:mod:`edge.run.rocks`): the connected components of the pixels the model gives
the rock class at least ``rocks.min_probability`` (0.06, chosen for the shipped model by
``tools/hazard_table.py``: a hazard detector errs towards seeing rocks; pixels it calls
background excluded), each with its box, centroid, base point, area and mean rock probability in
the input frame's pixels. Where no class probability is at hand
(:meth:`RegionAnalyzer.analyze` of a bare class map) the rock pixels are those whose arg max is
rock with a top probability of at least ``rocks.min_confidence``. A hazard rule is either on *objects* (a rock of at least ``min_area_px`` frame pixels, or
``min_size_m`` metres wide with a camera model, touching the region) or on a *share* (the class
over ``min_fraction`` of the region's pixels, counting only pixels whose top probability is at
least ``min_confidence``: the others are "unknown", never a hazard). Rock sizes are in frame
pixels: set ``min_area_px`` for the frame size the camera delivers (the defaults suit the
256x256 AI4Mars frames they were measured on). With a camera model (:mod:`edge.run.ground`)
each rock gets a range and bearing, regions end at the horizon (nothing above it is ever a
hazard), and a bird's-eye traversability grid is made per frame.

A regions file is JSON (every key optional)::

    {"regions": {"near_field": [[0, 0.75], [1, 0.75], [1, 1], [0, 1]], ...},
     "hazards": [{"class": "big_rock", "region": "corridor", "min_area_px": 300},
                 {"class": "big_rock", "region": "near_field", "min_fraction": 0.05}],
     "rocks": {"min_probability": 0.06, "min_area_px": 100},
     "camera": {"height_m": 1.9, "pitch_deg": 30, "hfov_deg": 45},
     "grid": {"cell_m": 0.5, "forward_m": 10, "lateral_m": 5},
     "min_confidence": 0.5, "low_confidence": 0.5}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.contract.labels import LabelSet
from edge.run.ground import Camera, GridSettings, GroundGrid, grid_png_values
from edge.run.rocks import FrameGeometry, RockSettings, find_rocks

DEFAULT_REGIONS: dict[str, list[list[float]]] = {
    "near_field": [[0.0, 0.75], [1.0, 0.75], [1.0, 1.0], [0.0, 1.0]],
    "corridor": [[0.25, 1.0], [0.75, 1.0], [0.56, 0.5], [0.44, 0.5]],
}


# the default rule's rock size (input-frame pixels), chosen by tools/hazard_table.py on the
# real validation frames with the shipped model (docs/rover.md, "Rocks and hazards")
DEFAULT_HAZARD_AREA_PX = 300
MAX_ROCKS = 20  # rocks listed per telemetry line (largest first; rocks_total counts them all)


@dataclass(frozen=True)
class HazardRule:
    """A hazard: a rock of ``cls`` of at least ``min_area_px`` frame pixels (or ``min_size_m``
    wide on the ground) touching ``region``; or, with neither, ``cls`` covering at least
    ``min_fraction`` of ``region``."""

    cls: str
    region: str
    min_fraction: float | None = 0.01
    min_area_px: int | None = None
    min_size_m: float | None = None

    @property
    def on_objects(self) -> bool:
        return self.min_area_px is not None or self.min_size_m is not None

    @classmethod
    def from_dict(cls, doc: dict) -> HazardRule:
        objects = {"min_area_px", "min_size_m"} & set(doc)
        unknown = set(doc) - {"class", "region", "min_fraction", "min_area_px", "min_size_m"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in a hazard rule")
        if objects and "min_fraction" in doc:
            raise ValueError(
                "a hazard rule is on a share of the region (min_fraction) or on rocks "
                "(min_area_px, min_size_m), not both"
            )
        if objects:
            area, size = doc.get("min_area_px"), doc.get("min_size_m")
            if area is None and size is None:
                raise ValueError("min_area_px or min_size_m must be a number, not null")
            return cls(doc["class"], doc["region"], None,
                       None if area is None else int(area), None if size is None else float(size))  # fmt: skip
        return cls(doc["class"], doc["region"], float(doc.get("min_fraction", 0.01)))

    def as_dict(self) -> dict:
        doc = {"class": self.cls, "region": self.region}
        if not self.on_objects:
            return {**doc, "min_fraction": self.min_fraction}
        if self.min_area_px is not None:
            doc["min_area_px"] = self.min_area_px
        if self.min_size_m is not None:
            doc["min_size_m"] = self.min_size_m
        return doc


@dataclass
class RegionConfig:
    """Regions, hazard rules and confidence thresholds.

    Attributes:
        regions: name -> polygon of (x, y) points in [0, 1].
        hazards: the rules; by default a rock of ``DEFAULT_HAZARD_AREA_PX`` frame pixels in
            the corridor (the model's first hazard class; any further hazard class over 1 %
            of the corridor).
        min_confidence: pixels whose top probability is below this are "unknown" for hazards.
        low_confidence: the threshold of the per-frame low-confidence share.
        rocks: which pixels make rocks (class, confidence, smallest area reported).
        camera: the camera model (range, bearing, horizon, grid), or None.
        grid: the bird's-eye traversability grid (needs ``camera``), or None.
    """

    regions: dict[str, list[list[float]]] = field(default_factory=lambda: dict(DEFAULT_REGIONS))
    hazards: list[HazardRule] | None = None
    min_confidence: float = 0.5
    low_confidence: float = 0.5
    rocks: RockSettings = field(default_factory=RockSettings)
    camera: Camera | None = None
    grid: GridSettings | None = None

    @classmethod
    def load(cls, path: str | Path) -> RegionConfig:
        """Read a regions file (see the module doc).

        Raises:
            ValueError: naming what is wrong in the file.
        """
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read the regions file {path}: {err}") from err
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a JSON object with 'regions' and 'hazards'")
        keys = {"regions", "hazards", "min_confidence", "low_confidence", "rocks", "camera", "grid"}
        unknown = set(doc) - keys
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(keys)}")
        if not isinstance(doc.get("hazards") or [], list):
            raise ValueError(f"{path}: 'hazards' must be a list of rules")
        for key in ("rocks", "camera", "grid"):
            if not isinstance(doc.get(key) or {}, dict):
                raise ValueError(f"{path}: '{key}' must be an object")
        try:
            hazards = doc.get("hazards")
            rules = None if hazards is None else [HazardRule.from_dict(h) for h in hazards]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path}: malformed hazard rule ({err}); see docs/rover.md") from err
        try:
            rocks = doc.get("rocks") or {}
            unknown = set(rocks) - {"class", "min_probability", "min_confidence", "min_area_px"}
            if unknown:
                raise ValueError(f"rocks: unknown keys {sorted(unknown)}")
            probability = rocks.get("min_probability", RockSettings.min_probability)
            config = cls(
                regions=doc.get("regions", dict(DEFAULT_REGIONS)),
                hazards=rules,
                min_confidence=float(doc.get("min_confidence", 0.5)),
                low_confidence=float(doc.get("low_confidence", 0.5)),
                rocks=RockSettings(
                    rocks.get("class"),
                    None if probability is None else float(probability),
                    float(rocks.get("min_confidence", RockSettings.min_confidence)),
                    int(rocks.get("min_area_px", RockSettings.min_area_px)),
                ),
                camera=None if doc.get("camera") is None else Camera.from_dict(doc["camera"]),
                grid=None if doc.get("grid") is None else GridSettings.from_dict(doc["grid"]),
            )
            config.validate()
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err
        return config

    def validate(self, labels: LabelSet | None = None) -> None:
        """Raises ValueError for bad polygons, unknown regions or classes, a rule on the ignored
        class, or a threshold that could never fire or would always fire."""
        if not isinstance(self.regions, dict):
            raise ValueError("'regions' must be an object: name -> polygon of [x, y] points")
        for name, polygon in self.regions.items():
            points = np.asarray(polygon, dtype=float)
            if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
                raise ValueError(f"region {name!r}: a polygon needs 3 or more [x, y] points")
            if points.min() < 0 or points.max() > 1:
                raise ValueError(f"region {name!r}: coordinates are fractions of the frame (0..1)")
        self.rocks.validate()
        if self.grid is not None and self.camera is None:
            raise ValueError(
                "a grid needs a camera model ('camera': height_m, pitch_deg, hfov_deg)"
            )
        for rule in self.hazards or []:
            if rule.region not in self.regions:
                raise ValueError(
                    f"hazard on unknown region {rule.region!r}; regions: {', '.join(self.regions)}"
                )
            if rule.on_objects:
                if rule.min_area_px is not None and not rule.min_area_px >= 1:
                    raise ValueError(f"hazard on {rule.cls}: min_area_px must be at least 1")
                if rule.min_size_m is not None and not rule.min_size_m > 0:
                    raise ValueError(f"hazard on {rule.cls}: min_size_m must be above 0")
                if rule.min_size_m is not None and self.camera is None:
                    raise ValueError(
                        f"hazard on {rule.cls}: min_size_m needs a camera model ('camera')"
                    )
            elif not 0.0 < rule.min_fraction <= 1.0:  # NaN fails too
                raise ValueError(
                    f"hazard on {rule.cls}: min_fraction must be in (0, 1], got "
                    f"{rule.min_fraction} (0 would fire on frames without any {rule.cls})"
                )
            if labels is None:
                continue
            if rule.on_objects and rule.cls != self.rock_class(labels):
                raise ValueError(
                    f"a rule on rocks names {rule.cls!r}, but rocks are made of "
                    f"{self.rock_class(labels)!r} (set rocks.class)"
                )
            if rule.cls not in labels.names:
                raise ValueError(
                    f"hazard class {rule.cls!r} is not a class of the model: {', '.join(labels.names)}"
                )
            if labels.ignore is not None and rule.cls == labels.names[labels.ignore]:
                raise ValueError(f"{rule.cls!r} means 'no knowledge here': it cannot be a hazard")
        if labels is not None and self.rocks.cls is not None:
            if self.rocks.cls not in labels.names:
                raise ValueError(
                    f"rocks.class {self.rocks.cls!r} is not a class of the model: "
                    f"{', '.join(labels.names)}"
                )
        for name in ("min_confidence", "low_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    def rock_class(self, labels: LabelSet) -> str | None:
        """The class rocks are made of: ``rocks.class``, else the model's first hazard class."""
        if self.rocks.cls is not None:
            return self.rocks.cls
        return labels.hazards[0] if labels.hazards else None

    def rules(self, labels: LabelSet) -> list[HazardRule]:
        """The hazard rules for a model's label set (the defaults use its hazard classes: a
        rock of ``DEFAULT_HAZARD_AREA_PX`` in the corridor for the rock class, a 1 % share for
        any other)."""
        if self.hazards is not None:
            return self.hazards
        if "corridor" not in self.regions:
            return []
        rock = self.rock_class(labels)
        return [
            HazardRule(name, "corridor", None, DEFAULT_HAZARD_AREA_PX)
            if name == rock
            else HazardRule(name, "corridor")
            for name in labels.hazards
        ]

    def as_dict(self, rules: list[HazardRule] | None = None) -> dict:
        """The configuration, with ``rules`` as its hazard rules (default: the file's own), e.g.
        the ones a :class:`RegionAnalyzer` applies."""
        rules = (self.hazards or []) if rules is None else rules
        doc = {
            "regions": self.regions,
            "hazards": [r.as_dict() for r in rules],
            "rocks": {
                "class": self.rocks.cls,
                "min_probability": self.rocks.min_probability,
                "min_confidence": self.rocks.min_confidence,
                "min_area_px": self.rocks.min_area_px,
            },
            "min_confidence": self.min_confidence,
            "low_confidence": self.low_confidence,
        }
        if self.camera is not None:
            doc["camera"] = self.camera.as_dict()
        if self.grid is not None:
            doc["grid"] = self.grid.as_dict()
        return doc


class RegionAnalyzer:
    """Per-frame region fractions, hazard flags and confidence of class maps.

    Region masks are rasterized once per frame size (the last two sizes are kept).

    Args:
        config: regions, rules and thresholds.
        labels: the model's classes.
        hazards: apply the hazard rules (off: fractions and confidence only).
    """

    def __init__(self, config: RegionConfig, labels: LabelSet, hazards: bool = True):
        config.validate(labels)
        self.config = config
        self.labels = labels
        self.rules = config.rules(labels) if hazards else []
        rock = config.rock_class(labels) if hazards else None
        self.rock_index = None if rock is None else labels.index(rock)
        self._masks: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._geometries: dict[tuple[int, int, int], tuple] = {}
        self._frames: dict[tuple, tuple] = {}  # (frame shape, model shape) -> geometry, grid
        self._levels = np.arange(256, dtype=np.float32) / 255.0  # what a 1/255 step stands for

    def settings(self) -> dict:
        """The configuration as applied (rules and rock class resolved), for ``summary.json``."""
        doc = self.config.as_dict(self.rules)
        doc["rocks"]["class"] = (
            None if self.rock_index is None else self.labels.names[self.rock_index]
        )
        return doc

    def masks(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """name -> bool mask of each region for frames of ``shape`` (cached)."""
        shape = (int(shape[0]), int(shape[1]))
        if shape not in self._masks:
            from PIL import Image, ImageDraw

            if len(self._masks) >= 2:  # one camera, perhaps two: bounded either way
                self._masks.pop(next(iter(self._masks)))
            h, w = shape
            made = {}
            for name, polygon in self.config.regions.items():
                canvas = Image.new("1", (w, h), 0)
                ImageDraw.Draw(canvas).polygon(
                    [(x * (w - 1), y * (h - 1)) for x, y in polygon], fill=1
                )
                made[name] = np.array(canvas, dtype=bool)
                if self.config.camera is not None:  # nothing above the horizon is ground
                    self.config.camera.check_frame(shape)
                    above = int(np.floor(self.config.camera.horizon_row(shape))) + 1
                    made[name][: max(0, min(h, above))] = False
            self._masks[shape] = made
        return self._masks[shape]

    def analyze(self, class_map: np.ndarray, top_probability: np.ndarray | None) -> dict:
        """Region fractions, hazards and confidence of one frame.

        Args:
            class_map: (H, W) labels.
            top_probability: (H, W) probability of the chosen class (same size), or None.

        Returns:
            ``{"class_fractions": {class: fraction}, "regions": {region: {class: fraction}},
            "hazards": [...], "hazard": bool, "confidence": {...}}``; fractions are of the
            frame's or the region's pixels.
        """
        top = None if top_probability is None else np.asarray(top_probability, np.float32)
        geometry = self._geometry(class_map.shape, None)
        result = self._analyze(np.asarray(class_map).ravel(), None if top is None else top.ravel(),
                               geometry)  # fmt: skip
        if self.rock_index is not None:
            identity = np.arange(class_map.size, dtype=np.int64).reshape(class_map.shape)
            top_u8 = None if top is None else np.round(np.clip(top, 0, 1) * 255).astype(np.uint8)
            self._objects(result, np.asarray(class_map), top_u8, identity, geometry)
        return result

    def analyze_mapped(
        self,
        small_labels: np.ndarray,
        small_top: np.ndarray | None,
        pixel_map: np.ndarray,
        small_class: np.ndarray | None = None,
    ) -> dict:
        """:meth:`analyze` of the frame-size maps a nearest-neighbour restore would make, from
        the model-size maps, without making them.

        Each model pixel stands for the frame pixels the restore gives its class (``pixel_map``:
        :meth:`edge.segmenter.Segmenter.pixel_map`), so a region's count of a class is a sum of
        those numbers over the model pixels of that class; the figures are the frame-size ones
        (exactly: integer counts), at a quarter of the work for a frame twice the model's size.

        Args:
            small_labels: (h, w) labels at the model's size.
            small_top: (h, w) uint8 top probability x 255 at the model's size, or None.
            pixel_map: (H, W) int: the model pixel of each frame pixel, -1 where a crop leaves
                it out (there: the ignored label, probability 0).
            small_class: (h, w) uint8 probability x 255 of the rock class (``rock_index``) at
                the model's size, for ``rocks.min_probability``; None: rocks by arg max.
        """
        geometry = self._geometry(pixel_map.shape, pixel_map, small_labels.size)
        top = None if small_top is None else self._levels.take(small_top.ravel())
        result = self._analyze(small_labels.ravel(), top, geometry)
        if self.rock_index is not None:
            self._objects(result, small_labels, small_top, pixel_map, geometry, small_class)
        return result

    def frame(self, segmenter, frame: np.ndarray) -> tuple:
        """Segment one uint8 frame with ``segmenter`` and analyse it as ``edge-seg run`` does.

        Returns:
            ``(segmentation, analysis)``: the :class:`edge.segmenter.Segmentation` (the class
            map at the frame's size) and the telemetry's analysis fields (regions, rocks,
            hazards, confidence; ``_grid`` the grid's cells when a camera and grid are set).
        """
        seg = segmenter.segment(frame, with_confidence=True, class_probability=self.rock_index)
        analysis = self.analyze_mapped(seg.model_labels, seg.model_top,
                                       segmenter.pixel_map(frame.shape),
                                       seg.model_class_probability)  # fmt: skip
        return seg, analysis

    def _frame(self, pixel_map: np.ndarray, model_shape: tuple[int, int]) -> tuple:
        """``(FrameGeometry, GroundGrid or None)`` for this frame size and model size (the
        last four kept)."""
        key = (*pixel_map.shape, *model_shape)
        if key not in self._frames:
            if len(self._frames) >= 4:
                self._frames.pop(next(iter(self._frames)))
            frame = FrameGeometry(pixel_map, model_shape)
            grid = None
            cfg = self.config
            if cfg.camera is not None and cfg.grid is not None:
                costs = [
                    float("nan") if i == self.labels.ignore
                    else 1.0 if name in self.labels.hazards
                    else cfg.grid.costs.get(name, 0.5)
                    for i, name in enumerate(self.labels.names)
                ]  # fmt: skip
                grid = GroundGrid(cfg.camera, cfg.grid, costs, frame.col_mid, frame.row_mid,
                                  pixel_map.shape, frame.weights > 0)  # fmt: skip
            self._frames[key] = (frame, grid)
        return self._frames[key]

    def _objects(self, result: dict, small_labels, small_top, pixel_map, geometry,
                 small_class=None) -> None:  # fmt: skip
        """Adds the rocks, the object rules' verdicts and the grid to ``result``."""
        frame, grid = self._frame(pixel_map, small_labels.shape)
        rocks = find_rocks(small_labels, small_top, frame, self.rock_index, self.config.rocks,
                           small_class, self.labels.ignore)  # fmt: skip
        weights = geometry[0]
        names = list(self.config.regions)
        camera, shape = self.config.camera, pixel_map.shape
        for i, rock in enumerate(rocks):
            pixels = rock.pop("pixels")
            rock["id"] = i
            rock["regions"] = [n for n, row in zip(names, weights[1:]) if row[pixels].any()]
            if camera is not None:
                if rock["base"][1] <= camera.horizon_row(shape):
                    rock["above_horizon"] = True  # never a hazard
                else:
                    distance, bearing = camera.range_bearing(*rock["base"], shape)
                    rock["range_m"] = round(distance, 2)
                    rock["bearing_deg"] = round(bearing, 1)
                    rock["size_m"] = round(camera.size_m(rock, shape), 2)
        for rule in self.rules:
            if not rule.on_objects:
                continue
            hits = [
                rock["id"] for rock in rocks
                if rule.region in rock["regions"] and not rock.get("above_horizon")
                and (rule.min_area_px is None or rock["area_px"] >= rule.min_area_px)
                and (rule.min_size_m is None or rock.get("size_m", 0.0) >= rule.min_size_m)
            ]  # fmt: skip
            result["hazards"].append({**rule.as_dict(), "rocks": hits, "hazard": bool(hits)})
        result["hazard"] = any(h["hazard"] for h in result["hazards"])
        fired = {i for h in result["hazards"] for i in h.get("rocks", [])}
        # the largest, and always every rock a rule fired on (its id must resolve)
        result["rocks"] = [r for r in rocks if r["id"] < MAX_ROCKS or r["id"] in fired]
        result["rocks_total"] = len(rocks)
        if grid is not None:
            made = grid.make(small_labels, rocks)
            result["grid"] = grid.summary(made)
            result["_grid"] = grid_png_values(made)  # the file; not a telemetry field

    def _geometry(self, shape, pixel_map: np.ndarray | None, sources: int = 0) -> tuple:
        """``(weights (1 + regions, sources), outside (1 + regions,), area (1 + regions,),
        columns (1 + regions, K), index (sources,))``: row 0 the whole frame, then each region;
        a source pixel's weight is how many frame pixels of the row it stands for, ``outside``
        the row's frame pixels outside the model's view; ``columns`` the K distinct weight
        columns, ``index`` each source pixel's column times the class count. Made once per
        frame size and model size."""
        key = (int(shape[0]), int(shape[1]), sources)
        if key not in self._geometries:
            if len(self._geometries) >= 4:  # one camera, perhaps two: bounded either way
                self._geometries.pop(next(iter(self._geometries)))
            masks = [np.ones(key[:2], bool), *self.masks(shape).values()]
            # float64, as np.bincount takes its weights (no conversion per frame)
            if pixel_map is None:  # the frame's own pixels: weight 1 inside the region
                weights = np.stack([m.ravel() for m in masks]).astype(np.float64)
                outside = np.zeros(len(masks))
            else:
                seen = [m & (pixel_map >= 0) for m in masks]
                weights = np.stack(
                    [np.bincount(pixel_map[v], minlength=sources) for v in seen]
                ).astype(np.float64)
                outside = np.array([m.sum() - v.sum() for m, v in zip(masks, seen)], np.float64)
            area = np.maximum([m.sum() for m in masks], 1).astype(np.float64)
            # the few distinct weight columns (13 for the default regions at 256x256, about 100
            # for a megapixel frame): a pixel's column code and its class make one histogram
            # index (see _class_counts)
            if pixel_map is None:  # 0/1 columns: the regions a pixel is in, as bits
                bits = sum(m.ravel().astype(np.int64) << i for i, m in enumerate(masks))
                codes, code = np.unique(bits, return_inverse=True)
                columns = ((codes[None, :] >> np.arange(len(masks))[:, None]) & 1).astype(float)
            else:
                columns, code = np.unique(weights.T, axis=0, return_inverse=True)
                columns = columns.T.copy()
            index = code.reshape(-1).astype(np.intp) * self.labels.num_classes
            self._geometries[key] = (weights, outside, area, columns, index)
        return self._geometries[key]

    def _class_counts(self, flat: np.ndarray, geometry: tuple) -> np.ndarray:
        """(1 + regions, C) frame pixels of each class in the frame and each region, those
        outside the model's view counted as the ignored label.

        Raises:
            ValueError: for a label outside the label set (it would count in another column).
        """
        _, outside, _, columns, index = geometry
        n = self.labels.num_classes
        if flat.size and (int(flat.max()) >= n or (flat.dtype.kind == "i" and int(flat.min()) < 0)):
            raise ValueError(
                f"class map holds labels {int(flat.min())}..{int(flat.max())}; the label set "
                f"has {n} classes, 0..{n - 1} (a model for another label set?)"
            )
        # pixels counted by (weight column, class) in one integer histogram, then each column's
        # count times its weights. Not a matrix product: numpy hands that to OpenBLAS, whose
        # threads then spin on the other cores after every call (here they doubled the CPU
        # time of a frame; benchmarks/frame_cpu.py, tests/test_frame_cpu.py)
        hist = np.bincount(index + flat, minlength=columns.shape[1] * n).reshape(-1, n)
        counts = (columns[:, :, None] * hist[None]).sum(axis=1)
        counts[:, self.labels.ignore or 0] += outside
        return counts

    def _analyze(self, flat: np.ndarray, top: np.ndarray | None, geometry: tuple) -> dict:
        weights, outside, area = geometry[:3]
        names = self.labels.names
        ignored = self.labels.ignore or 0  # the class of pixels outside the model's view
        fractions = self._class_counts(flat, geometry) / area[:, None]
        out_regions = {
            region: {c: round(float(f), 4) for c, f in zip(names, row)}
            for region, row in zip(self.config.regions, fractions[1:])
        }
        confident = None if top is None else top >= self.config.min_confidence
        outside_confident = 0.0 >= self.config.min_confidence  # their probability is 0
        rows = {region: i + 1 for i, region in enumerate(self.config.regions)}
        hazards = []
        for rule in self.rules:
            if rule.on_objects:  # decided on the rocks (_objects)
                continue
            row, cls = rows[rule.region], self.labels.index(rule.cls)
            hit = flat == cls
            if confident is not None:
                hit &= confident
            value = float(weights[row][hit].sum())
            if cls == ignored and (confident is None or outside_confident):
                value += float(outside[row])
            fraction = float(value / area[row])
            hazards.append(
                {
                    "class": rule.cls,
                    "region": rule.region,
                    "fraction": round(fraction, 4),
                    "min_fraction": rule.min_fraction,
                    "hazard": fraction >= rule.min_fraction,
                }
            )
        result = {
            "class_fractions": {c: round(float(f), 4) for c, f in zip(names, fractions[0])},
            "regions": out_regions,
            "hazards": hazards,
            "hazard": any(h["hazard"] for h in hazards),
        }
        if top is not None:
            low = float(weights[0][top < self.config.low_confidence].sum())
            low += float(outside[0]) * (0.0 < self.config.low_confidence)
            result["confidence"] = {
                # in float64: the sum of a frame's probabilities passes float32's 2**24
                "mean_top_probability": round(float((weights[0] * top).sum() / area[0]), 4),
                "low_confidence_fraction": round(low / float(area[0]), 4),
            }
        return result
