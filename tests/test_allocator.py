"""atomvae.allocator: freed memory stays in the process (glibc), and a user's own settings win.

Each case runs in a fresh interpreter: the allocator's settings are per process and set once."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys

import pytest

# Bytes that an 8 MiB tensor adds to glibc's mmapped regions (mallinfo2().hblkhd), with and without the
# settings: above glibc's initial 128 KiB threshold it is mmapped; below the raised one, heap.
PROBE = """
import ctypes, sys
import torch
from atomvae.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
before = libc.mallinfo2().hblkhd
held = torch.ones(2 * 2**20)  # 8 MiB
print(int(applied), libc.mallinfo2().hblkhd - before)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return hasattr(libc, "mallinfo2") and hasattr(libc, "mallopt")
    except OSError:
        return False


def _probe(mode: str, **env: str) -> tuple[bool, int]:
    # Without the caller's own allocator choices, which keep_freed_memory() would rightly defer to.
    chosen = ("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(chosen)} | env
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=environment, capture_output=True, text=True, check=True
    ).stdout.split()
    return bool(int(out[0])), int(out[1])


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc >= 2.33 (mallopt, mallinfo2) only")
def test_kept_memory_serves_large_tensors_from_the_heap() -> None:
    applied, mmapped = _probe("keep")
    assert applied and mmapped == 0
    applied, mmapped = _probe("default")
    assert not applied and mmapped >= 8 * 2**20  # glibc's default: a fresh mapping, faulted in on use


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc >= 2.33 (mallopt, mallinfo2) only")
def test_a_users_own_malloc_setting_is_left_alone() -> None:
    applied, mmapped = _probe("keep", MALLOC_MMAP_THRESHOLD_="131072")
    assert not applied and mmapped >= 8 * 2**20
