"""Leases: etcd's lease semantics, leader-only expiry through proposals, and checkpoints that
keep expiry honest across leader changes. Time is an injected clock; nothing sleeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvapp.errors import (
    EtcdError,
    GrpcCode,
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    NotLeaderError,
)
from kvapp.lease import (
    MAX_LEASE_TTL,
    LeaseCheckpoint,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseProposal,
    LeaseRecord,
    LeaseRevokeRequest,
    LeaseSnapshot,
    Lessor,
)
from kvapp.mvcc import EventType, PutRequest, Store
from kvapp.watch import WatchHub


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lessor(grace: float = 1.0, **kw: Any) -> tuple[Clock, Store, Lessor]:
    clock = Clock()
    store = Store()
    return clock, store, Lessor(store, clock, grace=grace, **kw)


def revokes(proposals: Sequence[LeaseProposal]) -> list[int]:
    return [p.id for p in proposals if isinstance(p, LeaseRevokeRequest)]


def checkpoints(proposals: Sequence[LeaseProposal]) -> list[list[tuple[int, int]]]:
    return [
        [(c.id, c.remaining_ms) for c in p.checkpoints]
        for p in proposals
        if isinstance(p, LeaseCheckpointRequest)
    ]


# -- grant, revoke, list -------------------------------------------------------------------------


def test_grant_picks_ids_deterministically_and_applies_the_minimum_ttl() -> None:
    _, store, le = lessor(min_ttl=5)
    assert le.grant(10).id == 1
    assert le.grant(3, 7).ttl == 5
    assert le.grant(60).id == 2
    store.put(b"x", b"1")
    r = le.grant(0)
    assert (r.id, r.ttl, r.revision) == (3, 5, 2)
    assert le.leases() == [1, 2, 3, 7]
    assert le.granted_ttl(7) == 5


def test_auto_ids_skip_ids_chosen_by_clients() -> None:
    _, _, le = lessor()
    le.grant(10, 1)
    le.grant(10, 2)
    assert le.grant(10).id == 3


@pytest.mark.parametrize(
    ("ttl", "lease_id", "error"),
    [(MAX_LEASE_TTL + 1, 0, LeaseTTLTooLargeError), (10, 1, LeaseExistsError)],
)
def test_grant_errors(ttl: int, lease_id: int, error: type[EtcdError]) -> None:
    _, _, le = lessor()
    le.grant(10, 1)
    with pytest.raises(error):
        le.grant(ttl, lease_id)
    assert le.leases() == [1]


def test_max_ttl_is_accepted() -> None:
    _, _, le = lessor()
    assert le.grant(MAX_LEASE_TTL).ttl == MAX_LEASE_TTL


def test_revoke_deletes_all_its_keys_in_one_revision_in_key_order() -> None:
    _, store, le = lessor()
    hub = WatchHub(store)
    stream = hub.open_stream()
    stream.watch(b"\0", b"\0")
    lease = le.grant(10).id
    other = le.grant(10).id
    for key in (b"c", b"a", b"b"):
        store.put(key, b"v", lease=lease)
    store.put(b"d", b"v", lease=other)
    store.put(b"e", b"v")
    rev = le.revoke(lease).revision
    assert rev == store.revision == 7
    assert [kv.key for kv in store.range(b"\0", b"\0").kvs] == [b"d", b"e"]
    last = stream.take()[-1]
    assert last.revision == 7
    assert [(e.type, e.kv.key) for e in last.events] == [
        (EventType.DELETE, b"a"),
        (EventType.DELETE, b"b"),
        (EventType.DELETE, b"c"),
    ]
    assert le.leases() == [other]


def test_revoking_a_lease_without_keys_creates_no_revision() -> None:
    _, _, le = lessor()
    le.grant(10, 5)
    assert le.revoke(5).revision == 1


def test_unknown_leases_are_errors_with_etcds_text() -> None:
    _, store, le = lessor()
    le.promote()
    with pytest.raises(LeaseNotFoundError):
        le.revoke(9)
    with pytest.raises(LeaseNotFoundError):
        le.keep_alive(9)
    with pytest.raises(LeaseNotFoundError):
        le.time_to_live(9)
    with pytest.raises(LeaseNotFoundError):
        store.put(b"k", b"v", lease=9)
    assert str(LeaseNotFoundError()) == "etcdserver: requested lease not found"
    assert LeaseNotFoundError.code is GrpcCode.NOT_FOUND
    assert str(LeaseTTLTooLargeError()) == "etcdserver: too large lease TTL"
    assert str(LeaseExistsError()) == "etcdserver: lease already exists"
    assert str(NotLeaderError()) == "etcdserver: not leader"


def test_keys_move_between_leases() -> None:
    _, store, le = lessor()
    le.promote()
    a, b = le.grant(10).id, le.grant(10).id
    store.put(b"k", b"v", lease=a)
    store.put(b"k", b"v", lease=b)
    assert le.time_to_live(a, keys=True).keys == ()
    assert le.time_to_live(b, keys=True).keys == (b"k",)
    le.revoke(a)
    assert store.get(b"k") is not None


def test_apply_dispatches_commands() -> None:
    _, _, le = lessor()
    grant = le.apply(LeaseGrantRequest(10, 4))
    assert grant is not None
    assert le.apply(LeaseCheckpointRequest([LeaseCheckpoint(4, 500)])) is None
    assert le.snapshot().leases == (LeaseRecord(4, 10, 500),)
    le.apply(LeaseRevokeRequest(4))
    assert le.leases() == []


# -- followers never expire ----------------------------------------------------------------------


def test_followers_never_expire_leases_nor_serve_clock_requests() -> None:
    clock, store, le = lessor()
    lease = le.grant(5).id
    store.put(b"k", b"v", lease=lease)
    clock.now = 1e6
    assert le.tick() == []
    assert le.checkpoint_all() == []
    assert le.exists(lease)
    with pytest.raises(NotLeaderError):
        le.keep_alive(lease)
    with pytest.raises(NotLeaderError):
        le.time_to_live(lease)


# -- the leader's clock --------------------------------------------------------------------------


def test_leader_proposes_a_revoke_at_expiry_and_only_applying_it_deletes() -> None:
    clock, store, le = lessor(checkpoint_interval=1000)
    le.promote()
    lease = le.grant(10).id
    store.put(b"k", b"v", lease=lease)
    assert checkpoints(le.tick()) == [[(lease, 10000)]], "a new leader's first tick"
    clock.now = 9.9
    assert le.tick() == []
    assert le.time_to_live(lease).ttl == 0
    clock.now = 10.0
    assert revokes(le.tick()) == [lease]
    assert le.time_to_live(lease).ttl == -1
    assert store.get(b"k") is not None, "expiry is a proposal, not a deletion"
    clock.now = 11.0
    assert le.tick() == [], "not proposed again before the retry interval"
    clock.now = 13.0
    assert revokes(le.tick()) == [lease], "retried: the first proposal may have been dropped"
    le.apply(LeaseRevokeRequest(lease))
    assert store.get(b"k") is None
    clock.now = 100.0
    assert le.tick() == []


def test_keep_alive_extends_to_the_full_ttl() -> None:
    clock, _, le = lessor(checkpoint_interval=1000)
    le.promote()
    lease = le.grant(10).id
    clock.now = 8.0
    assert le.keep_alive(lease).ttl == 10
    clock.now = 17.5
    assert le.tick() == [] or not revokes(le.tick())
    assert le.time_to_live(lease).ttl == 0
    clock.now = 18.0
    assert revokes(le.tick()) == [lease]


def test_an_expired_lease_cannot_be_revived() -> None:
    clock, _, le = lessor()
    le.promote()
    lease = le.grant(10).id
    clock.now = 10.0
    with pytest.raises(LeaseNotFoundError):
        le.keep_alive(lease)


@pytest.mark.parametrize(("now", "ttl"), [(0.0, 10), (0.5, 9), (3.2, 6), (9.999, 0), (10.0, -1)])
def test_time_to_live_rounds_down(now: float, ttl: int) -> None:
    clock, store, le = lessor()
    le.promote()
    lease = le.grant(10).id
    store.put(b"b", b"", lease=lease)
    store.put(b"a", b"", lease=lease)
    clock.now = now
    r = le.time_to_live(lease, keys=True)
    assert (r.ttl, r.granted_ttl, r.keys) == (ttl, 10, (b"a", b"b"))
    assert le.time_to_live(lease).keys == ()


def test_revokes_are_rate_limited() -> None:
    clock, _, le = lessor(revoke_rate=100, checkpoint_interval=1000)
    le.promote()
    for _ in range(250):
        le.grant(5)
    clock.now = 5.0
    first = revokes(le.tick())
    assert len(first) == 100
    clock.now = 5.5
    second = revokes(le.tick())
    assert len(second) == 50
    assert not set(first) & set(second)


# -- checkpoints ---------------------------------------------------------------------------------


def test_periodic_checkpoints_of_all_leases_in_batches() -> None:
    clock, _, le = lessor(checkpoint_interval=5.0, max_checkpoint_batch=2)
    le.promote()
    for ttl in (10, 20, 30):
        le.grant(ttl)
    assert checkpoints(le.tick()) == [[(1, 10000), (2, 20000)], [(3, 30000)]], "first tick"
    clock.now = 4.0
    assert le.tick() == []
    clock.now = 5.0
    assert checkpoints(le.tick()) == [[(1, 5000), (2, 15000)], [(3, 25000)]]
    clock.now = 6.0
    assert le.tick() == []


def test_renewals_are_checkpointed_at_the_next_tick_and_durable_once_applied() -> None:
    clock, _, le = lessor(checkpoint_interval=5.0)
    le.promote()
    a, b = le.grant(10).id, le.grant(10).id
    assert checkpoints(le.tick()) == [[(a, 10000), (b, 10000)]], "a new leader's first tick"
    clock.now = 1.0
    ticket = le.keep_alive(a).ticket
    assert not le.renewal_durable(a, ticket)
    clock.now = 1.1
    proposals = le.tick()
    assert checkpoints(proposals) == [[(a, 9900)]]
    assert le.tick() == []
    assert not le.renewal_durable(a, ticket)
    le.apply(proposals[0])
    assert le.renewal_durable(a, ticket)
    again = le.keep_alive(a).ticket
    assert not le.renewal_durable(a, again)


def test_a_dropped_checkpoint_is_redone_and_its_renewal_never_confirmed_by_others() -> None:
    clock, _, le = lessor(checkpoint_interval=5.0)
    le.promote()
    a, b = le.grant(10).id, le.grant(10).id
    ta = le.keep_alive(a).ticket
    clock.now = 0.1
    dropped = le.tick()
    tb = le.keep_alive(b).ticket
    clock.now = 0.2
    (applied,) = le.tick()
    le.apply(applied)
    assert le.renewal_durable(b, tb)
    assert not le.renewal_durable(a, ta)
    assert dropped
    clock.now = 0.3
    redo = le.tick()
    assert checkpoints(redo) == [[(a, 9700)]]
    le.apply(redo[0])
    assert le.renewal_durable(a, ta)


def test_an_unmarked_checkpoint_after_a_dropped_one_does_not_confirm_the_renewal() -> None:
    # Review finding: the periodic checkpoint after a dropped renewal checkpoint carries the
    # lease with renewed=False, which followers apply without moving their deadline later.
    # It must not make the renewal durable, or a new leader could revoke the lease less than
    # TTL after an acknowledged renewal.
    clock, _, leader = lessor(checkpoint_interval=5.0)
    follower = Lessor(Store(), clock, grace=0.5)
    leader.promote()
    a = leader.grant(10).id
    follower.grant(10)  # applied at t=0 on both
    (first,) = leader.tick()  # a new leader's first tick checkpoints every lease: applied
    leader.apply(first)
    follower.apply(first)
    clock.now = 4.0
    ticket = leader.keep_alive(a).ticket  # acknowledged, it must live until t=14
    clock.now = 4.1
    assert leader.tick()  # the renewal's checkpoint: dropped by Raft
    clock.now = 5.0
    (periodic,) = leader.tick()
    assert isinstance(periodic, LeaseCheckpointRequest)
    leader.apply(periodic)
    follower.checkpoint(periodic.checkpoints)
    assert not leader.renewal_durable(a, ticket)
    clock.now = 5.1
    (redo,) = leader.tick()
    assert isinstance(redo, LeaseCheckpointRequest)
    assert [(c.id, c.renewed) for c in redo.checkpoints] == [(a, True)]
    leader.apply(redo)
    follower.checkpoint(redo.checkpoints)
    assert leader.renewal_durable(a, ticket)
    follower.promote()  # the old leader dies once the client has its acknowledgement
    clock.now = 13.9
    assert not revokes(follower.tick())
    assert follower.time_to_live(a).ttl >= 0


def test_renewals_are_not_durable_on_a_deposed_leader() -> None:
    clock, _, le = lessor()
    le.promote()
    lease = le.grant(10).id
    ticket = le.keep_alive(lease).ticket
    clock.now = 0.1
    proposals = le.tick()
    le.demote()
    le.apply(proposals[0])
    assert not le.renewal_durable(lease, ticket)


def test_a_new_leader_checkpoints_every_lease_at_its_first_tick() -> None:
    """So that the newest checkpoint in the log is never much older than the current term,
    however briefly each leader leads: a member restarted meanwhile counts from it."""
    clock, _, follower = lessor(grace=1.5, checkpoint_interval=5.0)
    a, b = follower.grant(10).id, follower.grant(20).id  # applied at t=0
    clock.now = 4.0
    follower.checkpoint([LeaseCheckpoint(a, 5000)])  # due at 9 on this member's clock
    clock.now = 6.0
    follower.promote()
    clock.now = 6.5
    # Its own deadlines, without the grace (never checkpointed), and not a renewal of either.
    (first,) = follower.tick()
    assert isinstance(first, LeaseCheckpointRequest)
    assert [(c.id, c.remaining_ms, c.renewed) for c in first.checkpoints] == [
        (a, 2500, False),
        (b, 13500, False),
    ]
    clock.now = 11.4
    proposals = follower.tick()
    assert checkpoints(proposals) == [], "then every interval from that tick"
    assert revokes(proposals) == [a]  # due at 9, plus the grace
    follower.revoke(a)
    clock.now = 11.5
    assert checkpoints(follower.tick()) == [[(b, 8500)]]
    follower.demote()
    follower.promote()
    assert checkpoints(follower.tick()) == [[(b, 8500)]], "on every promotion"


def test_checkpoint_all_for_a_leadership_transfer() -> None:
    clock, _, le = lessor(checkpoint_interval=5.0)
    le.promote()
    le.grant(10)
    le.grant(4)
    clock.now = 3.0
    assert [[(c.id, c.remaining_ms) for c in p.checkpoints] for p in le.checkpoint_all()] == [
        [(1, 7000), (2, 1000)]
    ]


def test_applying_a_checkpoint_does_not_move_the_leaders_own_deadline() -> None:
    clock, _, le = lessor(checkpoint_interval=1000)
    le.promote()
    lease = le.grant(10).id
    clock.now = 2.0
    le.checkpoint([LeaseCheckpoint(lease, 8000), LeaseCheckpoint(99, 1)])
    clock.now = 3.0
    assert le.time_to_live(lease).ttl == 7


def test_a_new_leader_resumes_from_the_checkpoint_plus_grace() -> None:
    clock, _, follower = lessor(grace=1.5)
    lease = follower.grant(10).id  # applied at t=0
    clock.now = 4.0
    follower.checkpoint([LeaseCheckpoint(lease, 6000)])  # the old leader measured 6 s at t~4
    clock.now = 6.0
    follower.promote()
    assert follower.time_to_live(lease).ttl == 5  # 4 + 6 - 6 + 1.5 = 5.5
    clock.now = 11.4
    assert follower.tick() == [] or not revokes(follower.tick())
    clock.now = 11.5
    assert revokes(follower.tick()) == [lease]


def test_only_renewals_move_a_followers_deadline_later() -> None:
    clock, _, follower = lessor(grace=1.0)
    plain = follower.grant(10).id
    renewed = follower.grant(10).id
    clock.now = 5.0
    # Both measured 0.5 s before this member applied them (the commit latency).
    follower.checkpoint([LeaseCheckpoint(plain, 5500), LeaseCheckpoint(renewed, 9500, True)])
    clock.now = 6.0
    follower.promote()
    assert follower.time_to_live(plain).ttl == 5  # still 10 + 1 - 6: the lag is not added
    assert follower.time_to_live(renewed).ttl == 9  # 5 + 9.5 + 1 - 6 = 9.5


def test_checkpoints_mark_renewed_leases() -> None:
    clock, _, le = lessor(checkpoint_interval=5.0)
    le.promote()
    a, b = le.grant(10).id, le.grant(10).id
    assert checkpoints(le.tick()) == [[(a, 10000), (b, 10000)]], "a new leader's first tick"
    le.keep_alive(a)
    clock.now = 0.1
    (dirty,) = le.tick()
    assert isinstance(dirty, LeaseCheckpointRequest)
    assert [(c.id, c.renewed) for c in dirty.checkpoints] == [(a, True)]
    le.keep_alive(b)
    clock.now = 5.0
    (full,) = le.tick()
    assert isinstance(full, LeaseCheckpointRequest)
    assert [(c.id, c.renewed) for c in full.checkpoints] == [(a, False), (b, True)]


def test_time_since_the_last_checkpoint_counts_before_promotion() -> None:
    clock, _, follower = lessor(grace=1.0)
    lease = follower.grant(10).id
    clock.now = 8.0
    follower.promote()
    assert follower.time_to_live(lease).ttl == 3  # 10 - 8 + 1


def test_a_lease_past_its_deadline_is_not_restarted_by_a_new_leader() -> None:
    clock, _, follower = lessor(grace=1.0)
    lease = follower.grant(10).id
    clock.now = 30.0  # it ran out at t=10 (+1 grace) while nobody led
    follower.promote()
    assert follower.time_to_live(lease).ttl == -1
    assert revokes(follower.tick()) == [lease]
    follower.demote()
    clock.now = 31.0
    follower.promote()
    assert revokes(follower.tick()) == [lease], "leader churn does not restart it either"


def test_checkpoints_of_overdue_leases_are_negative() -> None:
    clock, _, le = lessor(grace=1.0, checkpoint_interval=1000)
    le.promote()
    lease = le.grant(10).id
    clock.now = 10.5
    assert checkpoints(le.checkpoint_all()) == [[(lease, -500)]]


def test_the_grace_is_not_checkpointed() -> None:
    clock, _, le = lessor(grace=3.0, checkpoint_interval=1000)
    lease = le.grant(10).id
    clock.now = 2.0
    le.promote()
    assert checkpoints(le.checkpoint_all()) == [[(lease, 8000)]]


def test_demote_stops_the_clocks() -> None:
    clock, _, le = lessor()
    le.promote()
    lease = le.grant(5).id
    le.demote()
    clock.now = 100.0
    assert le.tick() == []
    assert le.exists(lease)


def test_snapshot_and_restore() -> None:
    clock, _, le = lessor()
    le.grant(10, 3)
    le.grant(20)
    le.checkpoint([LeaseCheckpoint(3, 4000)])
    snap = le.snapshot()
    assert snap == LeaseSnapshot(2, (LeaseRecord(1, 20, 20000), LeaseRecord(3, 10, 4000)))
    clock.now = 50.0
    _, _, other = lessor()
    other._clock = clock
    other.restore(snap)
    assert other.snapshot() == snap
    assert other.grant(5).id == 2
    other.promote()
    assert other.time_to_live(3).ttl == 5  # 4 s from the restore, plus 1 s grace


def test_restore_on_a_leader_restarts_its_clocks() -> None:
    clock, _, le = lessor(grace=0.5)
    le.promote()
    le.restore(LeaseSnapshot(9, (LeaseRecord(8, 10, 2000),)))
    assert le.time_to_live(8).ttl == 2
    clock.now = 2.5
    assert revokes(le.tick()) == [8]


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        lessor(grace=-1)
    with pytest.raises(ValueError):  # noqa: PT011
        lessor(revoke_rate=0)


# -- a simulated cluster -------------------------------------------------------------------------


class Member:
    def __init__(self, clock: Clock, grace: float, checkpoint_interval: float) -> None:
        self.store = Store(max_txn_ops=None)
        self.lessor = Lessor(
            self.store, clock, grace=grace, checkpoint_interval=checkpoint_interval
        )
        self.applied = 0


class Cluster:
    """Three members applying one log. A leader's proposals commit at its next tick, and are
    lost if it is deposed first; there is no leader during an election gap. A killed member
    applies nothing; restarted, it replays the whole log at once on its new clock reading (its
    own log, then catching up with the leader's: the same to the lessor)."""

    def __init__(self, grace: float = 1.0, checkpoint_interval: float = 2.0, dt: float = 0.1):
        self.clock = Clock()
        self.dt = dt
        self.grace, self.checkpoint_interval = grace, checkpoint_interval
        self.members = [Member(self.clock, grace, checkpoint_interval) for _ in range(3)]
        self.down: set[int] = set()
        self.log: list[Any] = []
        self.recorded = 0  # entries some member applied: their results are known
        self.pending: list[Any] = []
        self.leader: int | None = None
        self.revoked_at: dict[int, float] = {}
        self.elections: list[tuple[float, int, float]] = []  # when, who, leaderless before
        self.restarts: list[tuple[float, int]] = []
        self.deposed_at = 0.0

    def commit(self, command: Any) -> Any:
        self.log.append(command)
        results = self.apply_all()
        return results[-1] if results else None

    def apply_all(self) -> list[Any]:
        results = []
        for i, m in enumerate(self.members):
            if i in self.down:
                continue
            while m.applied < len(self.log):
                index = m.applied
                cmd = self.log[index]
                m.applied += 1
                result: Any
                try:
                    if isinstance(cmd, PutRequest):
                        result = m.store.apply(cmd)
                    else:
                        result = m.lessor.apply(cmd)
                except LeaseNotFoundError as e:
                    result = e
                if index >= self.recorded:  # the first member to apply it (a replay is not)
                    self.recorded = index + 1
                    results.append(result)
                    revoked = isinstance(cmd, LeaseRevokeRequest) and result is not None
                    if revoked and not isinstance(result, LeaseNotFoundError):
                        self.revoked_at[cmd.id] = self.clock.now
        return results

    def kill(self, i: int) -> None:
        if self.leader == i:
            self.depose()
        self.down.add(i)

    def restart(self, i: int, *, snapshot_of: int | None = None) -> None:
        """Restart member i from the whole log, or from a snapshot of member ``snapshot_of``'s
        leases (then its store is left empty: use it only without keys)."""
        self.down.discard(i)
        self.restarts.append((self.clock.now, i))
        fresh = Member(self.clock, self.grace, self.checkpoint_interval)
        if snapshot_of is not None:
            source = self.members[snapshot_of]
            fresh.lessor.restore(source.lessor.snapshot())
            fresh.applied = source.applied
        self.members[i] = fresh
        self.apply_all()

    def step(self) -> None:
        self.clock.now = round(self.clock.now + self.dt, 9)
        self.log.extend(self.pending)
        self.pending = []
        self.apply_all()
        if self.leader is not None:
            self.pending.extend(self.members[self.leader].lessor.tick())

    def depose(self) -> None:
        if self.leader is not None:
            self.members[self.leader].lessor.demote()
            self.deposed_at = self.clock.now
        self.leader = None
        self.pending = []

    def elect(self, i: int) -> None:
        assert i not in self.down
        self.apply_all()
        gap = self.clock.now - self.deposed_at if self.elections else 0.0
        self.elections.append((self.clock.now, i, gap))
        self.leader = i
        self.members[i].lessor.promote()

    def run_until(self, t: float, on_step: Any = None) -> None:
        while self.clock.now < t - 1e-9:
            self.step()
            if on_step is not None:
                on_step()

    def replicas_agree(self) -> None:
        up = [m for i, m in enumerate(self.members) if i not in self.down]
        snaps = {(m.lessor.snapshot(), m.store.hash_kv()) for m in up}
        assert len(snaps) == 1


class LeaderChanges:
    """An on_step hook: depose the leader every `every` seconds, elect the next after `gap`."""

    def __init__(self, cluster: Cluster, every: float, gap: float, until: float) -> None:
        self.c, self.every, self.gap, self.until = cluster, every, gap, until
        self.next_change = every
        self.elect_at: float | None = None
        self.who = 0

    def __call__(self) -> None:
        now = self.c.clock.now
        if self.elect_at is not None and now >= self.elect_at - 1e-9:
            self.who = (self.who + 1) % 3
            self.c.elect(self.who)
            self.elect_at = None
            self.next_change = now + self.every
        elif self.c.leader is not None and self.next_change - 1e-9 <= now < self.until:
            self.c.depose()
            self.elect_at = now + self.gap


def test_cluster_expires_a_lease_through_the_log() -> None:
    c = Cluster()
    c.elect(0)
    lease = c.commit(LeaseGrantRequest(5)).id
    c.commit(PutRequest(b"k", b"v", lease=lease))
    c.run_until(4.9)
    assert lease not in c.revoked_at
    c.run_until(6)
    assert c.revoked_at[lease] == pytest.approx(5.1)
    assert all(not m.lessor.exists(lease) for m in c.members)
    assert c.members[0].store.get(b"k") is None
    c.replicas_agree()


@pytest.mark.parametrize("gap", [0.0, 0.5, 1.0])
def test_unrenewed_lease_expires_within_ttl_plus_bounded_grace_under_leader_changes(
    gap: float,
) -> None:
    """etcd issue 9395: with a full-TTL refresh on every new leader, a leader change every TTL/2
    would keep this lease alive forever."""
    ttl, grace = 10, 1.0
    c = Cluster(grace=grace)
    c.elect(0)
    lease = c.commit(LeaseGrantRequest(ttl)).id
    c.run_until(60, LeaderChanges(c, every=ttl / 2, gap=gap, until=60))
    assert lease in c.revoked_at
    assert ttl <= c.revoked_at[lease] <= ttl + gap + grace + 5 * c.dt
    c.replicas_agree()


def test_kept_alive_lease_never_expires_across_leader_changes() -> None:
    ttl = 6
    c = Cluster(grace=1.0)
    c.elect(0)
    lease = c.commit(LeaseGrantRequest(ttl)).id
    changes = LeaderChanges(c, every=ttl / 2, gap=1.0, until=120)
    state = {"next": ttl / 3}

    def hook() -> None:
        changes()
        if c.leader is not None and c.clock.now >= state["next"] - 1e-9:
            assert c.members[c.leader].lessor.keep_alive(lease).ttl == ttl
            state["next"] = c.clock.now + ttl / 3

    c.run_until(120, hook)
    assert lease not in c.revoked_at
    c.replicas_agree()


@pytest.mark.parametrize("restored_from", ["log", "snapshot"])
def test_a_restarted_member_that_takes_over_counts_from_the_newest_checkpoint(
    restored_from: str,
) -> None:
    """The integration test's ``restarted`` variant. The leader is killed; its successor is
    killed in turn after leading for less than a checkpoint interval; the first leader,
    restarted from its log (or a snapshot) while the successor led, takes over. It counts the
    lease from when it applied the newest checkpoint, however long before that checkpoint was
    measured: the successor's checkpoint at its first tick makes that 0.5 s here. Without it
    the newest was the first leader's own, measured 1.6 s before the restart."""
    ttl, grace, interval = 10, 0.5, 1.0
    c = Cluster(grace=grace, checkpoint_interval=interval)
    c.elect(0)
    lease = c.commit(LeaseGrantRequest(ttl)).id  # applied at t=0: due at t=10
    c.run_until(1.5)
    c.kill(0)
    c.run_until(2.0)
    c.elect(1)  # followed live: due at 10 on its clock too; checkpoints 7.9 s left at 2.1
    c.run_until(2.6)
    c.restart(0, snapshot_of=2 if restored_from == "snapshot" else None)
    c.run_until(2.9)
    c.kill(1)  # before its first periodic checkpoint (at 3.1)
    c.run_until(3.4)
    c.elect(0)
    assert c.members[0].lessor.time_to_live(lease).ttl == 7  # 2.6 + 7.9 + 0.5 - 3.4 = 7.6
    c.run_until(20)
    assert ttl <= c.revoked_at[lease] <= ttl + grace + interval + 2 * c.dt


def restart_chain(
    c: Cluster, lease: int, *, lead: float, gap: float, restart_after: float, until: float = 60
) -> int:
    """Members 0 and 1 take turns to lead for `lead` seconds, with `gap` seconds without a
    leader in between; each killed leader restarts from its log `restart_after` seconds into
    its successor's term, and takes over next. Member 2 never restarts and never leads. Stops
    once the lease is revoked, or at the end of the term running at `until` (then the leader is
    running). Returns how many leaders took over having restarted."""
    leader, takeovers = 0, 0
    while lease not in c.revoked_at:
        promoted = c.clock.now
        if takeovers:
            c.run_until(promoted + restart_after)
            c.restart(1 - leader)
        c.run_until(promoted + lead)
        if lease in c.revoked_at or c.clock.now >= until:
            break
        c.kill(leader)
        c.run_until(promoted + lead + gap)
        leader = 1 - leader
        takeovers += 1
        c.elect(leader)
    return max(takeovers - 1, 0)  # all but the first


def test_staleness_adds_up_over_consecutive_restarted_leaders_by_at_most_an_interval_each() -> None:
    """Every leader leads for less than a checkpoint interval, and every new leader (but the
    first) restarted from its log during its predecessor's term. Each counts from its
    predecessor's first-tick checkpoint, so each adds the time from that tick to its restart
    (0.2 s here; the module's bound is one interval plus two ticks). Without first-tick
    checkpoints no leader ever checkpointed: each restarted member counted the whole TTL from
    its restart, and the lease lived as long as the chain went on."""
    ttl, grace, interval = 10, 0.5, 1.0
    c = Cluster(grace=grace, checkpoint_interval=interval)
    c.elect(0)
    lease = c.commit(LeaseGrantRequest(ttl)).id
    stale = restart_chain(c, lease, lead=0.9, gap=0.5, restart_after=0.3)
    assert lease in c.revoked_at, "the lease outlived the chain"
    assert stale >= 5
    assert ttl <= c.revoked_at[lease] <= ttl + grace + stale * (interval + 2 * c.dt) + 2 * c.dt
    assert c.revoked_at[lease] <= ttl + grace + stale * 0.2 + 2 * c.dt


def test_a_member_that_followed_live_takes_over_at_the_true_deadline_after_stale_leaders() -> None:
    """Staleness does not pass to a member that applied an earlier, truer checkpoint: an
    unrenewed lease's checkpoint never moves a member's deadline later."""
    ttl, grace, interval = 10, 0.5, 1.0
    c = Cluster(grace=grace, checkpoint_interval=interval)
    c.elect(0)
    lease = c.commit(LeaseGrantRequest(ttl)).id
    stale = restart_chain(c, lease, lead=0.9, gap=0.5, restart_after=0.3, until=7.0)
    assert stale >= 3
    assert c.leader is not None
    c.kill(c.leader)
    c.run_until(c.clock.now + 0.5)
    c.elect(2)
    c.run_until(20)
    assert ttl <= c.revoked_at[lease] <= ttl + grace + 2 * c.dt


class Client:
    """Renews every `interval` until `stop`; a renewal counts once durable, and one whose
    leader was deposed first is retried with the next leader at once."""

    def __init__(self, c: Cluster, lease: int, interval: float, stop: float) -> None:
        self.c, self.lease, self.interval, self.stop = c, lease, interval, stop
        self.next = interval
        self.pending: tuple[int, int, float] | None = None  # (leader, ticket, sent at)
        self.last_acked = 0.0
        self.last_attempt = 0.0

    def __call__(self) -> None:
        c, now = self.c, self.c.clock.now
        if self.pending is not None:
            who, ticket, sent = self.pending
            if c.members[who].lessor.renewal_durable(self.lease, ticket):
                self.last_acked = sent
                self.pending = None
            elif c.leader != who:
                self.pending = None
                self.next = now  # renew with the new leader
        if self.pending is None and c.leader is not None and self.next - 1e-9 <= now <= self.stop:
            if not c.members[c.leader].lessor.exists(self.lease):
                return
            ticket = c.members[c.leader].lessor.keep_alive(self.lease).ticket
            self.pending = (c.leader, ticket, now)
            self.last_attempt = now
            self.next = now + self.interval


@settings(max_examples=150, deadline=None)
@given(
    ttl=st.integers(3, 12),
    every=st.floats(0.05, 1.0),
    gap=st.floats(0.0, 1.0),
    renew_every=st.floats(0.1, 1 / 3),
    stop_renewing=st.floats(0, 30),
)
def test_lease_bounds_under_random_leader_changes(
    ttl: int, every: float, gap: float, renew_every: float, stop_renewing: float
) -> None:
    """Renewed every <= TTL/3 it lives; once renewals stop it is revoked no earlier than TTL
    after the last acknowledged renewal and no later than TTL + grace + one gap (+ ticks) after
    the last attempt, even when the leader changes more often than the grace."""
    grace = 1.0
    c = Cluster(grace=grace)
    c.elect(0)
    lease = c.commit(LeaseGrantRequest(ttl)).id
    changes = LeaderChanges(c, every=max(every * ttl, 0.2), gap=gap * grace, until=1e9)
    client = Client(c, lease, renew_every * ttl, stop_renewing)

    def hook() -> None:
        changes()
        client()

    c.run_until(stop_renewing + ttl + 2 * grace + gap + 1, hook)
    assert lease in c.revoked_at
    revoked = c.revoked_at[lease]
    assert revoked >= client.last_acked + ttl - 1e-6
    assert revoked >= stop_renewing - 1e-6, "never while the client was renewing"
    # Slack in steps: the renewal's checkpoint commits one step late, an election lands on the
    # next step, and the revoke needs one tick to propose and one step to commit.
    assert revoked <= client.last_attempt + ttl + gap * grace + grace + 5 * c.dt + 1e-6
    c.replicas_agree()


def staleness_bound(c: Cluster, since: float, until: float) -> float:
    """The module's bound on how late the leaders that took over in (since, until] count a
    lease: a commit (two steps here) for each that followed its predecessor live; for each
    that restarted during its predecessor's term or the gap after it, one checkpoint interval
    plus ticks and a commit, plus the leaderless time before and after its predecessor's
    term."""
    bound = 0.0
    for k in range(1, len(c.elections)):
        when, who, gap = c.elections[k]
        if not since < when <= until:
            continue
        previous, _, previous_gap = c.elections[k - 1]
        restarted = any(previous <= t <= when and i == who for t, i in c.restarts)
        bound += c.checkpoint_interval + 4 * c.dt + previous_gap + gap if restarted else 2 * c.dt
    return bound


@settings(max_examples=500, deadline=None)
@given(
    ttl=st.integers(3, 12),
    every=st.floats(0.05, 1.0),
    gap=st.floats(0.0, 1.0),
    renew_every=st.floats(0.1, 1 / 3),
    stop_renewing=st.floats(0, 20),
    restarts=st.lists(
        st.tuples(st.floats(0, 1.2), st.sampled_from([1, 2]), st.booleans()), max_size=10
    ),
)
def test_lease_bounds_under_random_leader_changes_and_restarts(
    ttl: int,
    every: float,
    gap: float,
    renew_every: float,
    stop_renewing: float,
    restarts: list[tuple[float, int, bool]],
) -> None:
    """As above, with followers restarting from their logs or from another member's snapshot:
    the one to take over next (1) or the other one (2), at times given as fractions of the
    time until renewals stop plus a TTL. Never revoked early, and late by at most the
    staleness the module documents."""
    grace = 1.0
    c = Cluster(grace=grace)
    c.elect(0)
    lease = c.commit(LeaseGrantRequest(ttl)).id
    changes = LeaderChanges(c, every=max(every * ttl, 0.2), gap=gap * grace, until=1e9)
    client = Client(c, lease, renew_every * ttl, stop_renewing)
    todo = sorted((at * (stop_renewing + ttl), ahead, snap) for at, ahead, snap in restarts)

    def hook() -> None:
        changes()
        client()
        while todo and todo[0][0] <= c.clock.now:
            _, ahead, from_snapshot = todo.pop(0)
            i = (changes.who + ahead) % 3
            c.restart(i, snapshot_of=(i + 1) % 3 if from_snapshot else None)

    horizon = stop_renewing + ttl + 60
    while lease not in c.revoked_at and c.clock.now < horizon:
        c.step()
        hook()
    assert lease in c.revoked_at
    revoked = c.revoked_at[lease]
    assert revoked >= client.last_acked + ttl - 1e-6
    assert revoked >= stop_renewing - 1e-6, "never while the client was renewing"
    late = staleness_bound(c, client.last_acked, revoked)
    assert revoked <= client.last_attempt + ttl + gap * grace + grace + late + 5 * c.dt + 1e-6
    c.replicas_agree()
