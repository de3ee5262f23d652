"""``LocalNetwork``: several members' :class:`~kvapp.transport.api.PeerNetwork` in one process.

For fast tests of a member (and small simulations): no sockets and no encoding, but the same
contract as :class:`~kvapp.transport.TcpTransport`: ``send`` never blocks; a message to a peer
that is unknown, stopped or cut off is dropped and reported through ``on_unreachable``; messages
on one link arrive in order; every SNAP message gets one ``on_snapshot_status``. On top, the hub
can lose messages at random (``drop_rate``, drawn from an injected ``random.Random``; these
losses are silent, like a lossy network), delay them (``delay`` seconds, by the loop's timers)
and cut links or partition members.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from kvapp.transport.api import (
    MessageHandler,
    PeerStats,
    RemovedHandler,
    SnapshotStatusHandler,
    UnreachableHandler,
)
from raftlib.types import Message, MessageType

__all__ = ["LocalEndpoint", "LocalNetwork"]

logger = logging.getLogger("kvapp.transport")

_Link = tuple[int, int]


class LocalNetwork:
    """A hub that delivers messages between the :class:`LocalEndpoint` s made by :meth:`join`.

    Args:
        rng: source of random drops (seed it for reproducible runs).
        delay: seconds each message spends in flight (0: next loop turn). May be changed at any
            time; messages on a link still arrive in the order they were sent.
        drop_rate: probability that a message is lost silently (0..1). May be changed any time.
    """

    def __init__(
        self, *, rng: random.Random | None = None, delay: float = 0.0, drop_rate: float = 0.0
    ) -> None:
        self.delay = delay
        self.drop_rate = drop_rate
        self._rng = rng if rng is not None else random.Random()
        self._members: dict[int, LocalEndpoint] = {}
        self._cut: set[_Link] = set()
        self._flight: dict[_Link, deque[tuple[Message, asyncio.Handle]]] = {}

    def join(
        self,
        member_id: int,
        *,
        on_message: MessageHandler,
        on_unreachable: UnreachableHandler,
        on_snapshot_status: SnapshotStatusHandler,
        on_removed: RemovedHandler | None = None,
    ) -> LocalEndpoint:
        """A new member's endpoint on this hub (its ``PeerNetwork``).

        A message to a member that removed the sender (``remove_peer(..., removed_at=i)``) is
        not delivered, and the sender's ``on_removed(receiver, i)`` is called (next loop turn),
        as a TCP peer refuses a removed member's connection.

        Raises:
            ValueError: ``member_id`` already joined.
        """
        if member_id in self._members:
            raise ValueError(f"member {member_id:x} already joined this network")
        ep = LocalEndpoint(
            self, member_id, on_message, on_unreachable, on_snapshot_status, on_removed=on_removed
        )
        self._members[member_id] = ep
        return ep

    # -- fault controls --

    def cut(self, a: int, b: int, *, both_ways: bool = True) -> None:
        """Cut the link from ``a`` to ``b`` (and back unless ``both_ways`` is False)."""
        self._cut.add((a, b))
        if both_ways:
            self._cut.add((b, a))

    def restore(self, a: int, b: int, *, both_ways: bool = True) -> None:
        """Undo :meth:`cut`."""
        self._cut.discard((a, b))
        if both_ways:
            self._cut.discard((b, a))

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between members of different ``groups``.

        Members not listed keep their links.
        """
        sets = [set(g) for g in groups]
        for i, g in enumerate(sets):
            for h in sets[i + 1 :]:
                for a in g:
                    for b in h:
                        self.cut(a, b)

    def isolate(self, member_id: int) -> None:
        """Cut every link to and from ``member_id``."""
        for other in self._members:
            if other != member_id:
                self.cut(member_id, other)

    def heal(self) -> None:
        """Restore every link."""
        self._cut.clear()

    def link_up(self, a: int, b: int) -> bool:
        """Whether ``a`` can reach ``b`` now: both running, ``b`` knows ``a``, link not cut."""
        src, dst = self._members.get(a), self._members.get(b)
        return (
            src is not None
            and dst is not None
            and src.running
            and dst.running
            and a in dst.peers
            and (a, b) not in self._cut
        )

    def in_flight(self) -> int:
        """Messages sent and not yet delivered or lost."""
        return sum(len(q) for q in self._flight.values())

    # -- delivery --

    def _route(self, src: LocalEndpoint, m: Message) -> bool:
        """Put ``m`` in flight; False when the link is down (the caller reports unreachable)."""
        if not self.link_up(src.member_id, m.to):
            dst = self._members.get(m.to)
            if dst is not None and dst.running and (src.member_id, m.to) not in self._cut:
                removed_at = dst.removed.get(src.member_id)
                if removed_at:
                    asyncio.get_running_loop().call_soon(src._told_removed, m.to, removed_at)
            return False
        if self.drop_rate and self._rng.random() < self.drop_rate:
            src._lost(m)
            return True
        key = (src.member_id, m.to)
        loop = asyncio.get_running_loop()
        if self.delay > 0:
            handle: asyncio.Handle = loop.call_later(self.delay, self._arrive, key)
        else:
            handle = loop.call_soon(self._arrive, key)
        self._flight.setdefault(key, deque()).append((m, handle))
        return True

    def _arrive(self, key: _Link) -> None:
        flight = self._flight.get(key)
        if not flight:
            return
        m, _ = flight.popleft()  # the oldest: equal delays keep each link in order
        if not flight:
            del self._flight[key]
        src, dst = self._members.get(key[0]), self._members.get(key[1])
        if dst is None or src is None or not self.link_up(*key):
            if src is not None:
                src._lost(m)
            return
        dst._receive(m)
        if m.type == MessageType.SNAP:
            src._snapshot_done(m.to, ok=True)

    def _forget(self, member_id: int) -> None:
        """Cancel what is in flight to or from a stopping member."""
        for key in [k for k in self._flight if member_id in k]:
            for _, handle in self._flight.pop(key):
                handle.cancel()


class LocalEndpoint:
    """One member's :class:`~kvapp.transport.api.PeerNetwork` on a :class:`LocalNetwork`."""

    def __init__(
        self,
        hub: LocalNetwork,
        member_id: int,
        on_message: MessageHandler,
        on_unreachable: UnreachableHandler,
        on_snapshot_status: SnapshotStatusHandler,
        *,
        on_removed: RemovedHandler | None = None,
    ) -> None:
        self.member_id = member_id
        self.peers: dict[int, tuple[str, int]] = {}
        self.removed: dict[int, int] = {}  # removed member id -> log index of its removal
        self.running = False
        self._hub = hub
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._on_removed = on_removed
        self._stats: dict[int, PeerStats] = {}

    def stats(self, peer_id: int) -> PeerStats:
        """The counters of ``peer_id`` (messages only: there are no frames here)."""
        return self._stats.setdefault(peer_id, PeerStats())

    def send(self, messages: Sequence[Message]) -> None:
        """Put ``messages`` in flight; report what cannot be delivered. Never blocks."""
        if not self.running:
            return
        unreachable: dict[int, None] = {}
        for m in messages:
            if m.to in self.peers and self._hub._route(self, m):
                self.stats(m.to).messages_sent += 1
                continue
            self.stats(m.to).messages_dropped += 1
            if m.type == MessageType.SNAP:  # as over TCP: the snapshot's status says it
                self._snapshot_done(m.to, ok=False)
            else:
                unreachable[m.to] = None
        for pid in unreachable:
            self._call(self._on_unreachable, pid)

    def add_peer(self, member_id: int, address: tuple[str, int]) -> None:
        """Know ``member_id`` (the address is recorded, not used)."""
        if member_id == self.member_id:
            raise ValueError(f"member {self.member_id:x} cannot have itself as a peer")
        self.peers[member_id] = address
        self.removed.pop(member_id, None)

    def remove_peer(self, member_id: int, *, removed_at: int = 0) -> None:
        """Forget ``member_id``: no more messages to it; with ``removed_at``, none from it."""
        self.peers.pop(member_id, None)
        if removed_at:
            self.removed[member_id] = removed_at

    async def start(self) -> None:
        """Go online."""
        self.running = True

    async def stop(self) -> None:
        """Go offline: in-flight messages to and from this member are lost, callbacks stop."""
        self.running = False
        self._hub._forget(self.member_id)

    # -- called by the hub --

    def _receive(self, m: Message) -> None:
        self.stats(m.from_).messages_received += 1
        self._call(self._on_message, m)

    def _lost(self, m: Message) -> None:
        if self.running and m.type == MessageType.SNAP:
            self._snapshot_done(m.to, ok=False)

    def _told_removed(self, peer_id: int, removed_at: int) -> None:
        if self.running and self._on_removed is not None:
            self._call(self._on_removed, peer_id, removed_at)

    def _snapshot_done(self, peer_id: int, *, ok: bool) -> None:
        if not self.running:
            return
        stats = self.stats(peer_id)
        if ok:
            stats.snapshots_sent += 1
        else:
            stats.snapshots_failed += 1
        self._call(self._on_snapshot_status, peer_id, ok)

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            logger.exception("local member %x: callback %r failed", self.member_id, fn)
