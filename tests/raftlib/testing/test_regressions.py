"""Core bugs the simulator found, each pinned as the deterministic schedule that exposes it.

Each schedule replays through :class:`~raftlib.testing.Cluster` (with every safety check on), and
can be replayed step by step with ``python -m raftlib.testing.replay``.
"""

from __future__ import annotations

from raftlib import ConfState, StateType
from raftlib.testing import Cluster


def replay(script: str) -> Cluster:
    return Cluster.replay("\n".join(line.strip() for line in script.strip().splitlines()))


SNAPSHOT_DURING_APPLY = """
    cluster voters=1,2,3 spares=4 seed=1
    campaign 1
    stabilize
    conf 1 explicit v4
    stabilize
    # Entry 3 leaves the joint configuration. Node 3 stores it; the leader never hears so.
    conf 1 leave
    deliver 1->3 APP
    sync 3
    drop 3->1 APP_RESP
    sync 1
    deliver 1->2 APP
    sync 2
    deliver 1->4 APP
    sync 4
    deliver 2->1 APP_RESP
    deliver 4->1 APP_RESP
    # Entry 3 commits; the commit notices to 2 and 4 arrive, the one to 3 is delayed.
    sync 1
    deliver 1->2 APP
    sync 2
    deliver 1->4 APP
    sync 4
    deliver 2->1 APP_RESP
    deliver 4->1 APP_RESP
    # Entry 4 (sent into a cut link, so node 3 is reported unreachable), then a snapshot at 4.
    cut 1->3
    put 1 x a
    sync 1
    deliver 1->2 APP
    sync 2
    deliver 1->4 APP
    sync 4
    deliver 2->1 APP_RESP
    deliver 4->1 APP_RESP
    sync 1
    compact 1
    heal
    tick 1
    sync 1
    deliver 1->3 HEARTBEAT
    sync 3
    deliver 3->1 HEARTBEAT_RESP
    sync 1
    # Node 3 takes a Ready that hands out entry 3 (a conf change) for applying; before it has
    # applied it, the snapshot at 4 arrives.
    deliver 1->3 APP #1
    deliver 1->3 SNAP
    sync 3
"""


def test_snapshot_arriving_while_committed_conf_change_is_being_applied() -> None:
    """Found by the simulator (learners profile, seed 128).

    A follower handed out a Ready whose committed entries include a configuration change, then
    (between ``ready()`` and ``advance()``, which the Ready contract allows) stepped a snapshot
    newer than that entry. raftlib installed the snapshot, switching the configuration to the
    snapshot's; the application then applied the handed-out change as the contract says, and
    ``apply_conf_change`` raised ``ConfigError`` ("can't leave a non-joint config"). etcd would
    panic there. Fix: a node ignores a snapshot while committed entries it handed out are not
    yet applied (the leader sends it again).
    """
    c = replay(SNAPSHOT_DURING_APPLY)
    assert c.nodes[3].conf_state == ConfState(voters=(1, 2, 3, 4))
    c.check_liveness(100)
    assert {n.applied for n in c.nodes.values()} == {c.nodes[1].commit}


TORN_SNAPSHOT = """
    cluster voters=1,2,3 seed=1
    campaign 1
    stabilize
    partition 1 2 | 3
    put 1 k v0
    put 1 k v1
    put 1 k v2
    stabilize
    compact 1
    heal
    tick 1
    sync 1
    deliver 1->2 HEARTBEAT
    deliver 1->3 HEARTBEAT
    sync 3
    deliver 2->1 HEARTBEAT_RESP
    deliver 3->1 HEARTBEAT_RESP
    sync 1
    deliver 1->3 APP
    sync 3
    deliver 3->1 APP_RESP
    sync 1
    # Node 3's next Ready installs the snapshot at 4 and sets commit 4; the crash tears the
    # write after the snapshot, before the hard state.
    deliver 1->3 SNAP
    crash 3 torn=1
    restart 3
"""


def test_restart_after_crash_between_persisting_snapshot_and_hard_state() -> None:
    """Found by the simulator (learners profile, seed 68).

    The Ready contract says to persist the snapshot, then the entries, then the hard state. A
    crash after the snapshot but before the hard state leaves a durable commit index below the
    durable snapshot's index, and restarting raised ``RaftInvariantError`` ("state.commit 1 is
    out of range [4, 4]"), so the node could never start again. A snapshot only holds committed
    entries, so the fix takes the commit index to be at least the snapshot's.
    """
    c = replay(TORN_SNAPSHOT)
    node = c.nodes[3]
    assert node.up
    assert node.storage.hard_state.commit == 1
    assert node.commit == 4
    c.check_liveness(100)
    assert node.applied == c.nodes[1].applied


LEADER_REMOVES_ITSELF_FROM_TWO = """
    cluster voters=1,2 seed=1
    campaign 1
    stabilize
    # Entry 2 removes the leader; a put proposed before entry 2 is applied (it used to become
    # entry 3, which only the leader held; now the leader drops it).
    conf 1 r1
    put 1 x a
    sync 1
    deliver 1->2 APP
    sync 2
    deliver 2->1 APP_RESP
    sync 1
    # The news that entry 2 committed never reaches node 2.
    drop 1->2 APP
    drop 1->2 APP
    # The leader applies its removal and steps down.
    sync 1
"""


def test_leader_removing_itself_from_two_voters_leaves_a_leader_behind() -> None:
    """Found by the simulator; a liveness bug inherited from etcd's raft.

    A leader that removed itself from a two-voter configuration could append entries after the
    removal, step down once the removal was applied, and leave the other voter needing its vote,
    which it refused because its own log was longer. A leader now appends nothing after the
    change that removes (or demotes) it: later proposals are dropped, so its log never runs past
    what the remaining voter must hold for the removal to commit.
    """
    c = replay(LEADER_REMOVES_ITSELF_FROM_TWO)
    assert c.nodes[1].role == StateType.FOLLOWER
    assert c.nodes[1].conf_state == ConfState(voters=(2,))
    assert c.nodes[2].conf_state == ConfState(voters=(1, 2))
    c.check_liveness(300)


REELECTED_WITH_OWN_REMOVAL_PENDING = """
    cluster voters=1,2 seed=1 pre_vote=0 check_quorum=0
    campaign 1
    stabilize
    # Entry 2 removes the leader; node 2 stores it, the leader never hears so.
    conf 1 r1
    deliver 1->2 APP
    sync 2
    drop 2->1 APP_RESP
    sync 1
    # Node 2 campaigns (node 1 steps down and votes, the answer is lost); node 1 wins term 3
    # with its own removal still unapplied in its log.
    campaign 2
    sync 2
    deliver 2->1 VOTE
    sync 1
    drop 1->2 VOTE_RESP
    campaign 1
    sync 1
    deliver 1->2 VOTE
    sync 2
    deliver 2->1 VOTE_RESP
    # Entry 3 is the new leader's empty entry; the client write is dropped (it used to become
    # entry 4, past the leader's own removal). Node 2 gets entry 3 (which commits entry 2) but
    # not the commit news.
    put 1 x a
    deliver 1->2 APP
    sync 2
    deliver 2->1 APP_RESP
    sync 1
    drop 1->2 APP
    # Node 1 applies its removal and steps down.
    sync 1
    drop 1->2 APP
"""


def test_leader_reelected_with_its_own_removal_pending_leaves_a_leader_behind() -> None:
    """Found by the simulator (1-voter profile, seed 14, an auto-leave from a joint config).

    A variant of the bug above: a leader elected while a change removing it was still
    unapplied in its log (proposed in an earlier term) kept appending past it. A new leader now
    replays its unapplied configuration changes and, if one removes or demotes it, takes no
    proposals after its empty entry.
    """
    c = replay(REELECTED_WITH_OWN_REMOVAL_PENDING)
    assert c.nodes[1].role == StateType.FOLLOWER
    assert c.nodes[1].conf_state == ConfState(voters=(2,))
    assert [e.index for e in c.nodes[1].log()][-1] == 3
    c.check_liveness(300)


LONE_VOTER_READ_IN_A_JOINT_CONFIGURATION = """
    cluster voters=1 learners=2 seed=0
    campaign 1
    stabilize
    put 1 k a
    stabilize
    # Removing the learner through a joint configuration: node 1 is the only voter of both
    # halves, and no other member is left to acknowledge heartbeats.
    conf 1 explicit r2
    stabilize
    get 1 k
    run 5
    conf 1 leave
    run 5
"""


def test_lone_voter_answers_a_read_made_in_a_joint_configuration() -> None:
    c = replay(LONE_VOTER_READ_IN_A_JOINT_CONFIGURATION)
    assert c.nodes[1].running_config() == ConfState(voters=(1,))
    [read] = [op for op in c.history.operations() if op.input[0] == "read"]
    assert read.ret is not None, "the read was never answered"
