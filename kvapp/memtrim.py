"""Handing freed large blocks back to the operating system (a glibc allocator setting).

A member frees large blocks all the time: batch entries of tens of KiB whose data the
:class:`~kvapp.storage.RaftStore` lets go once they are old (:mod:`kvapp.storage.entrylog`),
snapshot and message buffers. glibc's allocator serves blocks below its mmap threshold (128 KiB
at first, raised up to 32 MiB as large blocks are freed) from its heap, where later small
allocations land between them, so their memory stays resident after they are freed: with 200k
keys of 256-byte values a member stayed at about 850 B/key. :func:`release_large_blocks` lowers
the threshold and keeps it there, so such blocks get pages of their own, unmapped when freed
(about 620 B/key then; handing back the heap's free pages with ``malloc_trim`` every second as
well changed nothing measurable). It does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes

__all__ = ["LARGE_BLOCK", "release_large_blocks"]

LARGE_BLOCK = 32 * 1024
"""Blocks from this size on get pages of their own (glibc's ``M_MMAP_THRESHOLD``)."""

_M_MMAP_THRESHOLD = -3


def release_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Serve blocks of ``threshold`` bytes or more with their own pages (glibc ``mallopt``).

    Process-wide. Costs a system call per such allocation and per free: a few microseconds,
    for blocks whose contents cost more than that to fill anyway.

    Returns:
        Whether the setting took (False on another C library).
    """
    try:
        libc = ctypes.CDLL(None)  # the process's own C library
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
