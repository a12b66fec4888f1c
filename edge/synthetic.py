"""Procedural Mars terrain frames with labels, in the course's npz layout.

The real course data cannot be downloaded on a build machine, so this generator stands in for
it in tests, benchmarks and the demo. It is built to be *hard in the same ways*:

- a perspective ground plane under a (sometimes missing, slightly tilted) horizon; the sky is
  label 0 and texture frequency rises towards the horizon, where atmospheric haze flattens it;
- soil (fine speckle), bedrock (plates with dark cracks and layering) and sand (smooth, with
  ripples of random orientation) in warped Voronoi regions; their grey levels are drawn per frame
  from overlapping ranges, so intensity alone cannot separate them (measured by
  ``benchmarks/data_hardness.py``);
- rare big rocks: shaded ellipsoids with a lit and a dark side and a cast shadow;
- unlabelled patches inside the terrain and dark rover parts in the bottom corners (label 0);
- per-frame exposure, contrast, an illumination gradient, sensor noise and slight blur;
- a few "outlier" frames (alien pictures) that all share one identical mask.

Everything is numpy (it lives in ``edge`` so that the board benchmark can make an evaluation
set on a rover computer without TensorFlow); frame ``i`` of a set depends only on
``(seed, split, i)``, so the same seed gives the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.contract.labels import NUM_CLASSES

BACKGROUND, SOIL, BEDROCK, SAND, BIG_ROCK = range(NUM_CLASSES)


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator; the defaults match the course data's statistics."""

    n_train: int = 3000  # the course file has 2,615 training frames
    n_test: int = 500
    height: int = 64  # the course file's frame size
    width: int = 128
    seed: int = 0
    big_rock_rate: float = 0.03  # frames with big rocks (course: 63 of 2,505, 2.5 %)
    outlier_rate: float = 0.04  # course: 110 of 2,615 frames share one alien mask
    horizon_rate: float = 0.85  # the rest look down at the ground with no sky
    rover_rate: float = 0.12  # frames with rover parts in a bottom corner
    unlabelled_rate: float = 0.5  # frames with unlabelled patches inside the terrain
    # Terrain class mix (soil, bedrock, sand), from the course's 33.9 / 23.3 / 18.4 %.
    terrain_mix: tuple[float, float, float] = (0.447, 0.310, 0.243)

    def __post_init__(self) -> None:
        if self.n_train < 0 or self.n_test < 0:
            raise ValueError("n_train and n_test must be >= 0")
        if self.height < 16 or self.width < 16:
            raise ValueError(f"frames must be at least 16x16, got {self.height}x{self.width}")
        for name in (
            "big_rock_rate",
            "outlier_rate",
            "horizon_rate",
            "rover_rate",
            "unlabelled_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass
class SyntheticSet:
    """Frames as uint8 images (N, H, W) and labels (N, H, W), plus the planted outliers."""

    images: np.ndarray
    labels: np.ndarray
    outlier_index: np.ndarray


def generate(cfg: SyntheticConfig, split: str = "train", progress: bool = False) -> SyntheticSet:
    """Generate one split.

    Args:
        cfg: generator settings.
        split: ``"train"`` (with outliers) or ``"test"`` (without; the course's test set has none
            labelled).
        progress: show a progress bar on stderr.

    Returns:
        The frames, their labels and the indices of the planted outlier frames.
    """
    n = cfg.n_train if split == "train" else cfg.n_test
    split_id = {"train": 0, "test": 1}[split]
    images = np.empty((n, cfg.height, cfg.width), np.uint8)
    labels = np.empty((n, cfg.height, cfg.width), np.uint8)
    # A fixed number of outliers at seeded positions, so that "planted" is an exact count.
    n_outliers = round(cfg.outlier_rate * n) if split == "train" else 0
    outliers = np.sort(
        np.random.default_rng([cfg.seed, split_id, 7]).choice(n, n_outliers, replace=False)
    )
    is_outlier = np.zeros(n, bool)
    is_outlier[outliers] = True
    shared_mask = outlier_mask(cfg.height, cfg.width)
    for i in _progress(range(n), progress, f"synthetic {split}"):
        rng = np.random.default_rng([cfg.seed, split_id, int(i)])
        if is_outlier[i]:
            images[i], labels[i] = _alien_frame(rng, cfg.height, cfg.width), shared_mask
        else:
            images[i], labels[i] = terrain_frame(rng, cfg)
    return SyntheticSet(images, labels, outliers.astype(np.int64))


def write_npz(cfg: SyntheticConfig, path: Path, progress: bool = False) -> dict:
    """Write a synthetic set in the course's npz layout, atomically.

    Keys: ``training_set`` float64 (N, 2, H, W) (image, labels), ``test_set`` uint8 (M, H, W),
    plus ``test_labels`` uint8 (M, H, W) for local evaluation, and ``synthetic_outliers`` (the
    planted outlier indices) and ``synthetic_config`` (JSON) for provenance.

    Returns:
        A summary: seconds, frame counts, planted outliers.
    """
    import json

    start = time.perf_counter()
    train = generate(cfg, "train", progress)
    test = generate(cfg, "test", progress)
    training_set = np.stack([train.images, train.labels], axis=1).astype(np.float64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from edge.io.sinks import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            training_set=training_set,
            test_set=test.images,
            test_labels=test.labels,
            synthetic_outliers=train.outlier_index,
            synthetic_config=np.array(json.dumps(asdict(cfg))),
        )
    return {
        "path": str(path),
        "seconds": time.perf_counter() - start,
        "n_train": len(train.images),
        "n_test": len(test.images),
        "outliers_planted": len(train.outlier_index),
    }


def outlier_mask(height: int, width: int) -> np.ndarray:
    """The one mask every outlier frame carries: blocky, unlike any terrain (fixed, seedless)."""
    rng = np.random.default_rng(20231113)
    coarse = rng.integers(1, 4, size=(4, 8), dtype=np.uint8)
    mask = np.kron(coarse, np.ones((height // 4 + 1, width // 8 + 1), np.uint8))
    return np.ascontiguousarray(mask[:height, :width])


# ----------------------------------------------------------------------------------------------
# One terrain frame.


def terrain_frame(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Render one labelled terrain frame.

    Returns:
        ``(image, labels)``: uint8 (H, W) each; image values within 2..254 like the course data.
    """
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    focal = 0.8 * w  # pixels
    cam_height = 1.5  # metres

    # Horizon row at every column; a missing horizon sits above the frame (camera looks down).
    if rng.random() < cfg.horizon_rate:
        horizon = rng.uniform(0.12, 0.34) * h
    else:
        horizon = -rng.uniform(0.1, 0.8) * h
    horizon_row = horizon + rng.uniform(-0.08, 0.08) * (xx - w / 2)
    rows_below = yy - horizon_row  # (H, W), > 0 on the ground
    ground = rows_below > 0.5
    d = np.maximum(rows_below, 0.5)
    depth = np.minimum(focal * cam_height / d, 400.0)  # Z in metres
    lateral = (xx - w / 2) * depth / focal  # X in metres

    labels = np.zeros((h, w), np.uint8)
    labels[ground] = _regions(rng, xx / w, np.log(depth), cfg.terrain_mix)[ground]

    # Per-frame class grey levels from overlapping ranges: brightness alone is not a class cue.
    base = rng.uniform(0.32, 0.62)
    level = base + rng.normal(0.0, 0.055, size=NUM_CLASSES)
    image = np.zeros((h, w))
    for cls, texture in ((SOIL, _soil), (BEDROCK, _bedrock), (SAND, _sand)):
        where = labels == cls
        if where.any():  # textures are the expensive part; skip absent classes
            image[where] = level[cls] + texture(rng, lateral[where], depth[where])
    # Albedo variation shared by all classes, in ground coordinates.
    table = rng.random((32, 32))
    image += 0.10 * (_value_noise(table, lateral / 6.0, depth / 6.0) - 0.5) * ground

    if rng.random() < cfg.big_rock_rate:
        _add_big_rocks(
            rng, image, labels, ground, depth, horizon_row, focal, cam_height, level[BIG_ROCK]
        )

    # Sky and atmospheric haze: distant ground fades into the sky's grey.
    sky_level = rng.uniform(0.35, 0.75)
    sky = (
        sky_level
        + 0.12 * (yy / h - 0.3)
        + 0.02 * (_value_noise(rng.random((8, 8)), xx / 40, yy / 20) - 0.5)
    )
    haze = np.exp(-depth / rng.uniform(25.0, 90.0))
    image = np.where(ground, haze * image + (1.0 - haze) * sky_level, sky)

    _add_unlabelled_patches(rng, labels, ground, cfg.unlabelled_rate)
    if rng.random() < cfg.rover_rate:
        _add_rover_parts(rng, image, labels, yy, xx)

    # Camera: exposure and contrast, an illumination gradient, slight blur, sensor noise.
    gain, offset = rng.uniform(0.75, 1.25), rng.uniform(-0.08, 0.08)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0.0, 0.15) * (
        (xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)
    )
    image = (image - 0.5) * gain + 0.5 + offset + gradient
    image = _blur(image, rng.uniform(0.3, 0.8))
    image += rng.normal(0.0, rng.uniform(0.005, 0.025), size=image.shape)
    return _to_uint8(image), labels


def _regions(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, mix: tuple[float, float, float]
) -> np.ndarray:
    """Warped Voronoi partition into soil/bedrock/sand over (image x, log depth)."""
    n_cells = int(rng.integers(4, 11))
    seeds_u = rng.uniform(-0.1, 1.1, n_cells)
    seeds_v = rng.uniform(v.min(), min(v.max(), np.log(80.0)) + 0.2, n_cells)
    classes = rng.choice([SOIL, BEDROCK, SAND], size=n_cells, p=np.asarray(mix) / sum(mix))
    table_u, table_v = rng.random((16, 16)), rng.random((16, 16))
    warp = 0.25
    uu = u + warp * (_value_noise(table_u, u * 4, v * 2) - 0.5)
    vv = v + warp * 2 * (_value_noise(table_v, u * 4 + 3.1, v * 2 + 1.7) - 0.5)
    # Log depth is squashed 0.5x so that regions stay wide near the camera.
    dist = (uu[..., None] - seeds_u) ** 2 + (0.5 * (vv[..., None] - seeds_v)) ** 2  # (H, W, cells)
    return classes[np.argmin(dist, axis=-1)].astype(np.uint8)


def _soil(rng: np.random.Generator, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Fine isotropic speckle plus pebbles."""
    period = rng.uniform(0.04, 0.09)  # metres
    table = rng.random((64, 64))
    speckle = _value_noise(table, x / period, z / period) - 0.5
    coarse = _value_noise(table.T, x / (4 * period) + 9.3, z / (4 * period)) - 0.5
    return rng.uniform(0.12, 0.22) * speckle + 0.08 * coarse


def _bedrock(rng: np.random.Generator, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Plates with their own shade, dark cracks between them and faint layering."""
    size = rng.uniform(0.4, 1.1)  # metres per plate
    d1, d2, cell = _worley(rng, x / size, z / size)
    shade = rng.uniform(-0.09, 0.09, size=256)[cell % 256]
    crack = -rng.uniform(0.12, 0.25) * np.exp(-(((d2 - d1) / 0.06) ** 2))
    layer_period = rng.uniform(0.15, 0.4)
    layering = 0.035 * np.sin(
        2 * np.pi * z / layer_period + 3 * _value_noise(rng.random((16, 16)), x, z)
    )
    return shade + crack + layering


def _sand(rng: np.random.Generator, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Smooth sand with ripples of random orientation and wavelength."""
    theta = rng.uniform(0, np.pi)
    wavelength = rng.uniform(0.25, 0.7)  # metres
    phase = 2.5 * _value_noise(rng.random((16, 16)), x / 2, z / 2)
    along = x * np.cos(theta) + z * np.sin(theta)
    ripple = rng.uniform(0.04, 0.09) * np.sin(2 * np.pi * along / wavelength + phase)
    smooth = 0.06 * (_value_noise(rng.random((16, 16)), x / 3, z / 3) - 0.5)
    return ripple + smooth


def _add_big_rocks(
    rng: np.random.Generator,
    image: np.ndarray,
    labels: np.ndarray,
    ground: np.ndarray,
    depth: np.ndarray,
    horizon_row: np.ndarray,
    focal: float,
    cam_height: float,
    level: float,
) -> None:
    """Paint 1-2 shaded ellipsoid rocks with cast shadows, in place (image, labels, ground, depth)."""
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    light = np.array([rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 0.9), -rng.uniform(0.2, 0.6), 0.6])
    light /= np.linalg.norm(light)
    for _ in range(int(rng.integers(1, 3))):
        cx = rng.uniform(0.1, 0.9) * w
        col = int(np.clip(cx, 0, w - 1))
        top = max(horizon_row[0, col], 0.0)
        base_row = rng.uniform(top + 0.35 * (h - top), h + 4)  # the rock's contact with the ground
        z = focal * cam_height / max(base_row - horizon_row[0, col], 1.0)
        radius = rng.uniform(0.3, 0.9)  # metres
        rx = np.clip(focal * radius / z, 3, 0.2 * w)
        ry = rx * rng.uniform(0.45, 0.75)
        cy = base_row - 0.7 * ry
        # Cast shadow first (on the ground; the label stays the terrain's).
        sx, sy = cx - light[0] * 1.4 * rx, base_row - 0.1 * ry
        shadow = ((xx - sx) / (1.3 * rx)) ** 2 + ((yy - sy) / (0.45 * ry)) ** 2 < 1
        image[shadow & ground] *= rng.uniform(0.45, 0.7)
        nx, ny = (xx - cx) / rx, (yy - cy) / ry
        inside = nx**2 + ny**2 < 1
        nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0, 1))
        lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
        texture = 0.05 * (_value_noise(rng.random((16, 16)), nx * 4, ny * 4) - 0.5)
        shade = level - 0.25 + 0.55 * lambert + texture
        image[inside] = shade[inside]
        labels[inside] = BIG_ROCK
        ground |= inside  # a rock may rise above the horizon: it is not sky
        depth[inside] = z


def _add_unlabelled_patches(
    rng: np.random.Generator, labels: np.ndarray, ground: np.ndarray, rate: float
) -> None:
    """Blobs the annotator left unlabelled (label 0), image untouched; big rocks are kept."""
    if rng.random() >= rate:
        return
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    table = rng.random((16, 16))
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.3, 1.0) * h, rng.uniform(0, w)
        ry, rx = rng.uniform(0.06, 0.22) * h, rng.uniform(0.05, 0.2) * w
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        wobble = 0.6 * _value_noise(table, xx / 8 + cx, yy / 8 + cy)
        labels[(r < 0.7 + wobble) & ground & (labels != BIG_ROCK)] = BACKGROUND


def _add_rover_parts(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, yy: np.ndarray, xx: np.ndarray
) -> None:
    """Dark, smooth rover hardware in one or both bottom corners (label 0)."""
    h, w = labels.shape
    for side in rng.choice([0, 1], size=int(rng.integers(1, 3)), replace=False):
        x = xx if side == 0 else (w - 1 - xx)
        reach, rise = rng.uniform(0.1, 0.3) * w, rng.uniform(0.15, 0.4) * h
        part = (x / reach + (h - 1 - yy) / rise) < 1
        image[part] = rng.uniform(0.05, 0.15) + 0.05 * (yy[part] / h)
        labels[part] = BACKGROUND


def _alien_frame(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An outlier picture: smooth colour blobs and a bright disc, nothing like terrain."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    image = 0.3 + 0.5 * _value_noise(rng.random((8, 8)), xx / 24, yy / 24)
    cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 24)
    image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0.7, 0.95)
    return _to_uint8(image + rng.normal(0, 0.01, image.shape))


# ----------------------------------------------------------------------------------------------
# Noise primitives (vectorized, seeded through lookup tables).


def _value_noise(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1] from a random lattice, periodic over the table's size."""
    n0, n1 = table.shape
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)  # smoothstep
    i0, j0 = iu.astype(np.int64) % n0, iv.astype(np.int64) % n1
    i1, j1 = (i0 + 1) % n0, (j0 + 1) % n1
    top = table[i0, j0] * (1 - fu) + table[i1, j0] * fu
    bottom = table[i0, j1] * (1 - fu) + table[i1, j1] * fu
    return top * (1 - fv) + bottom * fv


def _worley(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cellular noise on a jittered grid: nearest and second-nearest distances, nearest cell id."""
    jitter = rng.random((32, 32, 2))
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    d1 = np.full(u.shape, np.inf)
    d2 = np.full(u.shape, np.inf)
    cell = np.zeros(u.shape, np.int64)
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            cu, cv = (iu + du) % 32, (iv + dv) % 32
            j = jitter[cu, cv]
            dist = np.hypot(iu + du + j[..., 0] - u, iv + dv + j[..., 1] - v)
            nearer = dist < d1
            d2 = np.where(nearer, d1, np.minimum(d2, dist))
            d1 = np.where(nearer, dist, d1)
            cell = np.where(nearer, cu * 32 + cv, cell)
    return d1, d2, cell


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with a 5-tap kernel and edge padding."""
    taps = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, 2, mode="edge")
    rows = sum(t * padded[:, i : i + image.shape[1]] for i, t in enumerate(taps))
    return sum(t * rows[i : i + image.shape[0], :] for i, t in enumerate(taps))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    # The course images span 2..254; keep the same range.
    return np.clip(np.rint(image * 255.0), 2, 254).astype(np.uint8)


def _progress(items: range, enabled: bool, desc: str) -> Iterator[int]:
    if not enabled:
        return iter(items)
    from tqdm import tqdm

    return iter(tqdm(items, desc=desc, unit="frame", leave=False))
