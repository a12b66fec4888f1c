"""Keep an endless run's resident memory flat: give the C allocator's free memory back.

On a long run the Python objects the loop holds stay constant (traced with tracemalloc:
3.87 MiB after 10,000 frames and 3.88 MiB after 20,000), yet resident memory crept by about
1.5 MiB per 50,000 frames (``report/soak/``): glibc's allocator keeps memory that was freed (numpy arrays, decoded
frames, PNG buffers, made and freed by three threads, each with its own arena) for later use
instead of returning it, and the pieces it keeps fragment. ``malloc_trim(0)`` returns every free
page of every arena; called every :data:`TRIM_EVERY` frames (about a millisecond) it bounds the
footprint: over a million frames the peak per 100,000 frames stays within 0.84 MiB instead of
growing about 30 (``benchmarks/soak.py``); single samples scatter over ~2.6 MiB as they catch the
allocator between two trims. Elsewhere than glibc (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
TRIM_EVERY = 1000  # frames between trims


def _malloc_trim():
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class AllocatorTrim:
    """Calls ``malloc_trim(0)`` every ``every`` frames (see the module).

    Args:
        every: frames between trims (0: never).
    """

    def __init__(self, every: int = TRIM_EVERY):
        self.every = every
        self._trim = _malloc_trim() if every else None
        self._count = 0
        self.trims = 0

    def frame(self) -> None:
        """Count one frame; trim when it is time."""
        if self._trim is None:
            return
        self._count += 1
        if self._count >= self.every:
            self._count = 0
            self._trim(0)
            self.trims += 1


__all__ = ["TRIM_EVERY", "AllocatorTrim"]
