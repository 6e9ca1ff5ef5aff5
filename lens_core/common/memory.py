"""Giving freed memory back to the operating system between the steps of one process (issue 22).

A run on the in-process executor (`lens-eval run`, the tests, the benchmarks) executes every step
in the same process. What a step frees returns to its allocator, not always to the operating
system: glibc keeps freed heap pages (and, once a large block has been freed, serves blocks up to
32 MB from the heap instead of fresh mappings), pyarrow's memory pool keeps what it cached. The
next step's peak RSS then stands on the earlier steps' leftovers, so an in-process run's peak
grows with the number of steps before the largest one instead of being that step's own need.
`release_memory()` collects Python's cycles and hands the allocators' free pages back; the
IO managers call it once per step, before the step reads its inputs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim`, or None (another C library, another OS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> None:
    """Free unreachable Python objects, then return the allocators' free pages to the OS."""
    gc.collect()
    pa = sys.modules.get("pyarrow")  # only where pyarrow is already loaded: never imported for this
    if pa is not None:  # pyarrow >= 17 (pyproject): every pool has release_unused
        pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
