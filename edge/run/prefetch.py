"""Read the next frame while the model runs on this one.

Decoding a frame (a 256x256 NAVCAM JPEG: about half a millisecond) needs no GIL for most of its
time, and the model leaves the other cores idle at ``--threads 1``; so a thread takes frames from
the source one ahead of the loop, and a frame's reading costs the loop only the wait, if any.
Nothing else changes: frames come in the source's order, the source's own bookkeeping (dropped
frames, the retry of a half-written file) runs in that one thread, and an error of the source is
raised in the loop.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

_END = object()


class Prefetch:
    """Iterate ``source`` in a thread, ``depth`` items ahead of the consumer.

    Args:
        source: any iterable (a :class:`edge.io.camera.CameraDir`, an npz source).
        depth: items read ahead (1: the next frame while this one is segmented).

    Call :meth:`close` (or leave the ``with`` block) when stopping early: the thread stops after
    the item in hand, and the source's ``stop`` is called when it has one.
    """

    def __init__(self, source: Iterable, depth: int = 1):
        self.source = source
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._started = False

    def __iter__(self) -> Iterator:
        if not self._started:
            self._started = True
            self._thread.start()
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def _run(self) -> None:
        try:
            for item in self.source:
                if not self._put(item):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            self._put(_Failure(err))
            return
        self._put(_END)

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop reading ahead (the source's iteration is ended, its ``stop`` called)."""
        self._closed.set()
        stop = getattr(self.source, "stop", None)
        if stop is not None and self._thread.is_alive():  # stopped early: end the source
            stop()
        while True:  # unblock a put in progress
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._started:
            self._thread.join(timeout=10)

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error
