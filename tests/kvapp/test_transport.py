"""kvapp.transport: TCP peer links on 127.0.0.1, and the in-process LocalNetwork.

Every test runs its own loop with ``asyncio.run`` under an overall timeout, awaits events with
explicit timeouts, polls only with a bound and a message (``eventually``), and stops every
transport it started (the ``Cluster`` helper does it in ``finally``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import io
import logging
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, BinaryIO, cast

import attrs
import cbor2
import pytest

from kvapp.storage.snapdata import FileSnapshotData
from kvapp.transport import (
    LocalNetwork,
    PeerNetwork,
    TcpTransport,
    TransportConfig,
    backoff_delay,
    message_size_bound,
    wire,
)
from kvapp.transport.spool import SnapshotSpool
from kvapp.transport.wire import FrameKind
from raftlib.codec import FORMAT_VERSION, encode_message, encode_messages
from raftlib.types import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

MT = MessageType
CLUSTER = 0xC0FFEE
LOGGER = "kvapp.transport"
FAST = TransportConfig(
    backoff_base=0.01, backoff_max=0.05, connect_timeout=2.0, handshake_timeout=2.0
)


def run(
    timeout: float = 30.0,
) -> Callable[[Callable[..., Coroutine[Any, Any, None]]], Callable[..., None]]:
    """Run an async test on a fresh loop, failing (not hanging) after ``timeout`` seconds."""

    def wrap(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
        @functools.wraps(fn)
        def runner(*args: Any, **kwargs: Any) -> None:
            async def main() -> None:
                async with asyncio.timeout(timeout):
                    await fn(*args, **kwargs)

            asyncio.run(main())

        return runner

    return wrap


async def eventually(cond: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Poll ``cond`` every few ms; fail with ``what`` if it is not true ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.005)


def app(frm: int, to: int, index: int, data: bytes = b"x") -> Message:
    return Message(
        type=MT.APP, to=to, from_=frm, term=1, log_term=1, index=index,
        entries=(Entry(1, index + 1, data=data),), commit=index,
    )  # fmt: skip


def snap_msg(frm: int, to: int, data: bytes, index: int = 100) -> Message:
    md = SnapshotMetadata(conf_state=ConfState(voters=(1, 2, 3)), index=index, term=2)
    return Message(
        type=MT.SNAP, to=to, from_=frm, term=2, snapshot=Snapshot(data=data, metadata=md)
    )


class Member:
    """One TcpTransport and what its callbacks saw."""

    def __init__(self, member_id: int, *, raise_on: int | None = None, **kwargs: Any) -> None:
        self.id = member_id
        self.raise_on = raise_on
        self.received: list[Message] = []
        self.unreachable: list[int] = []
        self.snap_status: list[tuple[int, bool]] = []
        self.told_removed: list[tuple[int, int]] = []
        self.got_message = asyncio.Event()
        self.got_status = asyncio.Event()
        kwargs.setdefault("listen", ("127.0.0.1", 0))
        kwargs.setdefault("config", FAST)
        kwargs.setdefault("rng", random.Random(member_id))
        self.t = TcpTransport(
            member_id,
            kwargs.pop("cluster_id", CLUSTER),
            on_message=self._on_message,
            on_unreachable=self.unreachable.append,
            on_snapshot_status=self._on_status,
            on_removed=lambda peer, index: self.told_removed.append((peer, index)),
            **kwargs,
        )

    def _on_message(self, m: Message) -> None:
        self.received.append(m)
        self.got_message.set()
        if m.index == self.raise_on:
            raise RuntimeError("the member's handler failed")

    def _on_status(self, peer: int, ok: bool) -> None:
        self.snap_status.append((peer, ok))
        self.got_status.set()

    def indexes_from(self, frm: int) -> list[int]:
        return [m.index for m in self.received if m.from_ == frm and m.type == MT.APP]


@contextlib.asynccontextmanager
async def cluster(
    *ids: int, connect: bool = True, **kwargs: Any
) -> AsyncIterator[dict[int, Member]]:
    """Members ``ids`` started on 127.0.0.1 and peered all-to-all; stopped on exit."""
    members = {i: Member(i, **kwargs) for i in ids}
    try:
        for m in members.values():
            await m.t.start()
        for m in members.values():
            for o in members.values():
                if o is not m:
                    m.t.add_peer(o.id, o.t.address)
        if connect:
            for m in members.values():
                for o in members.values():
                    if o is not m:
                        await asyncio.wait_for(m.t.wait_connected(o.id), 10)
        yield members
    finally:
        for m in members.values():
            await m.t.stop()


async def wait_for(awaitable: Awaitable[Any], what: str, within: float = 10.0) -> Any:
    try:
        return await asyncio.wait_for(awaitable, within)
    except TimeoutError:
        raise AssertionError(f"not within {within}s: {what}") from None


def idle_socket() -> socket.socket:
    """A socket bound to 127.0.0.1 but not listening: connecting to it is refused at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_peer_network_protocol_is_implemented() -> None:
    async def main() -> None:
        tcp: PeerNetwork = TcpTransport(
            1, CLUSTER, listen=("127.0.0.1", 0), on_message=print, on_unreachable=print,
            on_snapshot_status=print,
        )  # fmt: skip
        local: PeerNetwork = LocalNetwork().join(
            1, on_message=print, on_unreachable=print, on_snapshot_status=print
        )
        for net in (tcp, local):
            assert inspect.iscoroutinefunction(net.start)
            assert inspect.iscoroutinefunction(net.stop)
            assert not inspect.iscoroutinefunction(net.send)

    asyncio.run(main())


# -- exchanging messages --


@run()
async def test_two_members_exchange_batches_in_order() -> None:
    async with cluster(1, 2) as ms:
        a, b = ms[1], ms[2]
        for i in range(50):
            a.t.send([app(1, 2, i)])
            b.t.send([app(2, 1, 1000 + i)])
            if i % 7 == 0:
                await asyncio.sleep(0)
        await eventually(lambda: len(b.received) == 50 and len(a.received) == 50, "50 each way")
        assert b.indexes_from(1) == list(range(50))
        assert a.indexes_from(2) == list(range(1000, 1050))
        assert b.received[0] == app(1, 2, 0)  # decoded equal, entries and all
        assert a.t.stats(2).messages_sent == 50 == b.t.stats(1).messages_received
        assert a.t.stats(2).frames_sent == b.t.stats(1).frames_received
        assert a.t.stats(2).bytes_sent == b.t.stats(1).bytes_received > 0


@run()
async def test_three_members_all_to_all_order_per_peer() -> None:
    async with cluster(1, 2, 3) as ms:
        for turn in range(20):
            for m in ms.values():
                m.t.send([app(m.id, o, turn * 10 + k) for o in ms if o != m.id for k in range(3)])
            await asyncio.sleep(0)
        await eventually(
            lambda: all(len(m.received) == 2 * 60 for m in ms.values()), "120 messages each"
        )
        expected = [t * 10 + k for t in range(20) for k in range(3)]
        for m in ms.values():
            for o in ms:
                if o != m.id:
                    assert m.indexes_from(o) == expected, (m.id, o)


@run()
async def test_sends_in_one_turn_go_out_as_one_frame() -> None:
    async with cluster(1, 2) as ms:
        a, b = ms[1], ms[2]
        before = a.t.stats(2).frames_sent
        for i in range(100):
            a.t.send([app(1, 2, i)])  # 100 calls, no await in between: one loop turn
        a.t.send([app(1, 2, 100), app(1, 2, 101)])
        await eventually(lambda: len(b.received) == 102, "102 messages")
        assert a.t.stats(2).frames_sent == before + 1
        assert a.t.stats(2).messages_sent == 102
        assert b.t.stats(1).frames_received == 1
        assert b.indexes_from(1) == list(range(102))


@run()
async def test_batch_above_frame_limit_is_split_not_dropped() -> None:
    cfg = attrs.evolve(FAST, max_frame_size=64 * 1024, snapshot_chunk_size=16 * 1024)
    async with cluster(1, 2, config=cfg) as ms:
        a, b = ms[1], ms[2]
        a.t.send([app(1, 2, i, data=bytes(10_000)) for i in range(20)])  # ~200 KB
        await eventually(lambda: len(b.received) == 20, "20 messages")
        assert b.indexes_from(1) == list(range(20))
        assert a.t.stats(2).frames_sent >= 4
        assert a.t.stats(2).messages_dropped == 0


def test_size_bound_is_an_upper_bound_of_the_encoding() -> None:
    rng = random.Random(5)
    for _ in range(200):
        n = rng.randrange(5)
        entries = tuple(
            Entry(rng.getrandbits(64), rng.getrandbits(64), data=rng.randbytes(rng.randrange(40)))
            for _ in range(n)
        )
        m = Message(
            type=MT.APP, to=rng.getrandbits(64), from_=rng.getrandbits(64),
            term=rng.getrandbits(64), index=rng.getrandbits(rng.choice([3, 64])),
            commit=rng.getrandbits(64), entries=entries, context=rng.randbytes(rng.randrange(30)),
        )  # fmt: skip
        assert len(encode_messages([m])) - 2 <= message_size_bound(m)
    s = snap_msg(2**64 - 1, 2**64 - 2, b"abc")
    assert len(encode_messages([s])) <= message_size_bound(s)


# -- drops, unreachable, reconnect --


@run()
async def test_peer_down_drops_and_reports_then_reconnect_delivers() -> None:
    sock = idle_socket()
    a = Member(1)
    b = Member(2, listen=sock)
    try:
        await a.t.start()
        a.t.add_peer(2, sock.getsockname())
        await eventually(lambda: a.t.stats(2).dial_failures >= 2, "dials to the down peer fail")
        a.t.send([app(1, 2, 0), app(1, 2, 1)])
        assert a.unreachable == [2]  # once per send call, at once
        assert a.t.stats(2).messages_dropped == 2
        b.t.add_peer(1, a.t.address)
        await b.t.start()  # now listening on the same socket
        await wait_for(a.t.wait_connected(2), "reconnect after back-off")
        a.t.send([app(1, 2, 2)])
        await wait_for(b.got_message.wait(), "a message after reconnect")
        assert b.indexes_from(1) == [2]  # the dropped ones stay dropped
        assert a.t.stats(2).connects == 1
    finally:
        await a.t.stop()
        await b.t.stop()
        sock.close()


@run()
async def test_a_peer_that_connects_to_us_is_redialed_at_once_not_after_back_off() -> None:
    sock = idle_socket()
    slow = attrs.evolve(FAST, backoff_base=20.0, backoff_max=20.0)
    a = Member(1, config=slow)
    b = Member(2, listen=sock, config=slow)
    try:
        await a.t.start()
        a.t.add_peer(2, sock.getsockname())
        await eventually(lambda: a.t.stats(2).dial_failures >= 1, "a dial to the down peer fails")
        b.t.add_peer(1, a.t.address)
        await b.t.start()  # b dials a; a's next dial would be up to 20 s away
        await wait_for(a.t.wait_connected(2), "a redials b as soon as b connects to it", 5)
    finally:
        await a.t.stop()
        await b.t.stop()
        sock.close()


class RecordingRandom(random.Random):
    """Records the ceiling behind each back-off draw."""

    def __init__(self) -> None:
        super().__init__(7)
        self.ceilings: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.ceilings.append(round(2 * b, 6))
        return super().uniform(a, b)


@run()
async def test_backoff_grows_caps_and_resets_after_a_connect() -> None:
    rng = RecordingRandom()
    sock = idle_socket()
    cfg = attrs.evolve(FAST, backoff_base=0.002, backoff_max=0.016)
    a = Member(1, rng=rng, config=cfg)
    b = Member(2, listen=sock, config=cfg)
    try:
        await a.t.start()
        a.t.add_peer(2, sock.getsockname())
        await eventually(lambda: len(rng.ceilings) >= 6, "six failed dials")
        failed = list(rng.ceilings)
        assert failed[:5] == [0.004, 0.008, 0.016, 0.016, 0.016]  # doubling, capped
        b.t.add_peer(1, a.t.address)
        await b.t.start()
        await wait_for(a.t.wait_connected(2), "connect")
        n = len(rng.ceilings)
        await b.t.stop()  # the link drops; b's socket is closed, so redials fail again
        await eventually(lambda: len(rng.ceilings) >= n + 2, "redials after the loss")
        assert rng.ceilings[n : n + 2] == [0.002, 0.004]  # reset by the successful connect
    finally:
        await a.t.stop()
        await b.t.stop()
        sock.close()


def test_backoff_delay_is_jittered_within_half_to_full_ceiling() -> None:
    rng = random.Random(1)
    for attempt in range(100):
        d = backoff_delay(attempt, 0.1, 5.0, rng)
        ceiling = min(5.0, 0.1 * 2**attempt)
        assert ceiling / 2 <= d <= ceiling
    assert len({backoff_delay(3, 0.1, 5.0, rng) for _ in range(20)}) > 1  # jittered
    assert backoff_delay(3, 0.1, 5.0, random.Random(9)) == backoff_delay(
        3, 0.1, 5.0, random.Random(9)
    )


@run()
async def test_full_queue_drops_and_reports() -> None:
    cfg = attrs.evolve(FAST, max_queue_messages=3)
    async with cluster(1, 2, config=cfg) as ms:
        a, b = ms[1], ms[2]
        a.t.send([app(1, 2, i) for i in range(5)])
        assert a.unreachable == [2]
        assert a.t.stats(2).messages_dropped == 2
        await eventually(lambda: len(b.received) == 3, "the three queued")
        assert b.indexes_from(1) == [0, 1, 2]
        a.t.send([app(1, 2, 9)])  # the queue drained with the flush
        await eventually(lambda: len(b.received) == 4, "a later message")


@run()
async def test_queue_byte_limit_drops_and_reports() -> None:
    cfg = attrs.evolve(FAST, max_queue_bytes=5000)
    async with cluster(1, 2, config=cfg) as ms:
        a, b = ms[1], ms[2]
        a.t.send([app(1, 2, i, data=bytes(2000)) for i in range(4)])
        assert a.t.stats(2).messages_dropped == 2
        assert a.unreachable == [2]
        await eventually(lambda: len(b.received) == 2, "two fit")


@run()
async def test_paused_link_counts_as_full() -> None:
    async with cluster(1, 2) as ms:
        a, b = ms[1], ms[2]
        link = a.t._peers[2].link
        assert link is not None
        a.t.send([app(1, 2, 0)])
        link.pause_writing()  # as the transport does above the high-water mark
        a.t.send([app(1, 2, 1)])
        assert a.unreachable == [2]
        assert a.t.stats(2).messages_dropped == 1
        await asyncio.sleep(0)  # the flush turn: held back while paused
        assert a.t.stats(2).messages_sent == 0
        link.resume_writing()
        await eventually(lambda: len(b.received) == 1, "the queued message after resume")
        assert b.indexes_from(1) == [0]


@run()
async def test_unknown_peer_and_not_started_drop_and_report() -> None:
    a = Member(1, peers={2: ("127.0.0.1", 9)})
    try:
        a.t.send([app(1, 2, 0)])  # not started: not connected
        assert a.unreachable == [2]
        await a.t.start()
        a.t.send([app(1, 7, 0)])
        assert a.unreachable == [2, 7]
        assert a.t.dropped_unknown == 1
    finally:
        await a.t.stop()


# -- handshake --


async def raw_connect(addr: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(*addr), 5)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await asyncio.wait_for(reader.readexactly(5), 5)
    length, kind = wire.FRAME_HEADER.unpack(header)
    return kind, await asyncio.wait_for(reader.readexactly(length - 1), 5)


async def assert_closed(reader: asyncio.StreamReader) -> None:
    """The peer closed the connection (a reset counts: closing with unread input sends one)."""
    try:
        rest = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return
    assert rest == b"", rest


HELLO_CASES = {
    "cluster": (
        wire.encode_hello(wire.KIND_STREAM, 0xBAD, 3, 2),
        f"peer 3 belongs to cluster 0xbad (we are {CLUSTER:#x})",
    ),
    "version": (
        struct.pack(">4sH", wire.MAGIC, 99) + bytes(25),
        "protocol version 99 is not supported",
    ),
    "receiver": (
        wire.encode_hello(wire.KIND_STREAM, CLUSTER, 3, 5),
        "addressed to member 5 but this is member 2",
    ),
    "unknown sender": (
        wire.encode_hello(wire.KIND_STREAM, CLUSTER, 8, 2),
        "unknown member id 8",
    ),
    "magic": (b"GET / HTTP/1.1\r\n\r\n" + bytes(20), "bad magic"),
    "kind": (wire.encode_hello(9, CLUSTER, 3, 2), "unknown connection kind 9"),
}


@pytest.mark.parametrize("case", list(HELLO_CASES))
def test_handshake_mismatch_is_refused_with_a_reason(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    hello, reason = HELLO_CASES[case]

    @run()
    async def main() -> None:
        async with cluster(2, 3) as ms:
            reader, writer = await raw_connect(ms[2].t.address)
            writer.write(hello)
            kind, payload = await read_frame(reader)
            assert kind == FrameKind.REFUSE
            assert reason in payload.decode()
            await assert_closed(reader)
            writer.close()
            # the member is unaffected: its real peer still gets through
            ms[3].t.send([app(3, 2, 1)])
            await wait_for(ms[2].got_message.wait(), "a message from the real peer")

    main()
    refusals = [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert reason in refusals[0]


def test_members_of_different_clusters_do_not_link(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    @run()
    async def main() -> None:
        a = Member(1, cluster_id=0x1)
        b = Member(2, cluster_id=0x2)
        try:
            await a.t.start()
            await b.t.start()
            a.t.add_peer(2, b.t.address)
            b.t.add_peer(1, a.t.address)
            await eventually(lambda: a.t.stats(2).dial_failures >= 2, "a's dials refused")
            assert not a.t.is_connected(2)
            a.t.send([app(1, 2, 0)])
            assert a.unreachable == [2]
            assert b.received == []
        finally:
            await a.t.stop()
            await b.t.stop()

    main()
    text = caplog.text
    assert "member 2: refused connection from" in text
    assert "peer 1 belongs to cluster 0x1 (we are 0x2)" in text
    assert "member 1: peer 2 at" in text
    assert "refused our connection" in text


def test_handshake_must_complete_within_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    @run()
    async def main() -> None:
        cfg = attrs.evolve(FAST, handshake_timeout=0.2)
        async with cluster(2, 3, config=cfg) as ms:
            reader, writer = await raw_connect(ms[2].t.address)
            writer.write(wire.MAGIC)  # and then nothing
            await assert_closed(reader)
            writer.close()

    main()
    assert "handshake not completed within 0.2s" in caplog.text


# -- malformed frames --


def frame(kind: int, payload: bytes) -> bytes:
    return wire.FRAME_HEADER.pack(len(payload) + 1, kind) + payload


def batch(*msgs: Message) -> bytes:
    return frame(FrameKind.MESSAGES, encode_messages(msgs))


GOOD = batch(app(9, 2, 0))
UNKNOWN_TYPE = [99, 2, 9, 1, 1, 1, [], 0, None, False, 0, b""]
BAD_CASES = {
    "garbage payload": (frame(FrameKind.MESSAGES, b"\xff\x00junk"), "undecodable message batch"),
    "garbage bytes": (b"\x00\x00\x00\x00garbage", "bad frame length 0"),
    "oversized length": (struct.pack(">IB", 2**31, FrameKind.MESSAGES), "exceeds the limit"),
    "truncated": (batch(app(9, 2, 1))[:-3], "truncated frame"),
    "undecodable message": (
        frame(FrameKind.MESSAGES, cbor2.dumps([FORMAT_VERSION, [3, 2, 9, 1]])),
        "message: expected 12 items",
    ),
    "good then bad message": (
        frame(
            FrameKind.MESSAGES,
            cbor2.dumps([*cbor2.loads(encode_messages([app(9, 2, 1)])), UNKNOWN_TYPE]),
        ),
        "unknown type 99",
    ),
    "misaddressed": (batch(app(9, 3, 1)), "from 9 to 3 on the link"),
    "wrong kind": (frame(FrameKind.SNAP_CHUNK, b"data"), "unexpected frame kind 0x21"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_malformed_frame_closes_only_that_link(case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    bad, reason = BAD_CASES[case]
    nine = idle_socket()  # member 9's address: known to member 2, never answering

    @run()
    async def main() -> None:
        async with cluster(2, 3) as ms:
            b, c = ms[2], ms[3]
            b.t.add_peer(9, nine.getsockname())
            reader, writer = await raw_connect(b.t.address)
            writer.write(wire.encode_hello(wire.KIND_STREAM, CLUSTER, 9, 2))
            assert (await read_frame(reader))[0] == FrameKind.ACCEPT
            writer.write(GOOD)
            await wait_for(b.got_message.wait(), "the good frame")
            writer.write(bad)
            if case == "truncated":
                writer.write_eof()
            await assert_closed(reader)
            writer.close()
            assert [m.index for m in b.received] == [0]  # nothing of the bad frame
            c.t.send([app(3, 2, 5)])
            await eventually(lambda: len(b.received) == 2, "the other peer still delivers")
            b.t.send([app(2, 3, 6)])
            await eventually(lambda: c.indexes_from(2) == [6], "and still receives")
            assert c.t.is_connected(2)
            assert b.t.is_connected(3)

    try:
        main()
    finally:
        nine.close()
    closing = [
        r.getMessage() for r in caplog.records if "closing connection from peer 9" in r.getMessage()
    ]
    if case == "truncated":
        closing = [
            r.getMessage()
            for r in caplog.records
            if "truncated frame from peer 9" in r.getMessage()
        ]
    assert len(closing) == 1, caplog.text
    assert reason in closing[0]


# -- snapshots --


@run()
async def test_snapshot_of_several_mib_arrives_intact_in_chunks() -> None:
    data = random.Random(3).randbytes(5 * 1024 * 1024 + 123)
    async with cluster(1, 2) as ms:
        a, b = ms[1], ms[2]
        msg = snap_msg(1, 2, data)
        a.t.send([msg])
        await wait_for(a.got_status.wait(), "snapshot status", within=20)
        assert a.snap_status == [(2, True)]
        assert b.received == [msg]
        assert b.t.stats(1).snapshot_chunks_received == 6
        assert a.t.stats(2).snapshot_chunks_sent == 6
        assert a.t.stats(2).snapshots_sent == 1 == b.t.stats(1).snapshots_received


class GatedReader:
    """A SnapshotReader that serves one chunk, then waits for ``gate`` before the rest."""

    def __init__(self, data: bytes, gate: asyncio.Event) -> None:
        self._data = io.BytesIO(data)
        self._gate = gate
        self.reads = 0
        self.closed = False

    def read(self, size: int, /) -> bytes | Awaitable[bytes]:
        self.reads += 1
        if self.reads == 1:
            return self._data.read(size)
        return self._after_gate(size)

    async def _after_gate(self, size: int) -> bytes:
        await self._gate.wait()
        return self._data.read(size)

    def close(self) -> None:
        self.closed = True


class RecordingSink(io.BytesIO):
    def __init__(self, first_write: asyncio.Event) -> None:
        super().__init__()
        self.first_write = first_write
        self.writes = 0

    def write(self, b: Any) -> int:
        self.writes += 1
        self.first_write.set()
        return super().write(b)


@run()
async def test_snapshot_does_not_hold_up_other_messages_to_that_peer() -> None:
    data = random.Random(4).randbytes(3 * 1024 * 1024)
    gate = asyncio.Event()
    first_chunk = asyncio.Event()
    readers: list[GatedReader] = []
    sinks: list[RecordingSink] = []

    def source(m: Message) -> GatedReader:
        readers.append(GatedReader(data, gate))
        return readers[-1]

    def sink(m: Message) -> BinaryIO:
        sinks.append(RecordingSink(first_chunk))
        return sinks[-1]

    a = Member(1, snapshot_source=source)
    b = Member(2, snapshot_sink=sink)
    try:
        for m in (a, b):
            await m.t.start()
        a.t.add_peer(2, b.t.address)
        b.t.add_peer(1, a.t.address)
        await wait_for(a.t.wait_connected(2), "connect")
        header = snap_msg(1, 2, b"")  # the data comes from the source
        a.t.send([header, app(1, 2, 0)])
        await wait_for(first_chunk.wait(), "the first chunk")
        a.t.send([app(1, 2, 1)])
        await eventually(lambda: b.indexes_from(1) == [0, 1], "messages while the snapshot waits")
        assert a.snap_status == []
        assert all(m.type != MT.SNAP for m in b.received)
        gate.set()
        await wait_for(a.got_status.wait(), "snapshot status")
        assert a.snap_status == [(2, True)]
        snaps = [m for m in b.received if m.type == MT.SNAP]
        assert len(snaps) == 1
        assert snaps[0].snapshot is not None
        assert snaps[0].snapshot.data == data
        assert snaps[0].snapshot.metadata == header.snapshot.metadata  # type: ignore[union-attr]
        assert sinks[0].writes == 3
        assert sinks[0].closed
        assert readers[0].closed
    finally:
        await a.t.stop()
        await b.t.stop()


@run()
async def test_snapshot_spools_to_a_file_sink(tmp_path: Any) -> None:
    data = random.Random(5).randbytes(2 * 1024 * 1024 + 7)
    path = tmp_path / "incoming.snap"

    def sink(m: Message) -> BinaryIO:
        assert m.snapshot is not None
        assert m.snapshot.data == b""
        f: BinaryIO = path.open("w+b")
        return f

    async with cluster(1, 2, snapshot_sink=sink) as ms:
        a, b = ms[1], ms[2]
        a.t.send([snap_msg(1, 2, data)])
        await wait_for(a.got_status.wait(), "snapshot status")
        assert a.snap_status == [(2, True)]
        assert b.received[0].snapshot is not None
        assert b.received[0].snapshot.data == data
        assert path.read_bytes() == data


def test_a_spooled_snapshot_is_delivered_as_its_file_unread_and_the_file_unlinked(
    tmp_path: Path,
) -> None:
    data = random.Random(6).randbytes(3 * 1024 * 1024 + 11)  # several chunks
    spool = SnapshotSpool(tmp_path / "spool")

    @run()
    async def main() -> None:
        async with cluster(1, 2, snapshot_sink=spool) as ms:
            a, b = ms[1], ms[2]
            a.t.send([snap_msg(1, 2, data)])
            await wait_for(a.got_status.wait(), "snapshot status")
            assert a.snap_status == [(2, True)]
            snap = b.received[0].snapshot
            assert snap is not None
            got: object = snap.data
            assert isinstance(got, FileSnapshotData), type(got)
            assert len(got) == len(data)
            assert got.read_range(0, len(got)) == data
            assert list(spool.directory.iterdir()) == []  # unlinked; the data lives on its fd

    main()


def test_a_failed_spooled_transfer_leaves_no_file(tmp_path: Path) -> None:
    spool = SnapshotSpool(tmp_path / "spool")
    cfg = attrs.evolve(FAST, max_snapshot_size=1024 * 1024)

    @run()
    async def main() -> None:
        async with cluster(1, 2, config=cfg, snapshot_sink=spool) as ms:
            a, b = ms[1], ms[2]
            a.t.send([snap_msg(1, 2, bytes(3 * 1024 * 1024))])
            await wait_for(a.got_status.wait(), "snapshot status")
            assert a.snap_status == [(2, False)]
            assert not [m for m in b.received if m.snapshot is not None]
            await eventually(
                lambda: list(spool.directory.iterdir()) == [], "the partial spool file removed"
            )

    main()


def test_spool_files_a_crash_left_are_cleared_and_nothing_else(tmp_path: Path) -> None:
    spool = SnapshotSpool(tmp_path / "spool")
    assert spool.clear() == 0  # no directory yet
    spool.directory.mkdir()
    (spool.directory / "snapshot-0000000000000064-x1.spool").write_bytes(b"partial")
    (spool.directory / "snapshot-0000000000000065-x2.spool").write_bytes(b"")
    (spool.directory / "notes.txt").write_bytes(b"not ours")
    assert spool.clear() == 2
    assert [p.name for p in spool.directory.iterdir()] == ["notes.txt"]


@run()
async def test_snapshot_to_an_unreachable_peer_reports_failure() -> None:
    sock = idle_socket()
    a = Member(1, peers={2: sock.getsockname()})
    try:
        await a.t.start()
        a.t.send([snap_msg(1, 2, b"data")])
        await wait_for(a.got_status.wait(), "snapshot status")
        assert a.snap_status == [(2, False)]
        assert a.t.stats(2).snapshots_failed == 1
    finally:
        await a.t.stop()
        sock.close()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("ends early", "snapshot from peer 9 at"),
        (
            "short count",
            "snapshot incomplete: received 6 bytes in 2 chunks, the sender sent 7 in 2",
        ),
        ("chunk first", "before the snapshot header"),
        ("not a snap", "snapshot header is a APP message"),
        ("too large", "snapshot exceeds the limit of 8 bytes"),
    ],
)
def test_bad_snapshot_transfer_is_refused_and_nothing_delivered(
    case: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    nine = idle_socket()
    sinks: list[io.BytesIO] = []

    def sink(m: Message) -> BinaryIO:
        sinks.append(io.BytesIO())
        return sinks[-1]

    cfg = attrs.evolve(FAST, max_snapshot_size=8)
    header = frame(FrameKind.SNAP_HEADER, encode_message(snap_msg(9, 2, b"")))
    chunks = frame(FrameKind.SNAP_CHUNK, b"abc") + frame(FrameKind.SNAP_CHUNK, b"def")
    sends = {
        "ends early": header + chunks,
        "short count": header + chunks + frame(FrameKind.SNAP_END, wire.SNAP_END.pack(7, 2)),
        "chunk first": chunks,
        "not a snap": frame(FrameKind.SNAP_HEADER, encode_message(app(9, 2, 0))),
        "too large": header + chunks + chunks,
    }

    @run()
    async def main() -> None:
        async with cluster(2, config=cfg, snapshot_sink=sink) as ms:
            b = ms[2]
            b.t.add_peer(9, nine.getsockname())
            reader, writer = await raw_connect(b.t.address)
            writer.write(wire.encode_hello(wire.KIND_SNAPSHOT, CLUSTER, 9, 2))
            assert (await read_frame(reader))[0] == FrameKind.ACCEPT
            writer.write(sends[case])
            if case == "ends early":
                writer.write_eof()
            elif case in ("short count", "too large"):
                kind, payload = await read_frame(reader)
                assert kind == FrameKind.SNAP_RESULT
                assert payload[0] == 0
                assert reason in payload[1:].decode()
            await assert_closed(reader)
            writer.close()
            assert b.received == []
            assert all(s.closed for s in sinks)

    try:
        main()
    finally:
        nine.close()
    assert reason in caplog.text


class ZeroReader:
    """An endless SnapshotReader of zeros."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, size: int, /) -> bytes:
        self.reads += 1
        return bytes(size)

    def close(self) -> None:
        pass


class AcceptThenStall(asyncio.Protocol):
    """A fake peer: accepts any handshake, then stops reading."""

    def __init__(self, transports: list[asyncio.Transport]) -> None:
        self.transports = transports
        self.seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast("asyncio.Transport", transport)  # uvloop's do not subclass it
        self.transport = transport
        self.transports.append(transport)

    def data_received(self, data: bytes) -> None:
        before, self.seen = self.seen, self.seen + len(data)
        if before < wire.HELLO.size <= self.seen:
            self.transport.write(frame(FrameKind.ACCEPT, b""))
            self.transport.pause_reading()


def test_snapshot_flow_control_stalls_on_a_receiver_that_does_not_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    reader = ZeroReader()

    @run()
    async def main() -> None:
        transports: list[asyncio.Transport] = []
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: AcceptThenStall(transports), "127.0.0.1", 0)
        cfg = attrs.evolve(FAST, snapshot_chunk_size=64 * 1024, snapshot_timeout=0.3)
        a = Member(1, config=cfg, snapshot_source=lambda m: reader)
        try:
            await a.t.start()
            a.t.add_peer(2, server.sockets[0].getsockname())
            a.t.send([snap_msg(1, 2, b"")])
            await wait_for(a.got_status.wait(), "the stalled snapshot fails")
            assert a.snap_status == [(2, False)]
        finally:
            await a.t.stop()
            server.close()
            for t in transports:
                t.abort()
            await server.wait_closed()

    main()
    # bounded by the kernel's socket buffers plus the two-chunk high-water mark, not endless
    assert 2 < reader.reads < 1000
    assert "stalled for 0.3s" in caplog.text


@run()
async def test_a_failing_on_message_is_logged_and_the_link_stays_up() -> None:
    async with cluster(1, 2, raise_on=0) as ms:
        a, b = ms[1], ms[2]
        a.t.send([app(1, 2, 0), app(1, 2, 1)])
        await eventually(lambda: len(b.received) == 2, "both delivered despite the error")
        a.t.send([app(1, 2, 2)])
        await eventually(lambda: len(b.received) == 3, "and later ones")
        assert b.t.stats(1).frames_received == 2


def test_add_peer_with_a_new_address_redials_there(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    @run()
    async def main() -> None:
        async with cluster(1, 2, 3) as ms:
            a, c = ms[1], ms[3]
            with pytest.raises(ValueError, match="cannot have 1 as a peer"):
                a.t.add_peer(1, c.t.address)
            a.t.add_peer(2, c.t.address)  # "2 moved": the link is closed and re-dialed there
            await eventually(lambda: a.t.stats(2).dial_failures > 0, "refused at the new address")
            assert a.t.stats(2).disconnects == 1
            assert not a.t.is_connected(2)

    main()
    assert "member 1: peer 2 moved to" in caplog.text
    assert "addressed to member 2 but this is member 3" in caplog.text


# -- stop --


@run()
async def test_stop_closes_everything_and_leaves_no_tasks() -> None:
    gate = asyncio.Event()  # never set: a snapshot stays in flight until stop
    reader = GatedReader(bytes(3 * 1024 * 1024), gate)
    async with cluster(1, 2, 3, snapshot_source=lambda m: reader) as ms:
        ms[1].t.send([snap_msg(1, 2, b""), app(1, 3, 0)])
        await eventually(lambda: reader.reads >= 2, "the snapshot is in flight")
        addresses = [m.t.address for m in ms.values()]
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert reader.closed
    assert ms[1].snap_status == []  # cut short by stop: no status
    for m in ms.values():
        assert not m.t._conns
        assert not any(m.t.is_connected(o) for o in ms if o != m.id)
        m.t.send([app(m.id, 1 if m.id != 1 else 2, 0)])  # after stop: dropped, no callbacks
        assert m.unreachable == []
    for addr in addresses:
        with pytest.raises(ConnectionRefusedError):
            await raw_connect(addr)


@run()
async def test_remove_peer_closes_its_links_and_refuses_it() -> None:
    async with cluster(1, 2) as ms:
        a, b = ms[1], ms[2]
        a.t.remove_peer(2)
        await eventually(lambda: b.t.stats(1).disconnects == 1, "b's link to a was closed")
        await eventually(lambda: b.t.stats(1).dial_failures >= 1, "b is refused now")
        assert not b.t.is_connected(1)
        a.t.send([app(1, 2, 0)])
        assert a.unreachable == [2]
        assert a.t.dropped_unknown == 1
        b.t.send([app(2, 1, 0)])
        assert b.unreachable == [1]
        assert a.received == []


@run()
async def test_a_removed_member_is_told_so_when_it_dials() -> None:
    async with cluster(1, 2, 3) as ms:
        a, b, c = ms[1], ms[2], ms[3]
        a.t.remove_peer(2, removed_at=7)
        await eventually(lambda: b.told_removed == [(1, 7)], "b told by a it was removed at 7")
        c.t.remove_peer(2)  # no removal index: an unknown member, not a removed one
        await eventually(lambda: b.t.stats(3).dial_failures >= 1, "b is refused by c")
        await eventually(lambda: b.t.stats(1).dial_failures >= 2, "b dialed a again")
        assert set(b.told_removed) == {(1, 7)}
        a.t.add_peer(2, b.t.address)  # added again: a accepts it
        await eventually(lambda: b.t.is_connected(1), "b linked to a again")
        assert a.unreachable == []
        assert a.received == []


@pytest.mark.parametrize(
    ("reply", "told"),
    [
        (b"\x00\x00\x00\x03" + bytes([FrameKind.REMOVED]) + b"\x00\x07", []),  # cut short
        (frame(FrameKind.REMOVED, (9).to_bytes(8, "big") + b"gone"), [(5, 9)]),
    ],
    ids=["short", "whole"],
)
def test_a_dialer_believes_only_a_whole_removed_frame(
    reply: bytes, told: list[tuple[int, int]]
) -> None:
    @run()
    async def main() -> None:
        async def listener(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readexactly(31)  # the handshake
            w.write(reply)
            await w.drain()
            w.close()

        server = await asyncio.start_server(listener, "127.0.0.1", 0)
        m = Member(1)
        try:
            await m.t.start()
            m.t.add_peer(5, server.sockets[0].getsockname()[:2])
            await eventually(lambda: m.t.stats(5).dial_failures >= 2, "two refused dials")
            assert set(m.told_removed) == set(told)
        finally:
            await m.t.stop()
            server.close()

    main()


@run()
async def test_remove_peer_still_sends_what_was_queued_for_it_first() -> None:
    # A removal is applied in the same loop turn as the messages carrying its commit: those
    # must still reach the removed member, or it may never learn it was removed.
    async with cluster(1, 2) as ms:
        a, b = ms[1], ms[2]
        await eventually(lambda: a.t.is_connected(2), "a is linked to b")
        last = app(1, 2, 7)
        a.t.send([last])
        a.t.remove_peer(2)
        await eventually(lambda: last in b.received, "the message queued before the removal")
        await eventually(lambda: b.t.stats(1).disconnects == 1, "b's link to a was closed")


# -- LocalNetwork --


class LocalMember:
    def __init__(self, hub: LocalNetwork, member_id: int) -> None:
        self.received: list[Message] = []
        self.unreachable: list[int] = []
        self.snap_status: list[tuple[int, bool]] = []
        self.told_removed: list[tuple[int, int]] = []
        self.ep = hub.join(
            member_id,
            on_message=self.received.append,
            on_unreachable=self.unreachable.append,
            on_snapshot_status=lambda p, ok: self.snap_status.append((p, ok)),
            on_removed=lambda p, i: self.told_removed.append((p, i)),
        )


async def local_cluster(hub: LocalNetwork, *ids: int) -> dict[int, LocalMember]:
    ms = {i: LocalMember(hub, i) for i in ids}
    for i, m in ms.items():
        for o in ids:
            if o != i:
                m.ep.add_peer(o, ("local", o))
        await m.ep.start()
    return ms


@run()
async def test_local_network_delivers_in_order_with_delay() -> None:
    hub = LocalNetwork(delay=0.01)
    ms = await local_cluster(hub, 1, 2)
    for i in range(10):
        ms[1].ep.send([app(1, 2, i)])
        if i == 5:
            hub.delay = 0.0  # later messages must still not overtake earlier ones
    await eventually(lambda: len(ms[2].received) == 10, "10 delivered")
    assert [m.index for m in ms[2].received] == list(range(10))
    for m in ms.values():
        await m.ep.stop()


@run()
async def test_local_network_tells_a_removed_member_instead_of_delivering() -> None:
    hub = LocalNetwork()
    ms = await local_cluster(hub, 1, 2, 3)
    ms[1].ep.remove_peer(2, removed_at=9)
    ms[3].ep.remove_peer(2)
    ms[2].ep.send([app(2, 1, 0), app(2, 3, 0)])
    assert ms[2].unreachable == [1, 3]
    await eventually(lambda: ms[2].told_removed == [(1, 9)], "2 told by 1 it was removed at 9")
    assert ms[1].received == []
    assert ms[3].received == []
    ms[1].ep.add_peer(2, ("local", 2))
    ms[2].ep.send([app(2, 1, 1)])
    await eventually(lambda: len(ms[1].received) == 1, "added again: delivered")
    assert ms[2].told_removed == [(1, 9)]
    for m in ms.values():
        await m.ep.stop()


@run()
async def test_local_network_partition_reports_unreachable_and_heals() -> None:
    hub = LocalNetwork()
    ms = await local_cluster(hub, 1, 2, 3)
    hub.partition([1], [2, 3])
    ms[1].ep.send([app(1, 2, 0), app(1, 3, 0)])
    ms[2].ep.send([app(2, 3, 0)])
    assert ms[1].unreachable == [2, 3]
    await eventually(lambda: len(ms[3].received) == 1, "2 -> 3 still works")
    ms[1].ep.send([snap_msg(1, 2, b"s")])
    assert ms[1].snap_status == [(2, False)]
    hub.heal()
    ms[1].ep.send([snap_msg(1, 2, b"s")])
    await eventually(lambda: ms[1].snap_status == [(2, False), (2, True)], "snapshot delivered")
    await ms[2].ep.stop()
    ms[1].ep.send([app(1, 2, 1)])
    assert ms[1].unreachable == [2, 3, 2]
    for m in ms.values():
        await m.ep.stop()


@run()
async def test_local_network_random_drops_are_seeded_and_silent() -> None:
    results = []
    for _ in range(2):
        hub = LocalNetwork(rng=random.Random(11), drop_rate=0.3)
        ms = await local_cluster(hub, 1, 2)
        ms[1].ep.send([app(1, 2, i) for i in range(100)])
        await eventually(lambda: hub.in_flight() == 0, "nothing in flight")  # noqa: B023
        results.append([m.index for m in ms[2].received])
        assert ms[1].unreachable == []
        for m in ms.values():
            await m.ep.stop()
    assert results[0] == results[1]
    assert 50 < len(results[0]) < 90
    assert results[0] == sorted(results[0])
