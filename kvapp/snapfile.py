"""Snapshot files: a point-in-time copy of a cluster's replicated state, with an integrity hash.

What ``kvapp snapshot save`` (and ``kvctl snapshot save``) writes, and what ``kvapp snapshot
restore`` and ``kvapp snapshot status`` read; the counterpart of the file ``etcdctl snapshot
save`` writes (a bbolt database followed by its SHA-256).

Layout, version :data:`VERSION`:

============  ===================================================================================
8 bytes       :data:`MAGIC`
4 bytes       ``n``, the header's length (big-endian)
``n`` bytes   the header, a CBOR map: ``version`` (2), ``cluster_id``, ``member_id`` (the member
              that made it), ``raft_index`` (the log index the state reflects), ``raft_term``
              (that member's term then), ``revision`` (the store's revision)
the payload   the replicated state: exactly the stream :meth:`kvapp.dedup.Applier.snapshot`
              writes (the applier's section, then :mod:`kvapp.kvstate`'s stream), which carries
              its own checksums
``p`` bytes   zeros, so that the file up to the hash is a multiple of 512 bytes long
4 bytes       ``p`` (big-endian)
32 bytes      the SHA-256 of everything before it
============  ===================================================================================

The padding is for ``etcdctl snapshot save`` (3.4), which saves whatever the Maintenance
Snapshot stream sends but refuses it unless its size is 32 more than a multiple of 512 (the
shape of a bbolt database followed by its SHA-256). Version 1 files had no padding and no ``p``;
they are still read.

The trailing hash makes a truncated or damaged file detectable before anything reads it:
:func:`read_info` checks it, and :func:`load_state` then restores the payload into an
:class:`~kvapp.dedup.Applier`, which checks the payload's own structure, counts and hash.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final, Protocol

import attrs
import cbor2

from kvapp.errors import KvappError, StateSnapshotError

__all__ = [
    "DIGEST_SIZE",
    "MAGIC",
    "VERSION",
    "BinarySink",
    "SnapshotFileError",
    "SnapshotFileInfo",
    "SnapshotHeader",
    "SnapshotWriter",
    "encode_header",
    "load_state",
    "read_info",
    "read_payload",
]

MAGIC: Final = b"KVAPPSNP"
"""The first bytes of every snapshot file."""

VERSION: Final = 2
"""The file format version this module writes and reads."""

DIGEST_SIZE: Final = 32
"""The size of the trailing SHA-256."""

_LENGTH: Final = struct.Struct(">I")
_ALIGN: Final = 512
_MAX_HEADER: Final = 64 * 1024
_HEADER_KEYS: Final = frozenset(
    {"version", "cluster_id", "member_id", "raft_index", "raft_term", "revision"}
)
_U64_MAX: Final = (1 << 64) - 1
_READ_CHUNK: Final = 1 << 20


class SnapshotFileError(KvappError):
    """A snapshot file is missing, unreadable, truncated, damaged or not a kvapp snapshot file.

    The message names the file and says what is wrong with it.
    """


@attrs.frozen
class SnapshotHeader:
    """Where a snapshot file's state comes from.

    Attributes:
        cluster_id: the cluster the state was taken from.
        member_id: the member that took it.
        raft_index: the log index the state reflects (everything applied up to it).
        raft_term: that member's term when it took the snapshot.
        revision: the key-value store's revision.
    """

    cluster_id: int
    member_id: int
    raft_index: int
    raft_term: int
    revision: int


@attrs.frozen
class SnapshotFileInfo:
    """A snapshot file whose framing (and, unless skipped, hash) was checked by :func:`read_info`.

    Attributes:
        path: the file.
        size: its size in bytes.
        header: its header.
        sha256: its trailing hash (hex).
        payload_offset: where the payload starts.
        payload_size: the payload's length.
    """

    path: Path
    size: int
    header: SnapshotHeader
    sha256: str
    payload_offset: int
    payload_size: int


def encode_header(header: SnapshotHeader) -> bytes:
    """The bytes a snapshot file starts with: magic, header length, header."""
    body = cbor2.dumps(
        {
            "version": VERSION,
            "cluster_id": header.cluster_id,
            "member_id": header.member_id,
            "raft_index": header.raft_index,
            "raft_term": header.raft_term,
            "revision": header.revision,
        }
    )
    return MAGIC + _LENGTH.pack(len(body)) + body


class BinarySink(Protocol):
    """Where :class:`SnapshotWriter` writes: anything with a binary ``write``."""

    def write(self, data: bytes, /) -> object:
        """Write all of ``data``."""
        ...


class SnapshotWriter:
    """Writes one snapshot file's bytes to ``out``, hashing them as they go.

    Write the header with the constructor, the payload with :meth:`write` (this object is an
    ``IO[bytes]`` enough for :meth:`kvapp.dedup.Applier.snapshot`), then call :meth:`finish`,
    which writes the hash.

    Args:
        out: where the bytes go.
        header: the file's header.
    """

    def __init__(self, out: BinarySink, header: SnapshotHeader) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0
        self.write(encode_header(header))

    def writable(self) -> bool:
        """True: the file-like protocol ``cbor2.CBOREncoder`` checks for."""
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write (and hash) ``data``; returns its length."""
        self._hash.update(data)
        self._out.write(bytes(data))
        n = len(data)
        self.size += n
        return n

    def finish(self) -> str:
        """Write the padding and the trailing hash; returns the hash (hex).

        Nothing may be written after it.
        """
        pad = -(self.size + _LENGTH.size) % _ALIGN
        self.write(bytes(pad) + _LENGTH.pack(pad))
        digest = self._hash.digest()
        self._out.write(digest)
        self.size += len(digest)
        return digest.hex()


def _uint(value: object, what: str, path: Path) -> int:
    if type(value) is not int or not 0 <= value <= _U64_MAX:
        raise SnapshotFileError(f"{path}: damaged header: {what} is not an unsigned integer")
    return value


def read_info(path: str | Path, *, verify: bool = True) -> SnapshotFileInfo:
    """Check a snapshot file's framing and (with ``verify``) its hash; return what it holds.

    Reads the whole file once to check the hash; changes nothing.

    Raises:
        SnapshotFileError: the file is missing, unreadable, not a kvapp snapshot file, of an
            unsupported version, truncated, or its hash does not match (damaged).
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            size = _size(f)
            head = f.read(len(MAGIC) + _LENGTH.size)
            if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
                raise SnapshotFileError(
                    f"{p}: not a kvapp snapshot file (it does not start with {MAGIC.decode()})"
                )
            minimum = len(MAGIC) + _LENGTH.size + DIGEST_SIZE
            if size < minimum:
                raise SnapshotFileError(f"{p}: truncated ({size} bytes, at least {minimum} needed)")
            (n,) = _LENGTH.unpack_from(head, len(MAGIC))
            payload_offset = len(MAGIC) + _LENGTH.size + n
            if n > _MAX_HEADER or payload_offset + DIGEST_SIZE > size:
                raise SnapshotFileError(
                    f"{p}: truncated or damaged (header of {n} bytes in a file of {size})"
                )
            raw_header = f.read(n)
            digest = ""
            if verify:
                digest = _check_hash(f, p, size, head + raw_header)
            else:
                f.seek(size - DIGEST_SIZE)
                digest = f.read(DIGEST_SIZE).hex()
    except FileNotFoundError:
        raise SnapshotFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise SnapshotFileError(f"{p}: is a directory, not a snapshot file") from None
    except OSError as e:
        raise SnapshotFileError(f"{p}: cannot read: {e.strerror or e}") from None
    header, version = _decode_header(raw_header, p)
    payload_end = size - DIGEST_SIZE
    if version >= 2:
        payload_end -= _padding(p, payload_offset, payload_end)
    return SnapshotFileInfo(
        path=p,
        size=size,
        header=header,
        sha256=digest,
        payload_offset=payload_offset,
        payload_size=payload_end - payload_offset,
    )


def _padding(path: Path, payload_offset: int, end: int) -> int:
    """The bytes of padding plus its length field that end a version 2 file at ``end``."""
    try:
        with path.open("rb") as f:
            f.seek(end - _LENGTH.size)
            pad: int = _LENGTH.unpack(f.read(_LENGTH.size))[0]
            if pad >= _ALIGN or end % _ALIGN or end - _LENGTH.size - pad < payload_offset:
                raise SnapshotFileError(f"{path}: damaged padding ({pad} bytes)")
            f.seek(end - _LENGTH.size - pad)
            if f.read(pad) != bytes(pad):
                raise SnapshotFileError(f"{path}: damaged padding (not zeros)")
    except (OSError, struct.error) as e:
        raise SnapshotFileError(f"{path}: cannot read the padding: {e}") from None
    return pad + _LENGTH.size


def _size(f: IO[bytes]) -> int:
    f.seek(0, io.SEEK_END)
    size = f.tell()
    f.seek(0)
    return size


def _check_hash(f: IO[bytes], path: Path, size: int, read_so_far: bytes) -> str:
    h = hashlib.sha256(read_so_far)
    left = size - DIGEST_SIZE - len(read_so_far)
    while left > 0:
        chunk = f.read(min(left, _READ_CHUNK))
        if not chunk:
            raise SnapshotFileError(f"{path}: truncated while reading (the file shrank)")
        h.update(chunk)
        left -= len(chunk)
    stored = f.read(DIGEST_SIZE)
    if stored != h.digest():
        raise SnapshotFileError(
            f"{path}: hash mismatch: the file is damaged or truncated (it ends with "
            f"{stored.hex()[:16]}..., its contents hash to {h.hexdigest()[:16]}...)"
        )
    return stored.hex()


def _decode_header(raw: bytes, path: Path) -> tuple[SnapshotHeader, int]:
    try:
        header = cbor2.loads(raw)
    except Exception as e:  # cbor2 raises many exception types on hostile input
        raise SnapshotFileError(f"{path}: damaged header: {e}") from e
    if type(header) is not dict or set(header) != _HEADER_KEYS:
        raise SnapshotFileError(f"{path}: damaged header: unexpected fields")
    if header["version"] not in (1, VERSION):
        raise SnapshotFileError(
            f"{path}: snapshot file version {header['version']!r:.20} is not supported "
            f"(this kvapp reads versions 1 and {VERSION})"
        )
    return SnapshotHeader(
        cluster_id=_uint(header["cluster_id"], "cluster_id", path),
        member_id=_uint(header["member_id"], "member_id", path),
        raft_index=_uint(header["raft_index"], "raft_index", path),
        raft_term=_uint(header["raft_term"], "raft_term", path),
        revision=_uint(header["revision"], "revision", path),
    ), header["version"]


class _Window(io.RawIOBase):
    """A read-only view of ``[offset, offset + size)`` of a file."""

    def __init__(self, f: IO[bytes], offset: int, size: int) -> None:
        self._f = f
        self._left = size
        f.seek(offset)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


def load_state(info: SnapshotFileInfo, restore: Callable[[IO[bytes]], object]) -> None:
    """Restore the file's payload with ``restore`` (e.g. :meth:`kvapp.dedup.Applier.restore`).

    Raises:
        SnapshotFileError: the file cannot be read, or its payload is damaged (the message
            holds the state machine's reason).
    """
    try:
        with info.path.open("rb") as f:
            window = io.BufferedReader(_Window(f, info.payload_offset, info.payload_size))
            restore(window)
    except StateSnapshotError as e:
        raise SnapshotFileError(f"{info.path}: damaged state: {e}") from None
    except OSError as e:
        raise SnapshotFileError(f"{info.path}: cannot read: {e.strerror or e}") from None


def read_payload(info: SnapshotFileInfo) -> bytes:
    """The file's payload, whole.

    Raises:
        SnapshotFileError: the file cannot be read, or it changed since :func:`read_info`.
    """
    try:
        with info.path.open("rb") as f:
            f.seek(info.payload_offset)
            data = f.read(info.payload_size)
    except OSError as e:
        raise SnapshotFileError(f"{info.path}: cannot read: {e.strerror or e}") from None
    if len(data) != info.payload_size:
        raise SnapshotFileError(f"{info.path}: truncated while reading (the file shrank)")
    return data
