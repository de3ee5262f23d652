"""PreVote (thesis §9.6) and CheckQuorum / leader leases (thesis §4.2.3, §6.2)."""

from __future__ import annotations

from raftlib import Message, MessageType, StateType
from raftlib.testing import Network

from .helpers import drain, elect, msgs_of, new_node, storage_with

MT = MessageType


def test_pre_candidate_does_not_change_term_or_vote() -> None:
    """§9.6: a pre-candidate asks "would you vote for me?" without incrementing its term."""
    s = storage_with(term=2)
    node = new_node(1, s, pre_vote=True)
    drain(node, s)
    node.campaign()
    rd = node.ready()
    st = node.status()
    assert st.soft_state.raft_state == StateType.PRE_CANDIDATE
    assert st.hard_state.term == 2
    assert st.hard_state.vote == 0
    pre = [m for m in rd.messages if m.type == MT.PRE_VOTE]
    assert sorted(m.to for m in pre) == [2, 3]
    assert {m.term for m in pre} == {3}  # asks for the next term


def test_pre_vote_majority_leads_to_a_real_election() -> None:
    """§9.6: only after a majority grants the pre-vote does the node increment its term."""
    s = storage_with(term=2)
    node = new_node(1, s, pre_vote=True)
    drain(node, s)
    node.campaign()
    drain(node, s)
    node.step(Message(MT.PRE_VOTE_RESP, to=1, from_=2, term=3))
    st = node.status()
    assert st.soft_state.raft_state == StateType.CANDIDATE
    assert st.hard_state.term == 3


def test_pre_vote_rejected_by_majority_returns_to_follower_at_same_term() -> None:
    s = storage_with(term=2)
    node = new_node(1, s, pre_vote=True)
    drain(node, s)
    node.campaign()
    drain(node, s)
    node.step(Message(MT.PRE_VOTE_RESP, to=1, from_=2, term=2, reject=True))
    node.step(Message(MT.PRE_VOTE_RESP, to=1, from_=3, term=2, reject=True))
    st = node.status()
    assert st.soft_state.raft_state == StateType.FOLLOWER
    assert st.hard_state.term == 2


def test_granting_a_pre_vote_changes_neither_term_nor_vote() -> None:
    s = storage_with(term=2)
    node = new_node(1, s, pre_vote=True)
    drain(node, s)
    node.step(Message(MT.PRE_VOTE, to=1, from_=2, term=3, index=0, log_term=0))
    rd = node.ready()
    resp = [m for m in rd.persisted_messages + rd.messages if m.type == MT.PRE_VOTE_RESP]
    assert [(m.reject, m.term) for m in resp] == [(False, 3)]
    assert node.status().hard_state.term == 2
    assert node.status().hard_state.vote == 0


def test_partitioned_node_with_pre_vote_does_not_disrupt_the_leader_on_rejoin() -> None:
    """§9.6: a node that was partitioned away cannot win a pre-vote, so its term stays put and
    the stable leader keeps leading when it rejoins."""
    net = Network([1, 2, 3], seed=1, pre_vote=True)
    net.campaign(1)
    net.propose(1, b"a")
    net.isolate(3)
    net.tick([3], n=100)
    assert net.nodes[3].term == 1
    net.heal()
    net.tick(n=5)
    assert net.leader() == 1
    assert net.nodes[1].term == 1
    assert net.nodes[3].state == StateType.FOLLOWER


def test_partitioned_node_without_pre_vote_bumps_its_term_and_disrupts() -> None:
    """The contrast case: without PreVote the rejoining node's higher term deposes the leader."""
    net = Network([1, 2, 3], seed=1)
    net.campaign(1)
    net.isolate(3)
    net.tick([3], n=100)
    assert net.nodes[3].term > 1
    net.heal()
    net.tick(n=30)
    assert net.nodes[1].term > 1


def test_leader_without_quorum_steps_down_with_check_quorum() -> None:
    """§6.2: a leader that cannot reach a majority for an election timeout steps down."""
    net = Network([1, 2, 3], seed=1, check_quorum=True)
    net.campaign(1)
    net.isolate(1)
    net.tick([1], n=25)
    assert net.nodes[1].state == StateType.FOLLOWER


def test_leader_with_quorum_stays_leader_with_check_quorum() -> None:
    net = Network([1, 2, 3], seed=1, check_quorum=True)
    net.campaign(1)
    net.isolate(3)
    net.tick(n=60)
    assert net.leader() == 1
    assert net.nodes[1].term == 1


def test_followers_within_the_lease_ignore_vote_requests() -> None:
    """§4.2.3: a server that heard from a leader within the minimum election timeout neither
    updates its term nor grants its vote."""
    s = storage_with()
    node = new_node(1, s, check_quorum=True)
    node.step(Message(MT.HEARTBEAT, to=1, from_=2, term=1))
    drain(node, s)
    node.step(Message(MT.VOTE, to=1, from_=3, term=2, index=5, log_term=1))
    assert node.status().hard_state.term == 1
    assert msgs_of(drain(node, s), MT.VOTE_RESP) == []
    # After the lease expires the vote is considered.
    for _ in range(10):
        node.tick()
    drain(node, s)
    node.step(Message(MT.VOTE, to=1, from_=3, term=2, index=5, log_term=1))
    resp = msgs_of(drain(node, s), MT.VOTE_RESP)
    assert [(m.reject, m.term) for m in resp] == [(False, 2)]


def test_stale_leader_learns_the_new_term_from_an_append_response() -> None:
    """With CheckQuorum, a follower answers appends from an older term so a stuck, higher-term
    node can be freed (etcd TestFreeStuckCandidateWithCheckQuorum)."""
    s = storage_with(term=5)
    node = new_node(1, s, check_quorum=True)
    drain(node, s)
    node.step(Message(MT.APP, to=1, from_=2, term=3, index=0, log_term=0))
    resp = msgs_of(drain(node, s), MT.APP_RESP)
    assert [(m.to, m.term) for m in resp] == [(2, 5)]


def test_disruptive_node_is_freed_under_check_quorum() -> None:
    """A node whose term ran ahead while partitioned eventually rejoins: the cluster converges
    on one leader at a term >= that node's term, and keeps committing."""
    net = Network([1, 2, 3], seed=2, check_quorum=True)
    net.campaign(1)
    net.isolate(3)
    net.tick([3], n=60)
    high = net.nodes[3].term
    assert high > 1
    net.heal()
    for _ in range(200):
        net.tick()
        leader = net.leader()
        if leader is not None and len(net.leaders()) == 1 and net.nodes[leader].term >= high:
            break
    leader = net.leader()
    assert leader is not None
    net.propose(leader, b"after")
    assert all(n.data_applied()[-1:] == [b"after"] for n in net.nodes.values())


def test_leader_transfer_skips_pre_vote_and_lease() -> None:
    """A transfer is not a disruption: TIMEOUT_NOW makes the target campaign at once, and
    followers inside the lease still vote for it."""
    net = Network([1, 2, 3], seed=4, pre_vote=True, check_quorum=True)
    net.campaign(1)
    net.propose(1, b"x")
    net.nodes[1].raw.transfer_leader(2)
    net.stabilize()
    assert net.leader() == 2
    assert net.nodes[2].term == 2


def test_check_quorum_leader_keeps_recently_added_peers_active() -> None:
    """The leader counts itself active and resets peers' activity each check period."""
    s = storage_with()
    node = new_node(1, s, check_quorum=True)
    elect(node, s)
    for _ in range(10):
        node.tick()
    drain(node, s)
    assert node.status().soft_state.raft_state == StateType.LEADER  # acks counted as active
    for _ in range(10):
        node.tick()
    drain(node, s)
    assert node.status().soft_state.raft_state == StateType.FOLLOWER
