"""Small helpers for driving single RawNodes by hand in scenario tests."""

from __future__ import annotations

import random
from typing import Any

from raftlib import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    Ready,
    Snapshot,
    SnapshotMetadata,
)

MT = MessageType


def storage_with(
    voters: tuple[int, ...] = (1, 2, 3),
    *,
    entries: list[tuple[int, int]] | None = None,
    term: int = 0,
    vote: int = 0,
    commit: int = 0,
    learners: tuple[int, ...] = (),
) -> MemoryStorage:
    """A storage whose log holds ``entries`` given as ``(term, index)`` pairs."""
    s = MemoryStorage(ConfState(voters=voters, learners=learners))
    if entries:
        s.append([Entry(term=t, index=i, data=b"") for t, i in entries])
    if term or vote or commit:
        s.set_hard_state(HardState(term=term, vote=vote, commit=commit))
    return s


def log_of_terms(terms: list[int]) -> list[tuple[int, int]]:
    """``(term, index)`` pairs for a log whose entry i+1 has ``terms[i]``."""
    return [(t, i + 1) for i, t in enumerate(terms)]


def new_node(
    node_id: int = 1,
    storage: MemoryStorage | None = None,
    *,
    seed: int = 0,
    **cfg: Any,
) -> RawNode:
    """A RawNode with etcd-test-like defaults (election 10 ticks, heartbeat 1)."""
    fields: dict[str, Any] = {"election_tick": 10, "heartbeat_tick": 1}
    fields.update(cfg)
    return RawNode(
        Config(
            id=node_id,
            storage=storage if storage is not None else storage_with(),
            rng=random.Random(seed),
            **fields,
        )
    )


def persist(node: RawNode, storage: MemoryStorage, rd: Ready) -> None:
    """Persist ``rd`` into ``storage`` the way a correct application would."""
    if rd.snapshot is not None:
        storage.apply_snapshot(rd.snapshot)
    storage.append(rd.entries)
    if rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)


def drain(node: RawNode, storage: MemoryStorage) -> list[Message]:
    """Process every pending Ready; returns all messages produced (both kinds)."""
    out: list[Message] = []
    while node.has_ready():
        rd = node.ready()
        persist(node, storage, rd)
        out.extend(rd.messages)
        out.extend(rd.persisted_messages)
        node.advance(rd)
    return out


def msgs_of(msgs: list[Message], t: MessageType) -> list[Message]:
    """The messages of type ``t``."""
    return [m for m in msgs if m.type == t]


def snapshot_at(index: int, term: int, voters: tuple[int, ...] = (1, 2, 3)) -> Snapshot:
    """A snapshot with empty data at ``(index, term)``."""
    return Snapshot(
        data=b"snap",
        metadata=SnapshotMetadata(conf_state=ConfState(voters=voters), index=index, term=term),
    )


def app(
    frm: int,
    to: int,
    term: int,
    index: int,
    log_term: int,
    entries: list[tuple[int, int]] | None = None,
    commit: int = 0,
) -> Message:
    """An APP message with entries given as ``(term, index)``."""
    ents = tuple(Entry(term=t, index=i, data=b"") for t, i in (entries or []))
    return Message(
        MT.APP,
        to=to,
        from_=frm,
        term=term,
        index=index,
        log_term=log_term,
        entries=ents,
        commit=commit,
    )


def elect(
    node: RawNode,
    storage: MemoryStorage,
    voters: tuple[int, ...] = (1, 2, 3),
    *,
    ack: bool = True,
) -> None:
    """Make ``node`` leader by campaigning and granting every vote, then settle its Readys.

    With ``ack`` every follower acknowledges the leader's empty entry, so they are all in
    replicate state and the entry is committed.
    """
    node.campaign()
    msgs = drain(node, storage)
    for m in msgs_of(msgs, MT.VOTE):
        node.step(Message(MT.VOTE_RESP, to=node.id, from_=m.to, term=m.term))
    msgs = drain(node, storage)
    if ack:
        for m in msgs_of(msgs, MT.APP):
            last = m.entries[-1].index if m.entries else m.index
            node.step(Message(MT.APP_RESP, to=node.id, from_=m.to, term=m.term, index=last))
        drain(node, storage)


def drain_reads(node: RawNode, storage: MemoryStorage) -> list[tuple[int, bytes]]:
    """Process every pending Ready; returns the answered reads as ``(index, ctx)``."""
    out: list[tuple[int, bytes]] = []
    while node.has_ready():
        rd = node.ready()
        persist(node, storage, rd)
        out.extend((r.index, r.request_ctx) for r in rd.read_states)
        node.advance(rd)
    return out
