"""Load, validate and clean the Mars terrain data; split it for training.

Two layouts are read (see ``shared/design/data.md``):

- the Kaggle course npz (``training_set`` (N, 2, H, W): image and labels; ``test_set``
  (M, H, W) images; optionally ``test_labels``, which the synthetic stand-in writes);
- an AI4Mars folder (NAVCAM JPGs and label PNGs with 0-3 = soil, bedrock, sand, big rock and
  255 = unlabelled), mapped to our labels and downsampled.

Images come out as float32 in [0, 1] (the same scaling the edge side applies), labels as uint8
in 0..4. Every check raises ``ValueError`` with a message that says what is wrong and how to fix
it, before any numpy error deep inside could.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge.classes import CLASS_NAMES, NUM_CLASSES
from edge.metrics import class_fractions

log = logging.getLogger(__name__)

BIG_ROCK = 4
# The official course file, so that `trainer inspect` can say it is looking at exactly that.
COURSE_FILE_SHA256 = "70498488de0e67d414c4b8f983e6d5f342761a02690db42dee6c006262ef7f09"
COURSE_FILE_BYTES = 75_001_810
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".tif", ".tiff"}


@dataclass
class MarsData:
    """Frames of one data set, ready for training.

    Attributes:
        images: float32 (N, H, W) in [0, 1].
        labels: uint8 (N, H, W) in 0..4.
        test_images: float32 (M, H, W) in [0, 1], or None.
        test_labels: uint8 (M, H, W), or None (the course file has none).
        source: where the frames came from.
        index: position of each frame in the source file (kept through outlier removal).
    """

    images: np.ndarray
    labels: np.ndarray
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    source: str = ""
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        if len(self.index) != len(self.images):
            self.index = np.arange(len(self.images))

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])

    def subset(self, idx: np.ndarray) -> MarsData:
        """The frames at ``idx`` (test frames kept as they are)."""
        return replace(
            self, images=self.images[idx], labels=self.labels[idx], index=self.index[idx]
        )


# ----------------------------------------------------------------------------------------------
# Loading.


def load_dataset(path: str | Path) -> MarsData:
    """Load a course-style npz or an AI4Mars folder, whichever ``path`` is.

    Raises:
        ValueError: if the path is missing or its contents are not a valid data set.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"{path} does not exist; give the course npz (mars_for_students.npz), an AI4Mars "
            "folder, or make a synthetic set with `python tools/make_synthetic.py`"
        )
    return load_ai4mars(path) if path.is_dir() else load_npz(path)


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


def load_ai4mars(
    root: str | Path,
    size: tuple[int, int] = (64, 128),
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
) -> MarsData:
    """Read an AI4Mars folder: NAVCAM images and label PNGs matched by file stem.

    AI4Mars labels 0-3 (soil, bedrock, sand, big rock) become 1-4 and 255 (unlabelled) becomes 0.
    Each frame is centre-cropped to the aspect ratio of ``size`` (a 1024x1024 NAVCAM frame keeps
    its middle 512 rows), then resized: the image with area averaging, the labels with nearest.

    Args:
        root: the folder; by default images are searched under ``root/images`` (else ``root``)
            and labels under ``root/labels``, recursively.
        size: output (height, width).
        images_dir: override where the images are.
        labels_dir: override where the label PNGs are.

    Returns:
        Frames in the same form as the course npz; no test split.

    Raises:
        ValueError: when nothing can be paired, or a label PNG holds values other than 0-3, 255.
    """
    from PIL import Image

    root = Path(root)
    images_dir = (
        Path(images_dir)
        if images_dir
        else (root / "images" if (root / "images").is_dir() else root)
    )
    labels_dir = Path(labels_dir) if labels_dir else root / "labels"
    if not labels_dir.is_dir():
        raise ValueError(
            f"{labels_dir} is not a folder; an AI4Mars folder has labels/ beside images/"
        )
    label_files = {p.stem: p for p in sorted(labels_dir.rglob("*.png"))}
    image_files = [
        p
        for p in sorted(images_dir.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and labels_dir not in p.parents
    ]
    pairs = [(p, label_files[p.stem]) for p in image_files if p.stem in label_files]
    if not pairs:
        raise ValueError(
            f"found {len(image_files)} images under {images_dir} and {len(label_files)} label PNGs "
            f"under {labels_dir}, but no image has a label of the same file name"
        )
    height, width = size
    images = np.empty((len(pairs), height, width), np.float32)
    labels = np.empty((len(pairs), height, width), np.uint8)
    lut = np.full(256, -1, np.int16)
    lut[[0, 1, 2, 3]] = [1, 2, 3, 4]
    lut[255] = 0
    for i, (image_path, label_path) in enumerate(pairs):
        try:
            image = Image.open(image_path).convert("L")
            label = Image.open(label_path)
        except OSError as err:
            raise ValueError(f"cannot read {image_path.name} or its label: {err}") from err
        if label.mode not in ("L", "P", "I", "I;16"):
            label = label.convert("L")
        image, label = (
            _crop_to_aspect(image, width / height),
            _crop_to_aspect(label, width / height),
        )
        mapped = lut[
            np.asarray(label.resize((width, height), Image.NEAREST)).astype(np.int64) % 256
        ]
        raw = np.asarray(label)
        if (lut[raw.astype(np.int64) % 256] < 0).any() or raw.max() > 255:
            bad = sorted(set(np.unique(raw).tolist()) - {0, 1, 2, 3, 255})
            raise ValueError(
                f"{label_path.name} holds label values {bad}; AI4Mars labels are 0-3 and 255 (unlabelled)"
            )
        images[i] = np.asarray(image.resize((width, height), Image.BOX), np.float32) / 255.0
        labels[i] = mapped
    skipped = len(image_files) - len(pairs)
    if skipped:
        log.info("AI4Mars: %d images have no label PNG and were skipped", skipped)
    return MarsData(images, labels, source=str(root))


def _crop_to_aspect(image, aspect: float):
    """Centre crop a PIL image to width/height == aspect."""
    w, h = image.size
    if w / h > aspect:
        new_w = round(h * aspect)
        left = (w - new_w) // 2
        return image.crop((left, 0, left + new_w, h))
    new_h = round(w / aspect)
    top = (h - new_h) // 2
    return image.crop((0, top, w, top + new_h))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split, stratified on whether a frame contains big rock.

    Big rock is in only ~2.5 % of frames; a plain random split can leave the validation set
    without any, and then its IoU is undefined. Each stratum with 2+ frames puts at least one on
    each side.

    Returns:
        ``(train_idx, val_idx)``, each sorted.

    Raises:
        ValueError: if ``val_fraction`` is not in (0, 1) or there are fewer than 2 frames.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(labels)
    if n < 2:
        raise ValueError(f"need at least 2 frames to split, got {n}")
    rng = np.random.default_rng(seed)
    rock = has_big_rock(labels)
    val = []
    for stratum in (np.flatnonzero(rock), np.flatnonzero(~rock)):
        if len(stratum) == 0:
            continue
        perm = rng.permutation(stratum)
        k = round(len(perm) * val_fraction)
        if len(perm) >= 2:
            k = min(max(k, 1), len(perm) - 1)
        val.append(perm[:k])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64)
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
    if cfg.remove_outliers:
        report = find_outliers(mars.labels, cfg.outlier_min_repeats)
        mars = drop_outliers(mars, report)
    train_idx, val_idx = split_indices(mars.labels, cfg.val_fraction, cfg.split_seed)
    return mars, train_idx, val_idx, report
