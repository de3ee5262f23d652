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
    """The queue of reads awaiting confirmation, in arrival order, keyed by round token.

    Each request gets its own heartbeat round, named by a token the leader makes up (a sequence
    number) rather than by the request's context: a client that retries a read reuses its
    context, and an acknowledgement of an earlier round with that context proves nothing about
    leadership when the retry arrived (etcd-io/raft#397, etcd#20418). Followers echo the token
    back in their heartbeat responses; only the leader interprets it.
    """

    __slots__ = ("next_round", "option", "pending", "queue")

    def __init__(self, option: ReadOnlyOption, next_round: int = 1) -> None:
        self.option = option
        self.next_round = next_round
        """The number of the next round; never reused while this node runs."""
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> bytes:
        """Queue read ``m`` at commit ``index``; returns the token of its heartbeat round."""
        token = self.next_round.to_bytes(8, "big")
        self.next_round += 1
        self.pending[token] = ReadIndexStatus(req=m, index=index)
        self.queue.append(token)
        return token

    def recv_ack(self, node: int, token: bytes) -> set[int] | None:
        """Record ``node``'s heartbeat ack for round ``token``; returns its acks, if pending."""
        rs = self.pending.get(token)
        if rs is None:
            return None
        rs.acks.add(node)
        return rs.acks

    def advance(self, token: bytes) -> list[ReadIndexStatus]:
        """Dequeue and return every request up to and including round ``token`` (confirmed)."""
        if token not in self.pending:
            return []
        i = self.queue.index(token) + 1
        done, self.queue = self.queue[:i], self.queue[i:]
        return [self.pending.pop(c) for c in done]

    def last_pending_request_ctx(self) -> bytes:
        """The token of the newest pending round, or ``b""``."""
        return self.queue[-1] if self.queue else b""
