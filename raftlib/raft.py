"""The Raft protocol as a deterministic state machine. Internal: drive it through ``RawNode``.

``_Raft.step`` is the single entry point for messages (remote, and local ones made by ``tick`` and
the ``RawNode`` methods). It handles what every role does alike (terms, votes), then calls the
role's step function, which ``_become_*`` swaps together with the role's tick function. The legal
role changes are :data:`ROLE_TRANSITIONS`; anything else raises ``RaftInvariantError``.

Every outgoing message goes through ``_send``, which stamps sender and term and files it either as
"send now" or as "send only after this Ready is durable" (votes cast, terms adopted, entries
appended: thesis §10.2.1 and etcd's msgsAfterAppend).
"""

from __future__ import annotations

import enum
import logging
import operator
from collections.abc import Callable, Sequence
from typing import assert_never

from raftlib.codec import decode_conf_change
from raftlib.confchange import Changer, restore
from raftlib.config import Config
from raftlib.errors import (
    ConfigError,
    DecodeError,
    ProposalDropped,
    RaftInvariantError,
    SnapshotTemporarilyUnavailable,
    StorageError,
)
from raftlib.log import RaftLog
from raftlib.quorum import VoteResult, joint_vote_result
from raftlib.read_only import ReadOnly, ReadOnlyOption
from raftlib.storage import _limit_owned
from raftlib.tracker.inflights import Inflights
from raftlib.tracker.progress import Progress, ProgressState
from raftlib.tracker.tracker import ProgressTracker, TrackerConfig
from raftlib.types import (
    ConfChangeV2,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SoftState,
    StateType,
    _new_hard_state,
    _new_message,
    vote_response_type,
)

_logger = logging.getLogger(__name__)

NONE = 0
"""The node id meaning "no node" (no leader known, no vote cast)."""

MT = MessageType

ROLE_TRANSITIONS: dict[StateType, frozenset[StateType]] = {
    StateType.FOLLOWER: frozenset(
        {StateType.FOLLOWER, StateType.PRE_CANDIDATE, StateType.CANDIDATE}
    ),
    StateType.PRE_CANDIDATE: frozenset(
        {StateType.FOLLOWER, StateType.PRE_CANDIDATE, StateType.CANDIDATE}
    ),
    StateType.CANDIDATE: frozenset(
        {StateType.FOLLOWER, StateType.PRE_CANDIDATE, StateType.CANDIDATE, StateType.LEADER}
    ),
    StateType.LEADER: frozenset({StateType.FOLLOWER}),
}
"""Which role may follow which. A leader only ever steps down."""

_AFTER_PERSIST = frozenset({MT.APP_RESP, MT.VOTE_RESP, MT.PRE_VOTE_RESP, MT.VOTE})
_VOTE_TYPES = frozenset({MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP})
_UNSTAMPED = frozenset({MT.PROP, MT.READ_INDEX})
_NORMAL = EntryType.NORMAL

# Enum members as module constants, for the methods below: on Python 3.11 reading ``MT.X`` is a
# slow class attribute lookup (EnumType defines __getattr__), and they run for every message.
_CONF_CHANGE_V2 = EntryType.CONF_CHANGE_V2
_APP = MT.APP
_APP_RESP = MT.APP_RESP
_BEAT = MT.BEAT
_CHECK_QUORUM = MT.CHECK_QUORUM
_HEARTBEAT = MT.HEARTBEAT
_HEARTBEAT_RESP = MT.HEARTBEAT_RESP
_HUP = MT.HUP
_PRE_VOTE = MT.PRE_VOTE
_PRE_VOTE_RESP = MT.PRE_VOTE_RESP
_PROP = MT.PROP
_READ_INDEX = MT.READ_INDEX
_READ_INDEX_RESP = MT.READ_INDEX_RESP
_SNAP = MT.SNAP
_TIMEOUT_NOW = MT.TIMEOUT_NOW
_TRANSFER_LEADER = MT.TRANSFER_LEADER
_VOTE = MT.VOTE
_VOTE_RESP = MT.VOTE_RESP
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT
_CANDIDATE = StateType.CANDIDATE
_FOLLOWER = StateType.FOLLOWER
_LEADER = StateType.LEADER
_PRE_CANDIDATE = StateType.PRE_CANDIDATE


class CampaignType(enum.Enum):
    """Why a node campaigns."""

    PRE_ELECTION = b"CampaignPreElection"
    ELECTION = b"CampaignElection"
    TRANSFER = b"CampaignTransfer"


_DATA = operator.attrgetter("data")


def _payload_size(ents: Sequence[Entry]) -> int:
    return sum(map(len, map(_DATA, ents)))


class _Raft:
    """One node's protocol state. Not thread-safe; see ``RawNode``."""

    def __init__(self, c: Config) -> None:
        self.id = c.id
        base = c.logger if c.logger is not None else _logger
        self.logger: logging.LoggerAdapter[logging.Logger | logging.LoggerAdapter[logging.Logger]]
        self.logger = logging.LoggerAdapter(base, {"raft_id": c.id})
        self.rng = c.rng
        max_applying = (
            c.max_committed_size_per_ready
            if c.max_committed_size_per_ready is not None
            else c.max_size_per_msg
        )
        self.log = RaftLog(c.storage, max_applying)
        self.max_msg_size = c.max_size_per_msg
        self.max_uncommitted_size = c.max_uncommitted_entries_size
        self.trk = ProgressTracker(c.max_inflight_msgs, c.max_inflight_bytes)
        self.election_timeout = c.election_tick
        self.heartbeat_timeout = c.heartbeat_tick
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote
        self.disable_proposal_forwarding = c.disable_proposal_forwarding
        self.step_down_on_removal = c.step_down_on_removal
        self.read_only = ReadOnly(c.read_only_option)

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.state = _FOLLOWER
        self.is_learner = False
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = c.election_tick
        self.msgs: list[Message] = []
        self.msgs_after_append: list[Message] = []
        self.bcast_pending = False
        self.read_round: bytes | None = None
        """The newest read token whose heartbeat round is still to be sent (see flush)."""
        self.self_removal_index = 0
        self.read_states: list[ReadState] = []
        self.pending_read_index_messages: list[Message] = []
        self.applying = 0
        """The last index handed out to the application for applying (set by ``RawNode``)."""
        self._step: Callable[[Message], None] = self._step_follower
        self._tick: Callable[[], None] = self._tick_election

        hs, cs = c.storage.initial_state()
        cfg, progress = restore(Changer(self.trk, self.log.last_index()), cs)
        restored = self._switch_to_config(cfg, progress)
        if not restored.equivalent(cs):
            raise RaftInvariantError(f"restored config {restored} differs from storage's {cs}")
        if not hs.is_empty():
            self._load_state(hs)
        if c.applied > self.log.committed:
            # The application applied entries whose commit index never became durable (a
            # commit-only Ready need not be fsynced). An applied entry was committed, so the
            # applied index is a commit index we may adopt, provided the log holds it.
            if c.applied > self.log.last_index():
                raise RaftInvariantError(
                    f"{self.id} applied index {c.applied} is beyond the last log index "
                    f"{self.log.last_index()}: the log lost entries the application applied"
                )
            self.log.committed = c.applied
        if c.applied > 0:
            self.log.applied_to(c.applied)
        self._become_follower(self.term, NONE)
        self.logger.info(
            "newRaft %d [peers: [%s], term: %d, commit: %d, applied: %d, lastindex: %d, "
            "lastterm: %d]",
            self.id,
            ",".join(map(str, self.trk.ids())),
            self.term,
            self.log.committed,
            self.log.applied,
            self.log.last_index(),
            self.log.last_term(),
        )

    # -- state reports --

    def soft_state(self) -> SoftState:
        """Who leads and our role."""
        return SoftState(lead=self.lead, raft_state=self.state)

    def hard_state(self) -> HardState:
        """What must be durable: term, vote, commit."""
        return _new_hard_state(self.term, self.vote, self.log.committed)

    def _load_state(self, hs: HardState) -> None:
        # A crash between persisting a Ready's snapshot and its hard state leaves the durable
        # commit index behind the durable snapshot, which only holds committed entries.
        commit = max(hs.commit, self.log.committed)
        if commit > self.log.last_index():
            raise RaftInvariantError(
                f"{self.id} state.commit {hs.commit} is out of range "
                f"[{self.log.committed}, {self.log.last_index()}]"
            )
        self.log.committed = commit
        self.term = hs.term
        self.vote = hs.vote

    # -- sending --

    def _send(self, m_type: MessageType, to: int, **fields: object) -> None:
        """File an outgoing message; the one place messages are created."""
        if to == self.id:
            raise RaftInvariantError(f"{self.id} sending {m_type.name} to itself")
        if m_type in _VOTE_TYPES:
            if not fields.get("term"):
                raise RaftInvariantError(f"term should be set when sending {m_type.name}")
        elif "term" in fields:
            raise RaftInvariantError(f"term should not be set when sending {m_type.name}")
        elif m_type not in _UNSTAMPED:
            fields["term"] = self.term
        frm = fields.pop("from_", self.id)
        self._file(_new_message(m_type, to, frm, **fields))  # type: ignore[arg-type]

    def _file(self, m: Message) -> None:
        """Queue ``m`` to go out now, or only once this Ready is durable.

        Hot paths build their (well-formed, stamped) messages themselves and come here directly.
        """
        if m.type in _AFTER_PERSIST:
            self.msgs_after_append.append(m)
        else:
            self.msgs.append(m)

    def _send_append(self, to: int) -> None:
        self._maybe_send_append(to, send_if_empty=True)

    def _maybe_send_append(self, to: int, *, send_if_empty: bool, last: int = -1) -> bool:
        """Send entries (or a snapshot) to ``to`` unless flow control holds it back.

        ``last`` is the log's last index if the caller has it (-1: look it up).
        """
        pr = self.trk.progress[to]
        state = pr.state
        if state is _SNAPSHOT or pr.msg_app_flow_paused:  # pr.is_paused()
            return False
        log = self.log
        u = log.unstable
        off = u.offset
        tail = u.entries
        if last < 0:
            last = off + len(tail) - 1  # log.last_index()
        nxt = pr.next
        if nxt == last + 1 and not send_if_empty:
            return False  # nothing to send (the term of the last index is always known)
        prev_index = nxt - 1
        # log.term(prev_index), its usual cases inlined: in the unstable tail, or just before it.
        i = prev_index - off
        if 0 <= i < len(tail):
            prev_term = tail[i].term
        elif i == -1 and u.prev_term >= 0:
            prev_term = u.prev_term
        else:
            try:
                prev_term = log.term(prev_index)
            except StorageError:
                return self._maybe_send_snapshot(to, pr)
        ents: Sequence[Entry] = ()
        size = 0
        if nxt <= last and (state is not _REPLICATE or not pr.inflights.full()):
            if nxt >= off:  # log.entries(nxt, ...), all in the unstable tail
                ents = tail[nxt - off : last + 1 - off]
                if len(ents) > 1:
                    ents = _limit_owned(ents, self.max_msg_size)
            else:
                try:
                    ents = log.entries(nxt, self.max_msg_size, last)
                except StorageError:
                    return self._maybe_send_snapshot(to, pr)
            # _payload_size(ents)
            size = len(ents[0].data) if len(ents) == 1 else sum(map(len, map(_DATA, ents)))
        if not ents and not send_if_empty:
            return False
        if to == self.id:
            raise RaftInvariantError(f"{self.id} sending APP to itself")
        commit = log.committed
        app = _new_message(_APP, to, self.id, self.term, prev_term, prev_index, tuple(ents), commit)
        # self._file(app), inlined
        (self.msgs_after_append if _APP in _AFTER_PERSIST else self.msgs).append(app)
        n = len(ents)
        if state is _REPLICATE:  # pr.sent_entries(n, size), inlined for the usual state
            if n:
                pr.next = nxt + n
                pr.msg_app_flow_paused = pr.inflights.add(nxt + n - 1, size)
            else:
                pr.msg_app_flow_paused = pr.inflights.full()
        else:
            pr.sent_entries(n, size)
        pr.sent_commit = commit
        return True

    def _maybe_send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            self.logger.debug("ignore sending snapshot to %d since it is not recently active", to)
            return False
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            self.logger.debug("failed to send snapshot to %d: temporarily unavailable", to)
            return False
        if snap.is_empty():
            raise RaftInvariantError("need non-empty snapshot")
        md = snap.metadata
        self.logger.info(
            "%d [firstindex: %d, commit: %d] sent snapshot[index: %d, term: %d] to %d [%r]",
            self.id,
            self.log.first_index(),
            self.log.committed,
            md.index,
            md.term,
            to,
            pr,
        )
        pr.become_snapshot(md.index)
        self._send(_SNAP, to, snapshot=snap)
        return True

    def _send_heartbeat(self, to: int, ctx: bytes) -> None:
        pr = self.trk.progress[to]
        # The follower may not have every committed entry: never tell it to commit past match.
        commit = min(pr.match, self.log.committed)
        self._send(_HEARTBEAT, to, commit=commit, context=ctx)
        pr.sent_commit = commit

    def _bcast_append(self) -> None:
        """Schedule an append (or commit notice) to every peer, sent at the next flush.

        Deferring coalesces the appends of many proposals, and the commit notices of many
        acknowledgements, into one message per peer; nothing is observable in between, since
        messages only leave through ``RawNode.ready``.
        """
        self.bcast_pending = True

    def flush(self) -> None:
        """Send the broadcasts scheduled since the last flush.

        A read round first (see ``_send_read_index_response``; only a leader schedules one,
        and stepping down drops it), then the appends scheduled by ``_bcast_append`` if we
        still lead.
        """
        token = self.read_round
        if token is not None:  # only a leader sets it; stepping down clears it (_reset)
            self.read_round = None
            self._bcast_heartbeat(token)
        if not self.bcast_pending:
            return
        self.bcast_pending = False
        if self.state is not _LEADER:
            return
        log = self.log
        commit = log.committed
        u = log.unstable
        last = u.offset + len(u.entries) - 1  # log.last_index()
        trk = self.trk
        progress = trk.progress
        me = self.id
        for node in trk.ids():
            if node != me:
                # An empty append is only worth sending if it tells the peer a new commit index
                # (pr.can_bump_commit(commit), inlined).
                pr = progress[node]
                sent = pr.sent_commit
                bump = commit > sent and sent < pr.next - 1
                if bump or pr.next != last + 1:  # else it would return False at once
                    self._maybe_send_append(node, send_if_empty=bump, last=last)

    def _bcast_heartbeat(self, ctx: bytes | None = None) -> None:
        if ctx is None:
            ctx = self.read_only.last_pending_request_ctx()
        if ctx == self.read_round:
            self.read_round = None  # this round is the one flush would send
        for node in self.trk.ids():
            if node != self.id:
                self._send_heartbeat(node, ctx)

    def _send_timeout_now(self, to: int) -> None:
        self._send(_TIMEOUT_NOW, to)

    # -- commit --

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a quorum holds, if that entry is of our term."""
        return self.log.maybe_commit(self.trk.committed(), self.term)

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.zero_term(self.log.committed) == self.term

    def _append_entry(self, ents: Sequence[Entry]) -> bool:
        """Append proposals as the leader, stamping term and index. False if over the limit."""
        li = self.log.last_index()
        term = self.term
        stamped = [Entry(term, i, e.type, e.data) for i, e in enumerate(ents, li + 1)]
        return self._append_stamped(stamped, _payload_size(stamped))

    def _append_stamped(self, stamped: list[Entry], size: int) -> bool:
        """Append the leader's new entries (``size`` payload bytes). False if over the limit."""
        if not self._increase_uncommitted_size(size):
            self.logger.warning(
                "%d appending new entries to log would exceed uncommitted entry size limit; "
                "dropping proposal",
                self.id,
            )
            return False
        self.log.append(stamped)
        return True

    def _increase_uncommitted_size(self, s: int) -> bool:
        if not self.max_uncommitted_size:
            return True
        # An empty tail always accepts, and empty entries always fit (new leader, auto-leave).
        if (
            self.uncommitted_size > 0
            and s > 0
            and self.uncommitted_size + s > (self.max_uncommitted_size)
        ):
            return False
        self.uncommitted_size += s
        return True

    def reduce_uncommitted_size(self, ents: Sequence[Entry]) -> None:
        """Release quota for entries that are now committed and applied."""
        if not self.max_uncommitted_size or not self.uncommitted_size:
            return
        s = _payload_size(ents)
        self.uncommitted_size = 0 if s > self.uncommitted_size else self.uncommitted_size - s

    # -- role changes --

    def _check_transition(self, to: StateType) -> None:
        if to not in ROLE_TRANSITIONS[self.state]:
            raise RaftInvariantError(
                f"invalid transition [{self.state.name.lower()} -> {to.name.lower()}]"
            )

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_election_timeout()
        self._abort_leader_transfer()
        self.trk.reset_votes()
        last = self.log.last_index()
        persisted = min(self.log.persisted_index(), last)
        for node, pr in self.trk.progress.items():
            fresh = Progress(
                next=last + 1,
                match=persisted if node == self.id else 0,
                inflights=Inflights(self.trk.max_inflight, self.trk.max_inflight_bytes),
                is_learner=pr.is_learner,
            )
            self.trk.progress[node] = fresh
        self.pending_conf_index = 0
        self.self_removal_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly(self.read_only.option, self.read_only.next_round)
        self.read_round = None

    def _become_follower(self, term: int, lead: int) -> None:
        self._check_transition(_FOLLOWER)
        self._step = self._step_follower
        self._reset(term)
        self._tick = self._tick_election
        self.lead = lead
        self.state = _FOLLOWER
        self.logger.info("%d became follower at term %d", self.id, self.term)

    def _become_candidate(self) -> None:
        self._check_transition(_CANDIDATE)
        self._step = self._step_candidate
        self._reset(self.term + 1)
        self._tick = self._tick_election
        self.vote = self.id
        self.state = _CANDIDATE
        self.logger.info("%d became candidate at term %d", self.id, self.term)

    def _become_pre_candidate(self) -> None:
        self._check_transition(_PRE_CANDIDATE)
        # A pre-candidate changes neither term nor vote (thesis §9.6).
        self._step = self._step_candidate
        self.trk.reset_votes()
        self._tick = self._tick_election
        self.lead = NONE
        self.state = _PRE_CANDIDATE
        self.logger.info("%d became pre-candidate at term %d", self.id, self.term)

    def _become_leader(self) -> None:
        self._check_transition(_LEADER)
        self._step = self._step_leader
        self._reset(self.term)
        self._tick = self._tick_heartbeat
        self.lead = self.id
        self.state = _LEADER
        pr = self.trk.progress[self.id]
        pr.become_replicate()
        pr.recent_active = True
        # Conservatively assume the log holds an unapplied configuration change.
        self.pending_conf_index = self.log.last_index()
        # Paper §5.4.2 / §8: a new leader commits an entry of its own term to learn what is
        # committed; the empty entry has no payload, so it never hits the uncommitted limit.
        if not self._append_entry([Entry()]):
            raise RaftInvariantError("empty entry was dropped")
        # Our own removal may already be in the log, proposed in an earlier term: then, as in
        # _leader_propose, append nothing more (the empty entry is needed to commit it).
        self.self_removal_index = self._unapplied_self_removal()
        self.logger.info("%d became leader at term %d", self.id, self.term)

    # -- elections --

    def _promotable(self) -> bool:
        pr = self.trk.progress.get(self.id)
        return pr is not None and not pr.is_learner and self.log.unstable.snapshot is None

    def _has_unapplied_conf_changes(self) -> bool:
        if self.log.applied >= self.log.committed:
            return False
        lo = max(self.log.applied + 1, self.log.first_index())
        return any(e.type != _NORMAL for e in self.log.slice(lo, self.log.committed + 1, None))

    def _hup(self, t: CampaignType) -> None:
        if self.state is _LEADER:
            self.logger.debug("%d ignoring MsgHup because already leader", self.id)
            return
        if not self._promotable():
            self.logger.warning("%d is unpromotable and can not campaign", self.id)
            return
        if self._has_unapplied_conf_changes():
            self.logger.warning(
                "%d cannot campaign at term %d since there are still pending configuration "
                "changes to apply",
                self.id,
                self.term,
            )
            return
        self.logger.info("%d is starting a new election at term %d", self.id, self.term)
        self._campaign(t)

    def _campaign(self, t: CampaignType) -> None:
        if t == CampaignType.PRE_ELECTION:
            self._become_pre_candidate()
            vote_msg = _PRE_VOTE
            # Pre-votes are requested for the next term without moving to it.
            term = self.term + 1
            # A pre-vote promises nothing durable, so our own counts at once.
            _, _, res = self._poll(self.id, _PRE_VOTE_RESP, True)
            if res == VoteResult.WON:
                # Only possible in a single-voter configuration.
                self._campaign(CampaignType.ELECTION)
                return
        else:
            self._become_candidate()
            vote_msg = _VOTE
            term = self.term
            # Our own vote counts only once the new term and the vote are durable (in
            # on_persisted), as every other vote does: a lone voter that led a term it could
            # forget in a crash might win that term again and append different entries.
        ctx = t.value if t == CampaignType.TRANSFER else b""
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for node in sorted(self.trk.config.all_voters()):
            if node == self.id:
                continue
            self.logger.info(
                "%d [logterm: %d, index: %d] sent %s request to %d at term %d",
                self.id,
                last_term,
                last_index,
                vote_msg.name,
                node,
                self.term,
            )
            self._send(vote_msg, node, term=term, index=last_index, log_term=last_term, context=ctx)

    def _poll(self, node: int, t: MessageType, granted: bool) -> tuple[int, int, VoteResult]:
        if granted:
            self.logger.info("%d received %s from %d at term %d", self.id, t.name, node, self.term)
        else:
            self.logger.info(
                "%d received %s rejection from %d at term %d", self.id, t.name, node, self.term
            )
        self.trk.record_vote(node, granted)
        return self.trk.tally_votes()

    # -- ticks --

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._tick()

    def _reset_randomized_election_timeout(self) -> None:
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            self.election_timeout
        )

    def _past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self._past_election_timeout():
            self.election_elapsed = 0
            self.step(Message(_HUP, from_=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(_CHECK_QUORUM, from_=self.id))
            # A transfer that has not finished within an election timeout is abandoned.
            if self.state is _LEADER and self.lead_transferee != NONE:
                self._abort_leader_transfer()
        if self.state is not _LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(_BEAT, from_=self.id))

    # -- the step prelude --

    def step(self, m: Message) -> None:
        """Process one message. Raises ``ProposalDropped`` for proposals that cannot be taken."""
        term = m.term
        if term == self.term or not term:  # not "in (0, self.term)": that builds a tuple
            pass  # one of our term, or a local message
        elif term > self.term:
            if m.type in (_VOTE, _PRE_VOTE):
                force = m.context == CampaignType.TRANSFER.value
                in_lease = (
                    self.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.election_timeout
                )
                if not force and in_lease:
                    # Thesis §4.2.3: within the lease of a current leader, a vote request does
                    # not update our term or get our vote.
                    self._log_vote(
                        "ignored (lease not expired)",
                        m,
                        remaining_ticks=self.election_timeout - self.election_elapsed,
                    )
                    return
            if m.type is _PRE_VOTE:
                pass  # never change our term in response to a pre-vote
            elif m.type is _PRE_VOTE_RESP and not m.reject:
                # Granted pre-votes carry the future term we asked for; we move to it only once
                # a quorum grants.
                pass
            else:
                self.logger.info(
                    "%d [term: %d] received a %s message with higher term from %d [term: %d]",
                    self.id,
                    self.term,
                    m.type.name,
                    m.from_,
                    m.term,
                )
                if m.type in (_APP, _HEARTBEAT, _SNAP):
                    self._become_follower(m.term, m.from_)
                else:
                    self._become_follower(m.term, NONE)
        else:  # an older term
            if (self.check_quorum or self.pre_vote) and m.type in (_HEARTBEAT, _APP):
                # A leader of an older term is talking to us: perhaps we advanced our term while
                # partitioned. Answer so it learns our term and steps down (etcd issue #5451);
                # with CheckQuorum/PreVote a vote would not have told it.
                self._send(_APP_RESP, m.from_)
            elif m.type is _PRE_VOTE:
                # Reject so a pre-candidate with an older term can catch up, instead of the
                # cluster deadlocking on dropped messages.
                self._log_vote("rejected", m)
                self._send(_PRE_VOTE_RESP, m.from_, term=self.term, reject=True)
            else:
                self.logger.debug(
                    "%d [term: %d] ignored a %s message with lower term from %d [term: %d]",
                    self.id,
                    self.term,
                    m.type.name,
                    m.from_,
                    m.term,
                )
            return

        t = m.type
        if t is _HUP:
            self._hup(CampaignType.PRE_ELECTION if self.pre_vote else CampaignType.ELECTION)
        elif t is _VOTE or t is _PRE_VOTE:
            self._handle_vote_request(m)
        else:
            self._step(m)

    def _log_vote(self, action: str, m: Message, **extra: int) -> None:
        """Log a decision about a (pre-)vote request, in etcd's wording."""
        msg = (
            "%d [logterm: %d, index: %d, vote: %d] %s %s from %d [logterm: %d, index: %d] "
            "at term %d"
        )
        args: list[object] = [
            self.id,
            self.log.last_term(),
            self.log.last_index(),
            self.vote,
            action,
            m.type.name,
            m.from_,
            m.log_term,
            m.index,
            self.term,
        ]
        for k, v in extra.items():
            msg += f" ({k.replace('_', ' ')}: %d)"
            args.append(v)
        self.logger.info(msg, *args)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            # a repeat of a vote we already cast,
            self.vote == m.from_
            # or we have not voted and know of no leader in this term,
            or (self.vote == NONE and self.lead == NONE)
            # or a pre-vote for a future term;
            or (m.type is _PRE_VOTE and m.term > self.term)
        )
        # and the candidate's log is at least as up-to-date as ours (paper §5.4.1).
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._log_vote("cast", m)
            # Answer with the message's term: for a pre-vote ours may be older, and the
            # pre-candidate would ignore an answer from its past.
            self._send(vote_response_type(m.type), m.from_, term=m.term)
            if m.type is _VOTE:
                self.election_elapsed = 0
                self.vote = m.from_
        else:
            self._log_vote("rejected", m)
            self._send(vote_response_type(m.type), m.from_, term=self.term, reject=True)

    # -- leader --

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is _APP_RESP:  # the common case first, without the match's enum lookups
            pr = self.trk.progress.get(m.from_)
            if pr is None:
                self.logger.debug("%d no progress available for %d", self.id, m.from_)
                return
            self._handle_append_response(m, pr)
            return
        # Messages that need no progress for the sender.
        if t is _BEAT:
            self._bcast_heartbeat()
            return
        if t is _CHECK_QUORUM:
            if not self.trk.quorum_active():
                self.logger.warning(
                    "%d stepped down to follower since quorum is not active", self.id
                )
                self._become_follower(self.term, NONE)
            # Everyone but us must prove themselves active again before the next check.
            for node, peer in self.trk.progress.items():
                if node != self.id:
                    peer.recent_active = False
            return
        if t is _PROP:
            self._leader_propose(m)
            return
        if t is _READ_INDEX:
            self._leader_read_index(m)
            return

        pr = self.trk.progress.get(m.from_)
        if pr is None:
            self.logger.debug("%d no progress available for %d", self.id, m.from_)
            return
        match t:
            case MT.APP_RESP:
                self._handle_append_response(m, pr)
            case MT.HEARTBEAT_RESP:
                self._handle_heartbeat_response(m, pr)
            case MT.SNAP_STATUS:
                if pr.state is not _SNAPSHOT:
                    return
                if m.reject:
                    # Forget the pending snapshot first, or we would probe from its index.
                    pr.pending_snapshot = 0
                    pr.become_probe()
                    self.logger.debug(
                        "%d snapshot failed, resumed sending replication messages to %d [%r]",
                        self.id,
                        m.from_,
                        pr,
                    )
                else:
                    pr.become_probe()
                    self.logger.debug(
                        "%d snapshot succeeded, resumed sending replication messages to %d [%r]",
                        self.id,
                        m.from_,
                        pr,
                    )
                # Wait for the follower's answer (or a heartbeat) before the next append.
                pr.msg_app_flow_paused = True
            case MT.UNREACHABLE:
                # While pipelining, an unreachable peer has probably lost an append.
                if pr.state is _REPLICATE:
                    pr.become_probe()
                self.logger.debug(
                    "%d failed to send message to %d because it is unreachable [%r]",
                    self.id,
                    m.from_,
                    pr,
                )
            case MT.TRANSFER_LEADER:
                self._handle_transfer_leader(m, pr)
            case (
                MT.HUP
                | MT.BEAT
                | MT.PROP
                | MT.APP
                | MT.VOTE
                | MT.VOTE_RESP
                | MT.SNAP
                | MT.HEARTBEAT
                | MT.CHECK_QUORUM
                | MT.TIMEOUT_NOW
                | MT.READ_INDEX
                | MT.READ_INDEX_RESP
                | MT.PRE_VOTE
                | MT.PRE_VOTE_RESP
            ):
                pass  # not for a leader of this term (or handled above)
            case _:
                assert_never(t)

    def propose(self, datas: Sequence[bytes]) -> None:
        """Propose normal entries carrying ``datas`` (already checked to be ``bytes``).

        Exactly what stepping one local ``PROP`` message with these entries does, except that a
        leader stamps each payload into its log entry directly (one ``Entry`` per proposal).

        Raises:
            ProposalDropped: as for a ``PROP`` message; nothing was appended.
        """
        if self.state is not _LEADER:
            ents = tuple([Entry(data=d) for d in datas])
            self.step(Message(_PROP, from_=self.id, entries=ents))
            return
        if not datas:
            raise RaftInvariantError(f"{self.id} stepped empty MsgProp")
        self._check_leader_takes_proposals()
        term = self.term
        stamped = [
            Entry(term, i, _NORMAL, d) for i, d in enumerate(datas, self.log.last_index() + 1)
        ]
        if not self._append_stamped(stamped, sum(map(len, datas))):
            raise ProposalDropped("uncommitted log size limit reached")
        self._bcast_append()

    def propose_one(self, data: bytes) -> None:
        """:meth:`propose` of a single payload: the same, in fewer steps when leading."""
        if (
            self.state is not _LEADER
            or self.id not in self.trk.progress
            or self.lead_transferee != NONE
            or self.self_removal_index
            or self.max_uncommitted_size
        ):
            self.propose((data,))
            return
        tail = self.log.unstable.entries
        # log.append([e]) of an entry that follows the log's last one, inlined.
        tail.append(Entry(self.term, self.log.unstable.offset + len(tail), _NORMAL, data))
        self.bcast_pending = True  # self._bcast_append()

    def _check_leader_takes_proposals(self) -> None:
        """Raise ``ProposalDropped`` if this leader must refuse every proposal for now."""
        if self.id not in self.trk.progress:
            # Removed from the configuration while leading: take no new proposals.
            raise ProposalDropped("this node is no longer a member of the configuration")
        if self.lead_transferee != NONE:
            self.logger.debug(
                "%d [term %d] transfer leadership to %d is in progress; dropping proposal",
                self.id,
                self.term,
                self.lead_transferee,
            )
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
        if self.self_removal_index:
            raise ProposalDropped(
                f"this leader is leaving the configuration (change at {self.self_removal_index})"
            )

    def _leader_propose(self, m: Message) -> None:
        if not m.entries:
            raise RaftInvariantError(f"{self.id} stepped empty MsgProp")
        self._check_leader_takes_proposals()
        ents = list(m.entries)
        # Recorded only once the batch is appended: a refused proposal changes nothing.
        pending_conf = self.pending_conf_index
        removal = 0
        for i, e in enumerate(ents):
            if e.type == _NORMAL:
                continue
            cc = self._decode_conf_change(e)
            failed = ""
            if cc is None:
                failed = "undecodable configuration change"
            else:
                already_pending = pending_conf > self.log.applied
                already_joint = self.trk.config.is_joint()
                wants_leave_joint = not cc.as_v2().changes
                if already_pending:
                    failed = (
                        f"possible unapplied conf change at index {pending_conf} "
                        f"(applied to {self.log.applied})"
                    )
                elif already_joint and not wants_leave_joint:
                    failed = "must transition out of joint config first"
                elif not already_joint and wants_leave_joint:
                    failed = "not in joint state; refusing empty conf change"
            if failed:
                # Thesis §4.1: one change at a time. The entry keeps its slot as a no-op so the
                # indexes of the rest of the batch do not move.
                self.logger.warning(
                    "%d ignoring conf change at config %s: %s", self.id, self.trk.config, failed
                )
                ents[i] = Entry()
            else:
                pending_conf = self.log.last_index() + i + 1
                if cc is not None and self._removes_self(cc):
                    # Append nothing after our own removal: a voter that must elect our successor
                    # needs our vote, which we could not give if our log ran past its own.
                    removal = pending_conf
                    if i + 1 < len(ents):
                        self.logger.warning(
                            "%d dropping %d entries proposed after its own removal",
                            self.id,
                            len(ents) - i - 1,
                        )
                        del ents[i + 1 :]
                    break
        if not self._append_entry(ents):
            raise ProposalDropped("uncommitted log size limit reached")
        self.pending_conf_index = pending_conf
        if removal:
            self.self_removal_index = removal
        self._bcast_append()

    def _decode_conf_change(self, e: Entry) -> ConfChangeV2 | None:
        if e.type == _CONF_CHANGE_V2 and not e.data:
            return ConfChangeV2()  # etcd's auto-leave proposal: empty data
        try:
            return decode_conf_change(e.type, e.data).as_v2()
        except DecodeError:
            return None

    def _leader_read_index(self, m: Message) -> None:
        if not self._committed_entry_in_current_term():
            # Thesis §6.4: until an entry of our term commits we do not know the commit index.
            # This holds for a lone voter too: after a restart its durable commit index may lag
            # (commit-only Readys need not be fsynced) until it commits its own empty entry.
            self.pending_read_index_messages.append(m)
            return
        self._send_read_index_response(m)

    def _send_read_index_response(self, m: Message) -> None:
        if self.trk.is_singleton():
            # Only one voter: no other node can have been elected, so no round trip is needed.
            self._respond_to_read_index(m, self.log.committed)
        elif self.read_only.option == ReadOnlyOption.SAFE:
            token = self.read_only.add_request(self.log.committed, m)
            self.read_only.recv_ack(self.id, token)
            # Our own ack may already be a quorum (a lone voter in a joint configuration).
            if not self._confirm_reads(token):
                # One heartbeat round, sent at the next flush, confirms every read recorded
                # before it: its quorum of acknowledgements proves we led after they arrived
                # (read_only.advance releases all requests up to the acknowledged token).
                self.read_round = token
        else:
            self._respond_to_read_index(m, self.log.committed)

    def _respond_to_read_index(self, req: Message, index: int) -> None:
        if req.from_ in (NONE, self.id):
            self.read_states.append(ReadState(index=index, request_ctx=req.context))
        else:
            self._send(_READ_INDEX_RESP, req.from_, index=index, context=req.context)

    def _release_pending_read_index_messages(self) -> None:
        if not self.pending_read_index_messages:
            return
        if not self._committed_entry_in_current_term():
            raise RaftInvariantError("pending reads released before a commit in this term")
        msgs, self.pending_read_index_messages = self.pending_read_index_messages, []
        for m in msgs:
            self._send_read_index_response(m)

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        u = self.log.unstable
        last = u.offset + len(u.entries) - 1  # log.last_index(); nothing below changes the log
        index = m.index
        if not m.reject and index > last:
            # We never sent that index in this term: a confused or hostile peer.
            self.logger.warning(
                "%d ignored MsgAppResp from %d acknowledging index %d beyond last index %d",
                self.id,
                m.from_,
                m.index,
                last,
            )
            return
        if m.reject:
            self.logger.debug(
                "%d received MsgAppResp(rejected, hint: (index %d, term %d)) from %d for index %d",
                self.id,
                m.reject_hint,
                m.log_term,
                m.from_,
                m.index,
            )
            # Fast back-off (etcd's findConflictByTerm): skip every index after the follower's
            # hint whose term in our log is above the follower's term there.
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is _REPLICATE:
                    pr.become_probe()
                self._send_append(m.from_)
            return
        state = pr.state
        if index > pr.match or (index == pr.match and state is _PROBE):
            if index > pr.match:  # pr.maybe_update(index), inlined
                pr.match = index
                if pr.next <= index:
                    pr.next = index + 1
                pr.msg_app_flow_paused = False
            if state is _REPLICATE:
                pr.inflights.free_le(index)
            elif state is _PROBE:
                pr.become_replicate()
            elif pr.match + 1 >= self.log.first_index():  # and state is _SNAPSHOT
                # Caught up from the log, whatever index the snapshot was actually applied at.
                pr.become_probe()
                pr.become_replicate()
            if self.log.maybe_commit(self.trk.committed(), self.term):  # _maybe_commit()
                if self.pending_read_index_messages:
                    self._release_pending_read_index_messages()
                self.bcast_pending = True  # self._bcast_append()
            elif self.log.committed > pr.sent_commit and pr.sent_commit < pr.next - 1:
                # pr.can_bump_commit(self.log.committed): tell the peer the commit index.
                self._maybe_send_append(m.from_, send_if_empty=True, last=last)  # _send_append
            # (_maybe_send_append returns False at once when the peer is at our last index.)
            while pr.next != last + 1 and self._maybe_send_append(
                m.from_, send_if_empty=False, last=last
            ):
                pass
            if m.from_ == self.lead_transferee and pr.match == last:
                self.logger.info(
                    "%d sent MsgTimeoutNow to %d after received MsgAppResp", self.id, m.from_
                )
                self._send_timeout_now(m.from_)

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.msg_app_flow_paused = False
        # Also unsticks a follower whose inflight window filled with appends that were lost.
        if pr.match < self.log.last_index() or pr.state is _PROBE:
            self._send_append(m.from_)
        if self.read_only.option != ReadOnlyOption.SAFE or not m.context:
            return
        if self.read_only.recv_ack(m.from_, m.context) is not None:
            self._confirm_reads(m.context)

    def _confirm_reads(self, token: bytes) -> bool:
        """Answer round ``token`` and every earlier read if its acks are a quorum now."""
        rs = self.read_only.pending.get(token)
        if rs is None:
            return False
        votes = dict.fromkeys(rs.acks, True)
        cfg = self.trk.config
        if joint_vote_result(cfg.voters, cfg.voters_outgoing, votes) != VoteResult.WON:
            return False
        for done in self.read_only.advance(token):
            self._respond_to_read_index(done.req, done.index)
        return True

    def _handle_transfer_leader(self, m: Message, pr: Progress) -> None:
        if pr.is_learner:
            self.logger.debug("%d is learner. Ignored transferring leadership", m.from_)
            return
        transferee = m.from_
        last = self.lead_transferee
        if last != NONE:
            if last == transferee:
                self.logger.info(
                    "%d [term %d] transfer leadership to %d is in progress, ignores request "
                    "to same node %d",
                    self.id,
                    self.term,
                    transferee,
                    transferee,
                )
                return
            self._abort_leader_transfer()
            self.logger.info(
                "%d [term %d] abort previous transferring leadership to %d",
                self.id,
                self.term,
                last,
            )
        if transferee == self.id:
            self.logger.debug(
                "%d is already leader. Ignored transferring leadership to self", self.id
            )
            return
        self.logger.info(
            "%d [term %d] starts to transfer leadership to %d", self.id, self.term, transferee
        )
        # The transfer must finish within an election timeout.
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.log.last_index():
            self._send_timeout_now(transferee)
            self.logger.info(
                "%d sends MsgTimeoutNow to %d immediately as %d already has up-to-date log",
                self.id,
                transferee,
                transferee,
            )
        else:
            self._send_append(transferee)

    def _abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    # -- candidate and pre-candidate --

    def _step_candidate(self, m: Message) -> None:
        # Only count answers to our current kind of campaign: a candidate may still receive
        # stale pre-vote answers from its pre-candidate phase.
        my_resp = _PRE_VOTE_RESP if self.state is _PRE_CANDIDATE else _VOTE_RESP
        t = m.type
        match t:
            case MT.PROP:
                self.logger.info("%d no leader at term %d; dropping proposal", self.id, self.term)
                raise ProposalDropped(f"no leader at term {self.term}")
            case MT.APP:
                self._become_follower(m.term, m.from_)  # always m.term == self.term
                self._handle_append_entries(m)
            case MT.HEARTBEAT:
                self._become_follower(m.term, m.from_)
                self._handle_heartbeat(m)
            case MT.SNAP:
                self._become_follower(m.term, m.from_)
                self._handle_snapshot(m)
            case MT.VOTE_RESP | MT.PRE_VOTE_RESP:
                if t != my_resp:
                    return
                self._count_vote(m.from_, t, granted=not m.reject)
            case MT.TIMEOUT_NOW:
                self.logger.debug(
                    "%d [term %d state %s] ignored MsgTimeoutNow from %d",
                    self.id,
                    self.term,
                    self.state.name,
                    m.from_,
                )
            case (
                MT.HUP
                | MT.BEAT
                | MT.APP_RESP
                | MT.VOTE
                | MT.HEARTBEAT_RESP
                | MT.UNREACHABLE
                | MT.SNAP_STATUS
                | MT.CHECK_QUORUM
                | MT.TRANSFER_LEADER
                | MT.READ_INDEX
                | MT.READ_INDEX_RESP
                | MT.PRE_VOTE
            ):
                pass  # nothing to do without a leader
            case _:
                assert_never(t)

    def _count_vote(self, node: int, t: MessageType, *, granted: bool) -> None:
        """Record ``node``'s (pre-)vote answer and act on the election's result."""
        granted_n, rejected_n, res = self._poll(node, t, granted)
        self.logger.info(
            "%d has received %d %s votes and %d vote rejections",
            self.id,
            granted_n,
            t.name,
            rejected_n,
        )
        if res == VoteResult.WON:
            if self.state is _PRE_CANDIDATE:
                self._campaign(CampaignType.ELECTION)
            else:
                self._become_leader()
                self._bcast_append()
        elif res == VoteResult.LOST:
            # A pre-vote answer carries our future term; stay at our own.
            self._become_follower(self.term, NONE)

    # -- follower --

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is _APP:  # the common case first, without the match's enum lookups
            self.election_elapsed = 0
            self.lead = m.from_
            self._handle_append_entries(m)
            return
        match t:
            case MT.PROP:
                if self.lead == NONE:
                    self.logger.info(
                        "%d no leader at term %d; dropping proposal", self.id, self.term
                    )
                    raise ProposalDropped(f"no leader at term {self.term}")
                if self.disable_proposal_forwarding:
                    self.logger.info(
                        "%d not forwarding to leader %d at term %d; dropping proposal",
                        self.id,
                        self.lead,
                        self.term,
                    )
                    raise ProposalDropped("proposal forwarding is disabled")
                self._send(_PROP, self.lead, entries=m.entries)
            case MT.APP:
                self.election_elapsed = 0
                self.lead = m.from_
                self._handle_append_entries(m)
            case MT.HEARTBEAT:
                self.election_elapsed = 0
                self.lead = m.from_
                self._handle_heartbeat(m)
            case MT.SNAP:
                self.election_elapsed = 0
                self.lead = m.from_
                self._handle_snapshot(m)
            case MT.TRANSFER_LEADER:
                if self.lead == NONE:
                    self.logger.info(
                        "%d no leader at term %d; dropping leader transfer msg", self.id, self.term
                    )
                    return
                self._send(_TRANSFER_LEADER, self.lead, from_=m.from_)
            case MT.TIMEOUT_NOW:
                self.logger.info(
                    "%d [term %d] received MsgTimeoutNow from %d and starts an election to get "
                    "leadership",
                    self.id,
                    self.term,
                    m.from_,
                )
                # A transfer skips PreVote: we know we are not a partitioned node rejoining.
                self._hup(CampaignType.TRANSFER)
            case MT.READ_INDEX:
                if self.lead == NONE:
                    self.logger.info(
                        "%d no leader at term %d; dropping index reading msg", self.id, self.term
                    )
                    return
                # Keep the origin as sender, so the answer goes to the node that asked even if
                # the read is forwarded again (we may follow a stale leader).
                origin = m.from_ if m.from_ != NONE else self.id
                self._send(_READ_INDEX, self.lead, from_=origin, context=m.context)
            case MT.READ_INDEX_RESP:
                self.read_states.append(ReadState(index=m.index, request_ctx=m.context))
            case (
                MT.HUP
                | MT.BEAT
                | MT.APP_RESP
                | MT.VOTE
                | MT.VOTE_RESP
                | MT.HEARTBEAT_RESP
                | MT.UNREACHABLE
                | MT.SNAP_STATUS
                | MT.CHECK_QUORUM
                | MT.PRE_VOTE
                | MT.PRE_VOTE_RESP
            ):
                pass  # stale answers to a campaign or leadership we no longer hold
            case _:
                assert_never(t)

    def _handle_append_entries(self, m: Message) -> None:
        if m.index < self.log.committed:
            # Everything up to our commit index is settled; tell the leader where we are.
            self._send(_APP_RESP, m.from_, index=self.log.committed)
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            if self.log.replaced_from:
                self._drop_acks_from(self.log.replaced_from)
                self.log.replaced_from = 0
            # Message(_APP_RESP, to=m.from_, from_=self.id, term=self.term, index=last_new)
            ack = _new_message(_APP_RESP, m.from_, self.id, self.term, 0, last_new)
            # self._file(ack), inlined
            (self.msgs_after_append if _APP_RESP in _AFTER_PERSIST else self.msgs).append(ack)
            return
        # Hint the largest (index, term) that could still match: at most the probed index and
        # our last index, with a term no greater than the leader's term there.
        hint_index = min(m.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
        self.logger.debug(
            "%d [logterm: %d, index: %d] rejected MsgApp [logterm: %d, index: %d] from %d",
            self.id,
            self.log.zero_term(m.index),
            m.index,
            m.log_term,
            m.index,
            m.from_,
        )
        self._send(
            _APP_RESP,
            m.from_,
            index=m.index,
            reject=True,
            reject_hint=hint_index,
            log_term=hint_term,
        )

    def _drop_acks_from(self, index: int) -> None:
        """Forget the queued acknowledgements of entries at or after ``index``.

        Those entries were just replaced (by a conflicting append, or a snapshot) before the
        Ready that would make them durable: an acknowledgement made for them, still waiting
        for that Ready, would tell their leader we hold entries we never will (thesis §10.2.1;
        a leader of the older term could count it towards committing them). A dropped
        acknowledgement is only a lost message: the leader probes again.
        """
        self.msgs_after_append = [
            m
            for m in self.msgs_after_append
            if m.type is not _APP_RESP or m.reject or m.index < index
        ]

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(_HEARTBEAT_RESP, m.from_, context=m.context)

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot if m.snapshot is not None else Snapshot()
        md = snap.metadata
        if self._restore(snap):
            self.logger.info(
                "%d [commit: %d] restored snapshot [index: %d, term: %d]",
                self.id,
                self.log.committed,
                md.index,
                md.term,
            )
            self._send(_APP_RESP, m.from_, index=self.log.last_index())
        else:
            self.logger.info(
                "%d [commit: %d] ignored snapshot [index: %d, term: %d]",
                self.id,
                self.log.committed,
                md.index,
                md.term,
            )
            self._send(_APP_RESP, m.from_, index=self.log.committed)

    def _restore(self, snap: Snapshot) -> bool:
        """Install ``snap`` if it is newer than what we have committed. Returns whether it was."""
        md = snap.metadata
        if md.index <= self.log.committed:
            return False
        if self.state is not _FOLLOWER:
            # Defense in depth: only a follower installs snapshots.
            self.logger.warning(
                "%d attempted to restore snapshot as leader; should never happen", self.id
            )
            self._become_follower(self.term + 1, NONE)
            return False
        if self.applying > self.log.applied:
            # The application still holds committed entries of the last Ready, maybe
            # configuration changes it is about to pass to apply_conf_change: restoring now
            # would switch the configuration under them. The leader sends the snapshot again.
            self.logger.info(
                "%d [applied: %d, applying: %d] ignored snapshot [index: %d] until applied",
                self.id,
                self.log.applied,
                self.applying,
                md.index,
            )
            return False
        cs = md.conf_state
        if (
            self.id not in cs.voters
            and self.id not in cs.learners
            and (self.id not in cs.voters_outgoing)
        ):
            self.logger.warning(
                "%d attempted to restore snapshot but it is not in the ConfState %s",
                self.id,
                cs,
            )
            return False
        if self.log.match_term(md.index, md.term):
            # We already have the snapshot's last entry: just move the commit index.
            self.logger.info(
                "%d [commit: %d, lastindex: %d, lastterm: %d] fast-forwarded commit to "
                "snapshot [index: %d, term: %d]",
                self.id,
                self.log.committed,
                self.log.last_index(),
                self.log.last_term(),
                md.index,
                md.term,
            )
            self.log.commit_to(md.index)
            return False
        self.log.restore(snap)
        self._drop_acks_from(0)  # whatever they acknowledged, the snapshot replaced
        self.trk = ProgressTracker(self.trk.max_inflight, self.trk.max_inflight_bytes)
        try:
            cfg, progress = restore(Changer(self.trk, self.log.last_index()), cs)
        except ConfigError as exc:
            raise RaftInvariantError(f"unable to restore config {cs}: {exc}") from exc
        restored = self._switch_to_config(cfg, progress)
        if not restored.equivalent(cs):
            raise RaftInvariantError(f"restored config {restored} differs from snapshot's {cs}")
        self.logger.info(
            "%d [commit: %d, lastindex: %d, lastterm: %d] restored snapshot [index: %d, term: %d]",
            self.id,
            self.log.committed,
            self.log.last_index(),
            self.log.last_term(),
            md.index,
            md.term,
        )
        return True

    # -- configuration --

    def _compute_conf_change(
        self, cc: ConfChangeV2, tracker: ProgressTracker | None = None
    ) -> tuple[TrackerConfig, dict[int, Progress]]:
        """The configuration ``cc`` produces from ``tracker``'s (default: the current one).

        Raises:
            ConfigError: ``cc`` is invalid for that configuration.
        """
        changer = Changer(tracker or self.trk, self.log.last_index())
        if cc.leave_joint():
            return changer.leave_joint()
        use_joint, auto_leave = cc.enter_joint()
        if use_joint:
            return changer.enter_joint(auto_leave, cc.changes)
        return changer.simple(cc.changes)

    def _removes_self(self, cc: ConfChangeV2) -> bool:
        """Whether applying ``cc`` now would make this node a non-voter."""
        try:
            _, progress = self._compute_conf_change(cc)
        except ConfigError:
            return False
        pr = progress.get(self.id)
        return pr is None or pr.is_learner

    def _unapplied_self_removal(self) -> int:
        """The index of an unapplied change in our log that removes or demotes us, else 0.

        Replays the unapplied configuration changes on a scratch copy of the configuration.
        """
        lo = max(self.log.applied + 1, self.log.first_index())
        hi = self.log.last_index()
        if lo > hi:
            return 0
        scratch: ProgressTracker | None = None
        for e in self.log.slice(lo, hi + 1, None):
            if e.type == _NORMAL:
                continue
            cc = self._decode_conf_change(e)
            if cc is None:
                continue
            if scratch is None:
                scratch = ProgressTracker(self.trk.max_inflight, self.trk.max_inflight_bytes)
                scratch.switch(self.trk.config, self.trk.progress)
            try:
                scratch.switch(*self._compute_conf_change(cc, scratch))
            except ConfigError:
                continue
            pr = scratch.progress.get(self.id)
            if pr is None or pr.is_learner:
                return e.index
        return 0

    def apply_conf_change(self, cc: ConfChangeV2) -> ConfState:
        """Switch to the configuration ``cc`` produces. Raises ``ConfigError`` if invalid."""
        return self._switch_to_config(*self._compute_conf_change(cc))

    def _switch_to_config(self, cfg: TrackerConfig, progress: dict[int, Progress]) -> ConfState:
        self.trk.switch(cfg, progress)
        self.logger.info("%d switched to configuration %s", self.id, cfg)
        cs = cfg.conf_state()
        pr = progress.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        if (pr is None or self.is_learner) and self.state is _LEADER:
            # Removed or demoted while leading: the change is committed, so step down and let
            # the remaining voters elect a leader.
            if self.step_down_on_removal:
                self._become_follower(self.term, NONE)
            return cs
        if self.state is not _LEADER or not cs.voters:
            return cs
        if self._maybe_commit():
            # The new configuration may commit more (e.g. a slow voter was removed).
            self._bcast_append()
        else:
            # Probe newly added peers now rather than at the next heartbeat.
            for node in self.trk.ids():
                if node != self.id:
                    self._maybe_send_append(node, send_if_empty=False)
        if self.lead_transferee != NONE and self.lead_transferee not in cfg.all_voters():
            self._abort_leader_transfer()
        # The acks pending reads already have may be a quorum of the new configuration (no
        # further ack may ever come, e.g. when the other voters were removed).
        for token in reversed(self.read_only.queue):
            if self._confirm_reads(token):
                break
        return cs

    # -- persistence feedback (from RawNode.advance) --

    def applied_to(self, index: int) -> None:
        """Entries up to ``index`` are applied; may start leaving a joint configuration."""
        log = self.log
        old = log.applied
        new = index if index > old else old
        if new:  # log.applied_to(new), inlined (new >= log.applied)
            if log.committed < new:
                raise RaftInvariantError(
                    f"applied {new} is out of range [prev applied {old}, committed {log.committed}]"
                )
            log.applied = new
        if self.trk.config.auto_leave and new >= self.pending_conf_index and self.state is _LEADER:
            # Empty data reads as the empty ConfChangeV2 (leave joint); being empty it can never
            # be refused for size. A transfer in progress may drop it: we try again next time.
            try:
                self.step(
                    Message(
                        _PROP,
                        from_=self.id,
                        entries=(Entry(type=_CONF_CHANGE_V2),),
                    )
                )
            except ProposalDropped as exc:
                self.logger.debug(
                    "not initiating automatic transition out of joint configuration %s: %s",
                    self.trk.config,
                    exc,
                )
            else:
                self.logger.info(
                    "initiating automatic transition out of joint configuration %s",
                    self.trk.config,
                )

    def on_persisted(self, hard_state: HardState | None) -> None:
        """The application made the last Ready durable: count our own vote or log.

        ``hard_state`` is the hard state that Ready carried (now durable), if any.
        """
        if (
            self.state is _CANDIDATE
            and hard_state is not None
            and hard_state.term == self.term
            and hard_state.vote == self.id
            and self.id not in self.trk.votes
        ):
            self._count_vote(self.id, _VOTE_RESP, granted=True)
            return
        if self.state is not _LEADER:
            return
        pr = self.trk.progress.get(self.id)
        u = self.log.unstable
        persisted = 0 if u.snapshot is not None else u.offset - 1  # self.log.persisted_index()
        if pr is not None and persisted > pr.match and pr.maybe_update(persisted):
            if self.log.maybe_commit(self.trk.committed(), self.term):  # _maybe_commit()
                self._release_pending_read_index_messages()
                self._bcast_append()
            if (
                self.lead_transferee != NONE
                and self.trk.progress[self.lead_transferee].match == self.log.last_index()
            ):
                self._send_timeout_now(self.lead_transferee)
