"""Frame sources: a camera directory (the frames there, then new ones) and an npz array.

A camera on the rover writes one image file per frame into a directory. :class:`CameraDir`
takes the files already there in name order and, with ``watch=True``, waits for new ones. It
never reads a file that is still being written: hidden files and temporary names are ignored,
and in watch mode a file is taken once it looks complete (a PNG's closing chunk, a JPEG's end
marker, the length an .npy or PGM header announces), or, if it never does, once it has stopped
changing for a grace period (then it is reported as bad). When the model is slower than the camera, the live queue keeps only the newest frames
and counts the ones it drops (the files stay on disk, they are just not segmented).

Every reader returns a uint8 grayscale array (H, W); anything unreadable raises
:class:`BadFrame`, which the pipeline logs and skips.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pnm", ".npy"})
# Names a writer uses before renaming a finished file into place.
TEMP_SUFFIXES = frozenset(
    {".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", ".filepart"}
)


class BadFrame(ValueError):
    """A frame file that cannot be read as a grayscale image."""


@dataclass
class Frame:
    """One frame handed to the pipeline.

    Attributes:
        name: a name for outputs and telemetry (the file name without its suffix).
        image: uint8 (H, W), or None when reading failed.
        error: why reading failed, or None.
        path: the source file, if any.
        index: position in the stream (0-based, counting dropped frames too).
        read_us: time spent reading and decoding.
        label: the true label map when the source has one (npz), else None.
    """

    name: str
    image: np.ndarray | None
    error: str | None = None
    path: Path | None = None
    index: int = 0
    read_us: float = 0.0
    label: np.ndarray | None = None


def is_candidate(path: Path) -> bool:
    """Whether a directory entry looks like a finished frame file (by its name only)."""
    name = path.name
    if name.startswith((".", "~")) or name.endswith("~"):
        return False
    suffixes = [s.lower() for s in path.suffixes]
    if any(s in TEMP_SUFFIXES for s in suffixes):
        return False
    return bool(suffixes) and suffixes[-1] in IMAGE_SUFFIXES


def read_frame(path: str | Path) -> np.ndarray:
    """Read one frame file as uint8 grayscale (H, W).

    PNG, JPEG and PGM/PPM through Pillow (colour is converted to luminance, 16-bit scaled to
    8-bit); ``.npy`` arrays of shape (H, W), (H, W, 1) or (H, W, 3), either uint8, or float in
    [0, 1] or [0, 255].

    Raises:
        BadFrame: if the file is empty, truncated, not an image, or has an unusable shape/range.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise BadFrame(f"{path.name}: cannot read ({err.strerror})") from err
    if size == 0:
        raise BadFrame(f"{path.name}: empty file")
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    return _read_image(path)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img, dtype=np.float64)
                top = 65535.0 if array.max(initial=0) > 255 else 255.0
                return np.clip(np.round(array * 255.0 / top), 0, 255).astype(np.uint8)
            if img.mode != "L":
                img = img.convert("L")  # ITU-R 601 luminance
            return np.asarray(img, dtype=np.uint8).copy()
    except UnidentifiedImageError as err:
        raise BadFrame(f"{path.name}: not an image Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadFrame(f"{path.name}: corrupt or truncated image ({err})") from err


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise BadFrame(f"{path.name}: not a readable .npy array ({err})") from err
    return to_grayscale_uint8(array, path.name)


def to_grayscale_uint8(array: np.ndarray, name: str = "frame") -> np.ndarray:
    """Turn an (H, W), (H, W, 1) or (H, W, 3) array into uint8 grayscale.

    Raises:
        BadFrame: for another shape, a non-numeric dtype, NaN, or values outside [0, 255].
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] in (1, 3):
        if array.shape[-1] == 3:
            array = array.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        else:
            array = array[..., 0]
    if array.ndim != 2 or min(array.shape) == 0:
        raise BadFrame(f"{name}: shape {array.shape}, expected (H, W), (H, W, 1) or (H, W, 3)")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iuf":
        raise BadFrame(f"{name}: dtype {array.dtype} is not numeric")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise BadFrame(f"{name}: contains NaN or inf")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise BadFrame(f"{name}: values {low:g}..{high:g}, expected 0..255 (or 0..1 floats)")
    if array.dtype.kind == "f" and high <= 1.0:
        array = array * 255.0
    return np.round(array).astype(np.uint8)


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every PNG ends with


def looks_complete(path: Path) -> bool:
    """Whether a frame file looks fully written, judged from its header and its last bytes.

    PNG must end with its IEND chunk, JPEG with the end-of-image marker, a binary PGM/PPM or an
    .npy must be as long as its header says. Other formats are assumed complete. This is cheap
    (no decoding) and lets a finished file be taken at once instead of after a settle delay.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return False
            handle.seek(max(0, size - 16))
            tail = handle.read()
    except OSError:
        return False
    suffix = path.suffix.lower()
    if suffix == ".png":
        return tail.endswith(PNG_END)
    if suffix in (".jpg", ".jpeg"):
        return tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    if suffix == ".npy":
        return size >= _npy_expected_size(path)
    if suffix in (".pgm", ".ppm", ".pnm"):
        return size >= _pnm_expected_size(head)
    return True


def _npy_expected_size(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
            return handle.tell() + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError, EOFError):
        return 1 << 62  # header not there yet (or never will be: the grace period decides)


def _pnm_expected_size(head: bytes) -> int:
    """Size of a binary P5/P6 file from its header (comments allowed), or 0 if not binary PNM."""
    if head[:2] not in (b"P5", b"P6"):
        return 0
    tokens, pos = [], 2
    while len(tokens) < 3 and pos < len(head):
        while pos < len(head) and head[pos : pos + 1].isspace():
            pos += 1
        if head[pos : pos + 1] == b"#":
            while pos < len(head) and head[pos : pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(head) and not head[pos : pos + 1].isspace():
            pos += 1
        if start < pos:
            tokens.append(head[start:pos])
    if len(tokens) < 3 or pos >= len(head):
        return 1 << 62
    try:
        width, height, maxval = (int(t) for t in tokens)
    except ValueError:
        return 0  # not a header we understand: let the decoder judge
    channels = 3 if head[:2] == b"P6" else 1
    return pos + 1 + width * height * channels * (2 if maxval > 255 else 1)


class CameraDir:
    """Frames from a camera directory, in name order; optionally keeps watching for new ones.

    A file is taken as soon as it looks complete (:func:`looks_complete`); one that does not is
    left alone while it keeps changing and taken anyway (to be reported as bad) once it has not
    changed for ``grace_s``. Hidden files and temporary names are never taken.

    Args:
        directory: where the camera writes frames.
        watch: after the frames already there, wait for new ones until :meth:`stop` is called
            (or ``idle_timeout`` passes without a new frame).
        poll_s: how often the directory is listed while watching.
        grace_s: how long an incomplete-looking file may stay unchanged before it is taken.
        max_queue: live frames waiting beyond this many are dropped, oldest first (the frames
            already in the directory at start are a recording and are never dropped).
        idle_timeout: stop watching after this many seconds without a new frame (None: never).

    Raises:
        ValueError: if ``directory`` is not a directory.
    """

    def __init__(
        self,
        directory: str | Path,
        watch: bool = False,
        poll_s: float = 0.02,
        grace_s: float = 2.0,
        max_queue: int = 2,
        idle_timeout: float | None = None,
    ):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"camera directory {self.directory} does not exist or is not a folder")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.watch = watch
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.max_queue = max_queue
        self.idle_timeout = idle_timeout
        self.dropped = 0
        self._stop = threading.Event()
        self._seen: set[str] = set()
        self._incomplete: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, since)
        self._index = 0

    def stop(self) -> None:
        """Ask the source to end after the frame in hand (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def __iter__(self) -> Iterator[Frame]:
        for path in self._ready():
            if self._stop.is_set():
                return
            yield self._take(path)
        if self.watch:
            yield from self._follow()

    def _follow(self) -> Iterator[Frame]:
        queue: deque[Path] = deque()
        last_new = time.monotonic()
        while not self._stop.is_set():
            queued = {p.name for p in queue}
            for path in self._ready(exclude=queued):
                queue.append(path)
                last_new = time.monotonic()
            while len(queue) > self.max_queue:
                old = queue.popleft()
                self._seen.add(old.name)
                self.dropped += 1
                self._index += 1
                log.debug("dropped %s: the model is behind the camera", old.name)
            if queue:
                yield self._take(queue.popleft())
                continue
            if self._incomplete:
                last_new = time.monotonic()  # a file is arriving
            if self.idle_timeout is not None and time.monotonic() - last_new > self.idle_timeout:
                return
            self._stop.wait(self.poll_s)

    def _ready(self, exclude: set[str] = frozenset()) -> list[Path]:
        """New files to take now, in name order (in watch mode, only complete-looking ones)."""
        fresh = sorted(
            (p for p in self._list() if p.name not in self._seen and p.name not in exclude),
            key=lambda p: p.name,
        )
        if not self.watch:
            return fresh
        ready, now = [], time.monotonic()
        for path in fresh:
            if looks_complete(path):
                self._incomplete.pop(path.name, None)
                ready.append(path)
                continue
            try:
                st = path.stat()
            except OSError:
                self._incomplete.pop(path.name, None)  # deleted or renamed meanwhile
                continue
            key = (st.st_size, st.st_mtime_ns)
            previous = self._incomplete.get(path.name)
            if previous is None or previous[:2] != key:
                self._incomplete[path.name] = (*key, now)  # new or still changing
            elif now - previous[2] >= self.grace_s:
                del self._incomplete[path.name]
                ready.append(path)  # stalled: take it; the reader will say what is wrong
        return ready

    def _list(self) -> list[Path]:
        try:
            with os.scandir(self.directory) as entries:
                return [
                    Path(e.path)
                    for e in entries
                    if is_candidate(Path(e.name)) and e.is_file(follow_symlinks=True)
                ]
        except OSError as err:
            log.warning("cannot list %s: %s", self.directory, err)
            return []

    def _take(self, path: Path) -> Frame:
        self._seen.add(path.name)
        index, self._index = self._index, self._index + 1
        t0 = time.perf_counter_ns()
        try:
            image, error = read_frame(path), None
        except BadFrame as err:
            image, error = None, str(err)
        return Frame(
            name=path.stem,
            image=image,
            error=error,
            path=path,
            index=index,
            read_us=(time.perf_counter_ns() - t0) / 1e3,
        )


class NpzFrames:
    """Frames (and labels, when present) from an npz, e.g. an evaluation set copied to the rover.

    Args:
        path: the npz.
        key: the array of frames, (N, H, W); by default ``test_set``, else ``images``, else
            ``training_set`` (whose first channel, if it has two, is the frame).
        labels_key: the array of labels (N, H, W); by default ``test_labels``, else ``labels``, else
            the second channel of a (N, H, W, 2) ``training_set``.
        limit: at most this many frames.

    Raises:
        ValueError: if the file has no usable array.
    """

    FRAME_KEYS = ("test_set", "images", "training_set")
    LABEL_KEYS = ("test_labels", "labels")

    def __init__(
        self,
        path: str | Path,
        key: str | None = None,
        labels_key: str | None = None,
        limit: int | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"no npz at {self.path}")
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys = list(data.keys())
                key = key or next((k for k in self.FRAME_KEYS if k in keys), None)
                if key not in keys:
                    raise ValueError(
                        f"{self.path.name} has no frame array {key or self.FRAME_KEYS}; "
                        f"it holds {keys}"
                    )
                frames = data[key]
                labels = None
                labels_key = labels_key or next((k for k in self.LABEL_KEYS if k in keys), None)
                if labels_key in keys:
                    labels = data[labels_key]
                elif frames.ndim == 4 and frames.shape[-1] == 2:  # the course's training_set
                    labels = frames[..., 1]
                if frames.ndim == 4 and frames.shape[-1] == 2:
                    frames = frames[..., 0]
        except (OSError, EOFError) as err:
            raise ValueError(f"cannot read {self.path.name}: {err}") from err
        if frames.ndim != 3:
            raise ValueError(f"{self.path.name}:{key} has shape {frames.shape}, expected (N, H, W)")
        if labels is not None and labels.shape != frames.shape:
            raise ValueError(
                f"{self.path.name}: labels {labels.shape} do not match frames {frames.shape}"
            )
        n = len(frames) if limit is None else min(limit, len(frames))
        self.frames = frames[:n]
        self.labels = None if labels is None else np.asarray(labels[:n]).astype(np.uint8)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        for i, raw in enumerate(self.frames):
            t0 = time.perf_counter_ns()
            name = f"{i:06d}"
            try:
                image, error = to_grayscale_uint8(raw, name), None
            except BadFrame as err:
                image, error = None, str(err)
            label = None if self.labels is None else self.labels[i]
            yield Frame(
                name, image, error, None, i, (time.perf_counter_ns() - t0) / 1e3, label=label
            )


LABEL_FORMATS = ("auto", "ai4mars", "model")
# AI4Mars label values 0-3 (soil, bedrock, sand, big rock) are the Mars label set's 1-4; its 255
# (unlabelled) is the ignored label 0.
_AI4MARS_TO_MARS = np.full(256, 255, np.uint8)
_AI4MARS_TO_MARS[[0, 1, 2, 3, 255]] = [1, 2, 3, 4, 0]


class LabelReader:
    """True label maps for frames, from a folder of label files named like the frames.

    Two formats are read: the model's own label values (``model``: PNG or .npy with values
    0..C-1) and AI4Mars' (``ai4mars``: PNG with 0-3 soil, bedrock, sand, big rock and 255
    unlabelled, mapped to the Mars labels 1-4 and 0). ``auto`` decides once per folder: AI4Mars
    when the folder looks like the release's (``labels/train``, ``masked-gold-*``, files named
    ``<id>_merged.png``) or a sampled label holds 255.

    A frame ``NAME`` finds ``NAME.png``, ``NAME_merged.png`` (the AI4Mars expert labels) or
    ``NAME.npy``.

    Args:
        folder: the label folder.
        num_classes: the model's class count (values must lie below it).
        fmt: ``auto``, ``ai4mars`` or ``model``.

    Raises:
        ValueError: if the folder does not exist or the format is unknown.
    """

    SUFFIXES = (".png", "_merged.png", ".npy", ".PNG")

    def __init__(self, folder: str | Path, num_classes: int, fmt: str = "auto"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"labels folder {self.folder} does not exist or is not a folder")
        if fmt not in LABEL_FORMATS:
            raise ValueError(f"unknown label format {fmt!r}; valid: {', '.join(LABEL_FORMATS)}")
        self.num_classes = num_classes
        self.format = detect_label_format(self.folder) if fmt == "auto" else fmt
        if self.format == "ai4mars" and num_classes != 5:
            raise ValueError(
                f"AI4Mars labels (soil, bedrock, sand, big rock, unlabelled) need a 5-class model; "
                f"this one has {num_classes} classes"
            )
        self.found = 0
        self.missing = 0

    def find(self, name: str) -> Path | None:
        """The label file of frame ``name``, if any."""
        for suffix in self.SUFFIXES:
            candidate = self.folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
        return None

    def read_for(self, name: str) -> np.ndarray | None:
        """The label map of frame ``name`` (None when it has no label file).

        Raises:
            BadFrame: if the label file cannot be read or holds values outside the format's.
        """
        path = self.find(name)
        if path is None:
            self.missing += 1
            return None
        self.found += 1
        return self.read(path)

    def read(self, path: Path) -> np.ndarray:
        """One label file as uint8 (H, W) in the model's label values.

        Raises:
            BadFrame: if it cannot be read or holds values outside the format's.
        """
        labels = _read_label_array(path)
        if self.format == "ai4mars":
            mapped = _AI4MARS_TO_MARS[np.clip(labels, 0, 255).astype(np.intp)]
            if labels.size and (labels.min() < 0 or labels.max() > 255 or (mapped == 255).any()):
                bad = sorted(set(np.unique(labels).tolist()) - {0, 1, 2, 3, 255})
                raise BadFrame(
                    f"{path.name}: values {bad[:6]}; AI4Mars labels are 0-3 and 255 (unlabelled)"
                )
            return mapped
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            hint = " (AI4Mars labels? pass --label-format ai4mars)" if labels.max() == 255 else ""
            raise BadFrame(
                f"{path.name}: labels {labels.min()}..{labels.max()}, expected "
                f"0..{self.num_classes - 1}{hint}"
            )
        return labels.astype(np.uint8)

    def describe(self) -> str:
        what = (
            "AI4Mars values (0-3 soil, bedrock, sand, big rock; 255 unlabelled)"
            if self.format == "ai4mars"
            else f"model values 0..{self.num_classes - 1}"
        )
        return f"labels in {self.folder} read as {what}"


def detect_label_format(folder: Path, sample: int = 16) -> str:
    """``ai4mars`` or ``model`` for a label folder (see :class:`LabelReader`)."""
    parts = [p.lower() for p in folder.resolve().parts]
    if "masked-gold" in "/".join(parts) or parts[-2:] == ["labels", "train"]:
        return "ai4mars"
    try:
        with os.scandir(folder) as entries:
            names = [e.name for _, e in zip(range(4 * sample), entries)]
    except OSError:
        return "model"
    if any(n.endswith("_merged.png") for n in names):
        return "ai4mars"
    for name in [n for n in names if n.lower().endswith(".png")][:sample]:
        try:
            if (_read_label_array(folder / name) == 255).any():
                return "ai4mars"
        except BadFrame:
            continue
    return "model"


def _read_label_array(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise BadFrame(f"{path.name}: not a readable .npy array ({err})") from err
    else:
        from PIL import Image

        try:
            with Image.open(path) as img:
                labels = np.asarray(img)
        except OSError as err:
            raise BadFrame(f"{path.name}: cannot read the label image ({err})") from err
    labels = np.squeeze(np.asarray(labels))
    if labels.ndim != 2:
        raise BadFrame(f"{path.name}: label shape {labels.shape}, expected (H, W)")
    if labels.dtype.kind not in "iub":
        raise BadFrame(f"{path.name}: label dtype {labels.dtype}, expected integers")
    return labels
