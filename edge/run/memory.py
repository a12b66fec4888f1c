"""Keep an endless run's resident memory flat: one allocator arena, its free memory given back.

On a long run the Python objects the loop holds stay constant (traced with tracemalloc:
3.87 MiB after 10,000 frames and 3.88 MiB after 20,000), yet resident memory crept by about
1.5 MiB per 50,000 frames (``report/soak/``). Two things of glibc's allocator, both seen in
``/proc/self/smaps`` (``benchmarks/memory_growth.py``):

- it keeps memory that was freed (numpy arrays, decoded frames, PNG buffers) for later use
  instead of returning it, and the pieces it keeps fragment. ``malloc_trim(0)`` returns every
  free page; called every :data:`TRIM_EVERY` frames (about a millisecond) it ended the creep of
  about 30 MiB a million frames;
- the read-ahead and write-back threads allocate while the loop's thread does, and glibc gives
  a thread that finds an arena busy a new one (up to 8 per core), each a 64 MiB-aligned heap
  whose first ~0.9 MiB becomes resident and stays: the steps of about 0.9 MiB, now and then, that
  were left after the trims. ``edge-seg run`` asks for one arena (``mallopt(M_ARENA_MAX, 1)``)
  before any thread starts, and the loop asks again (a caller's threads made earlier keep theirs):
  the threads allocate a few buffers a frame, so they share one lock, and the freed buffers are
  reused instead of spread over new heaps. With both, a million frames after 20 restarts stayed
  within 0.25 MiB from the 10,000th on (``benchmarks/soak.py``; 2.6 MiB with the trims alone).

Elsewhere than glibc (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)
TRIM_EVERY = 1000  # frames between trims
ARENA_MAX = 1  # glibc arenas for the whole process (see the module)
M_ARENA_MAX = -8  # mallopt's parameter number for it (malloc.h)


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library, once (find_library runs ldconfig or a compiler, which a stripped image may
    lack: the process's own symbols are then tried)."""
    try:
        found = ctypes.util.find_library("c")
    except OSError:
        found = None
    for name in (found, None):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _libc_function(name: str, argtypes: list):
    libc = _libc()
    function = getattr(libc, name, None) if libc is not None else None
    if function is not None:
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return function


def _malloc_trim():
    return _libc_function("malloc_trim", [ctypes.c_size_t])


def limit_arenas(arenas: int = ARENA_MAX) -> bool:
    """Ask glibc for at most ``arenas`` allocator arenas from now on (before the threads start);
    False where there is no glibc."""
    mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    return bool(mallopt is not None and mallopt(M_ARENA_MAX, arenas))


class AllocatorTrim:
    """Calls ``malloc_trim(0)`` every ``every`` frames (see the module).

    Args:
        every: frames between trims (0: never, and the arenas are left as glibc sets them).
        arenas: the arena limit asked for when trimming (0: glibc's own).
    """

    def __init__(self, every: int = TRIM_EVERY, arenas: int = ARENA_MAX):
        self.every = every
        self.arenas_limited = bool(every and arenas) and limit_arenas(arenas)
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


__all__ = ["ARENA_MAX", "TRIM_EVERY", "AllocatorTrim", "limit_arenas"]
