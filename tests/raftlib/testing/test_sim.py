"""Seeded fault schedules in virtual time: determinism, coverage of faults, and a seed sweep."""

from __future__ import annotations

import collections

import pytest

from raftlib.testing import (
    ClusterConfig,
    FaultProfile,
    LinkFaults,
    Simulation,
    format_event,
    parse_script,
    run_simulation,
    shrink,
)
from raftlib.testing.events import (
    Crash,
    Cut,
    Deliver,
    Drop,
    Duplicate,
    Partition,
    Read,
    Restart,
    Retry,
    Tick,
    Write,
)
from tests.raftlib.testing import long_run


def test_same_seed_same_run_and_different_seeds_differ() -> None:
    a = run_simulation(7, 8_000)
    b = run_simulation(7, 8_000)
    c = run_simulation(8, 8_000)
    assert a.ok
    assert a.script() == b.script()
    assert a.script() != c.script()
    assert a.cluster.describe() == b.cluster.describe()


def test_a_run_exercises_every_kind_of_fault() -> None:
    result = run_simulation(3, 30_000, faults=FaultProfile(crash_every=2000, partition_every=2000))
    assert result.ok, result.failure
    kinds = collections.Counter(type(e) for e in result.cluster.events)
    for kind in (Tick, Drop, Duplicate, Crash, Restart, Write, Read):
        assert kinds[kind] > 0, kind.__name__
    assert kinds[Partition] + kinds[Cut] > 0
    assert any(isinstance(e, Crash) and e.torn is not None for e in result.cluster.events)
    ops = result.cluster.history.operations()
    assert sum(1 for o in ops if o.ret is not None) > 20
    assert result.linearizability is not None
    assert result.linearizability.ok is True


def test_nodes_tick_at_different_speeds() -> None:
    sim = Simulation(5, faults=FaultProfile(tick_skew=0.3))
    sim.run(20_000)
    ticks = collections.Counter(e.node for e in sim.cluster.events if isinstance(e, Tick))
    assert len(set(ticks.values())) > 1
    assert max(ticks.values()) - min(ticks.values()) > 5


def test_per_link_faults() -> None:
    """Node 3 hears nothing from node 1, and what 2 sends it arrives late and often twice."""
    faults = FaultProfile(
        drop=0.0,
        duplicate=0.0,
        crash_every=0,
        partition_every=0,
        links={
            (1, 3): LinkFaults(drop=1.0),
            (2, 3): LinkFaults(duplicate=0.5, min_delay=200, max_delay=400),
        },
    )
    assert faults.link(1, 3).drop == 1.0
    assert faults.link(3, 1) == LinkFaults(0.0, 0.0, 5, 60)
    with pytest.raises(ValueError, match="min_delay"):
        LinkFaults(min_delay=200)
    result = run_simulation(4, 15_000, faults=faults)
    assert result.ok, result.failure
    events = result.cluster.events
    assert not any(isinstance(e, Deliver) and (e.msg.frm, e.msg.to) == (1, 3) for e in events)
    dups = [e for e in events if isinstance(e, Duplicate)]
    assert dups
    assert all((e.msg.frm, e.msg.to) == (2, 3) for e in dups)
    assert any(isinstance(e, Drop) and (e.msg.frm, e.msg.to) == (1, 3) for e in events)


def test_calm_profile_commits_every_write() -> None:
    result = run_simulation(1, 10_000, faults=FaultProfile.calm())
    assert result.ok
    ops = result.cluster.history.operations()
    writes = [o for o in ops if o.input[0] == "write"]
    assert writes
    assert all(o.ret is not None for o in writes)


def test_shrink_refuses_a_passing_schedule() -> None:
    with pytest.raises(ValueError, match="does not fail"):
        shrink(run_simulation(1, 2_000).script())


def test_simulation_records_a_replayable_schedule() -> None:
    result = run_simulation(2, 5_000)
    config, events = parse_script(result.script())
    assert config.seed == 2
    assert [format_event(e) for e in events] == [format_event(e) for e in result.cluster.events]


def test_bridge_partitions_leave_one_node_talking_to_both_sides() -> None:
    faults = FaultProfile(partition_every=500, one_way=0.0, bridge=1.0, crash_every=0)
    result = run_simulation(6, 10_000, ClusterConfig(voters=(1, 2, 3, 4, 5)), faults)
    assert result.ok, result.failure
    parts = [e for e in result.cluster.events if isinstance(e, Partition)]
    assert parts
    for p in parts:
        a, b = p.groups
        assert a
        assert b
        assert len(a) + len(b) == 4  # the fifth node is the bridge


def test_stalled_messages_arrive_long_after_the_others() -> None:
    faults = FaultProfile(min_delay=5, max_delay=10, stall=0.5, max_stall=2000)
    delays = []
    for seed in range(5):
        sim = Simulation(seed, faults=faults)
        sim.cluster.campaign(1)
        sim._scan()  # schedules the deliveries of the pre-vote requests
        delays += [t - sim.time for t, _, action in sim._queue if action[0] == "msg"]
    assert len(delays) == 10
    assert all(5 <= d <= 2000 for d in delays)
    assert any(d <= 10 for d in delays)
    assert any(d > 10 for d in delays)  # stalled
    result = run_simulation(3, 20_000, faults=faults)
    assert result.ok, result.failure


def test_clients_reuse_read_contexts() -> None:
    faults = FaultProfile(reads=0.6, reuse_read=0.5, client_timeout=500)
    result = run_simulation(1, 20_000, faults=faults)
    assert result.ok, result.failure
    retries = [e for e in result.cluster.events if isinstance(e, Retry)]
    assert len(retries) > 10
    assert result.linearizability is not None
    assert result.linearizability.ok is True


SWEEP = {
    "three voters": (ClusterConfig(), FaultProfile()),
    "five voters, no PreVote/CheckQuorum": (
        ClusterConfig(voters=(1, 2, 3, 4, 5), pre_vote=False, check_quorum=False),
        FaultProfile(),
    ),
    "membership changes and compaction": (
        ClusterConfig(spares=(4, 5), snapshot_every=8, max_inflight_msgs=2, max_size_per_msg=64),
        FaultProfile(conf_every=1500, transfer_every=2000, crash_every=2500),
    ),
    "learners, lossy network": (
        ClusterConfig(learners=(4,), spares=(5,), snapshot_every=6, auto_sync=True),
        FaultProfile(conf_every=1000, drop=0.1, duplicate=0.1),
    ),
    "one voter, learners, slow disk, commits not fsynced": (
        ClusterConfig(voters=(1,), learners=(2, 3), unsynced_commits=True),
        FaultProfile(max_fsync=1500, crash_every=2000, client_timeout=500),
    ),
    "durable state machines, stalls, bridges, read retries": (
        ClusterConfig(
            voters=(1, 2, 3, 4, 5), unsynced_commits=True, durable_apply=True, snapshot_every=5
        ),
        FaultProfile(
            transfer_every=1500, bridge=0.5, stall=0.05, reuse_read=0.3, client_timeout=800
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(SWEEP))
def test_seed_sweep(name: str) -> None:
    config, faults = SWEEP[name]
    for seed in range(12):
        result = run_simulation(seed, 20_000, config, faults)
        assert result.ok, f"seed {seed}: {result.failure}\n{result.script()}"


@long_run
@pytest.mark.parametrize("name", sorted(SWEEP))
def test_long_seed_sweep(name: str) -> None:
    config, faults = SWEEP[name]
    for seed in range(100, 400):
        result = run_simulation(seed, 40_000, config, faults)
        assert result.ok, f"seed {seed}: {result.failure}\n{result.script()}"
