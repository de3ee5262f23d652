"""Leadership transfer (thesis §3.10)."""

from __future__ import annotations

import pytest

from raftlib import ConfChange, ConfChangeType, ProposalDropped, StateType
from raftlib.testing import Network


def _net(**cfg: object) -> Network:
    net = Network([1, 2, 3], seed=3, **cfg)
    net.campaign(1)
    net.propose(1, b"a")
    return net


def test_transfer_to_an_up_to_date_follower() -> None:
    net = _net()
    net.nodes[1].raw.transfer_leader(2)
    net.stabilize()
    assert net.leader() == 2
    assert net.nodes[2].term == 2
    assert net.nodes[1].state == StateType.FOLLOWER


def test_transfer_to_a_lagging_follower_first_catches_it_up() -> None:
    net = _net()
    net.isolate(3)
    for i in range(5):
        net.propose(1, b"x%d" % i)
    net.heal()
    net.nodes[1].raw.transfer_leader(3)
    net.stabilize()
    assert net.leader() == 3
    assert net.nodes[3].data_applied()[:6] == net.nodes[1].data_applied()[:6]


def test_proposals_are_dropped_during_a_transfer() -> None:
    net = _net()
    net.isolate(3)
    net.propose(1, b"more")
    net.nodes[1].raw.transfer_leader(3)
    net.stabilize()
    with pytest.raises(ProposalDropped):
        net.nodes[1].raw.propose(b"blocked")


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    net = _net()
    net.isolate(3)
    net.propose(1, b"more")
    net.nodes[1].raw.transfer_leader(3)
    net.stabilize()
    assert net.nodes[1].raw.status().lead_transferee == 3
    net.tick([1], n=11)
    assert net.nodes[1].raw.status().lead_transferee == 0
    assert net.leader() == 1
    net.propose(1, b"accepted-again")


@pytest.mark.parametrize("target", [1, 9])
def test_transfer_to_self_or_unknown_node_is_ignored(target: int) -> None:
    net = _net()
    net.nodes[1].raw.transfer_leader(target)
    net.stabilize()
    assert net.leader() == 1
    assert net.nodes[1].raw.status().lead_transferee == 0
    net.propose(1, b"still-leading")


def test_transfer_to_a_learner_is_ignored() -> None:
    net = _net()
    net.nodes[1].raw.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER_NODE, 4))
    net.stabilize()
    net.nodes[1].raw.transfer_leader(4)
    net.stabilize()
    assert net.leader() == 1
    assert net.nodes[1].raw.status().lead_transferee == 0


def test_follower_forwards_a_transfer_request_to_the_leader() -> None:
    net = _net()
    net.nodes[3].raw.transfer_leader(3)
    net.stabilize()
    assert net.leader() == 3


def test_transfer_target_campaigns_despite_pre_vote_and_check_quorum() -> None:
    net = _net(pre_vote=True, check_quorum=True)
    net.nodes[1].raw.transfer_leader(2)
    net.stabilize()
    assert net.leader() == 2
