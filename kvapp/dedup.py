"""Applying replicated requests exactly once: the :class:`Applier`.

Every member feeds each committed :class:`~kvapp.requests.Request` to :meth:`Applier.apply`
(the requests of a batch entry to :meth:`Applier.apply_batch`, all at the entry's index),
which applies its body to the :class:`~kvapp.kvstate.KvState` (or to the alarm table, or
through the member layer's handler) and returns the result. On top of that it remembers
recent results per client, so that a write retried after a lost reply is applied once and the
retry gets the first application's result, error included. etcd has no such table (its clients
retry only what is safe to repeat); the design is the Raft thesis' client sessions (§6.3),
without a separate registration step.

Sessions. A client names itself with a non-zero ``client_id`` and numbers its requests from 1
(``request_id``). The applier keeps, per client, the highest request id applied (``high``), the
log index of its last request, and the results of the requests with ids in
``(high - window, high]``. Applying ``(client_id, request_id)``:

- ``client_id`` 0 (or ``request_id`` 0, which the codec refuses with a non-zero client id), or
  a read (a range, an alarm GET): applied, nothing remembered;
- a remembered id: not applied again; the remembered result is returned (or its error raised);
- an id at or below ``high - window``: the applier no longer knows whether it was applied, so
  it refuses it with :class:`~kvapp.requests.RequestIdExpiredError` (and applies nothing);
- otherwise: applied, and its result remembered. Ids need not arrive in order: a client may
  have up to ``window`` requests in flight, committed in any order;
- no session for the client: if ``request_id <= window`` this is a new session (a client's
  first requests); otherwise the session expired or was evicted, and the request is refused
  with :class:`~kvapp.requests.RequestIdExpiredError` rather than risk a second application.
  The client then continues under a new client id, treating its in-flight requests as of
  unknown outcome.

Expiry is driven by the log, never by clocks, so every member agrees: a session whose last
request is more than ``idle_entries`` log indexes behind the entry being applied is dropped,
and beyond ``max_clients`` sessions the least recently active one is dropped. Residual risk,
as in any session scheme: a retry of one of a client's first ``window`` requests that arrives
after the client's session expired is applied again; clients bound how long they retry.
``window``, ``idle_entries`` and ``max_clients`` change the replicated state, so members must
agree on them (like the lessor's ``min_ttl``); snapshots record them and a member configured
differently refuses to restore one.

Alarms. Raising NOSPACE or CORRUPT is replicated (an :class:`~kvapp.requests.AlarmRequest`) and
applied here, as etcd does: while any member's NOSPACE alarm is raised, puts, txns containing a
put (nested ones included; etcd only looks at the top level) and lease grants fail with
:class:`~kvapp.errors.NoSpaceError`; while a CORRUPT alarm is raised, ranges, puts, deletes,
txns, compactions, lease grants and lease revokes fail with
:class:`~kvapp.errors.CorruptClusterError`.

Snapshot (format ``kvapp.applier`` version 1): the applier's section, then the KvState's own
snapshot stream unchanged (see :mod:`kvapp.kvstate`), so KvState's format needs no new version
and the whole replicated state still restores atomically. The section is CBOR items:

1. a header ``["kvapp.applier", 1, window, idle_entries, max_clients, applied_index,
   [[member_id, alarm]...]]`` (alarms sorted);
2. ``["sessions", [session...]]`` chunks, sessions from least to most recently active (sessions
   last active in the same batch entry share a last index), each
   ``[client_id, last_index, high, [[request_id, result]...]]`` with results sorted by id and
   written as :func:`kvapp.requests.response_to_array` forms;
3. a trailer ``["end", session_count, crc]``, the CRC-32 of the header and chunks.

:meth:`Applier.hash` covers the section as well as :meth:`KvState.hash`: the dedup table and
alarms decide future results, so replicas that disagree on them have diverged.
"""

from __future__ import annotations

import io
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Final, TypeAlias

import cbor2

from kvapp.errors import (
    CorruptClusterError,
    EtcdError,
    NoSpaceError,
    RequestDecodeError,
    StateSnapshotError,
)
from kvapp.kvstate import KvState, StateImage, StreamSpan
from kvapp.lease import (
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
)
from kvapp.mvcc.types import (
    CompactRequest,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    TxnRequest,
)
from kvapp.requests import (
    AlarmAction,
    AlarmMember,
    AlarmRequest,
    AlarmResponse,
    AlarmType,
    Body,
    ErrorResult,
    MemberAddRequest,
    MemberPromoteRequest,
    MemberRemoveRequest,
    MemberRequest,
    MemberResponse,
    MemberUpdateRequest,
    Request,
    RequestIdExpiredError,
    Response,
    Result,
    response_from_array,
    response_to_array,
)

__all__ = [
    "DEFAULT_IDLE_ENTRIES",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_WINDOW",
    "FORMAT",
    "FORMAT_VERSION",
    "Applier",
    "MemberHandler",
    "SnapshotImage",
]

FORMAT: Final = "kvapp.applier"
FORMAT_VERSION: Final = 1

DEFAULT_WINDOW: Final = 64
"""Results remembered per client: the most requests a client should have in flight."""

DEFAULT_IDLE_ENTRIES: Final = 1_000_000
"""Log entries after which an idle client's session expires."""

DEFAULT_MAX_CLIENTS: Final = 65_536
"""Sessions kept at most; beyond it the least recently active one is dropped."""

MemberHandler: TypeAlias = Callable[[MemberRequest], MemberResponse]
"""Applies a membership change (the member layer's); raises EtcdError to refuse it."""

_CHUNK = 1024
_U64_MAX = (1 << 64) - 1
# Refused at apply time while an alarm is raised (etcd's applierV3Capped / applierV3Corrupt).
_CORRUPT_REFUSES = (
    RangeRequest,
    PutRequest,
    DeleteRangeRequest,
    TxnRequest,
    CompactRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
)


class _Session:
    """One client's dedup state: see the module docstring."""

    __slots__ = ("high", "last_index", "results")

    def __init__(self, last_index: int, high: int = 0) -> None:
        self.last_index = last_index
        self.high = high
        self.results: dict[int, Response] = {}

    def copy(self) -> _Session:
        """An independent copy (responses are immutable and shared)."""
        twin = _Session(self.last_index, self.high)
        twin.results = dict(self.results)
        return twin

    def record(self, request_id: int, outcome: Response, window: int) -> None:
        self.results[request_id] = outcome
        old = self.high
        if request_id <= old:
            return
        self.high = request_id
        floor = request_id - window  # ids at or below it are forgotten
        if request_id - old >= window:
            self.results = {k: v for k, v in self.results.items() if k > floor}
        else:
            for k in range(max(old - window + 1, 1), floor + 1):
                self.results.pop(k, None)


class Applier:
    """The replicated state machine of a member: KvState + dedup sessions + alarms.

    Deterministic: members that apply the same requests at the same log indexes return the same
    results and end in the same state (and :meth:`hash`). Not thread-safe: use it from the
    apply loop.

    Args:
        state: the key-value state requests are applied to; the applier owns its snapshots.
        window: results remembered per client (see the module docstring).
        idle_entries: log entries after which an idle client's session expires.
        max_clients: most sessions kept.
        members: applies membership requests; without one they raise RuntimeError.

    Raises:
        ValueError: a limit is below 1.
    """

    def __init__(
        self,
        state: KvState,
        *,
        window: int = DEFAULT_WINDOW,
        idle_entries: int = DEFAULT_IDLE_ENTRIES,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        members: MemberHandler | None = None,
    ) -> None:
        if window < 1 or idle_entries < 1 or max_clients < 1:
            raise ValueError("window, idle_entries and max_clients must be at least 1")
        self.state = state
        self.window = window
        self.idle_entries = idle_entries
        self.max_clients = max_clients
        self.members = members
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._alarms: set[tuple[int, AlarmType]] = set()
        self._nospace = False
        self._corrupt = False
        self._applied = 0

    # -- queries --------------------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        """The log index of the last request applied (0 before any)."""
        return self._applied

    @property
    def session_count(self) -> int:
        """How many client sessions are remembered."""
        return len(self._sessions)

    def has_session(self, client_id: int) -> bool:
        """Whether the client has a live session."""
        return client_id in self._sessions

    def alarms(self, alarm: AlarmType = AlarmType.NONE) -> tuple[AlarmMember, ...]:
        """The raised alarms of one type (NONE: all), by member id then type."""
        return tuple(
            AlarmMember(member_id, kind)
            for member_id, kind in sorted(self._alarms)
            if alarm is AlarmType.NONE or kind == alarm
        )

    def check_alarms(self, request: Request) -> None:
        """Refuse, before it is proposed, a request the raised alarms would refuse when applied.

        A member calls it to keep doomed entries out of the log (etcd likewise refuses a put
        over its quota before proposing it). It answers from the state applied so far, so an
        alarm raised or cleared by an entry not yet applied here is not seen; :meth:`apply`
        stays the deterministic check. A retry whose result is remembered is let through:
        applying it returns that result, whatever the alarms.

        Raises:
            CorruptClusterError: a CORRUPT alarm is raised and the request is refused under it.
            NoSpaceError: a NOSPACE alarm is raised and the request needs space (a put, a txn
                with a put, a lease grant).
        """
        body = request.body
        if not (self._corrupt and isinstance(body, _CORRUPT_REFUSES)) and not (
            self._nospace and _needs_space(body)
        ):
            return
        session = self._sessions.get(request.client_id) if request.client_id else None
        if session is not None and request.request_id in session.results:
            return
        if self._corrupt and isinstance(body, _CORRUPT_REFUSES):
            raise CorruptClusterError
        raise NoSpaceError

    def hash(self) -> int:
        """CRC-32 of the whole replicated state: :meth:`KvState.hash` and the section above.

        Equal on members that applied the same requests at the same indexes.
        """
        return zlib.crc32(self._section_crc().to_bytes(4, "big"), self.state.hash())

    # -- applying -------------------------------------------------------------------------------

    def apply(self, request: Request, index: int) -> Result:
        """Apply one committed request carried by the log entry at ``index``; return its result.

        A retried write returns (or raises) what its first application did, without applying
        it again. ``index`` drives session expiry, so every member must pass the entry's index.

        Raises:
            EtcdError: the request fails as etcd would fail it, identically on every member
                (including :class:`~kvapp.requests.RequestIdExpiredError`, see the module
                docstring); nothing changed, except that the failure is remembered for retries.
            ValueError: ``index`` is not above the last index applied (a bug in the caller:
                entries are applied once, in order).
            RuntimeError: a membership request, and no member handler.
        """
        self._advance(index)
        return self._apply_one(request, index)

    def apply_batch(self, requests: Sequence[Request], index: int) -> list[Result | EtcdError]:
        """Apply the requests of one batch entry at ``index``, in order; return each outcome.

        Each request is applied (and deduplicated) exactly as :meth:`apply` would apply it
        alone, except that all share ``index``: a request that fails gets its error in its
        place in the list and the others still apply.

        Raises:
            ValueError: ``index`` is not above the last index applied.
            RuntimeError: a membership request, and no member handler.
        """
        self._advance(index)
        outcomes: list[Result | EtcdError] = []
        for request in requests:
            try:
                outcomes.append(self._apply_one(request, index))
            except EtcdError as e:
                outcomes.append(e)
        return outcomes

    def _advance(self, index: int) -> None:
        if index <= self._applied:
            raise ValueError(f"index {index} applied out of order (last {self._applied})")
        self._applied = index
        self._expire(index)

    def _apply_one(self, request: Request, index: int) -> Result:
        body = request.body
        client_id, request_id = request.client_id, request.request_id
        if not client_id or not request_id or _is_read(body):
            return self._run(body)
        session = self._sessions.get(client_id)
        if session is None:
            if request_id > self.window:
                raise RequestIdExpiredError(f"client {client_id:x} has no session")
        else:
            self._sessions.move_to_end(client_id)
            session.last_index = index
            if request_id in session.results:
                cached = session.results[request_id]
                if isinstance(cached, ErrorResult):
                    raise cached.to_exception()
                return cached
            if request_id <= session.high - self.window:
                raise RequestIdExpiredError(
                    f"client {client_id:x}: request {request_id} <= {session.high} - window"
                )
        try:
            result = self._run(body)
        except EtcdError as e:
            self._remember(client_id, session, request_id, index, ErrorResult.from_exception(e))
            raise
        self._remember(client_id, session, request_id, index, result)
        return result

    def _remember(
        self,
        client_id: int,
        session: _Session | None,
        request_id: int,
        index: int,
        outcome: Response,
    ) -> None:
        if session is None:
            session = self._sessions[client_id] = _Session(index)
            if len(self._sessions) > self.max_clients:
                self._sessions.popitem(last=False)
        session.record(request_id, outcome, self.window)

    def _expire(self, index: int) -> None:
        horizon = index - self.idle_entries
        sessions = self._sessions
        while sessions and next(iter(sessions.values())).last_index < horizon:
            sessions.popitem(last=False)

    def _run(self, body: Body) -> Result:
        match body:
            case (
                MemberAddRequest()
                | MemberRemoveRequest()
                | MemberUpdateRequest()
                | MemberPromoteRequest()
            ):
                if self.members is None:
                    raise RuntimeError("a membership request, and no member handler")
                return self.members(body)
            case AlarmRequest():
                return self._alarm(body)
            case (
                RangeRequest()
                | PutRequest()
                | DeleteRangeRequest()
                | TxnRequest()
                | CompactRequest()
                | LeaseGrantRequest()
                | LeaseRevokeRequest()
                | LeaseCheckpointRequest()
            ):
                if self._corrupt and isinstance(body, _CORRUPT_REFUSES):
                    raise CorruptClusterError
                if self._nospace and _needs_space(body):
                    raise NoSpaceError
                return self.state.apply(body)

    def _alarm(self, request: AlarmRequest) -> AlarmResponse:
        key = (request.member_id, request.alarm)
        match request.action:
            case AlarmAction.GET:
                return AlarmResponse(self.alarms(request.alarm))
            case AlarmAction.ACTIVATE:
                if request.alarm is AlarmType.NONE:
                    return AlarmResponse()
                self._alarms.add(key)
            case AlarmAction.DEACTIVATE:
                if key not in self._alarms:
                    return AlarmResponse()
                self._alarms.discard(key)
        self._alarms_changed()
        return AlarmResponse([AlarmMember(*key)])

    def member_removed(self, member_id: int) -> None:
        """Forget a removed member's NOSPACE alarm (called when its removal is applied).

        Its disk is no longer the cluster's, and it can no longer clear the alarm itself
        (nor would anyone else, the way members clear their own), so it would keep every
        write refused. etcd keeps it until an operator disarms it (etcd-io/etcd#14379).
        Every member applies the removal at the same index, so all forget it alike.
        """
        key = (member_id, AlarmType.NOSPACE)
        if key in self._alarms:
            self._alarms.discard(key)
            self._alarms_changed()

    def _alarms_changed(self) -> None:
        kinds = {kind for _, kind in self._alarms}
        self._nospace = AlarmType.NOSPACE in kinds
        self._corrupt = AlarmType.CORRUPT in kinds

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot(self, out: IO[bytes]) -> None:
        """Write the whole replicated state to ``out`` (see the module docstring)."""
        self.snapshot_image().write(out)

    def snapshot_image(self) -> SnapshotImage:
        """A point-in-time image of the whole replicated state, to write out in any thread.

        Taken on the apply loop in time proportional to the number of client sessions (their
        recent results are copied) plus a list copy of the change log; the encoding happens in
        :meth:`SnapshotImage.write` and reads nothing live, so a member can encode a large
        state in a worker thread while it keeps applying.
        """
        sessions = OrderedDict((cid, s.copy()) for cid, s in self._sessions.items())
        return SnapshotImage(
            (self.window, self.idle_entries, self.max_clients),
            self._applied,
            set(self._alarms),
            sessions,
            self.state.snapshot_image(),
        )

    def snapshot_bytes(self) -> bytes:
        """The snapshot as one bytes object."""
        buf = io.BytesIO()
        self.snapshot(buf)
        return buf.getvalue()

    def restore(self, src: IO[bytes]) -> None:
        """Replace the whole replicated state with a snapshot read from ``src``.

        The applier's section is parsed and checked aside, then the KvState restores (itself
        atomically); only then are the sessions and alarms replaced.

        Raises:
            StateSnapshotError: the stream is truncated, damaged, of another format or version,
                or made with another ``window``, ``idle_entries`` or ``max_clients``; nothing
                changed.
        """
        try:
            parsed = self._read_section(cbor2.CBORDecoder(src))
        except StateSnapshotError:
            raise
        except Exception as e:  # cbor2 raises many exception types on hostile input
            raise StateSnapshotError(f"bad applier snapshot: {e}") from e
        self.state.restore(src)
        self._applied, self._alarms, self._sessions = parsed
        self._alarms_changed()

    def restore_bytes(self, data: bytes) -> None:
        """Restore from a snapshot held in memory.

        Raises:
            StateSnapshotError: as :meth:`restore`.
        """
        self.restore(io.BytesIO(data))

    def _section_items(self) -> Iterator[list[object]]:
        return _section_items(
            (self.window, self.idle_entries, self.max_clients),
            self._applied,
            self._alarms,
            self._sessions,
        )

    def _section_crc(self) -> int:
        return _crc(self._section_items())

    def _read_section(
        self, dec: cbor2.CBORDecoder
    ) -> tuple[int, set[tuple[int, AlarmType]], OrderedDict[int, _Session]]:
        header = _list(dec.decode(), "header", 7)
        if header[0] != FORMAT or type(header[1]) is not int or header[1] != FORMAT_VERSION:
            raise _fail(f"format {header[0]!r:.30} version {header[1]!r:.10} is not {FORMAT} 1")
        config = (self.window, self.idle_entries, self.max_clients)
        if tuple(header[2:5]) != config:
            raise _fail(
                f"made with window, idle_entries, max_clients = {header[2:5]!r:.60}, "
                f"configured {config}: members must agree on them"
            )
        applied = _uint(header[5], "applied index")
        alarms: set[tuple[int, AlarmType]] = set()
        for a in _list(header[6], "alarms"):
            pair = _list(a, "alarm", 2)
            kind = pair[1]
            if type(kind) is not int or kind not in (AlarmType.NOSPACE, AlarmType.CORRUPT):
                raise _fail(f"bad alarm type {kind!r:.20}")
            alarms.add((_uint(pair[0], "alarm member"), AlarmType(kind)))

        sessions: OrderedDict[int, _Session] = OrderedDict()
        last = applied - self.idle_entries
        item = dec.decode()
        while type(item) is list and len(item) == 2 and item[0] == "sessions":
            for record in _list(item[1], "sessions"):
                client_id, session = self._session(record)
                if client_id in sessions or not client_id > 0:
                    raise _fail(f"client {client_id} repeated or zero")
                if not last <= session.last_index <= applied:  # a batch: equal indexes
                    raise _fail(f"client {client_id:x}: last index out of order or range")
                last = session.last_index
                sessions[client_id] = session
            item = dec.decode()
        trailer = _list(item, "trailer", 3)
        if trailer[0] != "end" or trailer[1] != len(sessions) or len(sessions) > self.max_clients:
            raise _fail("missing or malformed trailer, or wrong session count")

        if _crc(_section_items(config, applied, alarms, sessions)) != trailer[2]:
            raise _fail("checksum mismatch")
        return applied, alarms, sessions

    def _session(self, record: object) -> tuple[int, _Session]:
        client_id, last_index, high, results = _list(record, "session", 4)
        session = _Session(_uint(last_index, "last index"), _uint(high, "high"))
        previous = session.high - self.window
        for pair in _list(results, "results"):
            rid, array = _list(pair, "result", 2)
            rid = _uint(rid, "request id")
            if not previous < rid <= session.high:
                raise _fail(f"request id {rid} out of order or outside the window")
            previous = rid
            try:
                session.results[rid] = response_from_array(array)
            except RequestDecodeError as e:
                raise _fail(str(e)) from None
        if previous != session.high:
            raise _fail("a session's highest request id has no result")
        return _uint(client_id, "client id"), session


class SnapshotImage:
    """What :meth:`Applier.snapshot_image` captured; :meth:`write` encodes it."""

    __slots__ = ("_alarms", "_applied", "_config", "_sessions", "_state")

    def __init__(
        self,
        config: tuple[int, int, int],
        applied: int,
        alarms: set[tuple[int, AlarmType]],
        sessions: OrderedDict[int, _Session],
        state: StateImage,
    ) -> None:
        self._config = config
        self._applied = applied
        self._alarms = alarms
        self._sessions = sessions
        self._state = state

    @property
    def state(self) -> StateImage:
        """The key-value state's image (for :meth:`kvapp.kvstate.KvState.keep_encoded`)."""
        return self._state

    def write(self, out: IO[bytes]) -> StreamSpan:
        """Write the snapshot stream :meth:`Applier.snapshot` would have written at capture.

        Returns:
            The KvState stream's reusable range, counted from the first byte written here.
        """
        crc = 0
        size = 0
        items = _section_items(self._config, self._applied, self._alarms, self._sessions)
        for item in items:
            data = cbor2.dumps(item)
            crc = zlib.crc32(data, crc)
            out.write(data)
            size += len(data)
        data = cbor2.dumps(["end", len(self._sessions), crc])
        out.write(data)
        return self._state.write(out).shifted(size + len(data))

    def to_bytes(self) -> bytes:
        """The whole snapshot as one bytes object."""
        buf = io.BytesIO()
        self.write(buf)
        return buf.getvalue()


def _section_items(
    config: tuple[int, int, int],
    applied: int,
    alarms: set[tuple[int, AlarmType]],
    sessions: OrderedDict[int, _Session],
) -> Iterator[list[object]]:
    yield [
        FORMAT,
        FORMAT_VERSION,
        *config,
        applied,
        [[member_id, int(kind)] for member_id, kind in sorted(alarms)],
    ]
    chunk: list[object] = []
    for client_id, s in sessions.items():
        results = [[rid, response_to_array(s.results[rid])] for rid in sorted(s.results)]
        chunk.append([client_id, s.last_index, s.high, results])
        if len(chunk) == _CHUNK:
            yield ["sessions", chunk]
            chunk = []
    if chunk:
        yield ["sessions", chunk]


def _crc(items: Iterator[list[object]]) -> int:
    crc = 0
    for item in items:
        crc = zlib.crc32(cbor2.dumps(item), crc)
    return crc


def _is_read(body: Body) -> bool:
    return isinstance(body, RangeRequest) or (
        isinstance(body, AlarmRequest) and body.action is AlarmAction.GET
    )


def _needs_space(body: Body) -> bool:
    match body:
        case PutRequest() | LeaseGrantRequest():
            return True
        case TxnRequest():
            return any(
                isinstance(op, PutRequest) or (isinstance(op, TxnRequest) and _needs_space(op))
                for op in (*body.success, *body.failure)
            )
        case _:
            return False


def _fail(why: str) -> StateSnapshotError:
    return StateSnapshotError(f"bad applier snapshot: {why}")


def _list(v: object, what: str, length: int | None = None) -> list[object]:
    if type(v) is not list or (length is not None and len(v) != length):
        raise _fail(f"malformed {what}")
    return v


def _uint(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v <= _U64_MAX:
        raise _fail(f"{what} is not an unsigned 64-bit integer")
    return v
