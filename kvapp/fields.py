"""Type and range checks for fields of CBOR-encoded values, shared by kvapp's wire formats.

The replicated request codec (:mod:`kvapp.requests`) and the native client protocol
(:mod:`kvapp.server.native`) check every field they encode or decode the same way: exact types
(a ``bool`` is not an ``int``, a ``bytearray`` is not ``bytes``) and the ranges etcd's protobuf
fields have. A failed check raises :class:`FieldError`, a
:class:`~kvapp.errors.RequestDecodeError`, so decoders need no translation; encoders turn it into
``ValueError``.
"""

from __future__ import annotations

from kvapp.errors import RequestDecodeError

__all__ = [
    "I64_MAX",
    "I64_MIN",
    "U64_MAX",
    "FieldError",
    "array",
    "boolean",
    "i64",
    "octets",
    "text",
    "u64",
]

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
U64_MAX = (1 << 64) - 1


class FieldError(RequestDecodeError):
    """A field holds a value its format cannot carry (wrong type or out of range)."""


def i64(v: object, what: str) -> int:
    """``v`` as a signed 64-bit integer."""
    if type(v) is not int or not I64_MIN <= v <= I64_MAX:
        raise FieldError(f"{what}: expected a signed 64-bit integer, got {v!r:.40}")
    return v


def u64(v: object, what: str) -> int:
    """``v`` as an unsigned 64-bit integer."""
    if type(v) is not int or not 0 <= v <= U64_MAX:
        raise FieldError(f"{what}: expected an unsigned 64-bit integer, got {v!r:.40}")
    return v


def octets(v: object, what: str) -> bytes:
    """``v`` as ``bytes`` (exactly)."""
    if type(v) is not bytes:
        raise FieldError(f"{what}: expected bytes, got {type(v).__name__}")
    return v


def text(v: object, what: str) -> str:
    """``v`` as ``str``."""
    if type(v) is not str:
        raise FieldError(f"{what}: expected text, got {type(v).__name__}")
    return v


def boolean(v: object, what: str) -> bool:
    """``v`` as ``bool``."""
    if type(v) is not bool:
        raise FieldError(f"{what}: expected a bool, got {v!r:.40}")
    return v


def array(v: object, what: str, length: int | None = None) -> list[object]:
    """``v`` as a CBOR array (a ``list``), of ``length`` items if given."""
    if type(v) is not list:
        raise FieldError(f"{what}: expected an array, got {type(v).__name__}")
    if length is not None and len(v) != length:
        raise FieldError(f"{what}: expected {length} items, got {len(v)}")
    return v
