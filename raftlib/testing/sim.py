"""Seeded random fault schedules in virtual time, and a shrinker for the failures they find.

:class:`Simulation` drives a :class:`~raftlib.testing.cluster.Cluster` through a random but fully
seed-determined run: nodes tick on their own (skewed) clocks, every message gets a random delay
(so messages are reordered; a few may stall for long), some are dropped or duplicated, disks take
a while to sync, nodes crash (tearing their pending write) and restart, the network partitions
(sometimes one way, sometimes around a bridge node that sees both sides) and heals, clients write
and read (sometimes reusing a read's request context), and an operator proposes membership
changes and leader transfers.
At the end the network heals and the cluster must make progress
(:meth:`~raftlib.testing.cluster.Cluster.check_liveness`), and the client history must be
linearizable.

The simulation only ever acts on the cluster through events, so the run is recorded as a
schedule. :func:`shrink` deletes events from a failing schedule while it keeps failing the same
way, which typically turns thousands of events into a dozen.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from raftlib.testing.cluster import (
    Cluster,
    ClusterConfig,
    format_script,
    membership_changes,
    parse_script,
)
from raftlib.testing.events import (
    Conf,
    Crash,
    Cut,
    Deliver,
    Drop,
    Duplicate,
    Event,
    Heal,
    Liveness,
    Partition,
    Read,
    Restart,
    Retry,
    Sync,
    Tick,
    Transfer,
    Write,
)
from raftlib.testing.invariants import InvariantViolation, NotLinearizable
from raftlib.testing.linearizability import LinearizabilityResult, Model
from raftlib.testing.statemachine import KVStateMachine, StateMachine, kv_get, kv_put
from raftlib.types import ConfState

__all__ = [
    "FaultProfile",
    "LinkFaults",
    "NotLinearizable",
    "Simulation",
    "SimulationResult",
    "run_simulation",
    "shrink",
]


@attrs.frozen
class LinkFaults:
    """How one direction of one link misbehaves (see :attr:`FaultProfile.links`).

    Attributes:
        drop: probability that a message is lost.
        duplicate: probability that a message is delivered twice.
        min_delay: shortest delivery delay.
        max_delay: longest delivery delay.
    """

    drop: float = 0.0
    duplicate: float = 0.0
    min_delay: int = 5
    max_delay: int = 60

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.min_delay <= self.max_delay:
            raise ValueError(
                f"need 0 <= min_delay <= max_delay, got {self.min_delay}, {self.max_delay}"
            )
        if not (0.0 <= self.drop <= 1.0 and 0.0 <= self.duplicate <= 1.0):
            raise ValueError("drop and duplicate are probabilities")


def _links(value: object) -> tuple[tuple[int, int, LinkFaults], ...]:
    if isinstance(value, dict):
        return tuple(sorted((a, b, lf) for (a, b), lf in value.items()))
    if isinstance(value, tuple):
        return value
    raise TypeError(f"expected a mapping (from, to) -> LinkFaults, got {value!r}")


@attrs.frozen
class FaultProfile:
    """How hostile a :class:`Simulation` is. Times are in virtual time units.

    Attributes:
        tick_period: mean time between two ticks of one node.
        tick_skew: each node's tick period is drawn from ``tick_period * (1 ± tick_skew)``.
        min_delay: shortest message delivery delay.
        max_delay: longest message delivery delay (delays vary, so messages get reordered).
        drop: probability that a message is lost.
        duplicate: probability that a message is delivered twice.
        max_fsync: a Ready becomes durable between 0 and this long after it is taken.
        crash_every: mean time between crashes (0: never).
        torn_writes: whether a crash may persist a prefix of the pending write.
        min_down: shortest time a crashed node stays down.
        max_down: longest time a crashed node stays down.
        partition_every: mean time between partitions (0: never).
        one_way: probability that a partition is a single one-way cut.
        bridge: probability that a partition leaves one node (the bridge) connected to both
            sides (as Jepsen's bridge nemesis): a majority can elect a leader the other side
            never hears of, while the bridge still carries old messages between them.
        min_partition: shortest partition.
        max_partition: longest partition.
        clients: number of clients, each with at most one operation outstanding.
        client_think: mean time between a client's operations.
        client_timeout: a client gives up on an operation after this long (it stays pending).
        reads: fraction of client operations that are reads.
        reuse_read: fraction of a client's reads that reuse the request context of the latest
            read at the node it last read at (a :class:`~raftlib.testing.events.Retry`), as a
            client retrying with the same context does.
        keys: number of distinct keys clients use.
        stall: probability that a message stalls in the network (a retransmission after a
            timeout, a congested queue): it arrives between ``max_delay`` and ``max_stall``
            after it was sent, long after messages sent later.
        max_stall: the longest a stalled message takes.
        links: per-link overrides, ``{(from, to): LinkFaults(...)}``, of the four message settings
            above (``drop``, ``duplicate``, ``min_delay``, ``max_delay``) for that direction.
        conf_every: mean time between membership changes (0: never).
        min_voters: the operator never proposes a change leaving fewer voters than this (see
            ``docs/testing.md`` on small configurations).
        max_swap: the most voters the operator replaces in one (joint) change; above 1 the
            incoming and outgoing halves of a joint configuration can share no majority.
        swaps: probability that a membership change replaces voters (one, or up to
            ``max_swap``) rather than being drawn from all sensible changes.
        split_joint: probability that a change replacing voters is followed by a partition
            between the voters it adds and those it removes (each other node joins a random
            side), the moment the leader applies it: the removed voters then hold the change in
            their logs without knowing it committed, and still run the old configuration. A
            quorum of the incoming half alone must elect no leader and confirm no read then.
        transfer_every: mean time between leader transfers (0: never).
    """

    tick_period: int = 100
    tick_skew: float = 0.2
    min_delay: int = 5
    max_delay: int = 60
    drop: float = 0.03
    duplicate: float = 0.02
    max_fsync: int = 20
    crash_every: int = 4000
    torn_writes: bool = True
    min_down: int = 200
    max_down: int = 3000
    partition_every: int = 3000
    one_way: float = 0.3
    bridge: float = 0.0
    min_partition: int = 300
    max_partition: int = 4000
    clients: int = 3
    client_think: int = 150
    client_timeout: int = 3000
    reads: float = 0.4
    reuse_read: float = 0.0
    keys: int = 3
    stall: float = 0.0
    max_stall: int = 3000
    links: tuple[tuple[int, int, LinkFaults], ...] = attrs.field(default=(), converter=_links)
    conf_every: int = 0
    min_voters: int = 3
    max_swap: int = 1
    swaps: float = 0.0
    split_joint: float = 0.0
    transfer_every: int = 0

    def link(self, frm: int, to: int) -> LinkFaults:
        """The message settings of the link ``frm -> to``."""
        for a, b, lf in self.links:
            if (a, b) == (frm, to):
                return lf
        return LinkFaults(self.drop, self.duplicate, self.min_delay, self.max_delay)

    @classmethod
    def calm(cls) -> FaultProfile:
        """No faults at all: reliable, in-order-ish delivery and no crashes."""
        return cls(drop=0.0, duplicate=0.0, crash_every=0, partition_every=0)


@attrs.define
class SimulationResult:
    """What a :func:`run_simulation` produced.

    Attributes:
        seed: the seed of the run.
        cluster: the cluster as the run left it (its ``script()`` replays the run).
        failure: the first violation (or unexpected exception), or ``None`` if the run passed.
        linearizability: the verdict on the client history (``None`` if the run failed first,
            or the cluster has no model).
    """

    seed: int
    cluster: Cluster
    failure: BaseException | None = None
    linearizability: LinearizabilityResult | None = None

    @property
    def ok(self) -> bool:
        """Whether the run passed every check."""
        return self.failure is None

    def script(self) -> str:
        """The schedule the run executed."""
        return self.cluster.script()


class Simulation:
    """A seeded random run over a :class:`~raftlib.testing.cluster.Cluster`.

    Args:
        seed: determines everything: the cluster's jitter and every scheduling decision.
        config: the cluster's shape; its ``seed`` is replaced by ``seed``.
        faults: how hostile the run is.
        state_machine: the application state machine.
        model: its linearizability model (see :class:`~raftlib.testing.cluster.Cluster`).
        write: makes a client write command from ``(rng, key_index, value)``; the default
            writes ``k<key>=<value>`` to the KV state machine.
        read: makes a client read query from ``(rng, key_index)``.
    """

    def __init__(
        self,
        seed: int,
        config: ClusterConfig | None = None,
        faults: FaultProfile | None = None,
        *,
        state_machine: Callable[[], StateMachine] = KVStateMachine,
        model: Model | None = None,
        write: Callable[[random.Random, int, str], bytes] | None = None,
        read: Callable[[random.Random, int], bytes] | None = None,
    ) -> None:
        base = config if config is not None else ClusterConfig()
        self.seed = seed
        self.faults = f = faults if faults is not None else FaultProfile()
        self.rng = random.Random(f"sim/{seed}")
        self.cluster = Cluster(
            attrs.evolve(base, seed=seed), state_machine=state_machine, model=model
        )
        self._write = write if write is not None else (lambda _r, k, v: kv_put(f"k{k}", v))
        self._read = read if read is not None else (lambda _r, k: kv_get(f"k{k}"))
        self.time = 0
        self._queue: list[tuple[int, int, tuple[Any, ...]]] = []
        self._n = 0
        self._seen_seq = 0
        self._sync_gen: dict[int, int] = {}
        self._sync_at: dict[int, int] = {}
        self._client_op: dict[int, tuple[int, int]] = {}
        self._client_read_at: dict[int, int] = {}
        self._values = 0
        self._split_on: tuple[int, ConfState, tuple[int, ...], tuple[int, ...]] | None = None
        ids = self.cluster.config.node_ids
        for i in ids:
            period = max(
                1, round(f.tick_period * (1 + self.rng.uniform(-f.tick_skew, f.tick_skew)))
            )
            self._at(self.rng.randrange(period), ("tick", i, period))
        for c in range(f.clients):
            self._at(self.rng.randrange(f.client_think + 1), ("client", c))
        if f.crash_every:
            self._at(self._exp(f.crash_every), ("crash",))
        if f.partition_every:
            self._at(self._exp(f.partition_every), ("partition",))
        if f.conf_every:
            self._at(self._exp(f.conf_every), ("conf",))
        if f.transfer_every:
            self._at(self._exp(f.transfer_every), ("transfer",))
        self._scan()

    def _exp(self, mean: int) -> int:
        return max(1, round(self.rng.expovariate(1 / mean)))

    def _at(self, delay: int, action: tuple[Any, ...]) -> None:
        self._n += 1
        heapq.heappush(self._queue, (self.time + delay, self._n, action))

    def run(self, duration: int, *, liveness_ticks: int = 300) -> None:
        """Run for ``duration`` time units, then heal and check liveness and linearizability.

        Raises:
            InvariantViolation: a safety property failed.
            LivenessViolation: the healed cluster made no progress in ``liveness_ticks`` rounds.
            NotLinearizable: the client history is not linearizable.
        """
        while self._queue and self._queue[0][0] <= duration:
            self.time, _, action = heapq.heappop(self._queue)
            self._act(action)
            self._split_when_applied()
            self._scan()
        self.cluster.execute(Liveness(liveness_ticks))
        if self.cluster.model is None:
            return
        result = self.cluster.check_linearizability()
        if result.ok is False:
            raise NotLinearizable(result.explain())

    def _exec(self, e: Event) -> None:
        self.cluster.execute(e)

    def _act(self, action: tuple[Any, ...]) -> None:
        f = self.faults
        c = self.cluster
        rng = self.rng
        kind = action[0]
        if kind == "tick":
            _, node, period = action
            if c.nodes[node].up:
                self._exec(Tick(node))
            self._at(period, action)
        elif kind == "msg":
            seq = action[1]
            for pos, fl in enumerate(c.in_flight):
                if fl.seq == seq:
                    self._exec(Deliver(c.select(pos)))
                    break
        elif kind == "sync":
            _, node, gen = action
            if self._sync_gen.get(node, 0) == gen:
                self._sync_at.pop(node, None)
                self._exec(Sync(node))
        elif kind == "crash":
            up = [i for i, nd in c.nodes.items() if nd.up]
            if up:
                node = rng.choice(up)
                nd = c.nodes[node]
                torn = None
                if f.torn_writes and nd.pending is not None:
                    rd = nd.pending
                    size = len(rd.entries) + (rd.snapshot is not None) + (rd.hard_state is not None)
                    torn = rng.randint(0, size)
                self._sync_gen[node] = self._sync_gen.get(node, 0) + 1
                self._sync_at.pop(node, None)
                self._exec(Crash(node, torn))
                self._at(rng.randint(f.min_down, f.max_down), ("restart", node))
            self._at(self._exp(f.crash_every), ("crash",))
        elif kind == "restart":
            self._exec(Restart(action[1]))
        elif kind == "partition":
            self._partition()
            self._at(rng.randint(f.min_partition, f.max_partition), ("heal",))
            self._at(self._exp(f.partition_every), ("partition",))
        elif kind == "heal":
            self._exec(Heal())
        elif kind == "client":
            self._client(action[1])
        elif kind == "conf":
            self._conf()
            self._at(self._exp(f.conf_every), ("conf",))
        elif kind == "transfer":
            lead = c.leader()
            if lead is not None:
                voters = c.nodes[lead].running_config().voters
                targets = [v for v in voters if v != lead]
                if targets:
                    self._exec(Transfer(lead, rng.choice(targets)))
            self._at(self._exp(f.transfer_every), ("transfer",))

    def _partition(self) -> None:
        ids = list(self.cluster.config.node_ids)
        rng = self.rng
        if rng.random() < self.faults.one_way:
            a, b = rng.sample(ids, 2)
            self._exec(Cut(a, b))
            return
        rng.shuffle(ids)
        if self.faults.bridge and len(ids) >= 3 and rng.random() < self.faults.bridge:
            ids.pop()  # the bridge: in neither group, so connected to both
            k = rng.randint(1, len(ids) - 1)
            self._exec(Partition((tuple(sorted(ids[:k])), tuple(sorted(ids[k:])))))
            return
        k = rng.randint(1, len(ids) - 1)
        self._exec(Partition((tuple(sorted(ids[:k])), tuple(sorted(ids[k:])))))

    def _client(self, client: int) -> None:
        f = self.faults
        c = self.cluster
        rng = self.rng
        busy = self._client_op.get(client)
        if busy is not None:
            op, started = busy
            if c.history.is_pending(op) and self.time - started < f.client_timeout:
                self._at(max(1, f.client_think // 3), ("client", client))
                return
        # Clients find the leader most of the time, as real ones do after a redirect.
        lead = c.leader()
        ids = list(c.config.node_ids)
        node = lead if lead is not None and rng.random() < 0.7 else rng.choice(ids)
        key = rng.randrange(f.keys)
        before = len(c.history)
        if rng.random() < f.reads:
            again = self._client_read_at.get(client)
            if again is not None and f.reuse_read and rng.random() < f.reuse_read:
                self._exec(Retry(again))
            else:
                self._exec(Read(node, self._read(rng, key)))
                self._client_read_at[client] = node
        else:
            self._values += 1
            self._exec(Write(node, self._write(rng, key, f"v{self._values}")))
        if len(c.history) > before:
            self._client_op[client] = (before, self.time)
        else:
            self._client_op.pop(client, None)
        self._at(self._exp(f.client_think), ("client", client))

    def _conf(self) -> None:
        c = self.cluster
        lead = c.leader()
        if lead is None:
            return
        cs = c.nodes[lead].running_config()
        if cs.voters_outgoing:
            self._exec(Conf(lead, (), "auto"))  # leave the joint configuration first
            return
        f = self.faults
        options = membership_changes(cs, c.config.node_ids, f.min_voters, f.max_swap)
        swaps = [o for o in options if any(w[0] == "r" for w in o) and o[0][0] == "v"]
        if swaps and f.swaps and self.rng.random() < f.swaps:
            options = swaps
        if options:
            changes = self.rng.choice(options)
            transition = self.rng.choice(["auto", "auto", "implicit", "explicit"])
            self._exec(Conf(lead, changes, transition))
            added = tuple(
                int(w[1:]) for w in changes if w[0] == "v" and int(w[1:]) not in cs.voters
            )
            removed = tuple(int(w[1:]) for w in changes if w[0] != "v" and int(w[1:]) in cs.voters)
            self._split_on = None
            if added and removed and f.split_joint and self.rng.random() < f.split_joint:
                self._split_on = (lead, cs, added, removed)

    def _split_when_applied(self) -> None:
        """Partition the voters a change adds from those it removes once its leader applies it."""
        if self._split_on is None:
            return
        lead, before, added, removed = self._split_on
        nd = self.cluster.nodes[lead]
        if not nd.up:
            self._split_on = None
            return
        if nd.running_config() == before:
            return
        self._split_on = None
        a, b = list(added), list(removed)
        for n in self.cluster.config.node_ids:
            if n not in added and n not in removed:
                (a if self.rng.random() < 0.5 else b).append(n)
        self._exec(Partition((tuple(sorted(a)), tuple(sorted(b)))))
        f = self.faults
        self._at(self.rng.randint(f.min_partition, f.max_partition), ("heal",))

    def _scan(self) -> None:
        """Schedule new in-flight messages and pending writes."""
        c = self.cluster
        f = self.faults
        rng = self.rng
        for fl in list(c.in_flight):
            if fl.seq <= self._seen_seq:
                continue
            self._seen_seq = max(self._seen_seq, fl.seq)
            link = f.link(fl.msg.from_, fl.msg.to)
            if f.stall and rng.random() < f.stall:
                self._at(
                    rng.randint(link.max_delay, max(link.max_delay, f.max_stall)), ("msg", fl.seq)
                )
                continue
            r = rng.random()
            if r < link.drop:
                pos = c.in_flight.index(fl)
                self._exec(Drop(c.select(pos)))
                continue
            if r < link.drop + link.duplicate:
                pos = c.in_flight.index(fl)
                self._exec(Duplicate(c.select(pos)))
                self._seen_seq = max(self._seen_seq, c.in_flight[-1].seq)
                dup = c.in_flight[-1].seq
                self._at(rng.randint(link.min_delay, link.max_delay), ("msg", dup))
            self._at(rng.randint(link.min_delay, link.max_delay), ("msg", fl.seq))
        for i, nd in c.nodes.items():
            if nd.pending is not None and i not in self._sync_at:
                gen = self._sync_gen.get(i, 0)
                self._sync_at[i] = gen
                self._at(rng.randint(0, f.max_fsync), ("sync", i, gen))


def run_simulation(
    seed: int,
    duration: int = 30_000,
    config: ClusterConfig | None = None,
    faults: FaultProfile | None = None,
    **kwargs: Any,
) -> SimulationResult:
    """Run one :class:`Simulation` and return its outcome instead of raising.

    Args:
        seed: the run's seed.
        duration: virtual time to run before the final liveness check.
        config: the cluster's shape.
        faults: how hostile the run is.
        **kwargs: passed to :class:`Simulation` (``state_machine``, ``write``, ``read``, ...).

    Returns:
        The result; ``result.failure`` holds the first failure (safety, liveness,
        linearizability, or an exception raised inside raftlib).
    """
    sim = Simulation(seed, config, faults, **kwargs)
    try:
        sim.run(duration)
    except Exception as exc:  # noqa: BLE001 -- any exception out of raftlib is a finding
        return SimulationResult(seed, sim.cluster, exc)
    lin = sim.cluster.check_linearizability() if sim.cluster.model is not None else None
    return SimulationResult(seed, sim.cluster, None, lin)


def _failure_kind(exc: BaseException) -> tuple[type[BaseException], str]:
    if isinstance(exc, InvariantViolation):
        return type(exc), exc.prop
    return type(exc), ""


def _replay_fails(
    config: ClusterConfig,
    events: Sequence[Event],
    kind: tuple[type[BaseException], str] | None,
    *,
    state_machine: Callable[[], StateMachine],
    model: Model | None,
    check_linearizable: bool,
) -> BaseException | None:
    cluster = Cluster(config, state_machine=state_machine, model=model)
    try:
        for e in events:
            cluster.execute(e)
        if check_linearizable and cluster.model is not None:
            res = cluster.check_linearizability()
            if res.ok is False:
                raise NotLinearizable(res.explain())
    except Exception as exc:  # noqa: BLE001 -- any exception out of raftlib is a finding
        if kind is None or _failure_kind(exc) == kind:
            return exc
        return None
    return None


def shrink(
    script: str,
    *,
    state_machine: Callable[[], StateMachine] = KVStateMachine,
    model: Model | None = None,
    max_replays: int = 5_000,
) -> tuple[str, BaseException]:
    """Delete events from a failing schedule while it keeps failing the same way.

    "The same way" means the same exception type and, for an
    :class:`~raftlib.testing.invariants.InvariantViolation`, the same property. Events that
    follow the failure are dropped first; then ever smaller chunks of events are removed
    (delta debugging), and ticks and runs are shortened.

    Args:
        script: a schedule that fails.
        state_machine: the application state machine it ran with.
        model: its linearizability model (see :class:`~raftlib.testing.cluster.Cluster`).
        max_replays: give up shrinking further after this many replays.

    Returns:
        The shortest failing schedule found, and its failure.

    Raises:
        ValueError: ``script`` does not fail.
    """
    config, events = parse_script(script)
    original = _replay_fails(
        config, events, None, state_machine=state_machine, model=model, check_linearizable=True
    )
    if original is None:
        raise ValueError("the schedule does not fail")
    kind = _failure_kind(original)
    check_lin = isinstance(original, NotLinearizable)
    budget = [max_replays]
    failure = original

    def fails(evs: Sequence[Event]) -> bool:
        nonlocal failure
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        exc = _replay_fails(
            config,
            evs,
            kind,
            state_machine=state_machine,
            model=model,
            check_linearizable=check_lin,
        )
        if exc is not None:
            failure = exc
            return True
        return False

    cur = list(events)
    # Everything after the failing event is irrelevant.
    probe = Cluster(config, state_machine=state_machine, model=model)
    for n, e in enumerate(cur):
        try:
            probe.execute(e)
        except Exception:  # noqa: BLE001 -- locating the failing event
            cur = cur[: n + 1]
            break
    chunk = max(1, len(cur) // 2)
    while chunk >= 1:
        i = len(cur) - chunk
        removed_any = False
        while i >= 0:
            cand = cur[:i] + cur[i + chunk :]
            if cand and fails(cand):
                cur = cand
                removed_any = True
            i -= chunk
        if not removed_any:
            chunk //= 2
    # Merge runs of ticks of one node ("tick 2 x13"), then try fewer ticks.
    merged: list[Event] = []
    for e in cur:
        last = merged[-1] if merged else None
        if isinstance(e, Tick) and isinstance(last, Tick) and last.node == e.node:
            merged[-1] = Tick(e.node, last.n + e.n)
        else:
            merged.append(e)
    if len(merged) < len(cur) and fails(merged):
        cur = merged
    for i, e in enumerate(cur):
        if isinstance(e, Tick) and e.n > 1:
            for n in (1, e.n // 2, e.n - 1):
                cand = [*cur[:i], Tick(e.node, n), *cur[i + 1 :]]
                if n < e.n and fails(cand):
                    cur = cand
                    break
    return format_script(config, cur), failure
