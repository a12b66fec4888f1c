"""Frame sources: a camera directory (the frames there, then new ones) and an npz array.

A camera on the rover writes one image file per frame into a directory. :class:`CameraDir`
takes the files already there in name order and, with ``watch=True``, follows new ones for as
long as the run lasts:

- **inotify** (through the kept ``watchdog`` library, on Linux): a file is taken when its writer
  closes it or renames it into place, so a writer may pause for any time mid-file, at a cost per
  frame that does not depend on how many files the folder holds. Any file name works, and a
  camera that reuses a name gets every write processed. A file that arrives without a close
  (a hard link, a move from another file system) is taken once it looks complete, or after
  ten grace periods without a change.
- **polling** (the fallback where inotify is not available): the folder is listed when its
  modification time changes (and while that time is recent, as coarse file-system clocks can
  hide a second change in the same tick), which costs time in proportion to the folder's size;
  only names after the last one taken are new (cameras name frames by time or counter).

A file that does not look complete yet (a PNG's closing chunk, a JPEG's end marker after its last
segment, the length an .npy or PGM header announces) waits; one that stops changing for
``grace_s`` is taken anyway. A frame that fails to decode is retried once, ``grace_s`` later or
as soon as it changes, before it is reported as bad. Anything that is not a regular file (a
FIFO, a device, a link to nothing) is reported as bad without being opened.

Hidden files and temporary names are never taken. When the model is slower than the camera,
only the newest ``max_queue`` live frames wait; older ones are dropped and counted (the files
stay on disk). Everything the source remembers is bounded, whatever the length of the stream.

Readers refuse what could exhaust a rover's memory before decoding it: frames with more than
``max_pixels`` pixels (read from the header), decompression bombs. Frames above
:data:`FULL_DECODE_PIXELS` are decoded reduced (JPEG DCT scaling, else a box reduction), and no
float64 copy of a frame is ever made. Every reader returns a uint8 grayscale array (H, W);
anything unreadable raises :class:`BadFrame`, which the pipeline logs and skips.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import stat
import struct
import threading
import time
import warnings
from collections import OrderedDict, deque
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
# Frames with more pixels are refused unread (--max-frame-pixels): 50 MP is 2.5x a 20 MP camera.
DEFAULT_MAX_PIXELS = 50_000_000
# Frames with more pixels are decoded reduced by an integer factor (a NAVCAM frame is 1 MP, so
# every frame a model was trained on is decoded whole, exactly as in training).
FULL_DECODE_PIXELS = 16_000_000
# Bounds of the bookkeeping: files waiting to look complete, and failed files watched for change.
MAX_PENDING = 4096
MAX_FAILED = 1024
# inotify: a file that never gets a close event is taken after this many grace periods unchanged
UNCLOSED_STALL = 10


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
        reduced: the factor a very large frame was reduced by when decoding (1: not reduced).
    """

    name: str
    image: np.ndarray | None
    error: str | None = None
    path: Path | None = None
    index: int = 0
    read_us: float = 0.0
    label: np.ndarray | None = None
    reduced: int = 1


def is_candidate(name: str | Path) -> bool:
    """Whether a directory entry looks like a finished frame file (by its name only)."""
    name = Path(name).name
    if name.startswith((".", "~")) or name.endswith("~"):
        return False
    suffixes = [s.lower() for s in Path(name).suffixes]
    if any(s in TEMP_SUFFIXES for s in suffixes):
        return False
    return bool(suffixes) and suffixes[-1] in IMAGE_SUFFIXES


# ----------------------------------------------------------------------------------------------
# Reading one frame.


def read_frame(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one frame file as uint8 grayscale (H, W).

    PNG, JPEG and PGM/PPM through Pillow (colour is converted to luminance, 16-bit scaled to
    8-bit); ``.npy`` arrays of shape (H, W), (H, W, 1) or (H, W, 3), either uint8, uint16
    (scaled), or float in [0, 1] or [0, 255].

    Args:
        path: the file.
        max_pixels: refuse frames with more pixels than this, before decoding them.

    Raises:
        BadFrame: if the file is empty, truncated, not an image, too large, or has an unusable
            shape or range.
    """
    image, _ = read_frame_reduced(Path(path), max_pixels)
    return image


def read_frame_reduced(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int]:
    """:func:`read_frame`, also returning the factor a very large frame was reduced by."""
    if _regular_file(path).st_size == 0:
        raise BadFrame(f"{path.name}: empty file")
    if path.suffix.lower() == ".npy":
        return _read_npy(path, max_pixels)
    return _read_image(path, max_pixels)


def _why(err: OSError) -> str:
    return err.strerror or str(err)


def _regular_file(path: Path) -> os.stat_result:
    """The file's status, following links.

    Raises:
        BadFrame: when it cannot be reached, or is not a regular file (opening a FIFO or a
            device would block the run).
    """
    try:
        st = os.stat(path)
    except OSError as err:
        raise BadFrame(f"{path.name}: cannot read ({_why(err)})") from err
    if not stat.S_ISREG(st.st_mode):
        raise BadFrame(f"{path.name}: not a regular file (a FIFO, device or folder); not opened")
    return st


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> int:
    """The integer reduction factor for a frame of this size (1: decode whole).

    Raises:
        BadFrame: when the frame is larger than ``max_pixels``.
    """
    pixels = width * height
    if pixels > max_pixels:
        raise BadFrame(
            f"{name}: {width}x{height} is {pixels / 1e6:.0f} MP, over the cap of "
            f"{max_pixels / 1e6:.0f} MP (--max-frame-pixels); not decoded"
        )
    return max(1, math.ceil(math.sqrt(pixels / FULL_DECODE_PIXELS)))


def _read_image(path: Path, max_pixels: int) -> tuple[np.ndarray, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # our own cap decides; Pillow's bomb warning (89-179 MP) would only print
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                width = img.size[0]
                factor = _check_pixels(path.name, *img.size, max_pixels)
                if factor > 1 and img.format == "JPEG":
                    # DCT scaling decodes at 1/2, 1/4 or 1/8 size: never the whole frame
                    img.draft("L", (img.size[0] // factor, img.size[1] // factor))
                img.load()  # decode now: a truncated file fails here, not later
                grey = _grey(img)
        rest = math.ceil(math.sqrt(grey.size / FULL_DECODE_PIXELS))
        if rest > 1:  # box-reduce the 8-bit frame (Pillow cannot reduce every mode)
            grey = np.asarray(Image.fromarray(grey).reduce(rest))
        return grey, max(1, round(width / grey.shape[1]))
    except Image.DecompressionBombError as err:
        raise BadFrame(f"{path.name}: a decompression bomb ({err}); not decoded") from err
    except UnidentifiedImageError as err:
        raise BadFrame(f"{path.name}: not an image Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadFrame(f"{path.name}: corrupt or truncated image ({err})") from err


def _grey(img) -> np.ndarray:
    """A decoded Pillow image as uint8 grey, without float64 copies."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img)
        return _scale_16bit(np.clip(array, 0, 65535) if array.dtype.kind == "i" else array)
    if img.mode == "F":
        return to_grayscale_uint8(np.asarray(img), "frame")
    if img.mode != "L":
        img = img.convert("L")  # ITU-R 601 luminance
    return np.array(img, dtype=np.uint8)


def _scale_16bit(array: np.ndarray) -> np.ndarray:
    """16-bit grey to 8-bit: 0..65535 -> 0..255 (rounded) when the data uses more than 8 bits,
    a million pixels at a time (a 50 MP frame needs no 200 MB temporary)."""
    if not array.size or int(array.max()) <= 255:
        return array.astype(np.uint8)
    flat = np.ascontiguousarray(array).reshape(-1)
    out = np.empty(flat.size, np.uint8)
    for start in range(0, flat.size, 1 << 20):
        chunk = flat[start : start + (1 << 20)].astype(np.uint32)
        out[start : start + (1 << 20)] = (chunk * 255 + 32767) // 65535
    return out.reshape(array.shape)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) from an .npy header.

    Raises:
        OSError, ValueError, EOFError: for a file that is not (yet) an .npy.
    """
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(handle)
        return tuple(shape), dtype, handle.tell()


def _read_npy(path: Path, max_pixels: int) -> tuple[np.ndarray, int]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
    except (OSError, ValueError, EOFError) as err:
        raise BadFrame(f"{path.name}: not a readable .npy array ({err})") from err
    if array.ndim >= 2:
        _check_pixels(path.name, int(array.shape[1]), int(array.shape[0]), max_pixels)
    # a copy: the camera may rewrite the file while the frame is in use
    return np.array(to_grayscale_uint8(array, path.name), copy=True), 1


def to_grayscale_uint8(array: np.ndarray, name: str = "frame") -> np.ndarray:
    """Turn an (H, W), (H, W, 1) or (H, W, 3) array into uint8 grayscale.

    uint8 is taken as it is, uint16 is scaled to 8 bits like a 16-bit PNG, other integers must
    lie in 0..255, floats in [0, 1] (scaled) or [0, 255]. Colour becomes ITU-R 601 luminance.
    No float64 copy is made.

    Raises:
        BadFrame: for another shape, a non-numeric dtype, NaN, or values out of range.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 3:
        array = _luminance(array, name)
    if array.ndim != 2 or min(array.shape) == 0:
        raise BadFrame(f"{name}: shape {array.shape}, expected (H, W), (H, W, 1) or (H, W, 3)")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind not in "iuf":
        raise BadFrame(f"{name}: dtype {array.dtype} is not numeric")
    if array.dtype == np.uint16:
        return _scale_16bit(array)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise BadFrame(f"{name}: contains NaN or inf")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise BadFrame(f"{name}: values {low:g}..{high:g}, expected 0..255 (or 0..1 floats)")
    if array.dtype.kind in "iu":
        return array.astype(np.uint8)
    if high <= 1.0:
        array = array * np.float32(255.0)
    return np.rint(array).astype(np.uint8)


def _luminance(rgb: np.ndarray, name: str) -> np.ndarray:
    """ITU-R 601 luminance of an (H, W, 3) array, in the array's own range."""
    if rgb.dtype.kind in "iu":
        if rgb.size and (int(rgb.min()) < 0 or int(rgb.max()) > 65535):
            raise BadFrame(f"{name}: colour values outside 0..65535")
        # fixed point, like Pillow's "L" conversion: (299 R + 587 G + 114 B) / 1000, rounded
        weights = np.array([299, 587, 114], np.uint32)  # 65535 * 1000 fits in 32 bits
        grey = (rgb.astype(np.uint32) @ weights + 500) // 1000
        return grey.astype(np.uint16 if rgb.dtype.itemsize > 1 else np.uint8)
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


# ----------------------------------------------------------------------------------------------
# Is a file complete?


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every PNG ends with


def looks_complete(path: Path) -> bool:
    """Whether a frame file looks fully written, judged from its header and its last bytes.

    PNG must end with its IEND chunk (give or take a short trailer); JPEG must hold every segment its headers announce (an
    embedded EXIF thumbnail ends with an end-of-image marker of its own) and end with the
    end-of-image marker after the scan; a binary PGM/PPM or an .npy must be as long as its header
    says. Other formats are assumed complete. This is cheap (no decoding).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return True  # never opened (a FIFO would block): taken, and reported bad
        with open(path, "rb") as handle:
            head = handle.read(256)
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return False
            handle.seek(max(0, size - 64))
            tail = handle.read()
            suffix = path.suffix.lower()
            if suffix in (".jpg", ".jpeg"):
                return tail[-16:].rstrip(b"\x00").endswith(b"\xff\xd9") and _jpeg_segments_whole(
                    handle, size
                )
    except OSError:
        return False
    if suffix == ".png":  # some cameras append a few bytes after the last chunk
        return PNG_END in tail
    if suffix == ".npy":
        return size >= _npy_expected_size(path)
    if suffix in (".pgm", ".ppm", ".pnm"):
        return size >= _pnm_expected_size(head)
    return True


def _jpeg_segments_whole(handle, size: int) -> bool:
    """Walk the JPEG marker segments up to the first scan: each must fit in the file, and the
    scan must start before the file's end marker."""
    handle.seek(0)
    if handle.read(2) != b"\xff\xd8":
        return True  # not a JPEG we understand: let the decoder judge
    pos = 2
    while pos + 4 <= size:
        handle.seek(pos)
        marker = handle.read(4)
        if marker[0] != 0xFF:
            return True  # not a segment: let the decoder judge
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:  # stand-alone markers
            pos += 2
            continue
        end = pos + 2 + struct.unpack(">H", marker[2:4])[0]
        if end > size:
            return False  # a segment (e.g. EXIF with its thumbnail) runs past the end
        if marker[1] == 0xDA:  # start of scan: entropy-coded data follows
            return end < size - 2
        pos = end
    return False


def _npy_expected_size(path: Path) -> int:
    try:
        shape, dtype, offset = _npy_header(path)
        return offset + int(np.prod(shape)) * dtype.itemsize
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


# ----------------------------------------------------------------------------------------------
# A camera directory.


Identity = tuple[int, int, int]  # (inode, size, mtime_ns): a rewrite or a replacement changes it


def _identity(path: Path) -> Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class _Pending:
    """A file seen but not taken yet."""

    path: Path
    identity: Identity | None
    changed: float  # monotonic time of its last change
    closed: bool  # its writer closed it (inotify), so waiting longer will not complete it
    retry_at: float | None = None  # it failed to decode: taken again then, or when it changes


class CameraDir:
    """Frames from a camera directory, in name order; optionally keeps following new ones.

    Args:
        directory: where the camera writes frames.
        watch: after the frames already there, follow new ones until :meth:`stop` is called
            (or ``idle_timeout`` passes without a new frame).
        poll_s: how long the follow loop waits for news before checking again.
        grace_s: polling: how long a file that does not look complete may stay unchanged before
            it is taken (and reported bad); also how long a frame that fails to decode right
            after being written is given to complete.
        max_queue: live frames waiting beyond this many are dropped, oldest first (the frames
            already in the directory at start are a recording and are never dropped).
        idle_timeout: stop following after this many seconds without a new frame (None: never).
        max_pixels: frames with more pixels are refused unread.
        notify: ``auto`` (inotify when available, else polling), ``inotify`` or ``poll``.

    Raises:
        ValueError: if ``directory`` is not a directory, or an option is out of range.
    """

    def __init__(
        self,
        directory: str | Path,
        watch: bool = False,
        poll_s: float = 0.05,
        grace_s: float = 2.0,
        max_queue: int = 2,
        idle_timeout: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        notify: str = "auto",
    ):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"camera directory {self.directory} does not exist or is not a folder")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if notify not in ("auto", "inotify", "poll"):
            raise ValueError(f"notify must be auto, inotify or poll, got {notify!r}")
        self.watch = watch
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.max_queue = max_queue
        self.idle_timeout = idle_timeout
        self.max_pixels = max_pixels
        self.notify = notify
        self.mode = "listing"  # then "inotify" or "poll" while following
        self.dropped = 0
        self.idle = False  # the idle timeout ended the stream
        self._stop = threading.Event()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._observer = None
        self._live: deque[tuple[Path, Identity | None]] = deque()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._failed: OrderedDict[str, Identity | None] = OrderedDict()
        self._handed: OrderedDict[str, Identity | None] = OrderedDict()  # recent, for late events
        self._retried: OrderedDict[tuple, None] = OrderedDict()  # (name, identity) retried once
        self._failed_checked = 0.0
        self._mark = ""  # polling: the last name seen; later names are new
        self._dir_mtime: int | None = None
        self._index = 0
        if watch:
            self._start_watching()  # now: an unusable --notify inotify fails before any work

    def stop(self) -> None:
        """Ask the source to end after the frame in hand (safe from a signal handler)."""
        self._stop.set()
        self._events.put(None)  # wake the follow loop at once

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at once on :meth:`stop`; True when stopped."""
        return self._stop.wait(max(0.0, seconds))

    def __iter__(self) -> Iterator[Frame]:
        try:
            if self.watch and self.mode == "inotify" and self._observer is None:
                self._start_watching()  # iterated again: watch again before listing
            backlog = self._listing()
            self._mark = backlog[-1][0].name if backlog else ""
            known = {path.name: ident for path, ident in backlog}  # only while the backlog lasts
            for path, ident in backlog:
                if self._stop.is_set():
                    return
                if self.watch:
                    self._collect(known)  # new arrivals meanwhile: the live queue, bounded
                    ident = _identity(path)
                    if path.name in self._pending or (
                        ident is not None and self._handed.get(path.name) == ident
                    ):
                        continue  # waiting already, or queued when its writer closed it
                    complete = looks_complete(path)
                    latest = _identity(path)
                    if not complete or latest != ident:  # being written, or left half-written
                        self._pending[path.name] = _Pending(path, latest, time.monotonic(), True)
                        continue
                frame = self._take(path, ident)
                if frame is not None:
                    yield frame
            if self.watch:
                yield from self._follow(known)
        finally:
            self._stop_watching()

    # -- following -------------------------------------------------------------------------------

    def _follow(self, known: dict[str, Identity | None]) -> Iterator[Frame]:
        self._collect(known)
        known.clear()  # events from now on are new files (or new writes of a name)
        last_new = time.monotonic()
        while not self._stop.is_set():
            if self._collect(known):
                last_new = time.monotonic()
            if self._live:
                frame = self._take(*self._live.popleft())
                if frame is not None:
                    yield frame
                continue
            if self._arriving():
                last_new = time.monotonic()
            if self.idle_timeout is not None and time.monotonic() - last_new > self.idle_timeout:
                self.idle = True
                return
            self._wait_for_news()

    def _arriving(self) -> bool:
        """Whether a waiting file is still changing, or waits for a retry (not idle)."""
        now = time.monotonic()
        return any(
            now - e.changed < self.grace_s or (e.retry_at is not None and e.retry_at > now)
            for e in self._pending.values()
        )

    def _wait_for_news(self) -> None:
        if self.mode == "inotify":
            try:
                item = self._events.get(timeout=self.poll_s)
            except queue.Empty:
                return
            if item is not None:
                self._events.put(item)  # let _collect handle it, in order
        else:
            self._stop.wait(self.poll_s)

    def _collect(self, known: dict[str, Identity | None]) -> int:
        """Move new and completed files into the live queue; returns how many arrived."""
        now = time.monotonic()
        arrived = []
        for path, closed in self._news():
            ident = _identity(path)
            if known and known.get(path.name, ()) == ident:
                continue  # an event for a file of the backlog, as it was listed
            if ident is not None and self._handed.get(path.name) == ident:
                continue  # a late event (e.g. the close) of a file already queued or taken
            previous = self._pending.get(path.name)
            if previous is not None and previous.identity == ident and not closed:
                continue
            self._pending[path.name] = _Pending(path, ident, now, closed)
            self._pending.move_to_end(path.name)
        for name in list(self._pending):
            entry = self._pending[name]
            ident = _identity(entry.path)
            if ident is None and not os.path.lexists(entry.path):
                del self._pending[name]  # deleted or renamed away meanwhile
                continue
            if ident != entry.identity:
                entry.identity, entry.changed, entry.retry_at = ident, now, None
            if entry.retry_at is not None:  # failed once, unchanged since: retry on time
                ready = now >= entry.retry_at
            else:
                ready = ident is None or looks_complete(entry.path)  # None: broken link, say so
                latest = _identity(entry.path) if ready and ident is not None else ident
                if latest != ident:  # written to while checked: judged again as its new self
                    # (handed with the old identity, its close event would hand it twice)
                    entry.identity, entry.changed, ready = latest, now, False
            # polling cannot know whether a writer still has the file open: a file that stops
            # changing for grace_s is taken; inotify waits for the close (or the rename), and
            # gives a file that never gets one UNCLOSED_STALL grace periods
            closed = entry.closed or self.mode != "inotify"
            quiet = self.grace_s * (1 if closed else UNCLOSED_STALL)
            if ready or now - entry.changed >= quiet:
                del self._pending[name]
                arrived.append((entry.path, ident))
        while len(self._pending) > MAX_PENDING:  # a flood of files that never complete
            _, entry = self._pending.popitem(last=False)
            arrived.append((entry.path, entry.identity))
        arrived.sort(key=lambda item: item[0].name)
        for path, ident in arrived:
            self._hand(path, ident)
        self._live.extend(arrived)
        while len(self._live) > self.max_queue:  # the model is behind: keep the newest
            old, _ = self._live.popleft()
            self.dropped += 1
            self._index += 1
            log.info("dropped %s: the model is behind the camera", old.name)
        return len(arrived)

    def _news(self) -> list[tuple[Path, bool]]:
        """Files that appeared or were (re)written since the last call: (path, writer closed)."""
        news: list[tuple[Path, bool]] = []
        if self.mode == "inotify":
            while True:
                try:
                    item = self._events.get_nowait()
                except queue.Empty:
                    break
                if item is not None and is_candidate(item[0].name):
                    news.append(item)
            return news
        if self.mode == "poll":
            try:
                mtime = os.stat(self.directory).st_mtime_ns
            except OSError as err:
                log.warning("cannot read %s: %s", self.directory, _why(err))
                return news
            # the folder changed: list it (again while its time is recent: a coarse clock can
            # give two changes the same time)
            if mtime != self._dir_mtime or time.time_ns() - mtime < 2_000_000_000:
                self._dir_mtime = mtime
                fresh = [(p, False) for p, _ in self._listing(after=self._mark)]
                if fresh:
                    self._mark = fresh[-1][0].name
                news += fresh
            news += self._changed_failures()
        return news

    def _changed_failures(self) -> list[tuple[Path, bool]]:
        """Polling: frames that failed and have been rewritten since (checked every grace_s)."""
        now = time.monotonic()
        if not self._failed or now - self._failed_checked < self.grace_s:
            return []
        self._failed_checked = now
        changed = []
        for name, ident in list(self._failed.items()):
            path = self.directory / name
            current = _identity(path)
            if current is None and not os.path.lexists(path):
                del self._failed[name]
            elif current != ident:
                del self._failed[name]
                changed.append((path, False))
        return changed

    # -- listing and taking ----------------------------------------------------------------------

    def _listing(self, after: str = "") -> list[tuple[Path, Identity | None]]:
        """Frame files in the directory (names after ``after`` only), in name order."""
        found = []
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    name = entry.name
                    if name <= after or not is_candidate(name):
                        continue
                    try:
                        folder = entry.is_dir(follow_symlinks=True)
                    except OSError:
                        folder = False  # a link loop or an unreadable target: reported once
                    if not folder:  # files, and FIFOs or devices to report as bad frames
                        found.append(Path(entry.path))
        except OSError as err:
            log.warning("cannot list %s: %s", self.directory, _why(err))
            return []
        found.sort(key=lambda p: p.name)
        return [(p, _identity(p)) for p in found]

    def _hand(self, path: Path, ident: Identity | None) -> None:
        """Remember that this version of ``path`` is queued or taken (late events ignore it)."""
        self._handed[path.name] = ident
        self._handed.move_to_end(path.name)
        if len(self._handed) > MAX_FAILED:
            self._handed.popitem(last=False)

    def _take(self, path: Path, ident: Identity | None) -> Frame | None:
        if self.watch:
            self._hand(path, ident)
        index = self._index
        t0 = time.perf_counter_ns()
        reduced = 1
        try:
            if ident is None and path.is_symlink():
                raise BadFrame(f"{path.name}: a link to nothing readable (loop or missing target)")
            image, reduced = read_frame_reduced(path, self.max_pixels)
            error = None
        except BadFrame as err:
            image, error = None, str(err)
            if self.watch and ident is not None and (path.name, ident) not in self._retried:
                # not decodable yet: one retry, grace_s later (or at once when it changes)
                self._retried[(path.name, ident)] = None
                while len(self._retried) > MAX_FAILED:
                    self._retried.popitem(last=False)
                now = time.monotonic()
                self._pending[path.name] = _Pending(path, ident, now, True, now + self.grace_s)
                return None
            if self.watch:
                self._failed[path.name] = ident
                while len(self._failed) > MAX_FAILED:
                    self._failed.popitem(last=False)
        self._index += 1
        return Frame(
            name=path.stem,
            image=image,
            error=error,
            path=path,
            index=index,
            read_us=(time.perf_counter_ns() - t0) / 1e3,
            reduced=reduced,
        )

    # -- inotify ---------------------------------------------------------------------------------

    def _start_watching(self) -> None:
        self.mode = "poll"
        if self.notify == "poll":
            return
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers.inotify import InotifyObserver
        except ImportError as err:  # not installed, or not Linux
            if self.notify == "inotify":
                raise ValueError(
                    f"inotify is not available here ({err}); install watchdog (Linux) or use "
                    "--notify poll"
                ) from err
            log.info("inotify not available (%s): polling %s", err, self.directory)
            return
        events, folder = self._events, str(self.directory.resolve())

        class Handler(FileSystemEventHandler):
            def on_closed(self, event):  # IN_CLOSE_WRITE: its writer is done
                self._put(event.src_path, True, event.is_directory)

            def on_moved(self, event):  # renamed into place: complete
                self._put(event.dest_path, True, event.is_directory)

            def on_created(self, event):  # a link, or a writer still writing
                self._put(event.src_path, False, event.is_directory)

            def _put(self, path, closed: bool, is_dir: bool) -> None:
                path = os.fsdecode(path)
                if not is_dir and os.path.dirname(path) == folder:
                    events.put((Path(path), closed))

        try:
            observer = InotifyObserver()
            observer.schedule(Handler(), folder, recursive=False)
            observer.start()
        except OSError as err:  # e.g. the inotify watch limit
            if self.notify == "inotify":
                raise ValueError(
                    f"cannot watch {self.directory} with inotify: {_why(err)}"
                ) from err
            log.warning("cannot watch %s with inotify (%s): polling", self.directory, _why(err))
            return
        self._observer, self.mode = observer, "inotify"

    def _stop_watching(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


class NpzFrames:
    """Frames (and labels, when present) from an npz, e.g. an evaluation set copied to the rover.

    Args:
        path: the npz.
        key: the array of frames, (N, H, W); by default ``test_set``, else ``images``, else the
            course file's ``training_set`` (N, 2, H, W), whose channel 0 is the frame.
        labels_key: the array of labels (N, H, W); by default ``test_labels``, else ``labels``,
            else channel 1 of a course-layout ``training_set``.
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
                course = frames.ndim == 4 and frames.shape[1] == 2  # (N, 2, H, W)
                if labels_key in keys:
                    labels = data[labels_key]
                elif course:
                    labels = frames[:, 1]
                if course:
                    frames = frames[:, 0]
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
        max_pixels: label files with more pixels are refused unread.

    Raises:
        ValueError: if the folder does not exist or the format is unknown.
    """

    SUFFIXES = (".png", "_merged.png", ".npy", ".PNG")

    def __init__(
        self,
        folder: str | Path,
        num_classes: int,
        fmt: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"labels folder {self.folder} does not exist or is not a folder")
        if fmt not in LABEL_FORMATS:
            raise ValueError(f"unknown label format {fmt!r}; valid: {', '.join(LABEL_FORMATS)}")
        self.num_classes = num_classes
        self.max_pixels = max_pixels
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
        labels = _read_label_array(path, self.max_pixels)
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


def _read_label_array(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A label file as an integer array, refusing oversized files and bombs before decoding."""
    _regular_file(path)
    if path.suffix.lower() == ".npy":
        try:
            labels = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise BadFrame(f"{path.name}: not a readable .npy array ({err})") from err
        if labels.ndim >= 2:
            _check_pixels(path.name, int(labels.shape[1]), int(labels.shape[0]), max_pixels)
        labels = np.array(labels)
    else:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    _check_pixels(path.name, *img.size, max_pixels)
                    labels = np.asarray(img)
        except Image.DecompressionBombError as err:
            raise BadFrame(f"{path.name}: a decompression bomb ({err}); not decoded") from err
        except (OSError, SyntaxError, ValueError) as err:
            raise BadFrame(f"{path.name}: cannot read the label image ({err})") from err
    labels = np.squeeze(np.asarray(labels))
    if labels.ndim != 2:
        raise BadFrame(f"{path.name}: label shape {labels.shape}, expected (H, W)")
    if labels.dtype.kind not in "iub":
        raise BadFrame(f"{path.name}: label dtype {labels.dtype}, expected integers")
    return labels
