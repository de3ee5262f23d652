"""RawNode.propose_many: many proposals in one call, all or nothing, same log as propose()."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import pytest

from raftlib import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    MemoryStorage,
    Message,
    MessageType,
    Node,
    ProposalDropped,
    RawNode,
    Ready,
)

from .helpers import drain, elect, new_node, persist, storage_with

MT = MessageType


class _Cluster:
    """Three RawNodes over MemoryStorage, messages delivered in order until quiet."""

    def __init__(self, **cfg: object) -> None:
        ids = (1, 2, 3)
        self.storages = {i: MemoryStorage(ConfState(voters=ids)) for i in ids}
        self.nodes = {
            i: RawNode(
                Config(
                    id=i,
                    storage=self.storages[i],
                    election_tick=10,
                    heartbeat_tick=1,
                    rng=random.Random(i),
                    **cfg,  # type: ignore[arg-type]
                )
            )
            for i in ids
        }
        self.applied: dict[int, list[Entry]] = {i: [] for i in ids}
        self.sent: list[Message] = []
        self.nodes[1].campaign()
        self.settle()

    def settle(self) -> None:
        pending: list[Message] = []
        while True:
            for i, node in self.nodes.items():
                while node.has_ready():
                    rd = node.ready()
                    pending.extend(rd.messages)
                    persist(node, self.storages[i], rd)
                    pending.extend(rd.persisted_messages)
                    self.applied[i].extend(rd.committed_entries)
                    node.advance(rd)
            if not pending:
                return
            msgs, pending = pending, []
            self.sent.extend(msgs)
            for m in msgs:
                self.nodes[m.to].step(m)

    def log(self, i: int) -> list[tuple[int, int, bytes]]:
        st = self.storages[i]
        return [(e.term, e.index, e.data) for e in st.entries(1, st.last_index() + 1)]


def _payloads(n: int) -> list[bytes]:
    return [f"p{i}".encode() for i in range(n)]


def test_leader_appends_the_batch_in_order_and_every_member_applies_it() -> None:
    c = _Cluster()
    before = c.storages[1].last_index()
    c.nodes[1].propose_many(_payloads(5))
    c.settle()
    for i in (1, 2, 3):
        got = [e for e in c.applied[i] if e.data]
        assert [e.data for e in got] == _payloads(5)
        assert [e.index for e in got] == list(range(before + 1, before + 6))
        assert {e.term for e in got} == {1}


def test_same_log_and_messages_as_one_propose_per_entry_in_one_cycle() -> None:
    one_by_one = _Cluster()
    many = _Cluster()
    for rounds in ([b"a"], [b"b", b"c", b"d"], _payloads(64)):
        for d in rounds:
            one_by_one.nodes[1].propose(d)
        many.nodes[1].propose_many(rounds)
        one_by_one.settle()
        many.settle()
    assert many.log(1) == one_by_one.log(1)
    assert many.log(2) == one_by_one.log(2) == many.log(3)
    assert many.sent == one_by_one.sent


def test_empty_batch_proposes_nothing() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.propose_many([])
    assert not node.has_ready()


def test_bytes_like_elements_are_copied_to_bytes() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    buf = bytearray(b"mutable")
    node.propose_many([buf, memoryview(b"view"), b"plain"])
    buf[0:1] = b"X"
    rd = node.ready()
    assert [e.data for e in rd.entries] == [b"mutable", b"view", b"plain"]
    assert all(type(e.data) is bytes for e in rd.entries)
    persist(node, s, rd)
    node.advance(rd)


def test_any_iterable_is_accepted() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)

    def gen() -> Iterator[bytes]:
        yield b"x"
        yield b"y"

    node.propose_many(gen())
    assert [e.data for e in node.ready().entries] == [b"x", b"y"]


def _durable(node: RawNode) -> object:
    r = node._raft
    return (
        r.hard_state(),
        tuple(r.log.unstable.entries),
        r.log.last_index(),
        r.uncommitted_size,
        node.has_ready(),
    )


@pytest.mark.parametrize(
    "datas",
    [
        b"bytes itself",
        bytearray(b"one buffer"),
        memoryview(b"one view"),
        "text",
        [b"ok", "text"],
        [b"ok", None],
        [b"ok", 5],
        [b"ok", [b"nested"]],
        5,
        None,
    ],
)
def test_refuses_non_bytes_before_anything_changes(datas: object) -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.propose(b"pending")
    before = _durable(node)
    with pytest.raises(TypeError):
        node.propose_many(datas)  # type: ignore[arg-type]
    assert _durable(node) == before


def test_uncommitted_limit_drops_the_whole_batch() -> None:
    s = storage_with()
    node = new_node(1, s, max_uncommitted_entries_size=100)
    elect(node, s)
    node.propose(b"x" * 60)  # the uncommitted tail is no longer empty
    before = _durable(node)
    with pytest.raises(ProposalDropped):
        node.propose_many([b"y" * 10, b"z" * 10, b"w" * 30])  # 110 > 100 in total
    assert _durable(node) == before
    node.propose_many([b"y" * 10, b"z" * 10])  # 80 fits
    assert [e.data for e in node.ready().entries][-2:] == [b"y" * 10, b"z" * 10]


def test_dropped_without_a_leader() -> None:
    node = new_node(1, storage_with())
    with pytest.raises(ProposalDropped):
        node.propose_many([b"a", b"b"])
    node.campaign()  # a candidate drops proposals too
    with pytest.raises(ProposalDropped):
        node.propose_many([b"a", b"b"])


def test_dropped_during_leadership_transfer() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s, ack=False)
    node.transfer_leader(2)
    before = _durable(node)
    with pytest.raises(ProposalDropped):
        node.propose_many([b"a", b"b"])
    assert _durable(node) == before


def test_follower_forwards_the_batch_as_one_proposal() -> None:
    c = _Cluster()
    c.sent.clear()
    c.nodes[2].propose_many(_payloads(3))
    rd = c.nodes[2].ready()
    props = [m for m in rd.messages if m.type == MT.PROP]
    assert len(props) == 1
    assert props[0].to == 1
    assert [e.data for e in props[0].entries] == _payloads(3)
    persist(c.nodes[2], c.storages[2], rd)
    c.nodes[2].advance(rd)
    for m in rd.messages:
        c.nodes[m.to].step(m)
    c.settle()
    for i in (1, 2, 3):
        assert [e.data for e in c.applied[i] if e.data] == _payloads(3)


def test_follower_with_forwarding_disabled_drops_the_batch() -> None:
    c = _Cluster(disable_proposal_forwarding=True)
    with pytest.raises(ProposalDropped):
        c.nodes[2].propose_many([b"a"])
    assert not c.nodes[2].has_ready()


@pytest.mark.parametrize("propose", ["one", "many"])
def test_leader_entries_are_stamped_once(propose: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader builds one Entry per proposal: stamped with term and index from the start."""
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    made: list[tuple[int, int]] = []
    init: Callable[..., None] = Entry.__init__

    def counting_init(self: Entry, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        made.append((self.term, self.index))

    monkeypatch.setattr(Entry, "__init__", counting_init)
    if propose == "one":
        node.propose(b"a")
        node.propose(b"b")
    else:
        node.propose_many([b"a", b"b"])
    monkeypatch.undo()
    last = s.last_index()
    assert made == [(1, last + 1), (1, last + 2)]
    rd = node.ready()
    assert [(e.term, e.index, e.data) for e in rd.entries] == [
        (1, last + 1, b"a"),
        (1, last + 2, b"b"),
    ]
    persist(node, s, rd)
    node.advance(rd)
    assert drain(node, s) == []


# -- raftlib.Node: proposals queued while a write runs go in as one propose_many --


class _GatedStorage(MemoryStorage):
    """Holds the first write that carries a proposal until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__(ConfState(voters=(1,)))
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.writes: list[int] = []

    def save_ready(self, rd: Ready) -> None:
        self.writes.append(len(rd.entries))
        if rd.entries and rd.entries[-1].data and not self.entered.is_set():
            self.entered.set()
            self.gate.wait(timeout=10)
        super().save_ready(rd)


async def _wait_for(cond: Callable[[], bool], what: str, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.005)


def _run_node_test(
    body: Callable[[Node, _GatedStorage, list[int]], Awaitable[None]], **options: Any
) -> list[int]:
    """Run ``body`` against a one-member Node over a gated storage; returns propose_many sizes."""
    batches: list[int] = []
    many = RawNode.propose_many

    def spy(self: RawNode, datas: Iterable[bytes | bytearray | memoryview]) -> None:
        datas = list(datas)
        batches.append(len(datas))
        many(self, datas)

    async def main() -> None:
        storage = _GatedStorage()
        node = Node(
            1,
            storage,
            send=lambda msgs: None,
            apply=lambda c: None,
            tick_interval=0.005,
            save_on_loop_below=0,  # writes held in the worker
            **options,
        )
        node.start()
        try:
            async with asyncio.timeout(30):
                await node.wait_leader(timeout=5)
                await body(node, storage, batches)
        finally:
            storage.gate.set()
            await node.stop()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RawNode, "propose_many", spy)
        asyncio.run(main())
    return batches


def test_node_proposes_what_queued_during_a_write_in_one_batch() -> None:
    async def body(node: Node, storage: _GatedStorage, batches: list[int]) -> None:
        first = asyncio.ensure_future(node.propose(b"first", timeout=10))
        await _wait_for(storage.entered.is_set, "the first proposal's write started")
        rest = [asyncio.ensure_future(node.propose(b"p%d" % k, timeout=10)) for k in range(50)]
        await asyncio.sleep(0.02)
        assert batches == []
        storage.gate.set()
        indexes = await asyncio.gather(first, *rest)
        assert indexes == list(range(indexes[0], indexes[0] + 51))
        assert batches == [50]
        assert 50 in storage.writes

    _run_node_test(body)


def test_node_batches_split_around_a_conf_change_and_keep_arrival_order() -> None:
    async def body(node: Node, storage: _GatedStorage, batches: list[int]) -> None:
        first = asyncio.ensure_future(node.propose(b"first", timeout=10))
        await _wait_for(storage.entered.is_set, "the first proposal's write started")
        a = [asyncio.ensure_future(node.propose(b"a%d" % k, timeout=10)) for k in range(5)]
        cc = asyncio.ensure_future(
            node.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER_NODE, 2), timeout=10)
        )
        b = [asyncio.ensure_future(node.propose(b"b%d" % k, timeout=10)) for k in range(5)]
        await asyncio.sleep(0.02)
        storage.gate.set()
        start = await first
        assert await asyncio.gather(*a) == list(range(start + 1, start + 6))
        assert (await cc).learners == (2,)
        assert await asyncio.gather(*b) == list(range(start + 7, start + 12))
        assert batches == [5, 5]

    _run_node_test(body)


def test_node_batch_over_the_size_limit_falls_back_to_one_at_a_time() -> None:
    """All or nothing in RawNode, but each Node proposal keeps the outcome it has alone."""

    async def body(node: Node, storage: _GatedStorage, batches: list[int]) -> None:
        first = asyncio.ensure_future(node.propose(b"f" * 100, timeout=10))  # 128 B enveloped
        await _wait_for(storage.entered.is_set, "the first proposal's write started")
        rest = [asyncio.ensure_future(node.propose(b"r" * 200, timeout=10)) for _ in range(10)]
        await asyncio.sleep(0.02)
        storage.gate.set()
        start = await first
        results = await asyncio.gather(*rest, return_exceptions=True)
        # 128 + 3 * 228 = 812 fits under 1000; a fourth 228-byte proposal does not.
        assert results[:3] == [start + 1, start + 2, start + 3]
        assert all(isinstance(r, ProposalDropped) for r in results[3:])
        assert batches == [10]  # tried as one batch first, refused whole

    _run_node_test(body, max_uncommitted_entries_size=1000)
