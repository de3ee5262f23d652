"""Leases: grant, revoke, keep-alive, time-to-live, with expiry decided by the leader alone.

A :class:`Lessor` holds two kinds of state:

- *replicated* state, changed only by applying committed commands in log order and therefore
  identical on every member: each lease's ID, granted TTL and last checkpointed remaining TTL,
  plus the next automatic lease ID. Commands: :class:`LeaseGrantRequest`,
  :class:`LeaseRevokeRequest`, :class:`LeaseCheckpointRequest`. Revoking deletes all the lease's
  keys in one store revision;
- *local* state, driven by an injected monotonic clock: on the leader, each lease's deadline.

Only the leader (after :meth:`Lessor.promote`) runs lease clocks. Its :meth:`Lessor.tick`
returns *proposals*: a :class:`LeaseRevokeRequest` for each expired lease (rate-limited, retried
if it does not apply) and :class:`LeaseCheckpointRequest` batches. The caller proposes them
through Raft; nothing changes until they are committed and applied, on every member alike.
Followers never expire a lease on their own.

Leader changes. etcd resets every lease to its full TTL on a new leader, so a lease whose owner
died can live forever under repeated leader changes (etcd issues 9395, 9888, 17132). Here:

- the leader replicates compact checkpoints of each lease's remaining TTL: of every lease at
  its first :meth:`Lessor.tick` as leader and then every ``checkpoint_interval`` seconds, of
  renewed leases at the next tick, and of all leases on demand before a leadership transfer
  (:meth:`Lessor.checkpoint_all`);
- every member notes, on its own clock, when it applied a lease's grant or last checkpoint, so
  the time since then counts against the lease even before it leads. A checkpoint moves that
  deadline later only for a lease renewed since the previous one: applying a checkpoint lags
  its measurement by the commit latency, and that lag must not add up over leader changes;
- a new leader resumes each lease at its checkpointed deadline plus a grace of one election
  timeout (``grace``), the time a client may have had no leader to renew with. A deadline that
  already passed stays in the past (checkpoints may carry negative remaining times), and the
  grace is never written into checkpoints, so nothing accumulates across leader changes;
- a renewal is acknowledged only once it is durable: :meth:`Lessor.keep_alive` returns a ticket,
  and the API layer answers the client when :meth:`Lessor.renewal_durable` says the checkpoint
  carrying it was applied (etcd likewise commits a checkpoint before acknowledging a renew).
  A renewal whose leader is deposed first is never acknowledged; the client renews with the
  next leader.

Staleness. Clocks are monotonic and per process, so a member can count a checkpoint's
remaining time only from when it applies it, and cannot tell a checkpoint applied live (a
commit after the leader measured it) from one applied late: replayed from its log or a
snapshot after a restart, received while catching up, or learned committed only when it wins
an election. No field of the checkpoint could correct this: the delay passes on the reader's
side, before it applies the checkpoint, while its clock was not running (a restart) or had no
way to tell. So a member's deadline for a lease is late by a *staleness*: the least, over the
checkpoints it applied since the lease's last renewal, of the writer's staleness plus how old
the checkpoint was when applied (the leader that granted or renewed the lease has none). The
bound has to come from the leader side:

- a checkpoint applied live is one commit latency old, so a live follower takes over with the
  staleness of its best predecessor, and a stale leader's checkpoints never make it worse (a
  checkpoint of an unrenewed lease never moves a deadline later);
- a checkpoint applied late is at most as old as the newest committed one, and since every
  leader checkpoints every lease at its first tick and then every ``checkpoint_interval``, the
  newest committed checkpoint is at most ``checkpoint_interval`` plus two ticks old (plus a
  commit), not counting time without a leader, however briefly each leader leads. (Without
  the first-tick checkpoint, a run of terms each shorter than the interval would leave no
  newer checkpoint, and a member restarted during them would count from its restart what
  was left of the lease before them.)

Guarantee. A lease is revoked

- no earlier than ``TTL`` after its last acknowledged renewal (or its grant): a checkpoint is
  applied after it was measured, so no member's deadline is earlier than its writer's;
- no later than ``TTL + grace + S`` after its last renewal attempt, plus one leaderless gap if
  the deadline falls into one, plus a tick and a commit to propose and apply the revoke. ``S``
  is the staleness of the leader that revokes it: one commit latency if it has followed live
  since the renewal; each leader in a row that took over having applied its predecessor's
  checkpoints late (typically: restarted during its predecessor's term) adds at most
  ``checkpoint_interval`` plus two ticks, plus the time without a leader between its newest
  checkpoint's measurement and its applying it (e.g. when it restarted, or learned of the
  commit, only after its predecessor died). With the member's defaults (1 s interval, 0.5 s
  ticks) that is 2 s per such leader. This is what a new leader can guarantee: a member that
  was down while no leader ran cannot count that time, and adds it.

A lease renewed every TTL/3 (what etcd clients do) survives leader changes.
:meth:`Lessor.time_to_live` reports the leader's real remaining time, which may exceed
``granted_ttl`` by up to the grace plus the leader's staleness after a leader change.

Minimum TTL: grants below ``min_ttl`` are raised to it when applied (etcd's rule); like etcd,
members must agree on ``min_ttl``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TypeAlias

import attrs

from kvapp._extras import require

require("sortedcontainers")

from sortedcontainers import SortedList

from kvapp.errors import (
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    NotLeaderError,
)
from kvapp.mvcc.store import Store

__all__ = [
    "MAX_LEASE_TTL",
    "LeaseCheckpoint",
    "LeaseCheckpointRequest",
    "LeaseGrantRequest",
    "LeaseGrantResponse",
    "LeaseKeepAliveResponse",
    "LeaseProposal",
    "LeaseRecord",
    "LeaseRevokeRequest",
    "LeaseRevokeResponse",
    "LeaseSnapshot",
    "LeaseTimeToLiveResponse",
    "Lessor",
]

MAX_LEASE_TTL = 9_000_000_000
"""etcd's maximum lease TTL in seconds."""

_EPSILON = 1e-9


@attrs.frozen
class LeaseGrantRequest:
    """Replicated command: create a lease (etcd's ``LeaseGrantRequest``).

    ``id`` 0 lets the lessor pick the next free ID, deterministically on every member.
    """

    ttl: int
    id: int = 0


@attrs.frozen
class LeaseRevokeRequest:
    """Replicated command: delete a lease and all its keys (client revoke or leader expiry)."""

    id: int


@attrs.frozen
class LeaseCheckpoint:
    """One lease's remaining TTL in milliseconds, as the leader measured it.

    ``remaining_ms`` is negative once the lease is past its deadline (e.g. while its revoke is
    pending), so that a new leader does not restart a lease that already ran out.

    ``renewed`` says the lease was renewed since the leader last checkpointed it. Only then may
    a member move the lease's deadline later: a member applies a checkpoint some commit latency
    after the leader measured it, so "now + remaining" is that much late, and letting every
    checkpoint move the deadline would add one latency per leader change.
    """

    id: int
    remaining_ms: int
    renewed: bool = False


def _checkpoints(items: Iterable[LeaseCheckpoint]) -> tuple[LeaseCheckpoint, ...]:
    return tuple(items)


@attrs.frozen
class LeaseCheckpointRequest:
    """Replicated command from the leader: remaining TTLs to resume from after a leader change."""

    checkpoints: tuple[LeaseCheckpoint, ...] = attrs.field(converter=_checkpoints)


LeaseProposal: TypeAlias = LeaseRevokeRequest | LeaseCheckpointRequest
"""What :meth:`Lessor.tick` asks the caller to propose."""


@attrs.frozen
class LeaseGrantResponse:
    """Result of a grant: the lease's ID, its TTL after the minimum, the store revision."""

    id: int
    ttl: int
    revision: int


@attrs.frozen
class LeaseKeepAliveResponse:
    """Result of a renewal on the leader.

    Attributes:
        id: the lease.
        ttl: its full TTL, which it now has again.
        ticket: acknowledge the renewal to the client once
            ``lessor.renewal_durable(id, ticket)``; until then a leader change may lose it.
    """

    id: int
    ttl: int
    ticket: int


@attrs.frozen
class LeaseRevokeResponse:
    """Result of a revoke: the store revision after deleting the lease's keys."""

    revision: int


@attrs.frozen
class LeaseTimeToLiveResponse:
    """A lease's status (etcd's ``LeaseTimeToLiveResponse``).

    Attributes:
        id: the lease.
        ttl: whole seconds left before the leader revokes it (rounded down, so never more than
            what is left); -1 once it has expired and its revoke is pending.
        granted_ttl: the TTL it was granted with (after the minimum was applied).
        keys: the keys attached to it, sorted, if asked for.
    """

    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...] = ()


@attrs.frozen
class LeaseRecord:
    """A lease's replicated state, as carried in snapshots."""

    id: int
    ttl: int
    remaining_ms: int


@attrs.frozen
class LeaseSnapshot:
    """The lessor's whole replicated state."""

    next_id: int
    leases: tuple[LeaseRecord, ...]


class _Lease:
    __slots__ = (
        "confirmed",
        "deadline",
        "expiry",
        "id",
        "remaining_ms",
        "renewed",
        "resume_at",
        "revoke_at",
        "ttl",
    )

    def __init__(self, lease_id: int, ttl: int, remaining_ms: int, now: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        # Replicated: the remaining TTL as of the last grant or checkpoint applied.
        self.remaining_ms = remaining_ms
        # Local: when the lease runs out by the replicated state, on this member's clock
        # (counted from when it applied the grant or the checkpoint); a new leader resumes here.
        self.resume_at = now + remaining_ms / 1000
        # Leader only (None elsewhere): the honest expiry, which checkpoints report; when the
        # leader revokes it (expiry, plus the grace after a promotion until the next renewal);
        # and its key in the schedule (revoke_at, or the time to retry a pending revoke).
        self.expiry: float | None = None
        self.revoke_at: float | None = None
        self.deadline: float | None = None
        # Leader only: ticket of the last renewal, and of the last one known to be durable.
        self.renewed = 0
        self.confirmed = 0


class Lessor:
    """Leases over one store. Not thread-safe: use it from the apply loop.

    Args:
        store: the store whose keys leases own; the lessor installs ``store.lease_exists``.
        clock: monotonic seconds (e.g. ``time.monotonic``); injected so tests control time.
        grace: seconds added to every lease when this member becomes leader; one election
            timeout.
        min_ttl: smallest TTL in seconds; smaller grants are raised to it.
        checkpoint_interval: seconds between checkpoints of all leases on the leader, after the
            first at its first tick. Bounds how late a member restarted from its log counts a
            lease (see the module doc).
        max_checkpoint_batch: most leases in one checkpoint command (etcd uses 1,000).
        revoke_rate: most expiry revokes proposed per second (etcd: 1,000).
        revoke_retry: seconds before proposing an expired lease's revoke again, should the
            first one not apply (a dropped proposal, a leader change).
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        *,
        grace: float,
        min_ttl: int = 2,
        checkpoint_interval: float = 5.0,
        max_checkpoint_batch: int = 1000,
        revoke_rate: float = 1000.0,
        revoke_retry: float = 3.0,
    ) -> None:
        if grace < 0 or min_ttl < 1 or checkpoint_interval <= 0 or max_checkpoint_batch < 1:
            raise ValueError("invalid lessor configuration")
        if revoke_rate <= 0 or revoke_retry <= 0:
            raise ValueError("invalid lessor configuration")
        self._store = store
        self._clock = clock
        self.grace = grace
        self.min_ttl = min_ttl
        self.checkpoint_interval = checkpoint_interval
        self.max_checkpoint_batch = max_checkpoint_batch
        self.revoke_rate = revoke_rate
        self.revoke_retry = revoke_retry
        self._leases: dict[int, _Lease] = {}
        self._next_id = 1
        self._primary = False
        self._schedule = SortedList()
        self._dirty: dict[int, None] = {}
        self._tickets = 0
        # Checkpoints this leader proposed and has not seen applied, each with the renewal
        # ticket of every lease it carries.
        self._inflight: list[tuple[tuple[LeaseCheckpoint, ...], dict[int, int]]] = []
        self._last_checkpoint = 0.0
        self._last_tick = 0.0
        self._tokens = 0.0
        store.lease_exists = self.exists

    # -- queries (any member) -----------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        """Whether this lessor runs lease clocks (this member is the leader)."""
        return self._primary

    def exists(self, lease_id: int) -> bool:
        """Whether the lease exists (it may be expired with its revoke pending)."""
        return lease_id in self._leases

    def leases(self) -> list[int]:
        """IDs of all leases, ascending (etcd's LeaseLeases)."""
        return sorted(self._leases)

    def granted_ttl(self, lease_id: int) -> int:
        """The lease's granted TTL in seconds.

        Raises:
            LeaseNotFoundError: no such lease.
        """
        return self._get(lease_id).ttl

    # -- replicated commands ------------------------------------------------------------------

    def apply(
        self, request: LeaseGrantRequest | LeaseRevokeRequest | LeaseCheckpointRequest
    ) -> LeaseGrantResponse | LeaseRevokeResponse | None:
        """Apply one committed lease command; returns what the matching method returns.

        Raises:
            EtcdError: whatever the matching method raises.
        """
        match request:
            case LeaseGrantRequest():
                return self.grant(request.ttl, request.id)
            case LeaseRevokeRequest():
                return self.revoke(request.id)
            case LeaseCheckpointRequest():
                self.checkpoint(request.checkpoints)
                return None

    def grant(self, ttl: int, lease_id: int = 0) -> LeaseGrantResponse:
        """Apply a grant: create a lease with ``ttl`` seconds (raised to ``min_ttl``).

        Raises:
            LeaseTTLTooLargeError: ``ttl`` is above :data:`MAX_LEASE_TTL`.
            LeaseExistsError: ``lease_id`` is already in use.
        """
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLargeError
        if lease_id and lease_id in self._leases:
            raise LeaseExistsError
        if not lease_id:
            while self._next_id in self._leases:
                self._next_id += 1
            lease_id = self._next_id
            self._next_id += 1
        ttl = max(ttl, self.min_ttl)
        now = self._clock()
        lease = _Lease(lease_id, ttl, ttl * 1000, now)
        self._leases[lease_id] = lease
        if self._primary:
            self._renew(lease, now)
        return LeaseGrantResponse(lease_id, ttl, self._store.revision)

    def revoke(self, lease_id: int) -> LeaseRevokeResponse:
        """Apply a revoke: delete the lease's keys (sorted, in one revision), then the lease.

        Raises:
            LeaseNotFoundError: no such lease (e.g. already revoked).
        """
        lease = self._get(lease_id)
        revision = self._store.delete_keys(sorted(self._store.lease_keys(lease_id)))
        self._unschedule(lease)
        self._dirty.pop(lease_id, None)
        del self._leases[lease_id]
        return LeaseRevokeResponse(revision)

    def checkpoint(self, checkpoints: Iterable[LeaseCheckpoint]) -> None:
        """Apply a checkpoint: record remaining TTLs to resume from; unknown IDs are skipped.

        The leader's own deadlines are left alone: its clock is the authority while it leads.
        On the leader that proposed it, the renewals it carries become durable.
        """
        items = tuple(checkpoints)
        now = self._clock()
        for cp in items:
            lease = self._leases.get(cp.id)
            if lease is not None:
                lease.remaining_ms = cp.remaining_ms
                resume = now + cp.remaining_ms / 1000
                lease.resume_at = resume if cp.renewed else min(lease.resume_at, resume)
        if self._primary and self._inflight:
            self._confirm(items)

    # -- leader-only --------------------------------------------------------------------------

    def promote(self) -> None:
        """Start lease clocks: this member is leader.

        Call it once this member leads and has applied every entry committed before its term
        (in practice: after applying the first entry of its own term), so it resumes from the
        latest checkpoints. Each lease is revoked at its checkpointed deadline (counted on this
        member's clock from when the checkpoint was applied) plus ``grace``; a lease whose
        deadline plus grace already passed is revoked at the next :meth:`tick`. The next
        :meth:`tick` also checkpoints every lease (without the grace), so that a member
        restarted during this term resumes from a checkpoint of this term, however short.
        """
        now = self._clock()
        self._primary = True
        self._schedule.clear()
        self._dirty.clear()
        self._inflight.clear()
        self._last_checkpoint = -math.inf  # due at the first tick: see "Staleness" above
        self._last_tick = now
        self._tokens = self.revoke_rate
        for lease in self._leases.values():
            lease.expiry = lease.resume_at
            lease.revoke_at = lease.expiry + self.grace
            lease.renewed = lease.confirmed = 0
            self._schedule_at(lease, lease.revoke_at)

    def demote(self) -> None:
        """Stop lease clocks: this member no longer leads. Nothing will expire here."""
        self._primary = False
        self._schedule.clear()
        self._dirty.clear()
        self._inflight.clear()
        for lease in self._leases.values():
            lease.expiry = lease.revoke_at = lease.deadline = None

    def keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        """Renew a lease to its full TTL (etcd's LeaseKeepAlive).

        The renewal is checkpointed at the next :meth:`tick`; acknowledge it to the client once
        :meth:`renewal_durable` holds for the returned ticket, so that a new leader can never
        resume the lease from before an acknowledged renewal.

        Raises:
            NotLeaderError: this member is not the leader (forward the request).
            LeaseNotFoundError: no such lease, or it already expired and awaits its revoke (an
                expired lease cannot be revived, as in etcd). etcd's API answers this with a
                keep-alive response of TTL 0 rather than an error.
        """
        if not self._primary:
            raise NotLeaderError
        lease = self._get(lease_id)
        now = self._clock()
        if lease.revoke_at is not None and now >= lease.revoke_at - _EPSILON:
            raise LeaseNotFoundError
        self._renew(lease, now)
        self._tickets += 1
        lease.renewed = self._tickets
        self._dirty[lease_id] = None
        return LeaseKeepAliveResponse(lease_id, lease.ttl, self._tickets)

    def renewal_durable(self, lease_id: int, ticket: int) -> bool:
        """Whether the renewal with ``ticket`` was checkpointed through the log.

        False once this member stopped leading (the renewal may be lost: fail the request so
        the client renews with the new leader) or the lease is gone.
        """
        lease = self._leases.get(lease_id)
        return self._primary and lease is not None and lease.confirmed >= ticket

    def time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseTimeToLiveResponse:
        """The lease's remaining time, granted TTL and (optionally) keys.

        Served by the leader, whose clock decides expiry; the API layer forwards the request
        from followers (as etcd does). An unknown lease is an error here; etcd's API answers it
        with ``TTL: -1``.

        Raises:
            LeaseNotFoundError: no such lease.
            NotLeaderError: this member is not the leader.
        """
        if not self._primary:
            raise NotLeaderError
        lease = self._get(lease_id)
        revoke_at = lease.revoke_at if lease.revoke_at is not None else self._clock()
        left = revoke_at - self._clock()
        ttl = math.floor(left + _EPSILON) if left > _EPSILON else -1
        attached = tuple(sorted(self._store.lease_keys(lease_id))) if keys else ()
        return LeaseTimeToLiveResponse(lease_id, ttl, lease.ttl, attached)

    def tick(self) -> list[LeaseProposal]:
        """Find what the leader must propose now: expiry revokes and due checkpoints.

        Call it on every Raft tick. Returns nothing on a follower. An expired lease's revoke is
        proposed again after ``revoke_retry`` seconds until it applies. Checkpoints are due at
        the first tick after :meth:`promote` and every ``checkpoint_interval`` from there.
        """
        if not self._primary:
            return []
        now = self._clock()
        self._tokens = min(
            self.revoke_rate, self._tokens + (now - self._last_tick) * self.revoke_rate
        )
        self._last_tick = now
        proposals: list[LeaseProposal] = []
        while self._schedule and self._tokens >= 1:
            deadline, lease_id = self._schedule[0]
            if deadline > now + _EPSILON:
                break
            lease = self._leases[lease_id]
            proposals.append(LeaseRevokeRequest(lease_id))
            self._tokens -= 1
            self._schedule_at(lease, now + self.revoke_retry)
        if now - self._last_checkpoint >= self.checkpoint_interval - _EPSILON:
            proposals.extend(self.checkpoint_all())
        elif self._dirty:
            proposals.extend(self._checkpoint_of(list(self._dirty), now))
        return proposals

    def checkpoint_renewed(self) -> list[LeaseCheckpointRequest]:
        """Checkpoints of the leases renewed since the last checkpoint, now.

        A keep-alive is acknowledged only once its renewal is checkpointed; proposing these at
        once, rather than at the next :meth:`tick`, keeps that to one commit. Returns nothing
        on a follower or when nothing was renewed.
        """
        if not self._primary or not self._dirty:
            return []
        return self._checkpoint_of(list(self._dirty), self._clock())

    def checkpoint_all(self) -> list[LeaseCheckpointRequest]:
        """Checkpoints of every lease, e.g. just before transferring leadership.

        Returns nothing on a follower.
        """
        if not self._primary:
            return []
        now = self._clock()
        self._last_checkpoint = now
        return self._checkpoint_of(sorted(self._leases), now)

    # -- snapshots ----------------------------------------------------------------------------

    def snapshot(self) -> LeaseSnapshot:
        """The replicated state, for a state-machine snapshot."""
        records = tuple(
            LeaseRecord(lease.id, lease.ttl, lease.remaining_ms)
            for lease in sorted(self._leases.values(), key=lambda lease: lease.id)
        )
        return LeaseSnapshot(self._next_id, records)

    def restore(self, snapshot: LeaseSnapshot) -> None:
        """Replace the replicated state with a snapshot's.

        The checkpointed remaining TTLs count from now on this member's clock. On a leader,
        clocks restart as in :meth:`promote`.
        """
        now = self._clock()
        self._leases = {r.id: _Lease(r.id, r.ttl, r.remaining_ms, now) for r in snapshot.leases}
        self._next_id = snapshot.next_id
        if self._primary:
            self.promote()

    # -- internals ----------------------------------------------------------------------------

    def _get(self, lease_id: int) -> _Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError
        return lease

    def _renew(self, lease: _Lease, now: float) -> None:
        lease.expiry = lease.revoke_at = now + lease.ttl
        self._schedule_at(lease, lease.revoke_at)

    def _schedule_at(self, lease: _Lease, deadline: float) -> None:
        self._unschedule(lease)
        lease.deadline = deadline
        self._schedule.add((deadline, lease.id))

    def _unschedule(self, lease: _Lease) -> None:
        if lease.deadline is not None:
            self._schedule.discard((lease.deadline, lease.id))
            lease.deadline = None

    def _checkpoint_of(self, ids: Sequence[int], now: float) -> list[LeaseCheckpointRequest]:
        items: list[LeaseCheckpoint] = []
        for lease_id in ids:
            lease = self._leases.get(lease_id)
            if lease is None or lease.expiry is None:
                continue
            remaining = round((lease.expiry - now) * 1000)
            items.append(LeaseCheckpoint(lease_id, remaining, lease_id in self._dirty))
        self._dirty.clear()
        size = self.max_checkpoint_batch
        requests = [LeaseCheckpointRequest(items[i : i + size]) for i in range(0, len(items), size)]
        for request in requests:
            # Only a checkpoint marked renewed moves the followers' deadlines later, so only
            # such a checkpoint makes a renewal durable (an unmarked one may follow a dropped
            # marked one).
            tickets = {
                cp.id: self._leases[cp.id].renewed for cp in request.checkpoints if cp.renewed
            }
            self._inflight.append((request.checkpoints, tickets))
        return requests

    def _confirm(self, items: tuple[LeaseCheckpoint, ...]) -> None:
        found = [i for i, (proposed, _) in enumerate(self._inflight) if proposed == items]
        if not found:
            return
        i = found[0]
        tickets = self._inflight[i][1]
        # Raft commits one leader's proposals in order: earlier ones not yet seen were dropped.
        for _, lost in self._inflight[:i]:
            for lease_id, ticket in lost.items():
                lease = self._leases.get(lease_id)
                if lease is not None and ticket > lease.confirmed:
                    self._dirty[lease_id] = None
        del self._inflight[: i + 1]
        for lease_id, ticket in tickets.items():
            lease = self._leases.get(lease_id)
            if lease is not None and ticket > lease.confirmed:
                lease.confirmed = ticket
