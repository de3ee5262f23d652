r"""etcd's key-range conventions, in one place for the store, txn checks and watchers.

A range is ``(key, range_end)``:

- ``range_end == b""``: the single key ``key``;
- ``range_end == b"\0"``: every key ``>= key`` (so ``(b"\0", b"\0")`` is every key);
- otherwise the half-open interval ``[key, range_end)``, empty when ``range_end <= key``.

Keys compare as unsigned bytes, as Go's ``bytes.Compare`` does.
"""

from __future__ import annotations

__all__ = ["ALL_KEYS_END", "contains", "prefix_range_end", "upper_bound"]

ALL_KEYS_END = b"\0"
"""The ``range_end`` that means "no upper bound"."""


def prefix_range_end(prefix: bytes) -> bytes:
    r"""The ``range_end`` selecting the keys that start with ``prefix`` (etcd's GetPrefixRangeEnd).

    The last byte below 0xff is incremented and what follows it dropped; a prefix of only 0xff
    bytes (or empty) has no upper bound, so ``b"\0"`` is returned.
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return ALL_KEYS_END


def upper_bound(key: bytes, range_end: bytes) -> bytes | None:
    """The exclusive upper bound of a non-single-key range, or None for "unbounded".

    Only meaningful when ``range_end`` is not empty.
    """
    return None if range_end == ALL_KEYS_END else range_end


def contains(key: bytes, range_end: bytes, candidate: bytes) -> bool:
    """Whether ``candidate`` lies in the range ``(key, range_end)``."""
    if not range_end:
        return candidate == key
    if range_end == ALL_KEYS_END:
        return candidate >= key
    return key <= candidate < range_end
