"""What a navigation stack reads off a class map: regions, hazards and confidence.

Regions are polygons in frame coordinates scaled to [0, 1] (x to the right, y down), so one
definition fits any frame size. The defaults (see the README's picture) suit a forward-looking
NAVCAM: the *near field* is the bottom quarter of the frame, the ground the rover is about to
drive over; the *corridor* is the path ahead in perspective, wide at the bottom and narrowing
towards the middle of the frame. A hazard is declared when a hazard class covers at least
``min_fraction`` of a region; only confident pixels count (a pixel whose top probability is under
``min_confidence`` is "unknown", never a hazard), and the ignored label (background: sky, rover
parts) is never a hazard.

A regions file is JSON::

    {"regions": {"near_field": [[0, 0.75], [1, 0.75], [1, 1], [0, 1]], ...},
     "hazards": [{"class": "big_rock", "region": "corridor", "min_fraction": 0.01}],
     "min_confidence": 0.5, "low_confidence": 0.5}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.contract.labels import LabelSet

DEFAULT_REGIONS: dict[str, list[list[float]]] = {
    "near_field": [[0.0, 0.75], [1.0, 0.75], [1.0, 1.0], [0.0, 1.0]],
    "corridor": [[0.25, 1.0], [0.75, 1.0], [0.56, 0.5], [0.44, 0.5]],
}


@dataclass(frozen=True)
class HazardRule:
    """A hazard: ``cls`` covering at least ``min_fraction`` of ``region``."""

    cls: str
    region: str
    min_fraction: float = 0.01


@dataclass
class RegionConfig:
    """Regions, hazard rules and confidence thresholds.

    Attributes:
        regions: name -> polygon of (x, y) points in [0, 1].
        hazards: the rules; by default one per hazard class of the model, in the corridor.
        min_confidence: pixels whose top probability is below this are "unknown" for hazards.
        low_confidence: the threshold of the per-frame low-confidence share.
    """

    regions: dict[str, list[list[float]]] = field(default_factory=lambda: dict(DEFAULT_REGIONS))
    hazards: list[HazardRule] | None = None
    min_confidence: float = 0.5
    low_confidence: float = 0.5

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
        unknown = set(doc) - {"regions", "hazards", "min_confidence", "low_confidence"}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        if not isinstance(doc.get("hazards") or [], list):
            raise ValueError(f"{path}: 'hazards' must be a list of rules")
        try:
            hazards = doc.get("hazards")
            config = cls(
                regions=doc.get("regions", dict(DEFAULT_REGIONS)),
                hazards=None
                if hazards is None
                else [
                    HazardRule(h["class"], h["region"], float(h.get("min_fraction", 0.01)))
                    for h in hazards
                ],
                min_confidence=float(doc.get("min_confidence", 0.5)),
                low_confidence=float(doc.get("low_confidence", 0.5)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: malformed hazard rule ({err}); see the README") from err
        config.validate()
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
        for rule in self.hazards or []:
            if rule.region not in self.regions:
                raise ValueError(
                    f"hazard on unknown region {rule.region!r}; regions: {', '.join(self.regions)}"
                )
            if not 0.0 < rule.min_fraction <= 1.0:  # NaN fails too
                raise ValueError(
                    f"hazard on {rule.cls}: min_fraction must be in (0, 1], got "
                    f"{rule.min_fraction} (0 would fire on frames without any {rule.cls})"
                )
            if labels is None:
                continue
            if rule.cls not in labels.names:
                raise ValueError(
                    f"hazard class {rule.cls!r} is not a class of the model: {', '.join(labels.names)}"
                )
            if labels.ignore is not None and rule.cls == labels.names[labels.ignore]:
                raise ValueError(f"{rule.cls!r} means 'no knowledge here': it cannot be a hazard")
        for name in ("min_confidence", "low_confidence"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    def rules(self, labels: LabelSet) -> list[HazardRule]:
        """The hazard rules for a model's label set (the defaults use its hazard classes)."""
        if self.hazards is not None:
            return self.hazards
        return [
            HazardRule(name, "corridor") for name in labels.hazards if "corridor" in self.regions
        ]

    def as_dict(self, rules: list[HazardRule] | None = None) -> dict:
        """The configuration, with ``rules`` as its hazard rules (default: the file's own), e.g.
        the ones a :class:`RegionAnalyzer` applies."""
        rules = (self.hazards or []) if rules is None else rules
        return {
            "regions": self.regions,
            "hazards": [
                {"class": r.cls, "region": r.region, "min_fraction": r.min_fraction} for r in rules
            ],
            "min_confidence": self.min_confidence,
            "low_confidence": self.low_confidence,
        }


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
        self._masks: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._geometries: dict[tuple[int, int, int], tuple] = {}
        self._eye = np.eye(labels.num_classes, dtype=np.float32)
        self._levels = np.arange(256, dtype=np.float32) / 255.0  # what a 1/255 step stands for
        self._one_hot: np.ndarray | None = None

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
                made[name] = np.asarray(canvas, dtype=bool)
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
        return self._analyze(np.asarray(class_map).ravel(), None if top is None else top.ravel(),
                             geometry)  # fmt: skip

    def analyze_mapped(
        self, small_labels: np.ndarray, small_top: np.ndarray | None, pixel_map: np.ndarray
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
        """
        geometry = self._geometry(pixel_map.shape, pixel_map, small_labels.size)
        top = None if small_top is None else self._levels.take(small_top.ravel())
        return self._analyze(small_labels.ravel(), top, geometry)

    def _geometry(self, shape, pixel_map: np.ndarray | None, sources: int = 0) -> tuple:
        """``(weights (1 + regions, sources), outside (1 + regions,), area (1 + regions,))``: row
        0 the whole frame, then each region; a source pixel's weight is how many frame pixels of
        the row it stands for, ``outside`` the row's frame pixels outside the model's view. Made
        once per frame size and model size."""
        key = (int(shape[0]), int(shape[1]), sources)
        if key not in self._geometries:
            if len(self._geometries) >= 4:  # one camera, perhaps two: bounded either way
                self._geometries.pop(next(iter(self._geometries)))
            masks = [np.ones(key[:2], bool), *self.masks(shape).values()]
            # float32 sums of integer weights are exact below 2**24 frame pixels (decoding
            # reduces any frame over 16 MP)
            if pixel_map is None:  # the frame's own pixels: weight 1 inside the region
                weights = np.stack([m.ravel() for m in masks]).astype(np.float32)
                outside = np.zeros(len(masks))
            else:
                seen = [m & (pixel_map >= 0) for m in masks]
                weights = np.stack(
                    [np.bincount(pixel_map[v], minlength=sources) for v in seen]
                ).astype(np.float32)
                outside = np.array([m.sum() - v.sum() for m, v in zip(masks, seen)], np.float64)
            area = np.maximum([m.sum() for m in masks], 1).astype(np.float64)
            self._geometries[key] = (weights, outside, area)
        return self._geometries[key]

    def _analyze(self, flat: np.ndarray, top: np.ndarray | None, geometry: tuple) -> dict:
        weights, outside, area = geometry
        names = self.labels.names
        ignored = self.labels.ignore or 0  # the class of pixels outside the model's view
        if self._one_hot is None or len(self._one_hot) != flat.size:  # reused: no page faults
            self._one_hot = np.empty((flat.size, len(names)), np.float32)
        one_hot = np.take(self._eye, flat, axis=0, out=self._one_hot)  # (sources, C)
        counts = (weights @ one_hot).astype(np.float64)  # (1 + regions, C): one small product
        counts[:, ignored] += outside
        fractions = counts / area[:, None]
        out_regions = {
            region: {c: round(float(f), 4) for c, f in zip(names, row)}
            for region, row in zip(self.config.regions, fractions[1:])
        }
        confident = None if top is None else top >= self.config.min_confidence
        outside_confident = 0.0 >= self.config.min_confidence  # their probability is 0
        rows = {region: i + 1 for i, region in enumerate(self.config.regions)}
        hazards = []
        for rule in self.rules:
            row, index = rows[rule.region], self.labels.index(rule.cls)
            hit = flat == index
            if confident is not None:
                hit &= confident
            value = float(weights[row][hit].sum())
            if index == ignored and (confident is None or outside_confident):
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
                "mean_top_probability": round(
                    float(weights[0].astype(np.float64) @ top / area[0]), 4
                ),
                "low_confidence_fraction": round(low / float(area[0]), 4),
            }
        return result
