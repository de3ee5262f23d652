"""The simulated cluster: faults as explicit events, durability, clients, replay."""

from __future__ import annotations

import cbor2
import pytest

import raftlib.raft
from raftlib import ConfState, MessageType, StateType
from raftlib.testing import (
    Cluster,
    ClusterConfig,
    LivenessViolation,
    Model,
    format_script,
    parse_script,
)
from raftlib.testing.events import Deliver, Duplicate, Restart, Tick

MT = MessageType


def elected(config: ClusterConfig | None = None, leader: int = 1) -> Cluster:
    c = Cluster(config or ClusterConfig(seed=1))
    c.campaign(leader)
    c.stabilize()
    assert c.leader() == leader
    return c


def values(c: Cluster, node: int) -> dict[str, str]:
    sm = c.nodes[node].sm
    assert sm is not None
    data: dict[str, str] = cbor2.loads(sm.snapshot())
    return data


def test_fresh_cluster_elects_one_leader_by_ticking() -> None:
    c = Cluster(ClusterConfig(seed=3))
    c.run(40)
    leaders = [i for i, n in c.nodes.items() if n.role == StateType.LEADER]
    assert len(leaders) == 1
    assert c.leader() == leaders[0]
    assert c.checker.observations > 0


def test_writes_replicate_and_reads_see_them() -> None:
    c = elected()
    c.put(1, "x", "a")
    c.put(2, "x", "b")  # forwarded by a follower
    c.stabilize()
    for i in (1, 2, 3):
        assert values(c, i) == {"x": "b"}
        assert c.nodes[i].applied == c.nodes[i].commit == 3
    c.get(3, "x")
    c.stabilize()
    [read] = [o for o in c.history.operations() if o.input[0] == "read"]
    assert cbor2.loads(read.output) == "b"
    assert read.ret is not None
    assert c.check_linearizability().ok is True


def test_a_write_without_a_leader_fails_at_once() -> None:
    c = Cluster(ClusterConfig(seed=1))
    c.put(1, "x", "a")
    assert len(c.history) == 1
    assert c.history.operations() == []  # failed operations are left out of the history
    assert c.history.pending() == []


def test_leader_sends_appends_before_its_own_write_is_durable() -> None:
    c = elected()
    c.put(1, "x", "a")
    leader = c.nodes[1]
    assert leader.pending is not None
    assert [f.msg.type for f in c.in_flight] == [MT.APP, MT.APP]
    assert leader.storage.last_index() == 1  # not yet durable
    c.sync(1)
    assert leader.storage.last_index() == 2


def test_follower_acknowledges_only_after_sync() -> None:
    c = elected()
    c.put(1, "x", "a")
    c.deliver(1, 2, MT.APP)
    assert c.nodes[2].pending is not None
    assert not any(f.msg.from_ == 2 for f in c.in_flight)
    c.sync(2)
    [ack] = [f.msg for f in c.in_flight if f.msg.from_ == 2]
    assert ack.type == MT.APP_RESP
    assert ack.index == 2


def test_crash_loses_the_unsynced_write() -> None:
    c = elected()
    c.put(1, "x", "a")
    c.deliver(1, 2, MT.APP)
    c.crash(2)
    assert not c.nodes[2].up
    assert c.nodes[2].storage.last_index() == 1
    c.restart(2)
    assert c.nodes[2].log()[-1].index == 1
    c.stabilize()
    assert values(c, 2) == {"x": "a"}


def test_torn_write_keeps_a_prefix() -> None:
    c = elected()
    c.partition([1, 3], [2])
    c.put(1, "x", "a")
    c.put(1, "y", "b")
    c.stabilize()
    c.heal()
    # Drive node 2's catch-up until it holds a pending write of both entries and its hard state.
    rd = None
    for _ in range(50):
        rd = c.nodes[2].pending
        if rd is not None and len(rd.entries) >= 2:
            break
        if rd is not None:
            c.sync(2)
        elif c.nodes[1].pending is not None:
            c.sync(1)
        elif c.in_flight:
            c.execute(Deliver(c.select(0)))
        else:
            c.tick(1)
    assert rd is not None
    assert len(rd.entries) >= 2
    assert rd.hard_state is not None
    old_hs = c.nodes[2].storage.hard_state
    c.crash(2, torn=1)
    durable = c.nodes[2].storage
    assert durable.last_index() == rd.entries[0].index
    assert durable.hard_state == old_hs
    c.restart(2)
    c.stabilize()
    c.run(2)
    assert values(c, 2) == {"x": "a", "y": "b"}


def test_crashed_node_drops_messages_and_restarts_from_disk() -> None:
    c = elected()
    c.crash(3)
    c.put(1, "x", "a")
    c.stabilize()
    assert c.nodes[1].commit == 2  # 1 and 2 are a quorum
    assert c.stats["dropped"] >= 1
    term_before = c.nodes[3].term
    c.restart(3)
    assert c.nodes[3].incarnation == 2
    assert c.nodes[3].term == term_before
    c.run(3)
    assert values(c, 3) == {"x": "a"}


def test_minority_cannot_commit_and_catches_up_after_heal() -> None:
    c = elected()
    c.partition([1], [2, 3])
    c.put(1, "x", "old")
    c.stabilize()
    assert c.nodes[1].commit == 1
    c.run(40)
    new = c.leader()
    assert new in (2, 3)
    c.put(new, "x", "new")
    c.stabilize()
    c.heal()
    c.run(5)
    assert c.leader() == new
    for i in (1, 2, 3):
        assert values(c, i) == {"x": "new"}


def test_one_way_cut() -> None:
    c = elected()
    c.cut(1, 3)
    c.put(1, "x", "a")
    assert {f.msg.to for f in c.in_flight} == {2}
    c.stabilize()
    assert c.nodes[3].commit == 1
    c.heal()
    c.run(2)
    assert values(c, 3) == {"x": "a"}


def test_duplicated_proposal_is_applied_once() -> None:
    c = elected()
    c.put(2, "x", "a")
    assert [f.msg.type for f in c.in_flight] == [MT.PROP]
    c.execute(Duplicate(c.select(0)))
    c.stabilize()
    leader_log = c.nodes[1].log()
    assert len([e for e in leader_log if e.data]) == 2  # appended twice...
    assert values(c, 1) == {"x": "a"}  # ...applied once (per operation id)
    assert len(c.nodes[1].seen_ops) == 1


def test_selectors_name_messages_by_sender_receiver_type_and_ordinal() -> None:
    c = elected()
    c.put(1, "x", "a")
    c.put(1, "x", "b")
    c.sync(1)  # the leader takes its next Ready, with the second append
    assert str(c.select(2)) == "1->2 APP #2"
    c.deliver(1, 2, MT.APP, 2)  # second append first: reordered
    c.deliver(9, 9)  # names nothing in flight: does nothing
    c.stabilize()
    assert values(c, 2) == {"x": "b"}


def test_membership_changes_and_snapshot_catch_up() -> None:
    c = elected(ClusterConfig(seed=2, spares=(4, 5)))
    for v in range(6):
        c.put(1, "k", f"v{v}")
    c.stabilize()
    c.compact(1)
    assert c.nodes[1].storage.first_index() > 2
    c.conf_change(1, "l4")
    c.stabilize()
    c.run(2)
    assert c.nodes[4].running_config().learners == (4,)
    assert values(c, 4) == {"k": "v5"}
    c.conf_change(1, "v4")
    c.stabilize()
    c.conf_change(1, "v5", "r3", transition="implicit")
    c.stabilize()
    c.run(3)
    assert c.nodes[1].running_config() == ConfState(voters=(1, 2, 4, 5))
    c.put(1, "k", "last")
    c.stabilize()
    for i in (1, 2, 4, 5):
        assert values(c, i) == {"k": "last"}


def test_snapshot_taken_after_a_conf_change_reaches_new_members() -> None:
    """A snapshot sent to a new member must include it, or the member ignores it forever."""
    c = elected(ClusterConfig(seed=2, spares=(4,), snapshot_every=2))
    for v in range(5):
        c.put(1, "k", f"v{v}")
    c.stabilize()
    c.conf_change(1, "v4")
    c.stabilize()
    c.run(3)
    assert values(c, 4) == {"k": "v4"}


def test_replay_reproduces_the_run_exactly() -> None:
    c = Cluster(ClusterConfig(seed=5, spares=(4,)))
    c.run(25)
    lead = c.leader()
    assert lead is not None
    c.put(lead, "a", "1")
    c.execute(Tick(2, 3))
    c.crash(2, torn=1)
    c.conf_change(lead, "l4")
    c.stabilize()
    c.execute(Restart(2))
    c.run(5)
    again = Cluster.replay(c.script())
    assert again.describe() == c.describe()
    assert again.script() == c.script()
    cfg, events = parse_script(c.script())
    assert format_script(cfg, events) == c.script()


def test_trace_sees_every_event() -> None:
    seen: list[str] = []
    c = Cluster(ClusterConfig(seed=1))
    c.trace = lambda e: seen.append(type(e).__name__)
    c.campaign(1)
    c.stabilize()
    assert seen == ["Campaign", "Stabilize"]


def test_liveness_check_heals_and_requires_progress() -> None:
    c = Cluster(ClusterConfig(seed=4))
    c.partition([1], [2], [3])
    c.crash(2)
    c.check_liveness(300)
    assert c.leader() is not None
    assert all(n.up for n in c.nodes.values())
    assert len({n.applied for n in c.nodes.values()}) == 1


def test_liveness_violation_when_nobody_can_campaign(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raftlib.raft._Raft, "_hup", lambda self, t: None)
    c = Cluster(ClusterConfig(seed=4))
    with pytest.raises(LivenessViolation, match="no progress within 50"):
        c.check_liveness(50)


def test_only_the_default_state_machine_gets_a_default_model() -> None:
    class Echo:
        def apply(self, command: bytes) -> bytes:
            return command

        def query(self, query: bytes) -> bytes:
            return query

        def snapshot(self) -> bytes:
            return b""

        def restore(self, data: bytes) -> None:
            pass

    c = Cluster(ClusterConfig(seed=1), state_machine=Echo)
    c.campaign(1)
    c.write(1, b"hello")
    c.stabilize()
    assert c.model is None
    with pytest.raises(ValueError, match="no linearizability model"):
        c.check_linearizability()
    assert Cluster(ClusterConfig(seed=1)).model is not None


def test_a_users_state_machine_and_model() -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def apply(self, command: bytes) -> bytes:
            self.n += int(command)
            return str(self.n).encode()

        def query(self, query: bytes) -> bytes:
            return str(self.n).encode()

        def snapshot(self) -> bytes:
            return str(self.n).encode()

        def restore(self, data: bytes) -> None:
            self.n = int(data)

    def step(state: int, inp: tuple[str, bytes], out: bytes | None) -> tuple[bool, int]:
        kind, payload = inp
        if kind == "write":
            new = state + int(payload)
            return out is None or out == str(new).encode(), new
        return out == str(state).encode(), state

    model = Model(init=lambda: 0, step=step, read_only=lambda inp: inp[0] == "read")
    c = Cluster(ClusterConfig(seed=1, snapshot_every=3), state_machine=Counter, model=model)
    c.campaign(1)
    c.stabilize()
    for k in range(1, 6):
        c.write(1 + k % 3, str(k).encode())
        c.stabilize()
    c.read(2, b"?")
    c.crash(3)
    c.restart(3)
    c.run(3)
    c.stabilize()
    assert c.check_linearizability().ok is True
    sm = c.nodes[3].sm
    assert isinstance(sm, Counter)
    assert sm.n == 15


LEASE_STORY = """
cluster voters=1,2,3 seed=1 lease_reads={lease}
campaign 1
stabilize
put 1 k a
stabilize
partition 1 | 2 3
tick 3 x10
drop 3->2 PRE_VOTE
campaign 2
stabilize
put 2 k b
stabilize
get 1 k
stabilize
"""


def test_lease_reads_are_stale_when_clocks_drift_and_safe_reads_are_not() -> None:
    """Node 3's clock runs ahead, so the old leader's lease outlives its leadership (thesis §6.4).

    Lease reads trust bounded clock drift; the simulator's per-node ticks break that bound, and
    the linearizability checker sees the stale read. ReadIndex in SAFE mode stays linearizable:
    the old leader cannot confirm its leadership, so the read is never answered.
    """
    lease = Cluster.replay(LEASE_STORY.format(lease=1))
    result = lease.check_linearizability()
    assert result.ok is False
    assert "get k -> 'a'" in result.explain()
    safe = Cluster.replay(LEASE_STORY.format(lease=0))
    assert safe.check_linearizability().ok is True
    assert [op.ret for op in safe.history.operations() if op.input[0] == "read"] == [None]


def test_unsynced_commit_is_lost_in_a_crash_unless_a_synced_write_flushed_it() -> None:
    c = elected(ClusterConfig(seed=1, unsynced_commits=True))
    c.put(1, "x", "a")
    c.stabilize()
    # The Readys that only advanced the commit index to 2 were written without fsync.
    for i in (1, 2, 3):
        nd = c.nodes[i]
        assert nd.commit == 2
        assert nd.storage.hard_state.commit == 1
        assert nd.unsynced is not None
        assert nd.unsynced.commit == 2
    c.put(1, "x", "b")
    c.sync(1)  # entry 3 is fsynced, and with it the commit index 2 written before
    assert c.nodes[1].storage.hard_state.commit == 2
    assert c.nodes[1].unsynced is None
    c.crash(2)
    assert c.nodes[2].commit == 1  # lost
    assert "(durable commit=1)" in c.describe_node(3)
    c.restart(2)
    c.stabilize()
    assert c.nodes[2].commit == 3
    assert values(c, 2) == {"x": "b"}


def test_commits_are_fsynced_by_default() -> None:
    c = elected()
    c.put(1, "x", "a")
    c.stabilize()
    assert all(c.nodes[i].storage.hard_state.commit == 2 for i in (1, 2, 3))


def test_durable_state_machine_restarts_where_it_was() -> None:
    c = elected(ClusterConfig(seed=1, unsynced_commits=True, durable_apply=True))
    c.put(1, "x", "a")
    c.stabilize()
    c.crash(2)
    c.restart(2)  # Config(applied=2) beyond the durable commit index 1
    nd = c.nodes[2]
    assert nd.storage.hard_state.commit == 1
    assert nd.applied == nd.commit == 2
    assert values(c, 2) == {"x": "a"}
    c.put(1, "x", "b")
    c.stabilize()
    assert values(c, 2) == {"x": "b"}  # applied once each (the checker would say otherwise)


def test_without_durable_apply_the_state_machine_restarts_from_the_snapshot() -> None:
    c = elected(ClusterConfig(seed=1, unsynced_commits=True))
    c.put(1, "x", "a")
    c.stabilize()
    c.crash(2)
    c.restart(2)
    assert c.nodes[2].applied == 0
    c.run(2)
    assert values(c, 2) == {"x": "a"}


def test_durable_state_machine_behind_a_torn_snapshot_restores_the_snapshot() -> None:
    c = elected(ClusterConfig(seed=1, durable_apply=True, snapshot_every=3))
    c.put(1, "x", "a")
    c.stabilize()
    c.crash(3)
    for v in "bcd":
        c.put(1, "x", v)
        c.stabilize()
    c.restart(3)
    assert c.nodes[3].applied == 2  # kept
    for _ in range(50):  # deliver and sync until node 3 takes the leader's snapshot
        if (rd := c.nodes[3].pending) is not None and rd.snapshot is not None:
            break
        c.tick(1)
        for i in (1, 2, 3):
            c.sync(i)
        while c.in_flight:
            c.execute(Deliver(c.select(0)))
    else:
        raise AssertionError("node 3 never took a snapshot")
    c.crash(3, torn=1)  # the snapshot reached the disk; the state machine never saw it
    c.restart(3)
    assert c.nodes[3].applied == 3
    assert values(c, 3) == {"x": "b"}


def reads(c: Cluster) -> list[tuple[int, float, float | None, object]]:
    return [
        (o.id, o.call, o.ret, None if o.output is None else cbor2.loads(o.output))
        for o in c.history.operations()
        if o.input[0] == "read"
    ]


def test_retry_at_the_leader_is_a_read_of_its_own() -> None:
    c = elected()
    c.put(1, "x", "a")
    c.stabilize()
    c.get(1, "x")
    c.stabilize()
    c.put(2, "x", "b")
    c.stabilize()
    c.retry(1)
    c.stabilize()
    (_, call1, ret1, out1), (_, call2, ret2, out2) = reads(c)
    assert ret1 is not None
    assert ret2 is not None
    assert call1 < ret1 < call2 < ret2
    assert (out1, out2) == ("a", "b")
    assert c.script().splitlines()[-2:] == ["retry 1", "stabilize"]
    assert c.check_linearizability().ok is True


def test_retry_of_a_forwarded_read_answers_the_read_waiting() -> None:
    c = elected()
    c.get(2, "x")
    c.retry(2)  # a follower's retry: no new read, the request goes out again
    c.retry(3)  # node 3 never read: nothing happens
    c.stabilize()
    [(_, _, ret, _)] = reads(c)
    assert ret is not None


def test_retry_after_losing_leadership_keeps_only_the_earliest_read() -> None:
    c = elected(ClusterConfig(seed=1, pre_vote=False, check_quorum=False))
    c.get(1, "x")
    c.retry(1)  # both requests made leading: two reads
    assert [r[0] for r in reads(c)] == [0, 1]
    c.sync(1)
    c.campaign(2)
    c.sync(2)
    c.deliver(2, 1, MT.VOTE)
    assert c.nodes[1].role == StateType.FOLLOWER  # its rounds are gone
    c.stabilize()
    assert c.leader() == 2
    c.retry(1)  # forwarded: a read state could now answer either; the later read is dropped
    assert [r[0] for r in reads(c)] == [0]
    c.stabilize()
    assert reads(c)[0][2] is not None
    assert c.check_linearizability().ok is True


def test_liveness_requires_reads_answered_at_their_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    respond = raftlib.raft._Raft._respond_to_read_index

    def lose_forwarded(self: raftlib.raft._Raft, req: object, index: int) -> None:
        if getattr(req, "from_", 0) in (0, self.id):
            respond(self, req, index)  # type: ignore[arg-type]

    monkeypatch.setattr(raftlib.raft._Raft, "_respond_to_read_index", lose_forwarded)
    c = elected()
    with pytest.raises(LivenessViolation, match=r"reads not answered at: \[2, 3\]"):
        c.check_liveness(30)
