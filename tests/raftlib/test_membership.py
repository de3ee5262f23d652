"""Membership changes (thesis §4): one at a time, joint consensus, learners, removing the leader,
and configurations surviving restarts and snapshots."""

from __future__ import annotations

import pytest

from raftlib import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfChangeV2,
    ConfigError,
    ConfState,
    EntryType,
    MemoryStorage,
    ProposalDropped,
    StateType,
)
from raftlib.testing import Network

from .helpers import drain, new_node, storage_with

ADD = ConfChangeType.ADD_NODE
REMOVE = ConfChangeType.REMOVE_NODE
LEARNER = ConfChangeType.ADD_LEARNER_NODE


def _change(net: Network, leader: int, cc: ConfChange | ConfChangeV2) -> None:
    net.nodes[leader].raw.propose_conf_change(cc)
    net.stabilize()


def _config(net: Network, node: int) -> ConfState:
    return net.nodes[node].raw.status().config


def _add_fresh(net: Network, *ids: int) -> None:
    """Start new members that know the cluster's current configuration but are not in it yet
    (as an operator starts a member it is about to add)."""
    current = _config(net, 1)
    for i in ids:
        net.add_node(i, MemoryStorage(current))


def test_adding_a_voter_one_at_a_time() -> None:
    net = Network([1, 2, 3], seed=1)
    net.campaign(1)
    net.propose(1, b"before")
    _add_fresh(net, 4)
    _change(net, 1, ConfChange(ADD, 4))
    net.tick(n=3)
    assert _config(net, 1).voters == (1, 2, 3, 4)
    assert _config(net, 4).voters == (1, 2, 3, 4)
    assert net.nodes[4].data_applied() == [b"before"]
    # Quorum is now 3 of 4: with 3 and 4 cut off, the leader cannot commit.
    net.isolate(3)
    net.isolate(4)
    commit = net.nodes[1].commit
    net.nodes[1].raw.propose(b"stuck")
    net.stabilize()
    assert net.nodes[1].commit == commit


def test_invalid_changes_raise_and_leave_the_configuration_unchanged() -> None:
    net = Network([1, 2, 3], seed=1)
    net.campaign(1)
    raw = net.nodes[1].raw
    with pytest.raises(ConfigError, match="can't leave a non-joint config"):
        raw.apply_conf_change(ConfChangeV2())
    with pytest.raises(ConfigError, match="removed all voters"):
        raw.apply_conf_change(
            ConfChangeV2(
                transition=ConfChangeTransition.JOINT_EXPLICIT,
                changes=tuple(ConfChangeSingle(REMOVE, i) for i in (1, 2, 3)),
            )
        )
    raw.apply_conf_change(
        ConfChangeV2(
            transition=ConfChangeTransition.JOINT_EXPLICIT, changes=(ConfChangeSingle(ADD, 4),)
        )
    )
    with pytest.raises(ConfigError, match="already joint"):
        raw.apply_conf_change(ConfChangeV2(changes=(ConfChangeSingle(ADD, 5),) * 2))
    with pytest.raises(ConfigError, match="simple config change in joint"):
        raw.apply_conf_change(ConfChange(ADD, 5))
    assert _config(net, 1) == ConfState(voters=(1, 2, 3, 4), voters_outgoing=(1, 2, 3))


def test_simple_change_cannot_swap_two_voters_at_once() -> None:
    from raftlib.confchange import Changer
    from raftlib.raft import _Raft

    raft: _Raft = Network([1, 2, 3], seed=1).nodes[1].raw._raft
    with pytest.raises(ConfigError, match="more than one voter"):
        Changer(raft.trk, 1).simple([ConfChangeSingle(ADD, 4), ConfChangeSingle(REMOVE, 1)])


def test_entering_and_auto_leaving_a_joint_configuration() -> None:
    net = Network([1, 2, 3], seed=2)
    net.campaign(1)
    _add_fresh(net, 4, 5)
    cc = ConfChangeV2(changes=(ConfChangeSingle(ADD, 4), ConfChangeSingle(ADD, 5)))
    _change(net, 1, cc)
    seen = net.nodes[1].conf_states
    assert any(cs.voters_outgoing == (1, 2, 3) and cs.voters == (1, 2, 3, 4, 5) for cs in seen)
    net.tick(n=3)
    final = _config(net, 1)
    assert final.voters == (1, 2, 3, 4, 5)
    assert final.voters_outgoing == ()
    assert not final.auto_leave


def test_explicit_joint_configuration_waits_for_an_empty_change() -> None:
    net = Network([1, 2, 3], seed=2)
    net.campaign(1)
    _add_fresh(net, 4)
    cc = ConfChangeV2(
        transition=ConfChangeTransition.JOINT_EXPLICIT, changes=(ConfChangeSingle(ADD, 4),)
    )
    _change(net, 1, cc)
    net.tick(n=5)
    assert _config(net, 1).voters_outgoing == (1, 2, 3)
    _change(net, 1, ConfChangeV2())
    assert _config(net, 1).voters_outgoing == ()
    assert _config(net, 1).voters == (1, 2, 3, 4)


def test_joint_configuration_cannot_commit_with_a_majority_of_only_one_half() -> None:
    """Thesis §4.3: in C_old,new, agreement needs separate majorities of C_old and C_new."""
    net = Network([1, 2, 3], seed=4)
    net.campaign(1)
    _add_fresh(net, 4, 5, 6)
    cc = ConfChangeV2(
        transition=ConfChangeTransition.JOINT_EXPLICIT,
        changes=(
            ConfChangeSingle(ADD, 4),
            ConfChangeSingle(ADD, 5),
            ConfChangeSingle(ADD, 6),
            ConfChangeSingle(REMOVE, 2),
            ConfChangeSingle(REMOVE, 3),
        ),
    )
    _change(net, 1, cc)
    net.tick(n=3)
    cs = _config(net, 1)
    assert (cs.voters, cs.voters_outgoing) == ((1, 4, 5, 6), (1, 2, 3))
    # Old majority only (1, 2, 3): the new half (1, 4, 5, 6) has just 1 of 4.
    net.isolate(4)
    net.isolate(5)
    net.isolate(6)
    net.nodes[1].raw.propose(b"old-only")
    net.stabilize()
    old_only = net.nodes[1].storage.last_index()
    assert net.nodes[1].commit < old_only
    # New majority only (1, 4, 5): the old half (1, 2, 3) has just 1 of 3.
    net.heal()
    net.stabilize()
    net.isolate(2)
    net.isolate(3)
    net.nodes[1].raw.propose(b"new-only")
    net.stabilize()
    new_only = net.nodes[1].storage.last_index()
    # The new half now holds "old-only" too, so it commits; "new-only" cannot.
    assert net.nodes[1].commit == old_only
    assert net.nodes[1].commit < new_only
    # Both majorities: commits.
    net.heal()
    net.tick(n=2)
    assert net.nodes[1].commit >= new_only


def test_learners_never_count_toward_quorum_and_never_campaign() -> None:
    net = Network([1, 2], seed=5)
    net.campaign(1)
    _add_fresh(net, 3)
    _change(net, 1, ConfChange(LEARNER, 3))
    net.tick(n=3)
    assert _config(net, 3).learners == (3,)
    net.propose(1, b"replicated")
    assert net.nodes[3].data_applied() == [b"replicated"]
    # Node 2 away: leader + learner are not a quorum of voters (1, 2).
    net.isolate(2)
    c = net.nodes[1].commit
    net.nodes[1].raw.propose(b"no-quorum")
    net.stabilize()
    assert net.nodes[1].commit == c
    # The learner never campaigns, however long it hears nothing.
    net.heal()
    net.isolate(3)
    net.tick([3], n=100)
    assert net.nodes[3].state == StateType.FOLLOWER
    assert net.nodes[3].term == net.nodes[1].term


def test_a_learner_answers_vote_requests_normally() -> None:
    """A learner may have been promoted without knowing yet, so it must still vote."""
    from raftlib import Message, MessageType

    from .helpers import drain, msgs_of, new_node, storage_with

    s = storage_with((1, 2), learners=(3,))
    node = new_node(3, s)
    node.step(Message(MessageType.VOTE, to=3, from_=1, term=2, index=0, log_term=0))
    assert [m.reject for m in msgs_of(drain(node, s), MessageType.VOTE_RESP)] == [False]


def test_promoting_a_learner_to_voter() -> None:
    net = Network([1, 2], seed=5)
    net.campaign(1)
    _add_fresh(net, 3)
    _change(net, 1, ConfChange(LEARNER, 3))
    net.tick(n=2)
    _change(net, 1, ConfChange(ADD, 3))
    net.tick(n=2)
    cs = _config(net, 1)
    assert (cs.voters, cs.learners) == ((1, 2, 3), ())


def test_demoting_a_voter_in_a_joint_configuration_uses_learners_next() -> None:
    net = Network([1, 2, 3], seed=6)
    net.campaign(1)
    cc = ConfChangeV2(
        transition=ConfChangeTransition.JOINT_EXPLICIT, changes=(ConfChangeSingle(LEARNER, 3),)
    )
    _change(net, 1, cc)
    cs = _config(net, 1)
    assert (cs.voters, cs.voters_outgoing, cs.learners_next) == ((1, 2), (1, 2, 3), (3,))
    _change(net, 1, ConfChangeV2())
    cs = _config(net, 1)
    assert (cs.voters, cs.learners, cs.learners_next) == ((1, 2), (3,), ())


def test_removing_the_leader_replicates_the_change_then_steps_down() -> None:
    net = Network([1, 2, 3], seed=7)
    net.campaign(1)
    net.propose(1, b"a")
    _change(net, 1, ConfChange(REMOVE, 1))
    assert net.nodes[1].state == StateType.FOLLOWER
    for i in (2, 3):
        assert _config(net, i).voters == (2, 3)
    net.tick(n=40)
    new = net.leader()
    assert new in (2, 3)
    net.propose(new or 0, b"after-removal")
    assert net.nodes[2].data_applied()[-1] == b"after-removal"
    # The removed node never campaigns again.
    term = net.nodes[1].term
    net.tick([1], n=100)
    assert net.nodes[1].state == StateType.FOLLOWER
    assert net.nodes[1].term == term


def test_three_to_five_to_three_voters_while_proposals_keep_committing() -> None:
    net = Network([1, 2, 3], seed=8)
    net.campaign(1)
    _add_fresh(net, 4, 5)
    expected: list[bytes] = []

    def write(tag: str) -> None:
        leader = net.leader()
        assert leader is not None
        data = tag.encode()
        net.nodes[leader].raw.propose(data)
        net.stabilize()
        expected.append(data)

    plan: list[ConfChange | ConfChangeV2] = [
        ConfChange(ADD, 4),
        ConfChange(ADD, 5),
        ConfChangeV2(changes=(ConfChangeSingle(REMOVE, 4), ConfChangeSingle(REMOVE, 5))),
    ]
    for step, cc in enumerate(plan):
        write(f"before-{step}")
        leader = net.leader()
        assert leader is not None
        net.nodes[leader].raw.propose_conf_change(cc)
        net.stabilize()
        write(f"during-{step}")
        net.tick(n=3)
        write(f"after-{step}")
    assert _config(net, 1).voters == (1, 2, 3)
    for i in (1, 2, 3):
        assert net.nodes[i].data_applied() == expected


def test_restart_in_the_middle_of_a_joint_configuration_resumes_it() -> None:
    net = Network([1, 2, 3], seed=9)
    net.campaign(1)
    _add_fresh(net, 4)
    cc = ConfChangeV2(
        transition=ConfChangeTransition.JOINT_EXPLICIT, changes=(ConfChangeSingle(ADD, 4),)
    )
    _change(net, 1, cc)
    net.tick(n=2)
    assert _config(net, 4).voters_outgoing == (1, 2, 3)
    # Everyone restarts from what they persisted.
    for i in (1, 2, 3, 4):
        net.add_node(i, net.nodes[i].storage)
    net.stabilize()
    for i in (1, 2, 3, 4):
        assert _config(net, i).voters_outgoing == (1, 2, 3), i
    for _ in range(100):
        if net.leader() is not None:
            break
        net.tick()
    leader = net.leader()
    assert leader is not None
    _change(net, leader, ConfChangeV2())
    assert _config(net, leader).voters == (1, 2, 3, 4)
    assert _config(net, leader).voters_outgoing == ()


def test_joint_conf_state_survives_a_snapshot_restore() -> None:
    cs = ConfState(voters=(1, 2, 3), voters_outgoing=(1, 2, 4), learners=(5,), learners_next=(4,))
    s = MemoryStorage(cs)
    net = Network([1], seed=1)
    node = net.add_node(1, s)
    assert node.raw.status().config == cs


def test_leader_refuses_a_second_change_until_the_first_is_applied() -> None:
    net = Network([1, 2, 3], seed=10)
    net.campaign(1)
    _add_fresh(net, 4, 5)
    net.nodes[1].raw.propose_conf_change(ConfChange(ADD, 4))
    net.nodes[1].raw.propose_conf_change(ConfChange(ADD, 5))
    net.stabilize()
    assert _config(net, 1).voters == (1, 2, 3, 4)


def test_candidates_never_ask_learners_for_votes_nor_count_their_answers() -> None:
    from raftlib import Message, MessageType

    from .helpers import drain, msgs_of, new_node, storage_with

    s = storage_with((1, 2, 3), learners=(4, 5))
    node = new_node(1, s)
    node.campaign()
    assert sorted(m.to for m in msgs_of(drain(node, s), MessageType.VOTE)) == [2, 3]
    for learner in (4, 5):
        node.step(Message(MessageType.VOTE_RESP, to=1, from_=learner, term=1))
    assert node.status().soft_state.raft_state == StateType.CANDIDATE


def test_leader_takes_no_proposals_after_proposing_its_own_removal() -> None:
    """Appending after its own removal could leave the remaining voters unable to elect a
    successor (they may need this node's vote, refused if its log is longer)."""
    from raftlib import ProposalDropped

    net = Network([1, 2], seed=12)
    net.campaign(1)
    net.nodes[1].raw.propose_conf_change(ConfChange(REMOVE, 1))
    with pytest.raises(ProposalDropped, match="leaving the configuration"):
        net.nodes[1].raw.propose(b"after")
    net.stabilize()
    net.tick(n=40)
    assert net.leader() == 2
    net.propose(2, b"new-leader")
    assert net.nodes[2].data_applied() == [b"new-leader"]


def test_a_conf_change_refused_for_size_leaves_no_pending_change_behind() -> None:
    """A proposal the uncommitted-size limit refuses changes nothing: the next change is taken."""
    s = storage_with((1,))
    node = new_node(1, s, max_uncommitted_entries_size=1000)
    node.campaign()
    drain(node, s)
    node.propose(b"x" * 900)
    with pytest.raises(ProposalDropped):
        node.propose_conf_change(ConfChange(LEARNER, 2, context=b"c" * 200))
    drain(node, s)
    node.propose_conf_change(ConfChange(LEARNER, 2))
    rd = node.ready()
    assert [e.type for e in rd.entries] == [EntryType.CONF_CHANGE]
