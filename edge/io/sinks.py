"""Where results go: label PNGs, colour overlays and a JSONL telemetry stream.

Every file is written atomically: to a hidden temporary name in the same folder, flushed, then
renamed into place, so a process on the rover reading ``masks/`` never sees half a PNG; temporary
files that a killed run left behind are removed at the next start. A telemetry line is one
``write`` on an append-only descriptor, and a write that fails (a full disk) is cut back to the
last whole line, so the file stays valid JSONL whatever happens; lines that could not be written
wait in a bounded queue and are written when the disk has room again. With ``keep`` only the
newest masks and overlays stay, so that an endless run has a bounded footprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.contract.labels import LabelSet, overlay

log = logging.getLogger(__name__)
# Output stems are at most this many bytes: a file name may have 255, and ours get a suffix and
# a temporary prefix/suffix around them.
MAX_STEM_BYTES = 200
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp(\.\w+)?$")  # what atomic_path names


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` (``.NAME.PID.tmp.SUFFIX``, so that writers that
    go by the suffix still work) that becomes ``path`` when the block ends without an error, and
    is removed otherwise. The one way files are written in this project: a reader never sees half
    a file, and a run killed mid-write leaves only a temporary that the next start removes.

    Args:
        path: the file to write.
        durable: also flush the file's data to the disk before the rename (``fsync``), so that
            it survives a power loss; for state files, not for every mask.

    Raises:
        OSError: when the rename fails.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | Path, payload: bytes, durable: bool = False) -> None:
    """Write ``payload`` to ``path`` through :func:`atomic_path`.

    Raises:
        OSError: when it cannot be written (nothing is left behind).
    """
    with atomic_path(path, durable) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)


def atomic_write_json(
    path: str | Path, payload, indent: int | None = 2, durable: bool = False
) -> Path:
    """Write a JSON document atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(Path(path), (json.dumps(payload, indent=indent) + "\n").encode(), durable)
    return Path(path)


def read_json_object(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, unreadable, not JSON or not an
    object (a state file a crash may have left half-written or that another tool replaced)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def remove_stale_temporaries(folder: Path) -> int:
    """Remove the temporary files (``.NAME.PID.tmp``) of processes that no longer run.

    Returns:
        How many were removed.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            os.unlink(entry.path)
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from before a restart of a reused pid: nothing of ours is in flight
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def short_stem(name: str) -> str:
    """``name`` if it fits in :data:`MAX_STEM_BYTES` bytes, else its start and a hash of all."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_STEM_BYTES:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:12]
    head = raw[: MAX_STEM_BYTES - 13].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def png_bytes(array: np.ndarray, level: int = 1) -> bytes:
    """Encode a uint8 (H, W) grayscale or (H, W, 3) RGB array as an 8-bit PNG.

    Written directly (filter type 0 rows, one zlib IDAT chunk): ~20x faster than Pillow's
    encoder for a course-size (64x128) mask (25 us against 0.5 ms here), which matters when the
    model itself takes about a millisecond. Any PNG reader opens the result.
    """
    array = np.ascontiguousarray(array)
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] != 3)
        or 0 in array.shape
    ):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    colour_type = 0 if array.ndim == 2 else 2  # grayscale or RGB
    rows = np.zeros((height, 1 + array[0].size), np.uint8)  # column 0: filter type 0 ("none")
    rows[:, 1:] = array.reshape(height, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + chunk(b"IEND", b"")
    )


class Telemetry:
    """An append-only JSONL file that stays valid JSONL on a full disk and across crashes.

    Args:
        path: the file (appended to; a last line cut by an earlier crash is removed first).
        pending_lines: lines kept in memory while the disk is full; older ones are lost
            (counted in ``lost``).
    """

    def __init__(self, path: Path, pending_lines: int = 1000):
        self.path = Path(path)
        self.pending: deque[bytes] = deque(maxlen=pending_lines)
        self.lost = 0  # lines dropped from a full pending queue
        self._lock = threading.Lock()  # the write-back thread writes, the run closes
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._repair()
        self.last_record = self._last_record()  # what an earlier run of this folder wrote last

    def _repair(self) -> None:
        """Cut a last line left without its newline by a crash (it is not valid JSON)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as handle:
            end, keep = size, 0
            while end > 0:
                start = max(0, end - 65536)
                handle.seek(start)
                block = handle.read(end - start)
                if end == size and block.endswith(b"\n"):
                    return
                cut = block.rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                end = start
        os.ftruncate(self._fd, keep)
        log.warning(
            "%s ended mid-line (an earlier run was cut off): removed its last %d bytes",
            self.path.name,
            size - keep,
        )

    def _last_record(self) -> dict | None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return None
        with open(self.path, "rb") as handle:
            handle.seek(max(0, size - 65536))
            lines = handle.read().splitlines()
        try:
            record = json.loads(lines[-1]) if lines else None
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def write(self, record: dict) -> bool:
        """Append one record; False when the disk refused it (it waits in ``pending``)."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if len(self.pending) == self.pending.maxlen:
                self.lost += 1
            self.pending.append(line)
            while self.pending:
                if not self._write_line(self.pending[0]):
                    return False
                self.pending.popleft()
            return True

    def _write_line(self, line: bytes) -> bool:
        if self._fd is None:  # closed: the line stays pending (counted as unsaved)
            return False
        try:
            before = os.fstat(self._fd).st_size
        except OSError:
            return False
        try:
            written = os.write(self._fd, line)
        except OSError:
            written = -1
        if written == len(line):
            return True
        try:
            os.ftruncate(self._fd, before)  # a partial line would glue onto the next one
        except OSError:
            pass
        return False

    def close(self) -> None:
        self.write_pending()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def write_pending(self) -> None:
        with self._lock:
            while self.pending and self._write_line(self.pending[0]):
                self.pending.popleft()


class OutputWriter:
    """Writes ``masks/<frame>.png`` (label values), ``overlays/<frame>.png`` and telemetry.

    Args:
        out_dir: created if missing.
        overlays: also write colour overlays.
        masks: write the label PNGs (off for a telemetry-only run).
        telemetry: the JSONL file name inside ``out_dir`` (None: no telemetry).
        keep: keep only the newest ``keep`` masks and overlays (None: all).
        label_set: colours of the overlays.
        regions: the region polygons the overlays outline (None: a plain colour wash).
        camera: the camera model whose horizon the overlays draw, or None.

    Raises:
        OSError: when ``out_dir`` or its folders cannot be created or the telemetry opened.
    """

    def __init__(
        self,
        out_dir: str | Path,
        overlays: bool = False,
        masks: bool = True,
        telemetry: str | None = "telemetry.jsonl",
        keep: int | None = None,
        *,
        label_set: LabelSet,
        regions: dict | None = None,
        camera=None,
    ):
        self.out_dir = Path(out_dir)
        self.mask_dir = self.out_dir / "masks" if masks else None
        self.overlay_dir = self.out_dir / "overlays" if overlays else None
        # the bird's-eye grids, when a camera model and a grid make them (with the masks)
        self.grid_dir = self.out_dir / "grid" if masks else None
        self.label_set = label_set
        self.regions, self.camera = regions, camera
        self.mcap = None  # an edge.io.mcap_sink.McapSink: the frames' messages too (--mcap)
        self.keep = keep
        for folder in (self.out_dir, self.mask_dir, self.overlay_dir):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                removed = remove_stale_temporaries(folder)
                if removed:
                    log.info("removed %d temporary files a killed run left in %s", removed, folder)
        self.telemetry = Telemetry(self.out_dir / telemetry) if telemetry else None
        self._stems: OrderedDict[str, str] = OrderedDict()  # recent stem -> source suffix
        self._written: OrderedDict[str, None] = OrderedDict()  # output names, oldest first
        self._last_warning = 0.0

    def output_name(self, name: str, source: Path | None) -> str:
        """A file-system-safe output stem: the frame's (shortened past 200 bytes), or with its
        suffix when a recent frame of another format had the same stem."""
        suffix = source.suffix if source is not None else ""
        previous = self._stems.get(name)
        stem = name if previous in (None, suffix) else f"{name}{suffix.replace('.', '_')}"
        self._stems[name] = previous or suffix
        self._stems.move_to_end(name)
        if len(self._stems) > 4096:  # only recent names can collide in practice
            self._stems.popitem(last=False)
        return short_stem(stem)

    def write_images(
        self,
        name: str,
        image: np.ndarray,
        labels: np.ndarray,
        record: dict | None = None,
        grid: np.ndarray | None = None,
    ) -> None:
        """Write the mask, the grid if any and, if asked, the overlay for one frame.

        Args:
            record: the frame's telemetry record: what the overlay draws (regions, rocks,
                hazard state); None: a plain colour wash.
            grid: the frame's bird's-eye grid (uint8 cells), written with the mask.

        Raises:
            OSError: when a file cannot be written (e.g. a full disk); nothing half-written
                is left.
        """
        if self.mask_dir is not None:
            atomic_write_bytes(self.mask_dir / f"{name}.png", png_bytes(labels))
            if grid is not None:
                if not self.grid_dir.is_dir():  # made with the first grid: most runs have none
                    self.grid_dir.mkdir()
                atomic_write_bytes(self.grid_dir / f"{name}.png", png_bytes(grid))
        if self.overlay_dir is not None:
            tinted = overlay(image, labels, label_set=self.label_set)
            if record is not None and self.regions is not None and "hazard" in record:
                from edge.io.annotate import annotate

                horizon = None if self.camera is None else self.camera.horizon_row(labels.shape)
                tinted = annotate(tinted, record, self.regions, self.label_set, horizon)
            atomic_write_bytes(self.overlay_dir / f"{name}.png", png_bytes(tinted))
        if self.mcap is not None and record is not None:
            self.mcap.write(record, image, labels)
        if self.keep is not None and (self.mask_dir or self.overlay_dir):
            self._written[name] = None
            self._written.move_to_end(name)  # a reused name is the newest, not the oldest
            while len(self._written) > self.keep:
                self._forget(self._written.popitem(last=False)[0])

    def _forget(self, name: str) -> None:
        for folder in (self.mask_dir, self.overlay_dir, self.grid_dir):
            if folder is not None:
                try:
                    (folder / f"{name}.png").unlink(missing_ok=True)
                except OSError as err:
                    log.debug("could not remove %s: %s", name, err)

    def log(self, record: dict) -> bool:
        """Append one telemetry record; False when it could not be written yet."""
        return self.telemetry.write(record) if self.telemetry is not None else True

    def write_json(self, filename: str, payload: dict) -> Path:
        """Write a JSON document (e.g. the run summary) atomically and durably into ``out_dir``.

        Raises:
            OSError: when it cannot be written.
        """
        return atomic_write_json(self.out_dir / filename, payload, durable=True)

    def warn_write_failure(self, what: str, err: OSError) -> None:
        """Log a write failure, at most once every 30 s (a full disk fails every frame)."""
        now = time.monotonic()
        if now - self._last_warning >= 30.0:
            self._last_warning = now
            log.warning(
                "cannot write %s in %s: %s (still segmenting)",
                what,
                self.out_dir,
                err.strerror or err,
            )

    def close(self) -> None:
        if self.telemetry is not None:
            self.telemetry.close()
            self.telemetry = None
        if self.mcap is not None:
            try:
                self.mcap.close()
            except OSError as err:
                self.warn_write_failure("the end of the MCAP recording", err)
            self.mcap = None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def consume(path: Path, move_to: Path | None) -> None:
    """Dispose of an input frame the run is done with: move it into ``move_to``, or delete it.

    Raises:
        OSError: when it cannot be moved or deleted.
    """
    if move_to is None:
        path.unlink(missing_ok=True)
        return
    target = move_to / path.name
    try:
        os.replace(path, target)
    except OSError:
        shutil.move(str(path), str(target))  # another file system
