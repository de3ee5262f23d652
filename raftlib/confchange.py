"""Computing new configurations: one-at-a-time changes and joint consensus. Internal.

Every operation is copy-on-write: it checks the current configuration, applies the changes to
copies, checks the result, and returns ``(config, progress)`` for the caller to install in one
assignment. A rejected change raises :class:`~raftlib.errors.ConfigError` and leaves nothing
half-applied. (Thesis §4.3; etcd's confchange package.)
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from raftlib.errors import ConfigError
from raftlib.tracker.inflights import Inflights
from raftlib.tracker.progress import Progress
from raftlib.tracker.tracker import ProgressTracker, TrackerConfig
from raftlib.types import ConfChangeSingle, ConfChangeType, ConfState

Result = tuple[TrackerConfig, dict[int, Progress]]


class _Draft:
    """A mutable working copy of a configuration and its progress map."""

    def __init__(self, cfg: TrackerConfig, progress: dict[int, Progress]) -> None:
        self.voters = set(cfg.voters)
        self.outgoing = set(cfg.voters_outgoing)
        self.learners = set(cfg.learners)
        self.learners_next = set(cfg.learners_next)
        self.auto_leave = cfg.auto_leave
        self.progress = {i: pr.clone() for i, pr in progress.items()}

    def freeze(self) -> Result:
        cfg = TrackerConfig(
            voters=frozenset(self.voters),
            voters_outgoing=frozenset(self.outgoing),
            learners=frozenset(self.learners),
            learners_next=frozenset(self.learners_next),
            auto_leave=self.auto_leave,
        )
        return cfg, self.progress


@attrs.define
class Changer:
    """Computes configuration changes against ``tracker``'s current configuration.

    ``last_index`` is the leader's last log index: new peers start probing from there.
    """

    tracker: ProgressTracker
    last_index: int

    def enter_joint(self, auto_leave: bool, changes: Sequence[ConfChangeSingle]) -> Result:
        """Enter the joint configuration (current voters) && (current voters + ``changes``)."""
        d = self._check_and_copy()
        if d.outgoing:
            raise ConfigError("config is already joint")
        if not d.voters:
            raise ConfigError("can't make a zero-voter config joint")
        d.outgoing = set(d.voters)
        self._apply(d, changes)
        d.auto_leave = auto_leave
        return self._check_and_return(d)

    def leave_joint(self) -> Result:
        """Leave the joint configuration: keep the incoming voters, drop the outgoing ones."""
        d = self._check_and_copy()
        if not d.outgoing:
            raise ConfigError("can't leave a non-joint config")
        for node in d.learners_next:
            d.learners.add(node)
            d.progress[node].is_learner = True
        d.learners_next = set()
        for node in d.outgoing:
            if node not in d.voters and node not in d.learners:
                del d.progress[node]
        d.outgoing = set()
        d.auto_leave = False
        return self._check_and_return(d)

    def simple(self, changes: Sequence[ConfChangeSingle]) -> Result:
        """Apply ``changes`` directly; at most one voter may be added or removed."""
        d = self._check_and_copy()
        if d.outgoing:
            raise ConfigError("can't apply simple config change in joint config")
        self._apply(d, changes)
        if len(self.tracker.config.voters ^ d.voters) > 1:
            raise ConfigError("more than one voter changed without entering joint config")
        return self._check_and_return(d)

    # -- internals --

    def _apply(self, d: _Draft, changes: Sequence[ConfChangeSingle]) -> None:
        for cc in changes:
            if cc.node_id == 0:
                continue  # an application may zero a node id to veto a change (etcd does)
            if cc.type == ConfChangeType.ADD_NODE:
                self._make_voter(d, cc.node_id)
            elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
                self._make_learner(d, cc.node_id)
            elif cc.type == ConfChangeType.REMOVE_NODE:
                self._remove(d, cc.node_id)
            elif cc.type != ConfChangeType.UPDATE_NODE:
                raise ConfigError(f"unexpected conf change type {cc.type!r}")
        if not d.voters:
            raise ConfigError("removed all voters")

    def _make_voter(self, d: _Draft, node: int) -> None:
        pr = d.progress.get(node)
        if pr is None:
            self._init_progress(d, node, is_learner=False)
            return
        pr.is_learner = False
        d.learners.discard(node)
        d.learners_next.discard(node)
        d.voters.add(node)

    def _make_learner(self, d: _Draft, node: int) -> None:
        pr = d.progress.get(node)
        if pr is None:
            self._init_progress(d, node, is_learner=True)
            return
        if pr.is_learner:
            return
        self._remove(d, node)
        d.progress[node] = pr
        # A voter of the outgoing half can only become a learner once the joint config is left.
        if node in d.outgoing:
            d.learners_next.add(node)
        else:
            pr.is_learner = True
            d.learners.add(node)

    def _remove(self, d: _Draft, node: int) -> None:
        if node not in d.progress:
            return
        d.voters.discard(node)
        d.learners.discard(node)
        d.learners_next.discard(node)
        if node not in d.outgoing:
            del d.progress[node]

    def _init_progress(self, d: _Draft, node: int, *, is_learner: bool) -> None:
        if is_learner:
            d.learners.add(node)
        else:
            d.voters.add(node)
        # recent_active: a peer just added must not make CheckQuorum step us down before it
        # has had a chance to answer.
        d.progress[node] = Progress(
            next=max(self.last_index, 1),
            inflights=Inflights(self.tracker.max_inflight, self.tracker.max_inflight_bytes),
            is_learner=is_learner,
            recent_active=True,
        )

    def _check_and_copy(self) -> _Draft:
        _check_invariants(self.tracker.config, self.tracker.progress)
        return _Draft(self.tracker.config, self.tracker.progress)

    @staticmethod
    def _check_and_return(d: _Draft) -> Result:
        cfg, progress = d.freeze()
        _check_invariants(cfg, progress)
        return cfg, progress


def _check_invariants(cfg: TrackerConfig, progress: dict[int, Progress]) -> None:
    for node in cfg.all_voters() | cfg.learners | cfg.learners_next:
        if node not in progress:
            raise ConfigError(f"no progress for {node}")
    for node in cfg.learners_next:
        if node not in cfg.voters_outgoing:
            raise ConfigError(f"{node} is in learners_next, but not in the outgoing voters")
        if progress[node].is_learner:
            raise ConfigError(f"{node} is in learners_next, but is already marked as learner")
    for node in cfg.learners:
        if node in cfg.voters_outgoing:
            raise ConfigError(f"{node} is a learner and an outgoing voter")
        if node in cfg.voters:
            raise ConfigError(f"{node} is a learner and a voter")
        if not progress[node].is_learner:
            raise ConfigError(f"{node} is in learners, but is not marked as learner")
    if not cfg.is_joint():
        if cfg.learners_next:
            raise ConfigError("learners_next must be empty when not joint")
        if cfg.auto_leave:
            raise ConfigError("auto_leave must be false when not joint")


def restore(changer: Changer, cs: ConfState) -> Result:
    """Build the configuration described by ``cs``, starting from an empty tracker.

    A joint ``cs`` is rebuilt by first adding the outgoing voters one at a time, then entering the
    joint state with the changes that produce the incoming half.
    """
    add, add_learner, remove = (
        ConfChangeType.ADD_NODE,
        ConfChangeType.ADD_LEARNER_NODE,
        ConfChangeType.REMOVE_NODE,
    )
    outgoing = [ConfChangeSingle(add, n) for n in cs.voters_outgoing]
    incoming = (
        [ConfChangeSingle(remove, n) for n in cs.voters_outgoing]
        + [ConfChangeSingle(add, n) for n in cs.voters]
        + [ConfChangeSingle(add_learner, n) for n in cs.learners]
        + [ConfChangeSingle(add_learner, n) for n in cs.learners_next]
    )
    tracker = changer.tracker
    scratch = ProgressTracker(tracker.max_inflight, tracker.max_inflight_bytes)
    step = Changer(scratch, changer.last_index)

    def run(changes: list[ConfChangeSingle]) -> None:
        for cc in changes:
            scratch.switch(*step.simple([cc]))

    if not outgoing:
        run(incoming)
    else:
        run(outgoing)
        scratch.switch(*step.enter_joint(cs.auto_leave, incoming))
    return scratch.config, scratch.progress
