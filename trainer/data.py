"""Load, validate and clean the Mars terrain data; split it for training.

Two layouts are read:

- the Kaggle course npz (``training_set`` (N, 2, H, W): image and labels; ``test_set``
  (M, H, W) images; optionally ``test_labels``, which the synthetic stand-in writes). Its frames
  are used at their own size (64x128 in the course file).
- the AI4Mars release (NAVCAM frames with crowd-sourced labels), at a size the caller picks; see
  :func:`load_ai4mars` for the protocol.

Images come out as float32 in [0, 1] (the scaling the edge side applies), labels as uint8 in
0..4 of :data:`edge.contract.labels.MARS` (0 = background/unlabelled, never scored). Every check raises
``ValueError`` with a message that says what is wrong and how to fix it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge.contract.labels import CLASS_NAMES, MARS, NUM_CLASSES, LabelSet
from edge.contract.metrics import class_fractions
from edge.contract.preprocess import Preprocessing
from edge.run.telemetry import file_sha256

log = logging.getLogger(__name__)

BIG_ROCK = 4
# The official course file, so that `trainer inspect` can say it is looking at exactly that.
COURSE_FILE_SHA256 = "70498488de0e67d414c4b8f983e6d5f342761a02690db42dee6c006262ef7f09"
COURSE_FILE_BYTES = 75_001_810
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".tif", ".tiff"}
# AI4Mars frames are read at this size unless the caller picks another: the whole 1:1 frame at
# half the 256x256 copy's resolution (benchmarks/frame_size.py measures the choice).
AI4MARS_DEFAULT_SIZE = (128, 128)
AI4MARS_AGREEMENTS = (1, 2, 3)


@dataclass
class MarsData:
    """Frames of one data set, ready for training.

    Attributes:
        images: float32 (N, H, W) in [0, 1].
        labels: uint8 (N, H, W), values of ``label_set``.
        test_images: float32 (M, H, W) in [0, 1], or None.
        test_labels: uint8 (M, H, W), or None (the course file has none).
        source: where the frames came from.
        index: position of each frame in the source (kept through outlier removal).
        label_set: the classes.
        layout: ``npz`` (course layout) or ``ai4mars``.
        preprocessing: how the frames were brought to their size (the rover repeats it).
        names: per training frame, its id in the source (AI4Mars file stem), or None.
        test_names: the same for the test frames.
        groups: per training frame, the rover position it was taken at (AI4Mars: site and
            drive); frames of one group stay on one side of a split. None: no groups.
        files: AI4Mars: frame id -> its files (frame, label, masks), training and test alike;
            what native-resolution scoring and the export read back.
    """

    images: np.ndarray
    labels: np.ndarray
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    source: str = ""
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    label_set: LabelSet = MARS
    layout: str = "npz"
    preprocessing: Preprocessing | None = None
    names: list[str] | None = None
    test_names: list[str] | None = None
    groups: np.ndarray | None = None
    files: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.index) != len(self.images):
            self.index = np.arange(len(self.images))
        if self.preprocessing is None:
            self.preprocessing = Preprocessing(*self.images.shape[1:3])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.images.shape[1:3])

    def subset(self, idx: np.ndarray) -> MarsData:
        """The frames at ``idx`` (test frames kept as they are)."""
        idx = np.asarray(idx, dtype=np.int64)
        return replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            index=self.index[idx],
            names=None if self.names is None else [self.names[i] for i in idx],
            groups=None if self.groups is None else self.groups[idx],
        )


# ----------------------------------------------------------------------------------------------
# Loading.


def load_dataset(
    path: str | Path,
    size: tuple[int, int] | None = None,
    crop: str = "none",
    agreement: int = 3,
) -> MarsData:
    """Load a course-style npz or an AI4Mars folder, whichever ``path`` is.

    Args:
        path: the npz, or the AI4Mars root or any folder under it.
        size: (height, width) for folder data sets (default 128x128); an npz is used at its own
            size and refuses another.
        crop: ``none`` or ``centre`` (folder data sets; see :class:`edge.contract.preprocess.Preprocessing`).
        agreement: AI4Mars test labels: the ``masked-gold-min<N>-100agree`` set to use.

    Raises:
        ValueError: if the path is missing or its contents are not a valid data set.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"{path} does not exist; give the course npz (mars_for_students.npz), an AI4Mars "
            "folder, or make a synthetic set with `python tools/make_synthetic.py`"
        )
    if path.is_dir():
        return load_ai4mars(path, size or AI4MARS_DEFAULT_SIZE, crop=crop, agreement=agreement)
    data = load_npz(path)
    if size is not None and tuple(size) != data.frame_shape:
        h, w = data.frame_shape
        raise ValueError(
            f"{path.name} holds {h}x{w} frames but {size[0]}x{size[1]} was asked (by --size or "
            "the run's config.json); an npz is used at its own size, --size picks the size of "
            "folder data sets such as AI4Mars"
        )
    return data


def load_data(cfg) -> MarsData:
    """Load the data set a :class:`trainer.config.DataConfig` describes (path, size, crop,
    expert test set)."""
    return load_dataset(cfg.path, cfg.frame_size, cfg.crop, cfg.test_agreement)


def load_npz(path: str | Path) -> MarsData:
    """Load and validate the Kaggle course layout.

    Args:
        path: an ``.npz`` with ``training_set`` (N, 2, H, W) and optionally ``test_set`` (M, H, W)
            and ``test_labels`` (M, H, W). Any numeric dtype is accepted.

    Returns:
        The validated frames, images scaled to [0, 1].

    Raises:
        ValueError: naming the key, frame and value that is wrong.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(
            f"could not read {path} as an npz archive ({err}); is the file complete?"
        ) from err
    with archive:
        keys = list(archive.files)
        if "training_set" not in keys:
            raise ValueError(
                f"{path.name} has no key 'training_set' (found {keys}); expected the course layout "
                "'training_set' (N, 2, H, W) and 'test_set' (M, H, W)"
            )
        try:
            train = archive["training_set"]
            test = archive["test_set"] if "test_set" in keys else None
            test_labels = archive["test_labels"] if "test_labels" in keys else None
        except (ValueError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise ValueError(
                f"could not read the arrays of {path} ({err}); is the file complete?"
            ) from err

    if train.ndim != 4 or train.shape[1] != 2:
        raise ValueError(
            f"training_set has shape {train.shape}; expected (N, 2, H, W): N frames, each an image "
            "([:, 0]) and its labels ([:, 1])"
        )
    images = validate_images(train[:, 0], "training_set[:, 0]")
    labels = validate_labels(train[:, 1], "training_set[:, 1]")
    test_images = None
    if test is not None:
        if test.ndim != 3 or test.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"test_set has shape {test.shape}; expected (M, {images.shape[1]}, {images.shape[2]}) "
                "like the training images"
            )
        test_images = validate_images(test, "test_set")
    if test_labels is not None:
        if test_images is None or test_labels.shape != test_images.shape:
            raise ValueError(
                f"test_labels has shape {test_labels.shape} but test_set has "
                f"{None if test is None else test.shape}; they must match"
            )
        test_labels = validate_labels(test_labels, "test_labels")
    return MarsData(images, labels, test_images, test_labels, source=str(path))


def validate_images(images: np.ndarray, name: str) -> np.ndarray:
    """Check grayscale frames and scale them to float32 [0, 1].

    Values are expected in 0..255 (the course images span 2..254). A set whose values all lie in
    [0, 1] is taken as already scaled.

    Raises:
        ValueError: for a non-numeric dtype, NaN or infinite pixels, or values outside 0..255.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"{name} has shape {images.shape}; expected (N, H, W) grayscale frames")
    if not (np.issubdtype(images.dtype, np.number) or images.dtype == bool):
        raise ValueError(f"{name} has dtype {images.dtype}; expected numbers (uint8 or float)")
    if min(images.shape[1:]) < 16:
        raise ValueError(
            f"{name} frames are {images.shape[1]}x{images.shape[2]}; expected at least 16x16"
        )
    if len(images) == 0:
        return np.zeros(images.shape, np.float32)
    finite = np.isfinite(images).all(axis=(1, 2))
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{name} has NaN or infinite pixels in {int((~finite).sum())} frame(s), the first is "
            f"frame {bad}; repair or drop those frames"
        )
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{name} values span {lo:g}..{hi:g}; expected grayscale 0..255")
    scale = 1.0 if hi <= 1.0 and images.dtype.kind == "f" else 255.0
    if scale == 1.0:
        log.warning("%s values lie within [0, 1]; taking them as already scaled", name)
    return (images.astype(np.float32) / np.float32(scale)).astype(np.float32)


def validate_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Check that labels are whole numbers in 0..4 and return them as uint8.

    Raises:
        ValueError: naming the first offending frame and value.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"{name} has shape {labels.shape}; expected (N, H, W) label maps")
    if not np.issubdtype(labels.dtype, np.number):
        raise ValueError(f"{name} has dtype {labels.dtype}; expected integer class labels 0..4")
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            frame = int(np.flatnonzero(bad.any(axis=(1, 2)))[0])
            value = labels[frame][bad[frame]][0]
            raise ValueError(
                f"{name} labels must be whole numbers 0..4, found {value} in frame {frame}; "
                "were the masks resized with interpolation?"
            )
    out_of_range = (labels < 0) | (labels >= NUM_CLASSES)
    if out_of_range.any():
        frame = int(np.flatnonzero(out_of_range.any(axis=(1, 2)))[0])
        value = labels[frame][out_of_range[frame]][0]
        raise ValueError(
            f"expected labels in 0..{NUM_CLASSES - 1} ({', '.join(CLASS_NAMES)}), found "
            f"{value:g} in frame {frame} of {name}; is this the right file?"
        )
    return labels.astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# AI4Mars.

# AI4Mars label values: 0 soil, 1 bedrock, 2 sand, 3 big rock, 255 unlabelled -> ours (+1, 0).
AI4MARS_LUT = np.full(256, 255, np.uint8)  # 255 here: a value AI4Mars does not use
AI4MARS_LUT[[0, 1, 2, 3]] = [1, 2, 3, 4]
AI4MARS_LUT[255] = 0
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
    labels = AI4MARS_LUT[raw]
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


def is_course_file(path: str | Path) -> bool:
    """True when ``path`` is byte for byte the official course npz."""
    path = Path(path)
    return (
        path.is_file()
        and path.stat().st_size == COURSE_FILE_BYTES
        and file_sha256(path) == COURSE_FILE_SHA256
    )


# ----------------------------------------------------------------------------------------------
# Cleaning and splitting.


@dataclass
class OutlierReport:
    """Frames whose mask repeats identically across many frames (the course's alien pictures).

    Attributes:
        indices: positions of the outlier frames, sorted.
        groups: one entry per repeated mask: its frames and class fractions.
        min_repeats: how many identical copies made a mask suspicious.
    """

    indices: np.ndarray
    groups: list[dict]
    min_repeats: int

    @property
    def count(self) -> int:
        return len(self.indices)

    def summary(self) -> str:
        if not self.groups:
            return f"outliers: none (no mask repeats {self.min_repeats}+ times)"
        lines = [f"outliers: {self.count} frames share {len(self.groups)} repeated mask(s)"]
        for g in self.groups:
            fractions = ", ".join(f"{k} {v:.0%}" for k, v in g["class_fractions"].items() if v > 0)
            first = ", ".join(map(str, g["frames"][:6]))
            lines.append(
                f"  mask {g['hash']}: {len(g['frames'])} frames (first {first}); {fractions}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "min_repeats": self.min_repeats,
            "indices": self.indices.tolist(),
            "groups": self.groups,
        }


def default_min_repeats(n_frames: int) -> int:
    """An identical mask in at least 0.5 % of the frames, and never fewer than 3, is an outlier."""
    return max(3, int(np.ceil(0.005 * n_frames)))


def find_outliers(labels: np.ndarray, min_repeats: int | None = None) -> OutlierReport:
    """Find frames whose label mask repeats byte for byte in ``min_repeats`` or more frames.

    Natural terrain masks never repeat exactly; the course's 110 alien pictures all carry one.

    Args:
        labels: uint8 (N, H, W).
        min_repeats: threshold; by default :func:`default_min_repeats`.

    Returns:
        The report; ``indices`` is empty when nothing repeats.
    """
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    min_repeats = default_min_repeats(len(labels)) if min_repeats is None else int(min_repeats)
    if min_repeats < 2:
        raise ValueError(f"min_repeats must be >= 2, got {min_repeats}")
    by_hash: dict[str, list[int]] = {}
    for i, mask in enumerate(labels):
        by_hash.setdefault(hashlib.blake2b(mask.tobytes(), digest_size=8).hexdigest(), []).append(i)
    groups = []
    for digest, frames in by_hash.items():
        if len(frames) >= min_repeats:
            fractions = class_fractions(labels[frames[0]])
            groups.append(
                {
                    "hash": digest,
                    "frames": frames,
                    "class_fractions": {n: float(f) for n, f in zip(CLASS_NAMES, fractions)},
                }
            )
    groups.sort(key=lambda g: -len(g["frames"]))
    indices = np.array(sorted(i for g in groups for i in g["frames"]), dtype=np.int64)
    return OutlierReport(indices, groups, min_repeats)


def drop_outliers(data: MarsData, report: OutlierReport) -> MarsData:
    """The data without the report's outlier frames."""
    keep = np.setdiff1d(np.arange(len(data.images)), report.indices)
    return data.subset(keep)


def has_big_rock(labels: np.ndarray) -> np.ndarray:
    """Per frame: does it contain any big-rock pixel? (N,) bool."""
    return (np.asarray(labels) == BIG_ROCK).any(axis=(1, 2))


def split_indices(
    labels: np.ndarray,
    val_fraction: float = 0.2,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split, stratified on whether a frame contains big rock.

    Big rock is in few frames; a plain random split can leave the validation set without any,
    and then its IoU is undefined. Each stratum with 2+ members puts at least one on each side.

    With ``groups`` (one id per frame), whole groups go to one side: AI4Mars frames of one rover
    position overlap, and splitting them would score the model on views it trained on. A group
    counts as a big-rock group when any of its frames has big rock; groups are taken until the
    validation side holds ``val_fraction`` of the stratum's frames.

    Returns:
        ``(train_idx, val_idx)``, each sorted.

    Raises:
        ValueError: if ``val_fraction`` is not in (0, 1), there are fewer than 2 frames (or
            groups), or ``groups`` does not match the frames.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(labels)
    if n < 2:
        raise ValueError(f"need at least 2 frames to split, got {n}")
    if groups is None:
        groups = np.arange(n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups has shape {groups.shape}, expected ({n},): one id per frame")
    ids, member = np.unique(groups, return_inverse=True)
    if len(ids) < 2:
        raise ValueError(
            "all frames belong to one rover position; a grouped split needs at least 2 "
            "(--no-group-split splits frame by frame)"
        )
    sizes = np.bincount(member)
    rock = np.bincount(member, weights=has_big_rock(labels)) > 0  # per group
    rng = np.random.default_rng(seed)
    val_groups = []
    for stratum in (np.flatnonzero(rock), np.flatnonzero(~rock)):
        if len(stratum) == 0:
            continue
        perm = rng.permutation(stratum)
        if len(perm) < 2:
            continue  # a lone group (e.g. every big rock at one rover position) trains
        # the prefix of groups whose frame count comes closest to val_fraction of the stratum's
        target = val_fraction * sizes[stratum].sum()
        k = int(np.argmin(np.abs(np.cumsum(sizes[perm]) - target))) + 1
        val_groups.append(perm[: min(max(k, 1), len(perm) - 1)])
    if not val_groups:  # every stratum is a lone group: the one without big rock validates
        val_groups.append(np.flatnonzero(~rock)[:1] if (~rock).any() else np.arange(1))
    val_idx = np.flatnonzero(np.isin(member, np.concatenate(val_groups))).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    return train_idx, val_idx


def clean_and_split(
    mars: MarsData, cfg
) -> tuple[MarsData, np.ndarray, np.ndarray, OutlierReport | None]:
    """Apply a run's data settings: first ``limit`` frames, outlier removal, stratified split.

    Training, evaluation and conversion all call this, so they see the same validation frames.

    Args:
        mars: the loaded data.
        cfg: a :class:`trainer.config.DataConfig`.

    Returns:
        ``(clean_data, train_idx, val_idx, outlier_report)``; the report is None when outliers
        are kept.
    """
    if cfg.limit:
        mars = mars.subset(np.arange(min(cfg.limit, len(mars.images))))
    report = None
    if removes_outliers(mars, cfg.remove_outliers):
        report = find_outliers(mars.labels, cfg.outlier_min_repeats)
        mars = drop_outliers(mars, report)
    groups = mars.groups if cfg.group_split else None
    train_idx, val_idx = split_indices(mars.labels, cfg.val_fraction, cfg.split_seed, groups)
    return mars, train_idx, val_idx, report


def removes_outliers(mars: MarsData, setting: bool | None) -> bool:
    """Whether the course file's outlier filter applies: by default (None) to the course layout
    only; AI4Mars has no alien frames, and its near-uniform masks repeat honestly."""
    return mars.layout == "npz" if setting is None else bool(setting)
