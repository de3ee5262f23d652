"""The safety checker against a fake node: every property can fail, and fails for the right reason.

These tests feed :class:`SafetyChecker` hand-made observations of deliberately broken nodes, so
that no check can rot into one that always passes.
"""

from __future__ import annotations

from typing import Any

import pytest

from raftlib import ConfState, Entry, EntryType, HardState, MemoryStorage, Message, MessageType
from raftlib import StateType as S
from raftlib.testing import (
    PROPERTIES,
    InvariantViolation,
    NodeObservation,
    SafetyChecker,
    check_nodes,
)

MT = MessageType
CS = ConfState(voters=(1, 2, 3))


def ents(*terms: int, start: int = 1, data: bytes = b"") -> list[Entry]:
    return [Entry(term=t, index=start + i, data=data) for i, t in enumerate(terms)]


def obs(
    node: int,
    role: S,
    term: int,
    entries: list[Entry],
    *,
    commit: int = 0,
    applied: int = 0,
    first: int = 1,
    prev_term: int = 0,
    incarnation: int = 1,
    config: ConfState = CS,
) -> NodeObservation:
    return NodeObservation(
        id=node,
        incarnation=incarnation,
        role=role,
        term=term,
        commit=commit,
        applied=applied,
        first_index=first,
        prev_term=prev_term,
        entries=entries,
        config=config,
    )


def violated(prop: str) -> Any:
    return pytest.raises(InvariantViolation, match=rf"^\[{prop}\]")


def test_property_names() -> None:
    assert len(PROPERTIES) == len(set(PROPERTIES))
    assert "election-safety" in PROPERTIES


def test_a_healthy_history_passes() -> None:
    c = SafetyChecker()
    log = ents(1, 1, 2)
    c.observe(obs(1, S.LEADER, 2, log, commit=3))
    c.observe(obs(2, S.FOLLOWER, 2, log[:2], commit=2))
    c.observe(obs(2, S.FOLLOWER, 2, log, commit=3, applied=3))
    c.observe(obs(1, S.LEADER, 2, [*log, Entry(2, 4)], commit=3))
    assert c.observations == 4
    assert sorted(c.committed) == [1, 2, 3]


def test_two_leaders_in_one_term() -> None:
    c = SafetyChecker()
    c.observe(obs(1, S.LEADER, 3, ents(3)))
    with violated("election-safety"):
        c.observe(obs(2, S.LEADER, 3, ents(3)))


def test_leader_rewrites_its_log() -> None:
    c = SafetyChecker()
    c.observe(obs(1, S.LEADER, 2, ents(1, 2, 2)))
    with violated("leader-append-only"):
        c.observe(obs(1, S.LEADER, 2, ents(1, 2)))  # truncated its own entry


def test_follower_may_truncate_uncommitted_entries() -> None:
    c = SafetyChecker()
    c.observe(obs(2, S.FOLLOWER, 2, ents(1, 2, 2), commit=1))
    c.observe(obs(2, S.FOLLOWER, 3, ents(1, 3), commit=1))


def test_committed_entry_overwritten() -> None:
    c = SafetyChecker()
    c.observe(obs(2, S.FOLLOWER, 2, ents(1, 2, 2), commit=2))
    with violated("committed-stable"):
        c.observe(obs(2, S.FOLLOWER, 3, ents(1, 3), commit=2))


def test_entries_with_same_index_and_term_differ() -> None:
    c = SafetyChecker()
    c.observe(obs(1, S.FOLLOWER, 1, ents(1, 1, data=b"a")))
    with violated("log-matching"):
        c.observe(obs(2, S.FOLLOWER, 1, ents(1, 1, data=b"b")))


def test_same_entry_after_different_predecessors() -> None:
    c = SafetyChecker()
    c.observe(obs(1, S.FOLLOWER, 3, ents(1, 3)))
    with violated("log-matching"):
        c.observe(obs(2, S.FOLLOWER, 3, ents(2, 3)))


def test_committed_entries_disagree_across_nodes() -> None:
    c = SafetyChecker()
    c.observe(obs(1, S.FOLLOWER, 2, ents(1, 2), commit=2))
    with violated("committed-stable"):
        c.observe(obs(2, S.FOLLOWER, 3, ents(1, 3), commit=2))


def test_new_leader_lacks_a_committed_entry() -> None:
    c = SafetyChecker()
    c.observe(obs(1, S.LEADER, 2, ents(1, 2, 2), commit=3))
    with violated("leader-completeness"):
        c.observe(obs(2, S.LEADER, 3, ents(1, 2), commit=2))


def test_leader_completeness_skips_entries_covered_by_its_snapshot() -> None:
    c = SafetyChecker()
    c.observe(obs(1, S.LEADER, 2, ents(1, 2, 2), commit=3))
    c.observe(obs(2, S.LEADER, 3, [Entry(3, 4)], first=4, prev_term=2, commit=3))


def test_existing_leader_lacks_an_entry_committed_in_an_earlier_term() -> None:
    """Node 2 leads term 3; then (stale) node 1 commits a term-1 entry node 2 does not have."""
    c = SafetyChecker()
    c.observe(obs(2, S.LEADER, 3, ents(1, 3)))
    with violated("leader-completeness"):
        c.observe(obs(3, S.FOLLOWER, 1, ents(1, 1), commit=2))


def test_leader_commits_previous_term_entry_by_counting() -> None:
    c = SafetyChecker()
    c.observe(obs(1, S.LEADER, 3, ents(1, 2, 3), commit=1))
    with violated("leader-commit-rule"):
        c.observe(obs(1, S.LEADER, 3, ents(1, 2, 3), commit=2))


def test_commit_without_durable_quorum() -> None:
    disks = {i: MemoryStorage(CS) for i in (1, 2, 3)}
    disks[1].append(ents(1, 1))
    c = SafetyChecker(durable=disks.get)
    with violated("commit-quorum"):
        c.observe(obs(1, S.LEADER, 1, ents(1, 1), commit=2))
    disks[3].append(ents(1, 1))
    c2 = SafetyChecker(durable=disks.get)
    c2.observe(obs(1, S.LEADER, 1, ents(1, 1), commit=2))


def test_joint_commit_needs_both_halves() -> None:
    joint = ConfState(voters=(1, 4, 5), voters_outgoing=(1, 2, 3))
    disks = {i: MemoryStorage(CS) for i in range(1, 6)}
    for i in (1, 2, 3):
        disks[i].append(ents(1))
    c = SafetyChecker(durable=disks.get)
    with violated("commit-quorum"):
        c.observe(obs(1, S.LEADER, 1, ents(1), commit=1, config=joint))


def test_commit_goes_backwards() -> None:
    c = SafetyChecker()
    c.observe(obs(1, S.FOLLOWER, 1, ents(1, 1), commit=2))
    with violated("commit-monotonic"):
        c.observe(obs(1, S.FOLLOWER, 1, ents(1, 1), commit=1))
    # A restart may lose the volatile commit index: a new incarnation starts afresh.
    c.on_restart(1)
    c.observe(obs(1, S.FOLLOWER, 1, ents(1, 1), commit=1, incarnation=2))


def test_applied_beyond_commit() -> None:
    c = SafetyChecker()
    with violated("applied-le-committed"):
        c.observe(obs(1, S.FOLLOWER, 1, ents(1, 1), commit=1, applied=2))
    with violated("applied-le-committed"):
        c.on_apply(2, Entry(1, 1), commit=0)


def test_apply_out_of_order_or_twice() -> None:
    c = SafetyChecker()
    c.on_applied_base(1, 0)
    c.on_apply(1, Entry(1, 1), commit=5)
    with violated("state-machine-safety"):
        c.on_apply(1, Entry(1, 1), commit=5)
    c2 = SafetyChecker()
    c2.on_applied_base(1, 0)
    with violated("state-machine-safety"):
        c2.on_apply(1, Entry(1, 2), commit=5)


def test_nodes_apply_different_entries_at_one_index() -> None:
    c = SafetyChecker()
    c.on_apply(1, Entry(1, 1, data=b"a"), commit=1)
    with violated("state-machine-safety"):
        c.on_apply(2, Entry(1, 1, data=b"b"), commit=1)


def test_vote_sent_before_durable() -> None:
    disk = MemoryStorage(CS)
    c = SafetyChecker()
    vote = Message(MT.VOTE_RESP, to=2, from_=1, term=4)
    with violated("durable-before-send"):
        c.on_send(1, vote, disk)
    disk.set_hard_state(HardState(term=4, vote=3))
    with violated("durable-before-send"):
        c.on_send(1, vote, disk)  # durable vote is for someone else
    disk.set_hard_state(HardState(term=4, vote=2))
    c.on_send(1, vote, disk)
    c.on_send(1, Message(MT.VOTE_RESP, to=3, from_=1, term=4, reject=True), disk)
    c.on_send(1, Message(MT.PRE_VOTE_RESP, to=3, from_=1, term=9), disk)


def test_vote_request_before_durable_term() -> None:
    disk = MemoryStorage(CS)
    c = SafetyChecker()
    with violated("durable-before-send"):
        c.on_send(1, Message(MT.VOTE, to=2, from_=1, term=1), disk)
    disk.set_hard_state(HardState(term=1, vote=1))
    c.on_send(1, Message(MT.VOTE, to=2, from_=1, term=1), disk)


def test_append_acknowledged_before_durable() -> None:
    disk = MemoryStorage(CS)
    disk.append(ents(1))
    c = SafetyChecker()
    with violated("durable-before-send"):
        c.on_send(1, Message(MT.APP_RESP, to=2, from_=1, term=1, index=2), disk)
    c.on_send(1, Message(MT.APP_RESP, to=2, from_=1, term=1, index=1), disk)
    c.on_send(1, Message(MT.APP_RESP, to=2, from_=1, term=1, index=5, reject=True), disk)


def test_append_acknowledged_after_a_newer_leader_replaced_it() -> None:
    disk = MemoryStorage(CS)
    disk.append(ents(1, 3))  # entry 2 of term 1 was replaced by term 3's
    c = SafetyChecker()
    with violated("durable-before-send"):
        c.on_send(1, Message(MT.APP_RESP, to=2, from_=1, term=1, index=2), disk)
    c.on_send(1, Message(MT.APP_RESP, to=2, from_=1, term=1, index=1), disk)
    c.on_send(1, Message(MT.APP_RESP, to=3, from_=1, term=3, index=2), disk)
    c.on_send(1, Message(MT.APP_RESP, to=3, from_=1, term=4, index=2), disk)


@pytest.mark.parametrize("t", [MT.APP, MT.HEARTBEAT, MT.SNAP, MT.TIMEOUT_NOW])
def test_leader_speaks_for_a_term_before_it_is_durable(t: MessageType) -> None:
    disk = MemoryStorage(CS)
    disk.set_hard_state(HardState(term=1, vote=1))
    c = SafetyChecker()
    with violated("durable-before-send"):
        c.on_send(1, Message(t, to=2, from_=1, term=2), disk)
    c.on_send(1, Message(t, to=2, from_=1, term=1), disk)
    disk.set_hard_state(HardState(term=2, vote=1))
    c.on_send(1, Message(t, to=2, from_=1, term=2), disk)


def test_read_state_handed_to_a_node_that_did_not_ask() -> None:
    c = SafetyChecker()
    c.on_read_state(3, b"r", requester=3)
    with violated("read-origin"):
        c.on_read_state(2, b"r", requester=3)
    with violated("read-origin"):
        c.on_read_state(2, b"nobody's", requester=None)


def test_durable_state_regresses() -> None:
    c = SafetyChecker()
    c.on_persist(1, HardState(term=3, vote=2, commit=5))
    with violated("durable-monotonic"):
        c.on_persist(1, HardState(term=2, vote=2, commit=5))
    c2 = SafetyChecker()
    c2.on_persist(1, HardState(term=3, vote=2))
    with violated("durable-monotonic"):
        c2.on_persist(1, HardState(term=3, vote=1))
    c3 = SafetyChecker()
    c3.on_persist(1, HardState(term=3, commit=5))
    with violated("commit-monotonic"):
        c3.on_persist(1, HardState(term=3, commit=4))
    c3.on_persist(1, HardState(term=4, vote=1, commit=5))


def test_second_conf_change_while_first_uncommitted() -> None:
    cc = Entry(term=2, index=2, type=EntryType.CONF_CHANGE_V2, data=b"x")
    c = SafetyChecker()
    c.observe(obs(1, S.LEADER, 2, [Entry(1, 1), cc], commit=1))
    with violated("config-change-safety"):
        c.observe(
            obs(
                1,
                S.LEADER,
                2,
                [Entry(1, 1), cc, Entry(2, 3, EntryType.CONF_CHANGE_V2, b"y")],
                commit=1,
            )
        )
    ok = SafetyChecker()
    ok.observe(obs(1, S.LEADER, 2, [Entry(1, 1), cc], commit=2))
    ok.observe(obs(1, S.LEADER, 2, [Entry(1, 1), cc, Entry(2, 3, EntryType.CONF_CHANGE)], commit=2))


def test_nodes_disagree_on_a_configuration() -> None:
    c = SafetyChecker()
    c.on_conf_applied(1, 5, ConfState(voters=(1, 2)))
    c.on_conf_applied(2, 5, ConfState(voters=(1, 2)))
    with violated("config-change-safety"):
        c.on_conf_applied(3, 5, "refused")


def test_check_nodes_from_scratch() -> None:
    a = obs(1, S.LEADER, 2, ents(1, 2, 2), commit=3)
    b = obs(2, S.FOLLOWER, 2, ents(1, 2), commit=2)
    check_nodes([a, b])
    with violated("election-safety"):
        check_nodes([a, obs(2, S.LEADER, 2, ents(1, 2))])
    with violated("log-matching"):
        check_nodes([a, obs(2, S.FOLLOWER, 2, [Entry(1, 1, data=b"z"), Entry(2, 2)])])
    with violated("committed-stable"):
        check_nodes([a, obs(2, S.FOLLOWER, 3, ents(1, 3), commit=2)])
