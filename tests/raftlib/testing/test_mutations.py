"""Mutation checks: deliberately broken Raft rules must make the simulation fail, and shrink.

Each mutation monkeypatches one rule in raftlib. For each there is a short story (a schedule)
that passes on the real raftlib and trips the expected property on the mutant, so the checkers
can never rot into checks that cannot fail. The hypothesis machine and the seeded simulator must
also find each mutant on their own, and shrink the failure to a short schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

import raftlib.log
import raftlib.raft
from raftlib import Entry, HardState, MessageType
from raftlib.testing import (
    Cluster,
    ClusterConfig,
    FaultProfile,
    InvariantViolation,
    NotLinearizable,
    parse_script,
    run_simulation,
    shrink,
)
from raftlib.testing.machine import ClusterMachine

MT = MessageType
_Raft = raftlib.raft._Raft
_RaftLog = raftlib.log.RaftLog
Mutate = Callable[[pytest.MonkeyPatch], None]


def grant_votes_to_stale_logs(mp: pytest.MonkeyPatch) -> None:
    """Paper §5.4.1 broken: every candidate's log counts as up to date."""
    mp.setattr(_RaftLog, "is_up_to_date", lambda self, index, term: True)


def commit_by_counting(mp: pytest.MonkeyPatch) -> None:
    """Paper §5.4.2 (Figure 8) broken: commit whatever a quorum holds, of any term."""

    def maybe_commit(self: raftlib.log.RaftLog, index: int, term: int) -> bool:
        if index > self.committed:
            self.commit_to(index)
            return True
        return False

    mp.setattr(_RaftLog, "maybe_commit", maybe_commit)


def forget_the_vote(mp: pytest.MonkeyPatch) -> None:
    """The vote is never written to the hard state, so it is not persisted."""
    mp.setattr(
        _Raft,
        "hard_state",
        lambda self: HardState(term=self.term, vote=0, commit=self.log.committed),
    )


def ack_before_persisting(mp: pytest.MonkeyPatch) -> None:
    """Append acknowledgements are filed as "send now" instead of "after persisting"."""
    mp.setattr(raftlib.raft, "_AFTER_PERSIST", frozenset({MT.VOTE_RESP, MT.PRE_VOTE_RESP, MT.VOTE}))


def count_rejections_as_votes(mp: pytest.MonkeyPatch) -> None:
    """A candidate counts every vote response as granted."""
    poll = _Raft._poll
    mp.setattr(_Raft, "_poll", lambda self, node, t, granted: poll(self, node, t, True))


def apply_uncommitted(mp: pytest.MonkeyPatch) -> None:
    """Entries are handed out for applying as soon as they are in the log."""

    def next_committed(self: raftlib.log.RaftLog) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        if self.unstable.snapshot is not None or self.last_index() < lo:
            return []
        return self.slice(lo, self.last_index() + 1, None)

    mp.setattr(_RaftLog, "next_committed_entries", next_committed)


def read_without_quorum(mp: pytest.MonkeyPatch) -> None:
    """ReadIndex answered without confirming leadership (a lease without CheckQuorum)."""
    mp.setattr(
        _Raft,
        "_send_read_index_response",
        lambda self, m: self._respond_to_read_index(m, self.log.committed),
    )


NO_PRE_VOTE = "cluster voters=1,2,3 seed=1 pre_vote=0 check_quorum=0"

STORIES: dict[str, tuple[Mutate, str, str]] = {
    "stale-vote": (
        grant_votes_to_stale_logs,
        f"""{NO_PRE_VOTE}
        campaign 1
        stabilize
        partition 1 2 | 3
        put 1 k a
        stabilize
        heal
        campaign 3
        stabilize""",
        "leader-completeness",
    ),
    "figure-8": (
        commit_by_counting,
        f"""{NO_PRE_VOTE} max_size_per_msg=0
        campaign 1
        stabilize
        put 1 k a
        sync 1
        deliver 1->2 APP
        drop 1->3 APP
        sync 2
        drop 2->1 APP_RESP
        crash 1
        campaign 2
        stabilize""",
        "leader-commit-rule",
    ),
    "forget-vote": (
        forget_the_vote,
        f"{NO_PRE_VOTE}\ncampaign 1\nstabilize",
        "durable-before-send",
    ),
    "ack-early": (
        ack_before_persisting,
        f"""{NO_PRE_VOTE}
        campaign 1
        stabilize
        put 1 k a
        deliver 1->2 APP""",
        "durable-before-send",
    ),
    "two-leaders": (
        count_rejections_as_votes,
        f"""{NO_PRE_VOTE}
        campaign 1
        campaign 3
        sync 1
        sync 3
        deliver 1->2 VOTE
        sync 2
        deliver 3->2 VOTE
        sync 2
        stabilize""",
        "election-safety",
    ),
    "apply-early": (
        apply_uncommitted,
        f"""{NO_PRE_VOTE}
        campaign 1
        stabilize
        put 1 k a""",
        "applied-le-committed",
    ),
    "stale-read": (
        read_without_quorum,
        f"""{NO_PRE_VOTE}
        campaign 1
        stabilize
        put 1 k a
        stabilize
        partition 1 | 2 3
        campaign 2
        stabilize
        put 2 k b
        stabilize
        get 1 k
        stabilize""",
        "linearizability",
    ),
}


def run_story(script: str) -> Cluster:
    cluster = Cluster.replay("\n".join(line.strip() for line in script.splitlines()))
    result = cluster.check_linearizability()
    if result.ok is False:
        raise NotLinearizable(result.explain())
    return cluster


@pytest.mark.parametrize("name", sorted(STORIES))
def test_story_passes_on_the_real_raftlib(name: str) -> None:
    _, script, _ = STORIES[name]
    run_story(script)


@pytest.mark.parametrize("name", sorted(STORIES))
def test_story_fails_on_the_mutant(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mutate, script, prop = STORIES[name]
    mutate(monkeypatch)
    if prop == "linearizability":
        with pytest.raises(NotLinearizable, match="get k -> 'a'"):
            run_story(script)
        return
    with pytest.raises(InvariantViolation) as info:
        run_story(script)
    assert info.value.prop == prop


class _Mutant(ClusterMachine):
    """Safety mutants: skip the liveness phase, which only slows shrinking down here."""

    liveness_ticks = 0


@pytest.mark.parametrize(
    ("mutate", "prop"),
    [
        (forget_the_vote, "durable-before-send"),
        (ack_before_persisting, "durable-before-send"),
        (count_rejections_as_votes, "election-safety"),
        (apply_uncommitted, "applied-le-committed"),
    ],
    ids=["forget-vote", "ack-early", "two-leaders", "apply-early"],
)
def test_machine_finds_the_mutant_and_shrinks_it(
    mutate: Mutate, prop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mutate(monkeypatch)
    machine: type[ClusterMachine] = type("Mutant", (_Mutant,), {})
    with pytest.raises(InvariantViolation) as info:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=200,
                stateful_step_count=50,
                deadline=None,
                derandomize=True,
                database=None,
                print_blob=False,
                report_multiple_bugs=False,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            ),
        )
    assert info.value.prop == prop
    assert machine.last_failure is not None
    _, events = parse_script(machine.last_failure)
    assert len(events) <= 6, machine.last_failure


@pytest.mark.parametrize(
    ("mutate", "prop"),
    [
        (commit_by_counting, "leader-commit-rule"),
        (grant_votes_to_stale_logs, "leader-completeness"),
    ],
    ids=["figure-8", "stale-vote"],
)
def test_simulation_finds_the_mutant_and_shrinks_it(
    mutate: Mutate, prop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mutate(monkeypatch)
    config = ClusterConfig(pre_vote=False, check_quorum=False, max_size_per_msg=0)
    result = None
    for seed in range(5):
        result = run_simulation(seed, 20_000, config, FaultProfile(reads=0.0))
        if not result.ok:
            break
    assert result is not None
    assert isinstance(result.failure, InvariantViolation), result.failure
    assert result.failure.prop == prop
    long = len(result.cluster.events)
    script, failure = shrink(result.script(), max_replays=1500)
    assert isinstance(failure, InvariantViolation)
    assert failure.prop == prop
    _, events = parse_script(script)
    assert len(events) <= 60 < long, script
    with pytest.raises(InvariantViolation):
        Cluster.replay(script)
