"""Hypothesis strategies for raftlib: wire values, cluster shapes, fault profiles and schedules.

This module imports ``hypothesis`` (install ``raftlib[testing]``); the rest of
``raftlib.testing`` does not.

* :func:`entries`, :func:`messages`, :func:`hard_states`, :func:`snapshots`: raftlib values, for
  codec round trips and for stepping arbitrary messages into a node.
* :func:`cluster_configs` and :func:`fault_profiles`: shapes and hostility of simulations.
* :func:`events` and :func:`schedules`: fault schedules for a
  :class:`~raftlib.testing.cluster.Cluster`; run one with :func:`run_schedule`. Hypothesis shrinks
  a failing schedule to a short one, and :meth:`~raftlib.testing.cluster.Cluster.script` prints it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypothesis import strategies as st

from raftlib.testing.cluster import Cluster, ClusterConfig
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
    MessageSelector,
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
from raftlib.testing.sim import FaultProfile
from raftlib.testing.statemachine import KVStateMachine, StateMachine, kv_get, kv_put
from raftlib.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

__all__ = [
    "cluster_configs",
    "conf_states",
    "entries",
    "events",
    "fault_profiles",
    "hard_states",
    "messages",
    "run_schedule",
    "schedules",
    "snapshots",
]

_small = st.integers(min_value=0, max_value=20)
_ids = st.integers(min_value=1, max_value=7)


def entries(
    *, index: st.SearchStrategy[int] = _small, term: st.SearchStrategy[int] = _small
) -> st.SearchStrategy[Entry]:
    """Log entries of any type with small indexes and terms and short payloads."""
    return st.builds(
        Entry,
        term=term,
        index=index,
        type=st.sampled_from(EntryType),
        data=st.binary(max_size=16),
    )


def hard_states() -> st.SearchStrategy[HardState]:
    """Hard states with small terms, votes and commit indexes."""
    return st.builds(HardState, term=_small, vote=st.integers(0, 7), commit=_small)


def conf_states() -> st.SearchStrategy[ConfState]:
    """Configurations (not necessarily valid ones: ids may repeat across sets)."""
    id_sets = st.lists(_ids, max_size=4, unique=True).map(lambda ids: tuple(sorted(ids)))
    return st.builds(
        ConfState,
        voters=id_sets,
        learners=id_sets,
        voters_outgoing=id_sets,
        learners_next=id_sets,
        auto_leave=st.booleans(),
    )


def snapshots() -> st.SearchStrategy[Snapshot]:
    """Snapshots with metadata and a short payload."""
    return st.builds(
        Snapshot,
        data=st.binary(max_size=16),
        metadata=st.builds(SnapshotMetadata, conf_state=conf_states(), index=_small, term=_small),
    )


def _contiguous(
    index: int, log_term: int, terms: Sequence[int], payloads: Sequence[bytes]
) -> tuple[Entry, ...]:
    out = []
    t = log_term
    for k, (dt, data) in enumerate(zip(terms, payloads, strict=False)):
        t += dt
        out.append(Entry(term=t, index=index + 1 + k, data=data))
    return tuple(out)


def messages(
    *,
    types: Sequence[MessageType] | None = None,
    well_formed: bool = True,
) -> st.SearchStrategy[Message]:
    """Messages between nodes 1..7 with small terms and indexes.

    Args:
        types: the message types to draw from (default: every type).
        well_formed: if true, an ``APP`` carries entries that follow ``index`` contiguously with
            non-decreasing terms no greater than the message's term, a ``SNAP`` carries a
            non-empty snapshot, and every message has a sender and a term, so ``RawNode.step``
            accepts them. If false, anything goes (for testing validation).
    """
    type_st = st.sampled_from(list(types) if types is not None else list(MessageType))

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        t = draw(type_st)
        frm = draw(_ids)
        to = draw(_ids)
        term = draw(st.integers(1 if well_formed else 0, 20))
        index = draw(_small)
        log_term = draw(st.integers(0, term))
        ents: tuple[Entry, ...] = ()
        snap: Snapshot | None = None
        if t in (MessageType.APP, MessageType.PROP):
            n = draw(st.integers(1 if t == MessageType.PROP else 0, 4))
            if well_formed:
                steps = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
                payloads = draw(st.lists(st.binary(max_size=8), min_size=n, max_size=n))
                ents = _contiguous(index, log_term, steps, payloads)
                if ents and ents[-1].term > term:
                    term = ents[-1].term
            else:
                ents = tuple(draw(st.lists(entries(), min_size=n, max_size=n)))
        if t == MessageType.SNAP:
            snap = draw(snapshots())
            if well_formed and snap.is_empty():
                snap = Snapshot(snap.data, SnapshotMetadata(snap.metadata.conf_state, 1, 1))
        elif not well_formed:
            snap = draw(st.none() | snapshots())
        return Message(
            type=t,
            to=to,
            from_=frm,
            term=term,
            log_term=log_term,
            index=index,
            entries=ents,
            commit=draw(_small),
            snapshot=snap,
            reject=draw(st.booleans()),
            reject_hint=draw(_small),
            context=draw(st.binary(max_size=4)),
        )

    return build()


_VOTERS = st.integers(1, 5)
_SPARES = st.integers(0, 2)


def cluster_configs(
    *,
    voters: st.SearchStrategy[int] = _VOTERS,
    spares: st.SearchStrategy[int] = _SPARES,
) -> st.SearchStrategy[ClusterConfig]:
    """Cluster shapes: voters, spare nodes, protocol options, limits, and disk use.

    The disk use is how the simulated application persists: ``unsynced_commits`` and
    ``durable_apply`` of :class:`~raftlib.testing.cluster.ClusterConfig`.
    """

    @st.composite
    def build(draw: st.DrawFn) -> ClusterConfig:
        nv = draw(voters)
        ns = draw(spares)
        return ClusterConfig(
            voters=tuple(range(1, nv + 1)),
            spares=tuple(range(nv + 1, nv + ns + 1)),
            seed=draw(st.integers(0, 2**16)),
            pre_vote=draw(st.booleans()),
            check_quorum=draw(st.booleans()),
            max_size_per_msg=draw(st.sampled_from([0, 64, 256, 1 << 20])),
            max_inflight_msgs=draw(st.integers(1, 8)),
            snapshot_every=draw(st.sampled_from([0, 0, 5, 20])),
            unsynced_commits=draw(st.booleans()),
            durable_apply=draw(st.booleans()),
        )

    return build()


def fault_profiles() -> st.SearchStrategy[FaultProfile]:
    """Fault profiles from calm to hostile, for :class:`~raftlib.testing.sim.Simulation`."""
    return st.builds(
        FaultProfile,
        tick_skew=st.floats(0.0, 0.5),
        max_delay=st.integers(5, 200),
        drop=st.floats(0.0, 0.2),
        duplicate=st.floats(0.0, 0.1),
        max_fsync=st.integers(0, 100),
        crash_every=st.sampled_from([0, 1000, 4000]),
        partition_every=st.sampled_from([0, 1000, 4000]),
        conf_every=st.sampled_from([0, 0, 2000]),
        transfer_every=st.sampled_from([0, 0, 3000]),
        bridge=st.sampled_from([0.0, 0.0, 0.5]),
        reuse_read=st.sampled_from([0.0, 0.3]),
        stall=st.sampled_from([0.0, 0.0, 0.05]),
    )


def events(
    node_ids: Sequence[int],
    *,
    write: Callable[[int, int], bytes] | None = None,
    read: Callable[[int], bytes] | None = None,
) -> st.SearchStrategy[Event]:
    """Single events over ``node_ids``: faults, deliveries, client operations, operator actions.

    Args:
        node_ids: the cluster's nodes.
        write: ``write(key, n)`` makes the n-th write command (default: KV ``put``).
        read: ``read(key)`` makes a read query (default: KV ``get``).
    """
    ids = st.sampled_from(list(node_ids))
    mtypes = st.none() | st.sampled_from(
        [m for m in MessageType if m not in (MessageType.HUP, MessageType.BEAT)]
    )
    sel = st.builds(MessageSelector, ids, ids, mtypes, st.integers(1, 3))
    mk_write = write if write is not None else (lambda k, n: kv_put(f"k{k}", f"v{n}"))
    mk_read = read if read is not None else (lambda k: kv_get(f"k{k}"))
    keys = st.integers(0, 2)
    change = st.tuples(st.sampled_from("vlr"), ids).map(lambda t: f"{t[0]}{t[1]}")
    groups = st.lists(st.integers(0, 1), min_size=len(node_ids), max_size=len(node_ids)).map(
        lambda sides: tuple(
            tuple(n for n, s in zip(node_ids, sides, strict=True) if s == side) for side in (0, 1)
        )
    )
    return st.one_of(
        st.builds(Tick, ids, st.integers(1, 25)),
        st.builds(Deliver, sel),
        st.builds(Drop, sel),
        st.builds(Duplicate, sel),
        st.builds(Sync, ids),
        st.builds(Crash, ids, st.none() | st.integers(0, 4)),
        st.builds(Restart, ids),
        st.builds(Partition, groups),
        st.builds(Cut, ids, ids),
        st.just(Heal()),
        st.builds(Campaign, ids),
        st.builds(lambda n, k, v: Write(n, mk_write(k, v)), ids, keys, st.integers(0, 10**6)),
        st.builds(lambda n, k: Read(n, mk_read(k)), ids, keys),
        st.builds(Retry, ids),
        st.builds(Transfer, ids, ids),
        st.builds(
            Conf,
            ids,
            st.lists(change, max_size=2).map(tuple),
            st.sampled_from(["auto", "implicit", "explicit"]),
        ),
        st.builds(Compact, ids),
        st.just(Stabilize()),
        st.builds(Run, st.integers(1, 5)),
    )


def schedules(
    config: ClusterConfig | None = None, *, max_size: int = 60
) -> st.SearchStrategy[list[Event]]:
    """Lists of :func:`events` for the nodes of ``config`` (default: three voters, one spare)."""
    cfg = config if config is not None else ClusterConfig(voters=(1, 2, 3), spares=(4,))
    return st.lists(events(cfg.node_ids), max_size=max_size)


def run_schedule(
    config: ClusterConfig,
    schedule: Sequence[Event],
    *,
    state_machine: Callable[[], StateMachine] = KVStateMachine,
) -> Cluster:
    """Run ``schedule`` on a fresh cluster; safety is checked after every step.

    Raises:
        InvariantViolation: a safety property failed (``cluster.script()`` of the partial run is
            in the exception's notes).
    """
    cluster = Cluster(config, state_machine=state_machine)
    for e in schedule:
        try:
            cluster.execute(e)
        except AssertionError as exc:
            exc.add_note(cluster.script())
            raise
    return cluster
