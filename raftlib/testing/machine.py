"""``ClusterMachine``: a hypothesis rule-based state machine over a simulated Raft cluster.

Hypothesis chooses the cluster's shape (the configured one, or its first voter alone with the
other voters as learners), its disk (commit-only Readys fsynced or not; the state machine rebuilt
from the snapshot on restart, or durable up to what it applied), and the steps: tick a node,
deliver / drop / duplicate any in-flight message (so any reordering and delay), finish a node's
disk write, crash a node (tearing its pending write, losing what was not fsynced) and restart it
from its disk, partition or cut links one way, heal, campaign, client writes, ``read_index``
reads and reads retried with the same request context, leader transfers, membership changes
(simple and joint, voters and learners), log compaction, and big steps that run the cluster for a
while. After every step the
:class:`~raftlib.testing.invariants.SafetyChecker` has checked every delivered message and Ready,
and the ``@invariant`` cross-checks all logs from scratch. When the steps run out, the machine
heals everything and requires progress (liveness), then checks the client history for
linearizability.

A failure shrinks to a short program, which hypothesis prints as ``state.rule(...)`` calls; the
machine also prints (as a hypothesis note) the equivalent schedule, which
``python -m raftlib.testing.replay`` replays step by step.

Use it as is::

    TestRaft = ClusterMachine.TestCase

or subclass it to test your own state machine::

    class CounterMachine(ClusterMachine):
        state_machine = Counter  # implements raftlib.testing.StateMachine
        model = counter_model()  # a linearizability Model, or None to skip that check

        def make_write(self, key: int, n: int) -> bytes:
            return b"incr"

        def make_read(self, key: int) -> bytes:
            return b"value"

This module imports ``hypothesis`` (install ``raftlib[testing]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import attrs
from hypothesis import event, note, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from raftlib.testing.cluster import Cluster, ClusterConfig, membership_changes
from raftlib.testing.events import (
    Campaign,
    Compact,
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
    Run,
    Stabilize,
    Sync,
    Tick,
    Transfer,
    Write,
)
from raftlib.testing.invariants import NotLinearizable, check_nodes
from raftlib.testing.linearizability import Model
from raftlib.testing.statemachine import KVStateMachine, StateMachine, kv_get, kv_model, kv_put
from raftlib.types import StateType

__all__ = ["ClusterMachine"]

_index = st.integers(min_value=0, max_value=63)
_FLAGS = [(True, True), (True, False), (False, True), (False, False)]
_DISKS = [(False, False), (True, False), (True, True), (False, True)]
"""``(unsynced_commits, durable_apply)``."""


class ClusterMachine(RuleBasedStateMachine):
    """Property-test Raft (and your state machine on it) under arbitrary fault schedules.

    Class attributes to override:

    Attributes:
        config: the cluster's shape and node configuration (the seed, and unless
            ``fixed_flags`` the ``pre_vote``/``check_quorum`` flags, are drawn by hypothesis).
        fixed_flags: keep ``config``'s ``pre_vote`` and ``check_quorum`` instead of drawing them.
        vary_shape: sometimes run ``config``'s first voter as the only voter, its other voters
            as learners (a lone voter wins elections on its own vote).
        vary_disk: draw ``unsynced_commits`` and ``durable_apply`` instead of keeping
            ``config``'s.
        state_machine: makes each node's application state machine.
        model: the linearizability model of ``state_machine``'s client operations; ``None``
            skips the linearizability check. The default fits :class:`KVStateMachine`.
        min_voters: membership changes never leave fewer voters (see
            :class:`~raftlib.testing.sim.FaultProfile`).
        liveness_ticks: after the last step, a healed cluster must elect a leader and apply a
            fresh write everywhere within this many rounds; 0 skips the check.
    """

    config: ClassVar[ClusterConfig] = ClusterConfig(voters=(1, 2, 3), spares=(4,))
    fixed_flags: ClassVar[bool] = False
    vary_shape: ClassVar[bool] = True
    vary_disk: ClassVar[bool] = True
    state_machine: ClassVar[Callable[[], StateMachine]] = KVStateMachine
    model: ClassVar[Model | None] = kv_model()
    min_voters: ClassVar[int] = 3
    liveness_ticks: ClassVar[int] = 400
    last_failure: ClassVar[str | None] = None
    """The schedule of the most recent failing run (after shrinking: the minimal one)."""

    def __init__(self) -> None:
        super().__init__()
        self._cluster: Cluster | None = None
        self._failed = False
        self._writes = 0

    # -- hooks for subclasses --

    def make_write(self, key: int, n: int) -> bytes:
        """The command of a client write (``n`` counts writes, for unique values)."""
        return kv_put(f"k{key}", f"v{n}")

    def make_read(self, key: int) -> bytes:
        """The query of a client read."""
        return kv_get(f"k{key}")

    # -- plumbing --

    @property
    def cluster(self) -> Cluster:
        """The simulated cluster (after the ``start`` step)."""
        if self._cluster is None:
            raise RuntimeError("the machine has not started")
        return self._cluster

    def _do(self, event: Event) -> None:
        try:
            self.cluster.execute(event)
        except BaseException:
            self._fail()
            raise

    def _fail(self) -> None:
        if not self._failed:
            self._failed = True
            script = self.cluster.script()
            type(self).last_failure = script
            note(f"Replay with `{self.replay_command()}`, FILE holding:\n")
            note(script)

    @classmethod
    def replay_command(cls) -> str:
        """The command line that replays this machine's schedules (``FILE`` for the file).

        A custom state machine and model are named as ``module:attribute`` for the tool's
        ``--state-machine`` and ``--model`` (they must be importable from where it runs).
        """
        words = ["python -m raftlib.testing.replay"]
        sm = cls.state_machine
        if sm is not KVStateMachine:
            words.append(f"--state-machine {sm.__module__}:{sm.__qualname__}")
            if cls.model is not None:
                owner = next(k for k in cls.__mro__ if "model" in vars(k))
                words.append(f"--model {owner.__module__}:{owner.__qualname__}.model")
        words.append("FILE")
        return " ".join(words)

    def _node(self, i: int) -> int:
        ids = self.cluster.config.node_ids
        return ids[i % len(ids)]

    # -- rules --

    @initialize(
        seed=st.integers(0, 2**16),
        flags=st.sampled_from(_FLAGS),
        elect=st.booleans(),
        lone_voter=st.booleans(),
        disk=st.sampled_from(_DISKS),
    )
    def start(
        self,
        seed: int,
        flags: tuple[bool, bool],
        elect: bool,
        lone_voter: bool,
        disk: tuple[bool, bool],
    ) -> None:
        """Create the cluster; optionally elect its first voter at once (saves steps)."""
        cfg = attrs.evolve(self.config, seed=seed)
        if not self.fixed_flags:
            cfg = attrs.evolve(cfg, pre_vote=flags[0], check_quorum=flags[1])
        if self.vary_shape and lone_voter and len(cfg.voters) > 1:
            cfg = attrs.evolve(
                cfg, voters=cfg.voters[:1], learners=(*cfg.voters[1:], *cfg.learners)
            )
        if self.vary_disk:
            cfg = attrs.evolve(cfg, unsynced_commits=disk[0], durable_apply=disk[1])
        model = self.model
        self._cluster = Cluster(cfg, state_machine=type(self).state_machine, model=model)
        if elect:
            self._do(Campaign(cfg.voters[0]))
            self._do(Stabilize())

    @rule(node=_index, n=st.integers(1, 25))
    def tick(self, node: int, n: int) -> None:
        """Tick one node ``n`` times (clocks run at different speeds)."""
        self._do(Tick(self._node(node), n))

    @rule(n=st.integers(1, 15))
    def run(self, n: int) -> None:
        """Tick every node and deliver everything, ``n`` times."""
        self._do(Run(n))

    @precondition(lambda self: bool(self.cluster.in_flight))
    @rule(i=_index)
    def deliver(self, i: int) -> None:
        """Deliver any in-flight message (reordering and delaying the others)."""
        c = self.cluster
        self._do(Deliver(c.select(i % len(c.in_flight))))

    @precondition(lambda self: bool(self.cluster.in_flight))
    @rule(i=_index)
    def drop(self, i: int) -> None:
        """Lose an in-flight message."""
        c = self.cluster
        self._do(Drop(c.select(i % len(c.in_flight))))

    @precondition(lambda self: bool(self.cluster.in_flight))
    @rule(i=_index)
    def duplicate(self, i: int) -> None:
        """Duplicate an in-flight message."""
        c = self.cluster
        self._do(Duplicate(c.select(i % len(c.in_flight))))

    @precondition(lambda self: any(n.pending is not None for n in self.cluster.nodes.values()))
    @rule(i=_index)
    def sync(self, i: int) -> None:
        """Finish one node's pending disk write."""
        pending = [k for k, n in self.cluster.nodes.items() if n.pending is not None]
        self._do(Sync(pending[i % len(pending)]))

    @rule(node=_index, torn=st.none() | st.integers(0, 4))
    def crash(self, node: int, torn: int | None) -> None:
        """Crash a node; ``torn`` items of its pending write reach the disk anyway."""
        self._do(Crash(self._node(node), torn))

    @precondition(lambda self: any(not n.up for n in self.cluster.nodes.values()))
    @rule(i=_index)
    def restart(self, i: int) -> None:
        """Restart a crashed node from its disk."""
        down = [k for k, n in self.cluster.nodes.items() if not n.up]
        self._do(Restart(down[i % len(down)]))

    @rule(sides=st.lists(st.booleans(), min_size=1, max_size=8))
    def partition(self, sides: list[bool]) -> None:
        """Split the nodes in two groups."""
        ids = self.cluster.config.node_ids
        side = [sides[k % len(sides)] for k in range(len(ids))]
        a = tuple(n for n, s in zip(ids, side, strict=True) if s)
        b = tuple(n for n, s in zip(ids, side, strict=True) if not s)
        self._do(Partition((a, b)))

    @rule(frm=_index, to=_index)
    def cut(self, frm: int, to: int) -> None:
        """Cut one link in one direction."""
        self._do(Cut(self._node(frm), self._node(to)))

    @rule()
    def heal(self) -> None:
        """Restore every link."""
        self._do(Heal())

    @rule(node=_index)
    def campaign(self, node: int) -> None:
        """Make a node campaign now."""
        self._do(Campaign(self._node(node)))

    @rule(node=_index, key=st.integers(0, 2))
    def write(self, node: int, key: int) -> None:
        """A client writes through a node."""
        self._writes += 1
        self._do(Write(self._node(node), self.make_write(key, self._writes)))

    @rule(node=_index, key=st.integers(0, 2))
    def read(self, node: int, key: int) -> None:
        """A client reads through a node with ``read_index``."""
        self._do(Read(self._node(node), self.make_read(key)))

    @precondition(lambda self: any(n.read_ctxs for n in self.cluster.nodes.values()))
    @rule(i=_index)
    def retry(self, i: int) -> None:
        """A client reads again at a node, reusing the request context of its latest read."""
        nodes = [k for k, n in self.cluster.nodes.items() if n.read_ctxs]
        self._do(Retry(nodes[i % len(nodes)]))

    @rule(node=_index, to=_index)
    def transfer(self, node: int, to: int) -> None:
        """Ask a node to hand leadership to another."""
        self._do(Transfer(self._node(node), self._node(to)))

    @rule(choice=_index, transition=st.sampled_from(["auto", "implicit", "explicit"]))
    def conf_change(self, choice: int, transition: str) -> None:
        """Propose a membership change at the leader (leave a joint configuration first)."""
        c = self.cluster
        lead = c.leader()
        if lead is None:
            return
        cs = c.nodes[lead].running_config()
        if cs.voters_outgoing:
            self._do(Conf(lead, (), "auto"))
            return
        options = membership_changes(cs, c.config.node_ids, self.min_voters)
        if options:
            self._do(Conf(lead, options[choice % len(options)], transition))

    @rule(node=_index)
    def compact(self, node: int) -> None:
        """A node snapshots its state machine and compacts its log."""
        self._do(Compact(self._node(node)))

    @rule()
    def stabilize(self) -> None:
        """Deliver every message and finish every write until nothing is left."""
        self._do(Stabilize())

    # -- checks --

    @invariant()
    def logs_agree(self) -> None:
        """Every pair of logs satisfies log matching and agrees on committed entries."""
        if self._cluster is None:
            return
        try:
            check_nodes(self.cluster.observations())
        except BaseException:
            self._fail()
            raise

    def teardown(self) -> None:
        """Heal, require progress, and check the client history (unless a step failed).

        Also steers hypothesis (``target``) towards runs that commit more, reach higher terms,
        crash and restart more, complete more client operations and change membership more,
        and labels each run's coverage (``event``, see ``--hypothesis-show-statistics``).
        """
        if self._cluster is None or self._failed:
            return
        self._steer()
        try:
            if self.liveness_ticks:
                self.cluster.execute(Liveness(self.liveness_ticks))
            if self.model is not None:
                result = self.cluster.check_linearizability()
                if result.ok is False:
                    raise NotLinearizable(result.explain())
        except BaseException:
            self._fail()
            raise

    def _steer(self) -> None:
        c = self.cluster
        commit = max(n.commit for n in c.nodes.values())
        term = max(c.checker.leaders, default=0)
        faults = c.stats["crashes"] + c.stats["restarts"]
        done = sum(1 for op in c.history.operations() if op.ret is not None)
        changes = sum(1 for e in c.events if isinstance(e, Conf))
        target(float(commit), label="highest commit index")
        target(float(term), label="highest term with a leader")
        target(float(faults), label="crashes and restarts")
        target(float(done), label="completed client operations")
        target(float(changes), label="membership changes proposed")
        event("elected a leader" if term else "never elected a leader")
        event("committed > 3 entries" if commit > 3 else "committed <= 3 entries")
        event("restarted a node" if c.stats["restarts"] else "no restart")
        event("installed a snapshot" if c.stats["snapshots"] else "no snapshot installed")

    def leaders(self) -> dict[int, int]:
        """The running nodes that believe they lead, with their terms (for subclasses' checks)."""
        out: dict[int, int] = {}
        for i, n in self.cluster.nodes.items():
            if n.up and n.role == StateType.LEADER:
                out[i] = n.term
        return out
