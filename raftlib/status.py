"""Read-only snapshots of a node's state for operators and tests."""

from __future__ import annotations

import attrs

from raftlib.tracker.progress import ProgressState
from raftlib.types import ConfState, HardState, SoftState

__all__ = ["ProgressState", "ProgressStatus", "Status"]


@attrs.frozen(slots=True)
class ProgressStatus:
    """The leader's view of one peer: what an operator needs to see why replication is stuck.

    Attributes:
        match: highest index known to be durably replicated on the peer.
        next: index of the next entry the leader will send.
        state: ``PROBE`` (finding where logs agree), ``REPLICATE`` (pipelining) or ``SNAPSHOT``
            (waiting for a snapshot to be installed).
        paused: whether the leader is currently holding back appends to it.
        pending_snapshot: index of the snapshot being sent, or 0.
        recent_active: whether the peer was heard from during the current CheckQuorum period.
        is_learner: whether the peer is a non-voting learner.
        inflight: appends sent and not yet acknowledged.
        inflight_bytes: payload bytes of those appends.
    """

    match: int
    next: int
    state: ProgressState
    paused: bool
    pending_snapshot: int
    recent_active: bool
    is_learner: bool
    inflight: int
    inflight_bytes: int


@attrs.frozen(slots=True)
class Status:
    """A node's role, term, log position, configuration and (on a leader) per-peer progress.

    Attributes:
        id: the node's id.
        hard_state: term, vote and commit index.
        soft_state: known leader and role.
        applied: the last index the application has applied.
        lead_transferee: the node leadership is being transferred to, or 0.
        config: the active configuration.
        progress: per-peer progress; empty unless the node is the leader.
    """

    id: int
    hard_state: HardState
    soft_state: SoftState
    applied: int
    lead_transferee: int
    config: ConfState
    progress: dict[int, ProgressStatus] = attrs.field(factory=dict)
