"""The AI4Mars release: NAVCAM frames with crowd labels, expert test labels and masks."""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.contract.labels import AI4MARS_TO_MARS
from edge.contract.preprocess import Preprocessing
from trainer.data.dataset import MarsData

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".tif", ".tiff"}
# AI4Mars frames are read at this size unless the caller picks another: the whole 1:1 frame at
# half the 256x256 copy's resolution (benchmarks/frame_size.py measures the choice).
AI4MARS_DEFAULT_SIZE = (128, 128)
AI4MARS_AGREEMENTS = (1, 2, 3)

# ----------------------------------------------------------------------------------------------
# AI4Mars.

# NAVCAM product ids: <camera>_<sclk><type>_<F><site 3><drive 4>...: "NLA_397681586EDR_F0020000...".
_NAVCAM_ID = re.compile(r"^[A-Z]{3}_\d{9}(EDR|MXY|RNG)_(\w\d{7})")


@dataclass
class AI4MarsLayout:
    """Where the parts of one AI4Mars camera folder are.

    Attributes:
        root: the folder holding ``images/`` and ``labels/`` (``msl`` or ``msl/ncam``).
        images: the frames (``images/edr``).
        train_labels: ``labels/train``.
        test_labels: ``labels/test/masked-gold-min<N>-100agree``, if present.
        rover_masks: ``images/mxy`` (rover hardware), if present.
        range_masks: ``images/rng-30m`` (farther than 30 m), if present.
    """

    root: Path
    images: Path
    train_labels: Path | None
    test_labels: Path | None = None
    rover_masks: Path | None = None
    range_masks: Path | None = None

    def describe(self) -> str:
        parts = [f"images {self.images}"]
        for name in ("train_labels", "test_labels", "rover_masks", "range_masks"):
            value = getattr(self, name)
            parts.append(f"{name.replace('_', ' ')} {value if value else 'absent'}")
        return "; ".join(parts)


def _is_camera_root(folder: Path) -> bool:
    return (folder / "images" / "edr").is_dir() and (folder / "labels").is_dir()


def find_ai4mars(path: str | Path, agreement: int = 3) -> AI4MarsLayout:
    """Find the AI4Mars camera folder from its root or any folder under it.

    Both release layouts are recognised: ``msl/images/edr`` (merged 0.1) and
    ``msl/ncam/images/edr`` (later releases and the 256x256 copy). Symlinked folders are
    followed.

    Args:
        path: the dataset root, ``msl``, ``msl/ncam``, or a folder inside one (``images/edr``).
        agreement: which expert test set: 1, 2 or 3 (``masked-gold-min<N>-100agree``).

    Raises:
        ValueError: when no camera folder, or several, are found (naming them).
    """
    path = Path(path)
    if agreement not in AI4MARS_AGREEMENTS:
        raise ValueError(
            f"agreement must be 1, 2 or 3 (masked-gold-min<N>-100agree), got {agreement}"
        )
    found = [path] if _is_camera_root(path) else _camera_roots_below(path)
    if not found:
        found = [p for p in list(path.resolve().parents)[:4] if _is_camera_root(p)][:1]
    if not found:
        raise ValueError(
            f"{path} is not an AI4Mars folder: found no images/edr/ beside labels/ in it, under "
            "it or above it; give the dataset root (the folder that holds msl/)"
        )
    if len(found) > 1:
        msl = [p for p in found if "msl" in p.parts]
        found = msl if len(msl) == 1 else found
    if len(found) > 1:
        raise ValueError(
            f"{path} holds {len(found)} AI4Mars camera folders ({', '.join(map(str, found))}); "
            "give one of them"
        )
    root = found[0]
    optional = {
        "train_labels": root / "labels" / "train",
        "test_labels": root / "labels" / "test" / f"masked-gold-min{agreement}-100agree",
        "rover_masks": root / "images" / "mxy",
        "range_masks": root / "images" / "rng-30m",
    }
    return AI4MarsLayout(
        root, root / "images" / "edr", **{k: v if v.is_dir() else None for k, v in optional.items()}
    )


def _camera_roots_below(path: Path, depth: int = 4) -> list[Path]:
    """Camera folders under ``path``, following symlinks (real paths are visited once)."""
    found, seen, level = [], set(), [path]
    for _ in range(depth):
        below = []
        for folder in level:
            try:
                real = folder.resolve()
                if real in seen:
                    continue
                seen.add(real)
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:
                continue
            for child in children:
                (found if _is_camera_root(child) else below).append(child)
        level = below
    return found


@dataclass
class _Pair:
    """One AI4Mars frame's files."""

    name: str
    image: Path
    label: Path
    masks: tuple[Path, ...]


def load_ai4mars(
    path: str | Path,
    size: tuple[int, int] = AI4MARS_DEFAULT_SIZE,
    *,
    crop: str = "none",
    agreement: int = 3,
    workers: int | None = None,
    progress: bool = True,
) -> MarsData:
    """Read an AI4Mars folder with the dataset's own protocol.

    - Frames come from ``images/edr/`` only; the training labels are ``labels/train/<id>.png``.
    - The expert test labels ``labels/test/masked-gold-min<N>-100agree/<id>_merged.png`` become
      the test split; their frames are never used for training.
    - Where the rover masks (``images/mxy/``) and 30 m range masks (``images/rng-30m/``) exist,
      their nonzero pixels become unlabelled, as the dataset's authors apply them.
    - A folder with the expert test labels only (no ``labels/train``) loads with no training
      frames: it can be inspected and scored (``trainer evaluate --split test``), not trained on.
    - Labels 0-3 (soil, bedrock, sand, big rock) become 1-4 and 255 (unlabelled) becomes 0.
    - Every frame is prepared by :class:`edge.contract.preprocess.Preprocessing` (the whole frame resized
      by area averaging unless ``crop="centre"``), the function the rover uses.
    - Frames carry their rover position (site and drive, from the NAVCAM file name) as a group,
      so that a split can keep overlapping views of one place on one side.

    Args:
        path: the dataset root or any folder under it (see :func:`find_ai4mars`).
        size: (height, width) of the prepared frames.
        crop: ``none`` or ``centre``.
        agreement: which expert test set (1, 2 or 3).
        workers: decoding threads (default: 2 per core, at most 8).
        progress: show a progress bar on stderr.

    Returns:
        The training frames (and the test split when the folder has it).

    Raises:
        ValueError: when nothing can be paired, or a label PNG holds values other than 0-3, 255.
    """
    layout = find_ai4mars(path, agreement)
    prep = Preprocessing(*size, crop=crop)
    images = {}
    for entry in _scan(layout.images):
        if Path(entry).suffix.lower() in IMAGE_SUFFIXES:
            images.setdefault(Path(entry).stem, layout.images / entry)
    test_pairs = _pairs(layout, layout.test_labels, images, suffix="_merged")
    test_names = {p.name for p in test_pairs}
    train_pairs = [
        p
        for p in _pairs(layout, layout.train_labels, images, suffix="")
        if p.name not in test_names
    ]
    if not train_pairs and not test_pairs:
        n_labels = len(_scan(layout.train_labels)) if layout.train_labels else 0
        raise ValueError(
            f"found {len(images)} frames in {layout.images} and {n_labels} training labels in "
            f"{layout.train_labels or layout.root / 'labels' / 'train'}, but no frame has a label "
            "of the same name (<id>.JPG and <id>.png), and no expert test labels "
            f"(labels/test/masked-gold-min{agreement}-100agree/<id>_merged.png)"
        )
    log.info(
        "AI4Mars at %s: %d training frames, %d test frames (min%d agreement), %s%s; read as %dx%d",
        layout.root,
        len(train_pairs),
        len(test_pairs),
        agreement,
        "rover masks" if layout.rover_masks else "no rover masks",
        ", range masks" if layout.range_masks else ", no range masks",
        *size,
    )
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    train_images, train_labels = _read_pairs(train_pairs, prep, workers, progress, "AI4Mars train")
    test_images = test_labels = None
    if test_pairs:
        test_images, test_labels = _read_pairs(test_pairs, prep, workers, progress, "AI4Mars test")
    names = [p.name for p in train_pairs]
    groups = [_position(n) or n for n in names]
    _, group_ids = np.unique(groups, return_inverse=True)
    return MarsData(
        train_images,
        train_labels,
        test_images,
        test_labels,
        source=str(layout.root),
        layout="ai4mars",
        preprocessing=prep,
        names=names,
        test_names=[p.name for p in test_pairs] or None,
        groups=group_ids.astype(np.int64),
        files={p.name: p for p in train_pairs} | {f"test:{p.name}": p for p in test_pairs},
    )


def _scan(folder: Path | None) -> list[str]:
    if folder is None:
        return []
    try:
        return sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
    except OSError as err:
        raise ValueError(f"cannot list {folder}: {err.strerror or err}") from err


def _pairs(
    layout: AI4MarsLayout, labels_dir: Path | None, images: dict[str, Path], suffix: str
) -> list[_Pair]:
    pairs = []
    for entry in _scan(labels_dir):
        stem, ext = os.path.splitext(entry)
        if ext.lower() != ".png" or not stem.endswith(suffix):
            continue
        name = stem[: len(stem) - len(suffix)] if suffix else stem
        if name in images:
            pairs.append(_Pair(name, images[name], labels_dir / entry, _masks(layout, name)))
    return pairs


def _masks(layout: AI4MarsLayout, name: str) -> tuple[Path, ...]:
    """The rover and range masks of frame ``name`` that exist (EDR -> MXY / RNG in the id)."""
    found = []
    for folder, product in ((layout.rover_masks, "MXY"), (layout.range_masks, "RNG")):
        if folder is None:
            continue
        for candidate in (name.replace("EDR", product, 1), name):
            path = folder / f"{candidate}.png"
            if path.is_file():
                found.append(path)
                break
    return tuple(found)


def _position(name: str) -> str | None:
    """The rover position (site and drive) in a NAVCAM id, e.g. ``F0020000``; None if not one."""
    match = _NAVCAM_ID.match(name)
    return match.group(2) if match else None


def _read_pairs(
    pairs: list[_Pair], prep: Preprocessing, workers: int, progress: bool, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(pairs), *prep.size), np.float32)
    labels = np.empty((len(pairs), *prep.size), np.uint8)

    def read(i: int) -> None:
        image, label = read_ai4mars_pair(pairs[i].image, pairs[i].label, pairs[i].masks)
        images[i] = prep.to_input(image)
        labels[i] = prep.prepare_labels(label)

    # Pillow decodes outside the GIL, so threads overlap the JPEG and PNG decoding.
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(read, range(len(pairs)))
        if progress:
            from tqdm import tqdm

            jobs = tqdm(jobs, total=len(pairs), desc=desc, unit="frame", leave=False, disable=None)
        for _ in jobs:
            pass
    return images, labels


def read_ai4mars_pair(
    image_path: Path, label_path: Path, masks: tuple[Path, ...] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """One AI4Mars frame and its label at their own size: uint8 grey (H, W) and our labels.

    Raises:
        ValueError: for an unreadable file or label values other than 0-3 and 255.
    """
    from PIL import Image

    try:
        with Image.open(image_path) as img:
            image = np.asarray(img.convert("L"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the frame {image_path.name}: {err}") from err
    return image, read_ai4mars_label(label_path, masks)


def read_ai4mars_label(label_path: Path, masks: tuple[Path, ...] = ()) -> np.ndarray:
    """An AI4Mars label PNG mapped to our labels (uint8 (H, W), 0 = unlabelled).

    The rover and range ``masks`` (nonzero = not terrain to label) set their pixels to
    unlabelled; they are resized (nearest) when their size differs from the label's.

    Raises:
        ValueError: for an unreadable file or label values other than 0-3 and 255.
    """
    from PIL import Image

    try:
        with Image.open(label_path) as img:
            raw = np.asarray(img if img.mode in ("L", "P") else img.convert("L"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the label {label_path.name}: {err}") from err
    if raw.ndim != 2:
        raise ValueError(f"{label_path.name}: label shape {raw.shape}, expected (H, W)")
    labels = AI4MARS_TO_MARS[raw]
    if (labels == 255).any():
        bad = sorted(set(np.unique(raw).tolist()) - {0, 1, 2, 3, 255})
        raise ValueError(
            f"{label_path.name} holds label values {bad}; AI4Mars labels are 0-3 and 255 (unlabelled)"
        )
    for mask_path in masks:
        try:
            with Image.open(mask_path) as img:
                mask = img.convert("L")
                if mask.size != (labels.shape[1], labels.shape[0]):
                    mask = mask.resize((labels.shape[1], labels.shape[0]), Image.NEAREST)
                labels = np.where(np.asarray(mask) > 0, 0, labels).astype(np.uint8)
        except OSError as err:
            log.warning("mask %s not applied: %s", mask_path.name, err)
    return labels


def ai4mars_files(data: MarsData, names: list[str], test: bool = False) -> list[_Pair]:
    """The files of AI4Mars frames by id, as they were found when the data was loaded.

    Raises:
        ValueError: for data that is not an AI4Mars folder.
    """
    if data.layout != "ai4mars":
        raise ValueError("this needs an AI4Mars folder; the data set is an npz")
    return [data.files[f"test:{n}" if test else n] for n in names]


def native_labels(data: MarsData, names: list[str], test: bool = False) -> list[np.ndarray]:
    """Labels of AI4Mars frames at their own resolution (masks applied), for scoring a model's
    restored output the way the rover is scored."""
    return [read_ai4mars_label(p.label, p.masks) for p in ai4mars_files(data, names, test)]
