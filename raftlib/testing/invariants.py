"""Raft's safety properties, checked incrementally while a cluster runs.

:class:`SafetyChecker` is fed observations by whoever drives the nodes (the simulator in
:mod:`raftlib.testing.cluster` does it after every delivered message, tick and Ready) and raises
:class:`InvariantViolation` the moment one of these properties fails:

``election-safety``
    At most one leader per term (paper Figure 3).
``leader-append-only``
    A leader never overwrites or deletes entries in its log during its term.
``log-matching``
    If two logs hold an entry with the same index and term, the entries are identical and so
    are all entries before them. Checked inductively: each ``(index, term)`` ever seen has one
    content and one predecessor term.
``leader-completeness``
    An entry committed in term ``t`` is in the log of every leader of a term after ``t``.
``leader-commit-rule``
    A leader advances its commit index only onto an entry of its own term: entries of earlier
    terms are committed indirectly (paper §5.4.2, Figure 8).
``commit-quorum``
    When a leader advances its commit index, a quorum of the voters (of both halves of a joint
    configuration) hold the entry in *durable* storage.
``committed-stable``
    A committed entry is never changed or removed from a node's log, and every node's
    committed entries agree.
``state-machine-safety``
    No two nodes apply different entries at one index; a node applies entries in order, each
    once per incarnation (a restarted node starts again from its snapshot).
``commit-monotonic``
    A node's commit index never decreases while it runs, nor does the durable one.
``applied-le-committed``
    A node never applies beyond its commit index.
``durable-before-send``
    A vote (and a vote request) is durable before it is sent, a node acknowledges an append
    only once the acknowledged entries are durable and still there (thesis §10.2.1: the durable
    entry at the acknowledged index is no newer than the acknowledgement's term), and a leader
    speaks for a term (appends, heartbeats, snapshots, timeout-now) only once that term is
    durable: a leader that could forget its term in a crash might win it again and append
    different entries.
``durable-monotonic``
    The durable term never decreases and the durable vote never changes within a term.
``config-change-safety``
    A leader appends a configuration change only once every earlier one in its log is
    committed (thesis §4.1: never two configurations in flight), and every node that applies the
    change at an index arrives at the same configuration.
``read-origin``
    A ``ReadState`` is handed only to the node that asked for it (its request context is one
    that node passed to ``read_index``): a read forwarded through other nodes is answered to its
    origin.

Each violation names its property, so tests can assert that a deliberately broken Raft trips
the right one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from raftlib.errors import CompactedError, UnavailableError
from raftlib.storage import Storage
from raftlib.types import ConfState, Entry, EntryType, HardState, Message, MessageType, StateType

__all__ = [
    "PROPERTIES",
    "InvariantViolation",
    "LivenessViolation",
    "NodeObservation",
    "NotLinearizable",
    "SafetyChecker",
    "check_nodes",
]

MT = MessageType

_LEADER_TYPES = frozenset({MT.APP, MT.HEARTBEAT, MT.SNAP, MT.TIMEOUT_NOW})
"""Messages only a leader sends, stamped with its term."""

PROPERTIES = (
    "election-safety",
    "leader-append-only",
    "log-matching",
    "leader-completeness",
    "leader-commit-rule",
    "commit-quorum",
    "committed-stable",
    "state-machine-safety",
    "commit-monotonic",
    "applied-le-committed",
    "durable-before-send",
    "durable-monotonic",
    "config-change-safety",
    "read-origin",
)
"""The names of every property :class:`SafetyChecker` checks."""


class InvariantViolation(AssertionError):
    """A Raft safety property failed.

    Attributes:
        prop: the property's name (one of :data:`PROPERTIES`).
    """

    def __init__(self, prop: str, message: str) -> None:
        super().__init__(f"[{prop}] {message}")
        self.prop = prop


class LivenessViolation(AssertionError):
    """The cluster failed to make progress within a bound while the network was reliable."""


class NotLinearizable(AssertionError):
    """A client history is not linearizable (the message explains where it goes wrong)."""


@attrs.frozen
class NodeObservation:
    """What the checker needs to see of one running node at one moment.

    Attributes:
        id: the node id.
        incarnation: increases on every restart; per-incarnation checks reset with it.
        role: the node's role.
        term: its current term.
        commit: its commit index.
        applied: the index its application has applied up to.
        first_index: the index of ``entries[0]`` (the one after its snapshot).
        prev_term: the term of entry ``first_index - 1`` (the snapshot's), 0 for none.
        entries: its whole log after the snapshot, persisted or not.
        config: its active configuration.
    """

    id: int
    incarnation: int
    role: StateType
    term: int
    commit: int
    applied: int
    first_index: int
    prev_term: int
    entries: Sequence[Entry]
    config: ConfState

    @property
    def last_index(self) -> int:
        """The index of the last entry."""
        return self.first_index + len(self.entries) - 1

    def term_at(self, index: int) -> int | None:
        """The term at ``index``; ``None`` if compacted away or past the end."""
        if index == self.first_index - 1:
            return self.prev_term
        i = index - self.first_index
        if 0 <= i < len(self.entries):
            return self.entries[i].term
        return None


class _Track:
    """What the checker remembers of one node since its last observation."""

    __slots__ = (
        "applied",
        "commit",
        "first",
        "incarnation",
        "leader_term",
        "mirror",
        "term",
    )

    def __init__(self, incarnation: int) -> None:
        self.incarnation = incarnation
        self.term = 0
        self.commit = 0
        self.applied = -1  # unknown until the first observation
        self.first = 1
        self.mirror: list[Entry] = []
        self.leader_term = 0


def _same(a: Entry, b: Entry) -> bool:
    return a is b or (a.term == b.term and a.type == b.type and a.data == b.data)


def _durable_term(storage: Storage, index: int) -> int | None:
    try:
        return storage.term(index)
    except (CompactedError, UnavailableError):
        return None


def _has_durably(storage: Storage, index: int, term: int) -> bool:
    """Whether ``storage`` holds entry ``(index, term)``, or a snapshot covering it."""
    if storage.first_index() - 1 >= index:
        return True  # compacted into a snapshot, which only ever covers committed entries
    return _durable_term(storage, index) == term


class SafetyChecker:
    """Checks Raft's safety properties over a stream of observations; see the module docstring.

    Args:
        durable: returns the durable storage of a node id (``None`` if unknown), for the
            ``commit-quorum`` check. Without it that check is skipped.
    """

    def __init__(self, durable: Callable[[int], Storage | None] | None = None) -> None:
        self._durable = durable
        self._tracks: dict[int, _Track] = {}
        self.leaders: dict[int, int] = {}
        """The leader of each term seen so far."""
        self.committed: dict[int, Entry] = {}
        """Every entry known to be committed, by index."""
        self._commit_term: dict[int, int] = {}
        self._registry: dict[tuple[int, int], tuple[Entry, int]] = {}
        self._applied: dict[int, Entry] = {}
        self._conf_at: dict[int, ConfState | str] = {}
        self._durable_hs: dict[int, HardState] = {}
        self.observations = 0
        """How many observations have been checked (to show the checker actually ran)."""

    # -- observations of running nodes --

    def observe(self, o: NodeObservation) -> None:
        """Check one node's current state against its past and against the other nodes.

        Raises:
            InvariantViolation: a property failed.
        """
        self.observations += 1
        tr = self._tracks.get(o.id)
        fresh = tr is None or tr.incarnation != o.incarnation
        if tr is None:
            tr = self._tracks[o.id] = _Track(o.incarnation)
        elif fresh:
            tr.incarnation = o.incarnation
            tr.term = tr.commit = tr.leader_term = 0
        if o.role == StateType.LEADER:
            other = self.leaders.setdefault(o.term, o.id)
            if other != o.id:
                raise InvariantViolation(
                    "election-safety", f"nodes {other} and {o.id} are both leaders of term {o.term}"
                )
        if not fresh and o.commit < tr.commit:
            raise InvariantViolation(
                "commit-monotonic", f"node {o.id} commit went from {tr.commit} to {o.commit}"
            )
        if o.applied > o.commit:
            raise InvariantViolation(
                "applied-le-committed",
                f"node {o.id} applied {o.applied} is beyond its commit {o.commit}",
            )
        if o.commit > o.last_index:
            raise InvariantViolation(
                "committed-stable",
                f"node {o.id} commit {o.commit} is beyond its last index {o.last_index}",
            )
        if fresh:
            start, old_commit = o.first_index, o.first_index - 1
        else:
            start, changed = self._diff_log(o, tr)
            if changed is not None and changed <= tr.commit:
                raise InvariantViolation(
                    "committed-stable",
                    f"node {o.id} changed or removed committed entry {changed} "
                    f"(commit was {tr.commit})",
                )
            if changed is not None and tr.leader_term == o.term and o.role == StateType.LEADER:
                raise InvariantViolation(
                    "leader-append-only",
                    f"leader {o.id} of term {o.term} rewrote its log from index {changed}",
                )
            old_commit = tr.commit
        self._check_new_entries(o, start)
        was_leader = not fresh and tr.leader_term == o.term and o.role == StateType.LEADER
        tr.term = o.term
        tr.commit = o.commit
        tr.leader_term = o.term if o.role == StateType.LEADER else 0
        tr.first = o.first_index
        tr.mirror = list(o.entries)
        self._check_commits(o, old_commit, fresh)
        if o.role == StateType.LEADER:
            if not was_leader:
                self._check_new_leader(o)
            elif start <= o.last_index:
                self.check_leader_appended(o, start)

    @staticmethod
    def _diff_log(o: NodeObservation, tr: _Track) -> tuple[int, int | None]:
        """Compare ``o``'s log with the last observation of the node.

        Returns:
            ``(start, changed)``: the first index whose entry is new to the checker, and the
            first index whose previously observed entry was changed or removed (``None`` if
            the old log is a prefix of the new one, up to compaction).
        """
        ents, mirror = o.entries, tr.mirror
        mf, ef = tr.first, o.first_index
        ml, el = mf + len(mirror) - 1, o.last_index
        lo, hi = max(mf, ef), min(ml, el)
        if lo > hi:
            changed = el + 1 if el < ml and el + 1 >= lo else None
            return ef if ef > ml else max(ef, hi + 1), changed
        a = mirror[lo - mf : hi - mf + 1]
        b = ents[lo - ef : hi - ef + 1]
        if a != b:
            for k in range(len(a)):
                if not _same(a[k], b[k]):
                    return lo + k, lo + k
        changed = hi + 1 if hi < ml else None
        return hi + 1, changed

    def _check_new_entries(self, o: NodeObservation, start: int) -> None:
        ents = o.entries
        ef = o.first_index
        reg = self._registry
        for i in range(start, o.last_index + 1):
            e = ents[i - ef]
            if e.index != i:
                raise InvariantViolation(
                    "log-matching", f"node {o.id} holds entry {e.index} at position {i}"
                )
            prev = ents[i - ef - 1].term if i > ef else o.prev_term
            if i == ef and o.first_index > 1 and o.prev_term == 0:
                prev = -1  # unknown predecessor (no snapshot term): skip the link check
            seen = reg.get((i, e.term))
            if seen is None:
                reg[(i, e.term)] = (e, prev)
                continue
            first, first_prev = seen
            if not _same(first, e):
                raise InvariantViolation(
                    "log-matching",
                    f"node {o.id} has entry {i} of term {e.term} = {e!r}, "
                    f"but another log had {first!r}",
                )
            if -1 not in (prev, first_prev) and prev != first_prev:
                raise InvariantViolation(
                    "log-matching",
                    f"node {o.id} has entry ({i}, term {e.term}) after term {prev}, "
                    f"but another log had it after term {first_prev}",
                )

    def _check_commits(self, o: NodeObservation, old_commit: int, fresh: bool) -> None:
        if o.commit <= old_commit:
            return
        ef = o.first_index
        new_entries: list[int] = []
        for i in range(max(old_commit + 1, ef), o.commit + 1):
            e = o.entries[i - ef]
            known = self.committed.get(i)
            if known is None:
                self.committed[i] = e
                self._commit_term[i] = o.term
                new_entries.append(i)
            elif not _same(known, e):
                raise InvariantViolation(
                    "committed-stable",
                    f"node {o.id} committed {e!r} at {i}, but {known!r} was committed there",
                )
            elif o.term < self._commit_term[i]:
                self._commit_term[i] = o.term
        if o.role == StateType.LEADER:
            if not fresh and o.term_at(o.commit) != o.term:
                raise InvariantViolation(
                    "leader-commit-rule",
                    f"leader {o.id} of term {o.term} advanced its commit index from {old_commit}"
                    f" to {o.commit}, an entry of term {o.term_at(o.commit)}",
                )
            self._check_commit_quorum(o)
        if new_entries:
            self._check_leaders_hold(new_entries)

    def _check_commit_quorum(self, o: NodeObservation) -> None:
        if self._durable is None:
            return
        term = o.term_at(o.commit)
        if term is None:
            return
        holders = set()
        for v in set(o.config.voters) | set(o.config.voters_outgoing):
            st = self._durable(v)
            if st is not None and _has_durably(st, o.commit, term):
                holders.add(v)
        for half in (o.config.voters, o.config.voters_outgoing):
            if half and len(holders & set(half)) <= len(half) // 2:
                raise InvariantViolation(
                    "commit-quorum",
                    f"leader {o.id} committed {o.commit} (term {term}) but only {sorted(holders)}"
                    f" of voters {list(half)} hold it durably",
                )

    def _check_leaders_hold(self, indexes: list[int]) -> None:
        for node, tr in self._tracks.items():
            if not tr.leader_term:
                continue
            for i in indexes:
                if self._commit_term[i] < tr.leader_term:
                    self._leader_has(node, tr.leader_term, tr.first, tr.mirror, i)

    def _leader_has(self, node: int, term: int, first: int, ents: Sequence[Entry], i: int) -> None:
        want = self.committed[i]
        if i < first:
            return  # covered by the leader's snapshot
        k = i - first
        if k >= len(ents) or not _same(ents[k], want):
            got = ents[k] if k < len(ents) else None
            raise InvariantViolation(
                "leader-completeness",
                f"leader {node} of term {term} lacks committed entry {i} "
                f"(committed in term {self._commit_term[i]}): has {got!r}, want {want!r}",
            )

    def _check_new_leader(self, o: NodeObservation) -> None:
        for i in sorted(self.committed):
            if self._commit_term[i] < o.term:
                self._leader_has(o.id, o.term, o.first_index, o.entries, i)
        # Thesis §4.1: a configuration change is appended only once the previous one committed.
        self._check_conf_entries(o, o.first_index)

    def _check_conf_entries(self, o: NodeObservation, start: int) -> None:
        prev_conf = 0
        for k, e in enumerate(o.entries):
            i = o.first_index + k
            if e.type == EntryType.NORMAL:
                continue
            if i >= start and e.term == o.term and prev_conf > o.commit:
                raise InvariantViolation(
                    "config-change-safety",
                    f"leader {o.id} appended configuration change {i} in term {o.term} while "
                    f"the one at {prev_conf} is not committed (commit {o.commit})",
                )
            prev_conf = i

    def check_leader_appended(self, o: NodeObservation, start: int) -> None:
        """Check configuration changes a leader appended at ``start`` or later.

        Raises:
            InvariantViolation: ``config-change-safety`` failed.
        """
        if o.role == StateType.LEADER:
            for e in o.entries[max(start - o.first_index, 0) :]:
                if e.type != EntryType.NORMAL and e.term == o.term:
                    self._check_conf_entries(o, start)
                    return

    # -- events of the application --

    def on_restart(self, node: int) -> None:
        """Forget per-incarnation state of ``node`` (its next observation starts afresh)."""
        tr = self._tracks.get(node)
        if tr is not None:
            tr.incarnation = -1
            tr.applied = -1
            tr.leader_term = 0

    def on_applied_base(self, node: int, index: int) -> None:
        """``node``'s application state now reflects everything up to ``index`` (a snapshot)."""
        tr = self._tracks.get(node)
        if tr is None:
            tr = _Track(-1)
            self._tracks[node] = tr
        tr.applied = index

    def on_apply(self, node: int, entry: Entry, commit: int) -> None:
        """``node`` applies ``entry``; ``commit`` is its commit index at that moment.

        Raises:
            InvariantViolation: ``state-machine-safety`` or ``applied-le-committed`` failed.
        """
        tr = self._tracks.get(node)
        if tr is None:
            tr = _Track(-1)
            self._tracks[node] = tr
        if tr.applied >= 0 and entry.index != tr.applied + 1:
            raise InvariantViolation(
                "state-machine-safety",
                f"node {node} applied entry {entry.index} right after {tr.applied}",
            )
        tr.applied = entry.index
        if entry.index > commit:
            raise InvariantViolation(
                "applied-le-committed",
                f"node {node} applied entry {entry.index} with commit index {commit}",
            )
        seen = self._applied.setdefault(entry.index, entry)
        if not _same(seen, entry):
            raise InvariantViolation(
                "state-machine-safety",
                f"node {node} applied {entry!r} at {entry.index}, another node applied {seen!r}",
            )
        known = self.committed.get(entry.index)
        if known is not None and not _same(known, entry):
            raise InvariantViolation(
                "state-machine-safety",
                f"node {node} applied {entry!r} at {entry.index}, but {known!r} was committed",
            )

    def on_conf_applied(self, node: int, index: int, result: ConfState | str) -> None:
        """``node`` applied the configuration change at ``index``, with this outcome.

        ``result`` is the new configuration, or an error message if the change was refused.

        Raises:
            InvariantViolation: ``config-change-safety`` failed.
        """
        seen = self._conf_at.setdefault(index, result)
        if seen != result:
            raise InvariantViolation(
                "config-change-safety",
                f"node {node} applied the change at {index} and got {result}, another got {seen}",
            )

    def on_persist(self, node: int, hard_state: HardState) -> None:
        """``node`` made ``hard_state`` durable.

        Raises:
            InvariantViolation: ``durable-monotonic`` or ``commit-monotonic`` failed.
        """
        old = self._durable_hs.get(node)
        self._durable_hs[node] = hard_state
        if old is None:
            return
        if hard_state.term < old.term:
            raise InvariantViolation(
                "durable-monotonic",
                f"node {node} durable term went from {old.term} to {hard_state.term}",
            )
        if hard_state.term == old.term and old.vote and hard_state.vote != old.vote:
            raise InvariantViolation(
                "durable-monotonic",
                f"node {node} changed its durable vote in term {old.term} "
                f"from {old.vote} to {hard_state.vote}",
            )
        if hard_state.commit < old.commit:
            raise InvariantViolation(
                "commit-monotonic",
                f"node {node} durable commit went from {old.commit} to {hard_state.commit}",
            )

    def on_send(self, node: int, m: Message, storage: Storage) -> None:
        """``node`` is about to put ``m`` on the wire; ``storage`` is what it has made durable.

        Raises:
            InvariantViolation: ``durable-before-send`` failed.
        """
        t = m.type
        if t == MT.VOTE_RESP and not m.reject:
            hs, _ = storage.initial_state()
            if hs.term < m.term or (hs.term == m.term and hs.vote != m.to):
                raise InvariantViolation(
                    "durable-before-send",
                    f"node {node} grants its term-{m.term} vote to {m.to} but its durable state "
                    f"is term {hs.term} vote {hs.vote}",
                )
        elif t == MT.VOTE:
            hs, _ = storage.initial_state()
            if hs.term < m.term or (hs.term == m.term and hs.vote != node):
                raise InvariantViolation(
                    "durable-before-send",
                    f"node {node} requests votes for term {m.term} but its durable state is "
                    f"term {hs.term} vote {hs.vote}",
                )
        elif t in _LEADER_TYPES:
            hs, _ = storage.initial_state()
            if hs.term < m.term:
                raise InvariantViolation(
                    "durable-before-send",
                    f"node {node} sends {t.name} of term {m.term} to {m.to} as leader but its "
                    f"durable term is {hs.term}",
                )
        elif t == MT.APP_RESP and not m.reject:
            if storage.last_index() < m.index:
                raise InvariantViolation(
                    "durable-before-send",
                    f"node {node} acknowledges entries up to {m.index} to {m.to} but has made "
                    f"durable only up to {storage.last_index()}",
                )
            # The acknowledged entries came from the leader of the ack's term, so none is newer
            # than that term: a newer durable entry there replaced them before they were written.
            try:
                durable_term = storage.term(m.index)
            except (CompactedError, UnavailableError):
                return  # inside a snapshot: committed, so nothing there was replaced
            if durable_term > m.term:
                raise InvariantViolation(
                    "durable-before-send",
                    f"node {node} acknowledges entries up to {m.index} to {m.to} in term "
                    f"{m.term}, but its durable entry {m.index} is of term {durable_term}: the "
                    "acknowledged ones were replaced before they were written",
                )

    def on_read_state(self, node: int, ctx: bytes, requester: int | None) -> None:
        """``node`` received a ``ReadState`` for ``ctx``, which ``requester`` asked for.

        ``requester`` is the node that passed ``ctx`` to ``read_index`` (``None``: nobody did).

        Raises:
            InvariantViolation: ``read-origin`` failed.
        """
        if requester != node:
            who = "no node" if requester is None else f"node {requester}"
            raise InvariantViolation(
                "read-origin",
                f"node {node} received a read state for context {ctx!r}, which {who} requested",
            )


def check_nodes(nodes: Sequence[NodeObservation]) -> None:
    """Check the current states of several nodes against each other, from scratch.

    A slow, obviously correct twin of part of :class:`SafetyChecker` (which works incrementally
    over time): at most one leader per term, log matching between every pair of logs, and
    agreement on every index both nodes have committed.

    Raises:
        InvariantViolation: a property failed.
    """
    leaders: dict[int, int] = {}
    for o in nodes:
        if o.role == StateType.LEADER:
            other = leaders.setdefault(o.term, o.id)
            if other != o.id:
                raise InvariantViolation(
                    "election-safety", f"nodes {other} and {o.id} both lead term {o.term}"
                )
    for k, a in enumerate(nodes):
        for b in nodes[k + 1 :]:
            lo = max(a.first_index, b.first_index)
            hi = min(a.last_index, b.last_index)
            match = 0
            for i in range(hi, lo - 1, -1):
                if a.term_at(i) == b.term_at(i):
                    match = i
                    break
            for i in range(lo, match + 1):
                ea, eb = a.entries[i - a.first_index], b.entries[i - b.first_index]
                if not _same(ea, eb):
                    raise InvariantViolation(
                        "log-matching",
                        f"nodes {a.id} and {b.id} agree on the term of entry {match} but differ "
                        f"at {i}: {ea!r} vs {eb!r}",
                    )
            for i in range(lo, min(a.commit, b.commit, hi) + 1):
                ea, eb = a.entries[i - a.first_index], b.entries[i - b.first_index]
                if not _same(ea, eb):
                    raise InvariantViolation(
                        "committed-stable",
                        f"nodes {a.id} and {b.id} both committed {i} but hold {ea!r} vs {eb!r}",
                    )
