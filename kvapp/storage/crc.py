"""CRC-32 (zlib's) of a concatenation, from the CRCs of its parts.

A snapshot file's checksum covers its whole content, but a new snapshot copies most of its data
from the previous file without reading it (:mod:`kvapp.storage.snapparts`): the checksum of the
copied range, recorded when it was first written, is combined with the rest instead.
:func:`crc32_combine` is zlib's ``crc32_combine``, which Python's ``zlib`` module does not
expose: appending ``n`` bytes to a message changes its CRC by a linear map over GF(2) that
depends only on ``n``, computed by repeated squaring of the one-zero-bit operator.
"""

from __future__ import annotations

__all__ = ["crc32_combine", "crc32_suffix"]

_POLY = 0xEDB88320  # CRC-32's polynomial, bit-reversed (as zlib's crc32)


def _times(matrix: list[int], vector: int) -> int:
    total = 0
    i = 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, row) for row in matrix]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """``zlib.crc32(a + b)`` given ``crc1 = zlib.crc32(a)``, ``crc2 = zlib.crc32(b)``, ``len(b)``.

    Costs O(log len2) 32x32 bit-matrix squarings (about 100 µs each), whatever the lengths.
    """
    if len2 <= 0:
        return crc1
    odd = [_POLY] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _square(odd)  # two zero bits
    odd = _square(even)  # four zero bits
    while True:
        even = _square(odd)  # the first pass makes it one zero byte, then doubles
        if len2 & 1:
            crc1 = _times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _square(even)
        if len2 & 1:
            crc1 = _times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def crc32_suffix(crc_whole: int, crc_prefix: int, len_suffix: int) -> int:
    """``zlib.crc32(b)`` given ``crc_whole = zlib.crc32(a + b)``, ``crc_prefix = zlib.crc32(a)``.

    The inverse of :func:`crc32_combine` (appending is linear), so a running CRC taken at two
    points of a stream gives the CRC of what lies between them without a second pass.
    """
    return crc_whole ^ crc32_combine(crc_prefix, 0, len_suffix)
