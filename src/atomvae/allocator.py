"""Keep freed memory in the process instead of handing it back to the OS on every free (glibc only).

Why: PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (128 KiB at
start, adjusted upwards as such blocks are freed) with fresh ``mmap`` pages and gives them back to the OS
when they are freed, and trims the heap whenever more than twice that threshold lies free at its top. A
training step allocates and frees tensors of 1-20 MB hundreds of times (the conformation search's 1,088
renders per batch are 18 MB), so every step page-faults those pages in again and the kernel zeroes each
one: 8,000-26,000 minor page faults per cpu-preset step on 1 thread, and the step 1.06-1.07x slower than
with the memory kept (BENCHMARKS.md, "Page faults"). The memory kept is the step's own peak, which the
process reaches again on every step anyway.

``keep_freed_memory()`` sets glibc's mmap threshold to its maximum (32 MiB on 64-bit) and its trim
threshold to 1 GiB, once per process; blocks above 32 MiB still come from mmap. A user's own
``MALLOC_*_`` environment settings, glibc tunables or another allocator (jemalloc, tcmalloc via
``LD_PRELOAD``) are left alone. Numbers do not change, only where the memory comes from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_applied = False


def _user_chose_allocator() -> bool:
    if any(name in os.environ for name in _USER_SETTINGS):
        return True
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring). Returns whether they are set
    (False: not glibc, or the user chose the allocator's settings). Safe to call more than once."""
    global _applied
    if _applied:
        return True
    if _user_chose_allocator():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # macOS, Windows, musl without mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    )
    return _applied
