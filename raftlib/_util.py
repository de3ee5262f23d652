"""Internal helpers shared by the log and storage."""

from __future__ import annotations

from collections.abc import Sequence

from raftlib.types import ENTRY_OVERHEAD, Entry


def limit_size(entries: Sequence[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_size`` bytes, but never fewer than one entry.

    ``None`` means no limit. Sizes are counted as :func:`raftlib.types.entry_size`.
    """
    if max_size is None or not entries:
        return list(entries)
    size = len(entries[0].data) + ENTRY_OVERHEAD
    n = 1
    for n in range(1, len(entries)):
        size += len(entries[n].data) + ENTRY_OVERHEAD
        if size > max_size:
            break
    else:
        n = len(entries)
    return list(entries[:n])
