"""Configuration of a :class:`~raftlib.RawNode`, validated on construction."""

from __future__ import annotations

import logging
import random

import attrs

from raftlib.errors import ConfigError
from raftlib.read_only import ReadOnlyOption
from raftlib.storage import Storage

__all__ = ["Config", "ReadOnlyOption"]

_MiB = 1024 * 1024


@attrs.define(kw_only=True)
class Config:
    """Everything a node needs to start. Times are in ticks; the caller decides a tick's length.

    Attributes:
        id: this node's id; non-zero.
        storage: where the node reads its persisted log, hard state and snapshot.
        election_tick: a follower that hears nothing for this many ticks (randomized into
            ``[election_tick, 2 * election_tick)``) campaigns. Must exceed ``heartbeat_tick``;
            etcd recommends ``10 * heartbeat_tick``.
        heartbeat_tick: a leader sends heartbeats every this many ticks.
        rng: the source of election-timeout jitter. Inject a seeded ``random.Random`` for
            deterministic runs; raftlib never touches the global ``random`` module.
        applied: the last index the application had applied before a restart (entries up to it
            are not handed out again). 0 on a fresh node.
        max_size_per_msg: byte limit of entries in one append message (at least one entry is
            always sent). ``0`` means one entry per message.
        max_committed_size_per_ready: byte limit of committed entries in one Ready; ``None``
            means ``max_size_per_msg``.
        max_uncommitted_entries_size: a leader drops proposals once the payload bytes of its
            uncommitted tail would exceed this; ``0`` means no limit.
        max_inflight_msgs: how many appends may be in flight to one follower while replicating.
        max_inflight_bytes: byte limit of appends in flight to one follower; ``0`` means none.
        check_quorum: a leader steps down when it has not heard from a quorum for an election
            timeout, and followers that heard from a leader within that time ignore votes.
        pre_vote: campaign in two phases so that a partitioned node that rejoins cannot disrupt
            the cluster by bumping its term (thesis §9.6).
        read_only_option: how ReadIndex confirms leadership; ``LEASE_BASED`` needs
            ``check_quorum``.
        disable_proposal_forwarding: followers drop proposals instead of forwarding them.
        step_down_on_removal: a leader removed from (or demoted in) the configuration steps down
            once the change is applied.
        logger: where to log; by default the ``raftlib`` logger with the node id attached.
    """

    id: int
    storage: Storage
    election_tick: int = 10
    heartbeat_tick: int = 1
    rng: random.Random = attrs.field(factory=random.Random)
    applied: int = 0
    max_size_per_msg: int = _MiB
    max_committed_size_per_ready: int | None = None
    max_uncommitted_entries_size: int = 0
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0
    check_quorum: bool = False
    pre_vote: bool = False
    read_only_option: ReadOnlyOption = ReadOnlyOption.SAFE
    disable_proposal_forwarding: bool = False
    step_down_on_removal: bool = True
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None

    def __attrs_post_init__(self) -> None:
        if self.id <= 0:
            raise ConfigError("id must be a positive integer (0 means 'no node')")
        if self.heartbeat_tick <= 0:
            raise ConfigError("heartbeat_tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight_msgs <= 0:
            raise ConfigError("max_inflight_msgs must be greater than 0")
        for name in (
            "applied",
            "max_size_per_msg",
            "max_uncommitted_entries_size",
            "max_inflight_bytes",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.max_inflight_bytes and self.max_inflight_bytes < self.max_size_per_msg:
            raise ConfigError("max_inflight_bytes must be >= max_size_per_msg")
        if self.read_only_option == ReadOnlyOption.LEASE_BASED and not self.check_quorum:
            raise ConfigError("check_quorum must be enabled when read_only_option is LEASE_BASED")
