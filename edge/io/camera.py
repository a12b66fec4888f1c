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

A restart resumes: given what an earlier run of the same output handled (``resume``, a
:class:`edge.run.resume.ResumePoint`), the files of the first listing it names, unchanged since,
and those named before all of them are skipped and counted; the names before are not even kept.

Hidden files and temporary names are never taken. When the model is slower than the camera,
only the newest ``max_queue`` live frames wait; older ones are dropped and counted (the files
stay on disk). Everything the source remembers is bounded, whatever the length of the stream.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.io.capture import capture_record
from edge.io.decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    BadFrame,
    Frame,
    decode_frame,
    is_candidate,
    is_transient,
    looks_complete,
    os_reason,
)
from edge.io.pds import LABEL_SUFFIXES

log = logging.getLogger(__name__)


# Bounds of the bookkeeping: files waiting to look complete, and failed files watched for change.
MAX_PENDING = 4096
MAX_FAILED = 1024
# inotify: a file that never gets a close event is taken after this many grace periods unchanged
UNCLOSED_STALL = 10

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
        resume: what an earlier run of the same output handled: those frames of the first
            listing are skipped (counted in ``skipped``).
        dispose: called with each skipped file the earlier run segmented (the run's
            ``--delete-consumed`` or ``--move-consumed``, which a kill may have cut off after
            the frame's line).

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
        resume=None,
        dispose: Callable[[Path], None] | None = None,
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
        self.alive_at = time.monotonic()  # when it last looked for frames (systemd's watchdog)
        self.unknown: dict[str, int] = {}  # files of a type that is not a frame: suffix -> count
        self._unknown_names: OrderedDict[str, None] = OrderedDict()  # each counted once
        self.max_pixels = max_pixels
        self.notify = notify
        self.mode = "listing"  # then "inotify" or "poll" while following
        self.dropped = 0
        self.resume = resume
        self.dispose = dispose
        self.skipped = 0  # frames of the listing an earlier run had handled
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
        """Sleep up to ``seconds``, waking at once on :meth:`stop`; True when stopped. The loop
        paces itself here (``--max-fps``): a deliberate wait that keeps ``alive_at`` fresh."""
        end = time.monotonic() + max(0.0, seconds)
        while True:
            self.alive_at = time.monotonic()
            left = end - self.alive_at
            if left <= 0:
                return self._stop.is_set()
            if self._stop.wait(min(left, 1.0)):
                return True

    def __iter__(self) -> Iterator[Frame]:
        try:
            if self.watch and self.mode == "inotify" and self._observer is None:
                self._start_watching()  # iterated again: watch again before listing
            resume, self.resume = self.resume, None  # the first listing only
            backlog = self._listing(resume=resume)
            self._mark = backlog[-1][0].name if backlog else (resume.floor if resume else "")
            known = {path.name: ident for path, ident in backlog}  # only while the backlog lasts
            backlog = self._resume(backlog, resume)
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

    def _resume(self, backlog: list[tuple[Path, Identity | None]], resume) -> list:
        """The backlog without the frames ``resume`` names (the listing left out those before)."""
        if resume is None:
            return backlog
        keep = []
        for path, ident in backlog:
            if not resume.done(path.name, None if ident is None else ident[2]):
                keep.append((path, ident))
                continue
            self.skipped += 1
            if self.dispose is not None and resume.disposable(path.name):
                self.dispose(path)
        if self.skipped:
            log.info(
                "resuming after %s: skipped the %d frames an earlier run of this output handled "
                "(--reprocess to do them again)",
                resume.last,
                self.skipped,
            )
        return keep

    # -- following -------------------------------------------------------------------------------

    def _follow(self, known: dict[str, Identity | None]) -> Iterator[Frame]:
        self._collect(known)
        known.clear()  # events from now on are new files (or new writes of a name)
        last_new = time.monotonic()
        while not self._stop.is_set():
            self.alive_at = time.monotonic()
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
                elif item is not None:
                    self._not_a_frame(item[0].name)
            return news
        if self.mode == "poll":
            try:
                mtime = os.stat(self.directory).st_mtime_ns
            except OSError as err:
                log.warning("cannot read %s: %s", self.directory, os_reason(err))
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

    def _listing(self, after: str = "", resume=None) -> list[tuple[Path, Identity | None]]:
        """Frame files in the directory (names after ``after`` only), in name order.

        Names before ``resume.floor`` (handled by an earlier run, or left on purpose) are only
        counted in ``skipped``: a restart on a folder of a million handled frames holds none.
        """
        found = []
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    name = entry.name
                    if name <= after:
                        continue
                    if not is_candidate(name):
                        self._not_a_frame(name)
                        continue
                    try:
                        folder = entry.is_dir(follow_symlinks=True)
                    except OSError:
                        folder = False  # a link loop or an unreadable target: reported once
                    if folder:
                        continue
                    if resume is not None and resume.before_floor(name):
                        self.skipped += 1
                        continue
                    found.append(Path(entry.path))  # files, and FIFOs or devices: bad frames
        except OSError as err:
            log.warning("cannot list %s: %s", self.directory, os_reason(err))
            return []
        found.sort(key=lambda p: p.name)
        return [(p, _identity(p)) for p in found]

    def _not_a_frame(self, name: str) -> None:
        """Count a finished file of an unknown type once, and name its type once in the log."""
        if is_transient(name) or name in self._unknown_names or (self.directory / name).is_dir():
            return
        if name.endswith(LABEL_SUFFIXES):  # a PDS label: read with the .IMG it describes
            return
        self._unknown_names[name] = None
        if len(self._unknown_names) > MAX_FAILED:
            self._unknown_names.popitem(last=False)
        suffix = Path(name).suffix.lower() or "(no suffix)"
        if suffix not in self.unknown:
            log.warning(
                "skipping %s: %s files are not frames (frames: %s)",
                name, suffix, ", ".join(sorted(IMAGE_SUFFIXES)),
            )  # fmt: skip
        self.unknown[suffix] = self.unknown.get(suffix, 0) + 1

    def _hand(self, path: Path, ident: Identity | None) -> None:
        """Remember that this version of ``path`` is queued or taken (late events ignore it)."""
        self._handed[path.name] = ident
        self._handed.move_to_end(path.name)
        if len(self._handed) > MAX_FAILED:
            self._handed.popitem(last=False)

    def _take(self, path: Path, ident: Identity | None) -> Frame | None:
        self.alive_at = time.monotonic()
        if self.watch:
            self._hand(path, ident)
        index = self._index
        t0 = time.perf_counter_ns()
        reduced, exif = 1, None
        try:
            if ident is None and path.is_symlink():
                raise BadFrame(f"{path.name}: a link to nothing readable (loop or missing target)")
            image, reduced, exif = decode_frame(path, self.max_pixels)
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
            mtime_ns=None if ident is None else ident[2],
            dropped_before=self.dropped,
            capture=None if image is None else capture_record(path.name, exif,
                                                              None if ident is None else ident[2]),
        )  # fmt: skip

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
                    f"cannot watch {self.directory} with inotify: {os_reason(err)}"
                ) from err
            log.warning(
                "cannot watch %s with inotify (%s): polling", self.directory, os_reason(err)
            )
            return
        self._observer, self.mode = observer, "inotify"

    def _stop_watching(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
