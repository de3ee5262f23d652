"""The configuration (voters, learners) and every peer's progress. Internal."""

from __future__ import annotations

import attrs

from raftlib.quorum import NO_LIMIT, VoteResult, joint_committed_index, joint_vote_result
from raftlib.tracker.progress import Progress
from raftlib.types import ConfState


@attrs.frozen(slots=True)
class TrackerConfig:
    """A membership configuration: ``voters`` (incoming) and, while joint, ``voters_outgoing``.

    ``learners`` and ``voters`` never intersect; ``learners_next`` are outgoing voters that become
    learners when the joint configuration is left.
    """

    voters: frozenset[int] = frozenset()
    voters_outgoing: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    learners_next: frozenset[int] = frozenset()
    auto_leave: bool = False

    def is_joint(self) -> bool:
        """Whether this is a joint configuration."""
        return bool(self.voters_outgoing)

    def all_voters(self) -> frozenset[int]:
        """Every voter of either half."""
        return self.voters | self.voters_outgoing

    def conf_state(self) -> ConfState:
        """As a :class:`~raftlib.ConfState`."""
        return ConfState(
            voters=tuple(sorted(self.voters)),
            learners=tuple(sorted(self.learners)),
            voters_outgoing=tuple(sorted(self.voters_outgoing)),
            learners_next=tuple(sorted(self.learners_next)),
            auto_leave=self.auto_leave,
        )

    def __str__(self) -> str:
        s = "voters=(" + " ".join(map(str, sorted(self.voters))) + ")"
        if self.voters_outgoing:
            s += "&&(" + " ".join(map(str, sorted(self.voters_outgoing))) + ")"
        if self.learners:
            s += " learners=(" + " ".join(map(str, sorted(self.learners))) + ")"
        if self.learners_next:
            s += " learners_next=(" + " ".join(map(str, sorted(self.learners_next))) + ")"
        if self.auto_leave:
            s += " autoleave"
        return s


class ProgressTracker:
    """Tracks the active configuration, each peer's :class:`Progress`, and votes cast for us."""

    __slots__ = ("_ids", "config", "max_inflight", "max_inflight_bytes", "progress", "votes")

    def __init__(self, max_inflight: int, max_inflight_bytes: int) -> None:
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.config = TrackerConfig()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self._ids: list[int] = []

    def switch(self, config: TrackerConfig, progress: dict[int, Progress]) -> None:
        """Install a new configuration and progress map in one step."""
        self.config = config
        self.progress = progress
        self._ids = sorted(progress)

    def ids(self) -> list[int]:
        """Every tracked peer (voters and learners), sorted: iterate in a deterministic order."""
        return self._ids

    def committed(self) -> int:
        """The largest index durably replicated on a quorum (joint-aware)."""
        cfg = self.config
        progress = self.progress
        if cfg.voters_outgoing:
            acked = {i: pr.match for i, pr in progress.items()}
            return joint_committed_index(cfg.voters, cfg.voters_outgoing, acked)
        # Not joint: quorum.majority_committed_index over the voters' matches, inlined (it runs
        # for every acknowledgement the leader receives).
        voters = cfg.voters
        n = len(voters)
        if n == 0:
            return NO_LIMIT
        get = progress.get
        matches = []  # a loop, not a comprehension: on Python 3.11 that is a function call
        for v in voters:
            pr = get(v)
            matches.append(0 if pr is None else pr.match)
        matches.sort()
        return matches[n - (n // 2 + 1)]

    def is_singleton(self) -> bool:
        """Whether there is exactly one voter and no joint configuration."""
        return len(self.config.voters) == 1 and not self.config.voters_outgoing

    def quorum_active(self) -> bool:
        """Whether a quorum of voters was recently active (CheckQuorum)."""
        votes = {i: pr.recent_active for i, pr in self.progress.items() if not pr.is_learner}
        return (
            joint_vote_result(self.config.voters, self.config.voters_outgoing, votes)
            == VoteResult.WON
        )

    def record_vote(self, node: int, granted: bool) -> None:
        """Record ``node``'s answer; a node's first answer in a campaign is the one that counts."""
        self.votes.setdefault(node, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        """``(granted, rejected, result)`` over the current voters."""
        granted = rejected = 0
        for node, pr in self.progress.items():
            if pr.is_learner:
                continue
            v = self.votes.get(node)
            if v is None:
                continue
            if v:
                granted += 1
            else:
                rejected += 1
        result = joint_vote_result(self.config.voters, self.config.voters_outgoing, self.votes)
        return granted, rejected, result

    def reset_votes(self) -> None:
        """Forget the votes of the previous campaign."""
        self.votes = {}
