"""Bookkeeping for ReadIndex requests awaiting a leadership-confirming heartbeat round. Internal.

Thesis §6.4: the leader records its commit index when a read arrives, then confirms it is still
leader by hearing from a quorum in response to a heartbeat carrying the request's context. Once a
request is confirmed, so is every request queued before it.
"""

from __future__ import annotations

import enum

import attrs

from raftlib.types import Message


class ReadOnlyOption(enum.Enum):
    """How a leader confirms a read.

    ``SAFE`` confirms leadership with a heartbeat round to a quorum for every batch of reads.
    ``LEASE_BASED`` trusts the CheckQuorum lease instead (no round trip), which is only as safe as
    the bound on clock drift between nodes; it requires ``check_quorum``.
    """

    SAFE = 0
    LEASE_BASED = 1


@attrs.define
class ReadIndexStatus:
    """A pending read: the request, the commit index when it arrived, and who has acked."""

    req: Message
    index: int
    acks: set[int] = attrs.field(factory=set)


class ReadOnly:
    """The queue of reads awaiting confirmation, in arrival order, keyed by request context."""

    __slots__ = ("option", "pending", "queue")

    def __init__(self, option: ReadOnlyOption) -> None:
        self.option = option
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> None:
        """Queue read ``m`` at commit ``index``; a repeated context is ignored."""
        ctx = m.context
        if ctx in self.pending:
            return
        self.pending[ctx] = ReadIndexStatus(req=m, index=index)
        self.queue.append(ctx)

    def recv_ack(self, node: int, ctx: bytes) -> set[int] | None:
        """Record ``node``'s heartbeat ack for ``ctx``; returns the acks so far, if pending."""
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks.add(node)
        return rs.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Dequeue and return every request up to and including ``ctx`` (now confirmed)."""
        if ctx not in self.pending:
            return []
        i = self.queue.index(ctx) + 1
        done, self.queue = self.queue[:i], self.queue[i:]
        return [self.pending.pop(c) for c in done]

    def last_pending_request_ctx(self) -> bytes:
        """The context of the newest pending request, or ``b""``."""
        return self.queue[-1] if self.queue else b""
