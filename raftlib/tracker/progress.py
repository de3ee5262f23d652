"""A leader's view of one follower's log, and the flow-control state machine over it. Internal.

``PROBE``: the leader does not know where the follower's log ends; it sends one append at a time
and waits for the answer. ``REPLICATE``: the follower is known to match up to ``match``; appends are
pipelined optimistically, bounded by the inflight window. ``SNAPSHOT``: the entries the follower
needs are compacted away; nothing is sent until the snapshot is reported applied or failed.

:data:`TRANSITIONS` is the complete set of legal state changes; every ``become_*`` checks it, and
``docs/progress.md`` is generated from it.
"""

from __future__ import annotations

import enum

from raftlib.errors import RaftInvariantError
from raftlib.tracker.inflights import Inflights


class ProgressState(enum.IntEnum):
    """Flow-control state of one follower."""

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


TRANSITIONS: dict[ProgressState, dict[ProgressState, str]] = {
    ProgressState.PROBE: {
        ProgressState.PROBE: "re-probe (stale snapshot report, leader reset)",
        ProgressState.REPLICATE: "append acknowledged",
        ProgressState.SNAPSHOT: "needed entries compacted",
    },
    ProgressState.REPLICATE: {
        ProgressState.PROBE: "append rejected, or peer unreachable",
        ProgressState.SNAPSHOT: "needed entries compacted",
    },
    ProgressState.SNAPSHOT: {
        ProgressState.PROBE: "snapshot reported applied or failed, or follower caught up",
    },
}
"""Legal transitions, each with what triggers it."""

# Module constants for the methods below (on Python 3.11 ``ProgressState.X`` is a slow lookup).
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT


class Progress:
    """Replication progress of one peer, as tracked by the leader.

    Invariant: ``match < next``. ``match`` is the highest index known to be durably on the peer;
    ``next`` is the index of the next entry to send.
    """

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "msg_app_flow_paused",
        "next",
        "pending_snapshot",
        "recent_active",
        "sent_commit",
        "state",
    )

    def __init__(
        self,
        *,
        next: int,
        match: int = 0,
        inflights: Inflights,
        is_learner: bool = False,
        recent_active: bool = False,
    ) -> None:
        self.match = match
        self.next = next
        self.state = _PROBE
        self.pending_snapshot = 0
        self.recent_active = recent_active
        self.msg_app_flow_paused = False
        self.inflights = inflights
        self.is_learner = is_learner
        self.sent_commit = 0

    def clone(self) -> Progress:
        """An independent copy (used by copy-on-write configuration changes)."""
        c = Progress(
            next=self.next,
            match=self.match,
            inflights=self.inflights.clone(),
            is_learner=self.is_learner,
            recent_active=self.recent_active,
        )
        c.state = self.state
        c.pending_snapshot = self.pending_snapshot
        c.msg_app_flow_paused = self.msg_app_flow_paused
        c.sent_commit = self.sent_commit
        return c

    def _transition(self, to: ProgressState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise RaftInvariantError(f"illegal progress transition {self.state.name} -> {to.name}")
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = to
        self.inflights.reset()

    def become_probe(self) -> None:
        """Fall back to probing from just after ``match`` (or after a snapshot being applied)."""
        if self.state is _SNAPSHOT:
            pending = self.pending_snapshot
            self._transition(_PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._transition(_PROBE)
            self.next = self.match + 1
        self.sent_commit = min(self.sent_commit, self.next - 1)

    def become_replicate(self) -> None:
        """Start pipelining appends from just after ``match``."""
        self._transition(_REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """Pause appends while the follower installs the snapshot at ``snapshot_index``."""
        self._transition(_SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.next = snapshot_index + 1
        self.sent_commit = snapshot_index

    def sent_entries(self, count: int, size: int) -> None:
        """Account for an append of ``count`` entries (``size`` payload bytes) just sent."""
        if self.state is _REPLICATE:
            if count:
                self.next += count
                self.msg_app_flow_paused = self.inflights.add(self.next - 1, size)
            else:
                self.msg_app_flow_paused = self.inflights.full()
        elif self.state is _PROBE:
            if count:
                self.msg_app_flow_paused = True
        else:
            raise RaftInvariantError("sending entries to a peer in StateSnapshot")

    def can_bump_commit(self, index: int) -> bool:
        """Whether sending commit ``index`` could advance the peer's commit index."""
        return index > self.sent_commit and self.sent_commit < self.next - 1

    def maybe_update(self, n: int) -> bool:
        """Record an acknowledgement of ``n``; returns whether ``match`` advanced."""
        if n <= self.match:
            return False
        self.match = n
        self.next = max(self.next, n + 1)
        self.msg_app_flow_paused = False
        return True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Move ``next`` back after the peer rejected an append at ``rejected``.

        ``match_hint`` is the leader's best guess of the last index both logs agree on. Returns
        False when the rejection is stale (answers an append we already moved past).
        """
        if self.state is _REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            self.sent_commit = min(self.sent_commit, self.next - 1)
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.sent_commit = min(self.sent_commit, self.next - 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader should hold back appends to this peer for now."""
        if self.state is _SNAPSHOT:
            return True
        return self.msg_app_flow_paused

    def __repr__(self) -> str:
        s = f"{self.state.name} match={self.match} next={self.next}"
        if self.is_learner:
            s += " learner"
        if self.is_paused():
            s += " paused"
        if self.pending_snapshot:
            s += f" pending_snap={self.pending_snapshot}"
        if not self.recent_active:
            s += " inactive"
        if self.inflights.count():
            s += f" inflight={self.inflights.count()}"
            if self.inflights.full():
                s += "[full]"
        return s
