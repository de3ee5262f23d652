"""kvapp.dedup: retried writes apply once; sessions expire by log index; alarms; snapshots."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from kvapp.dedup import Applier
from kvapp.errors import (
    CompactedError,
    CorruptClusterError,
    EtcdError,
    KeyNotFoundError,
    MemberNotFoundError,
    NoSpaceError,
    StateSnapshotError,
)
from kvapp.kvstate import KvState
from kvapp.lease import (
    LeaseCheckpoint,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
)
from kvapp.mvcc import (
    CompactRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    PutResponse,
    RangeRequest,
    TxnRequest,
    TxnResponse,
)
from kvapp.requests import (
    AlarmAction,
    AlarmMember,
    AlarmRequest,
    AlarmResponse,
    AlarmType,
    Body,
    MemberAddRequest,
    MemberAddResponse,
    MemberRemoveRequest,
    MemberRequest,
    MemberResponse,
    Request,
    RequestIdExpiredError,
    decode_request,
    encode_request,
)
from kvapp.service import MemberInfo


def new_state() -> KvState:
    return KvState(lambda: 0.0, grace=1.0)


def new_applier(**kwargs: Any) -> Applier:
    return Applier(new_state(), **kwargs)


def outcome(applier: Applier, request: Request, index: int) -> Any:
    """What apply returned, or the class and text of what it raised."""
    try:
        return applier.apply(request, index)
    except EtcdError as e:
        return (type(e), str(e))


# -- retries -------------------------------------------------------------------------------------


def test_a_retried_write_is_applied_once_and_gets_the_first_result() -> None:
    a = new_applier()
    put = Request(7, 1, PutRequest(b"k", b"v", prev_kv=True))
    first = a.apply(put, 1)
    assert first == PutResponse(2, None)
    kv_hash = a.state.hash()
    assert a.apply(put, 2) == first
    assert a.apply(put, 9) == first
    assert a.state.store.revision == 2
    assert a.state.hash() == kv_hash
    # The next request of the same client does apply.
    assert a.apply(Request(7, 2, PutRequest(b"k", b"w", prev_kv=True)), 10).revision == 3  # type: ignore[union-attr]


def test_a_retried_failure_raises_the_first_error_even_after_the_state_changed() -> None:
    a = new_applier()
    touch = Request(7, 1, PutRequest(b"k", ignore_value=True))
    with pytest.raises(KeyNotFoundError):
        a.apply(touch, 1)
    a.apply(Request(7, 2, PutRequest(b"k", b"now it exists")), 2)
    with pytest.raises(KeyNotFoundError) as info:
        a.apply(touch, 3)
    assert str(info.value) == "etcdserver: key not found"
    assert a.state.store.get(b"k").value == b"now it exists"  # type: ignore[union-attr]
    assert a.state.store.revision == 2


def test_client_zero_is_not_deduplicated() -> None:
    a = new_applier()
    put = Request(0, 1, PutRequest(b"k", b"v"))
    a.apply(put, 1)
    a.apply(put, 2)
    assert a.state.store.revision == 3
    assert a.session_count == 0


def test_reads_are_never_remembered() -> None:
    a = new_applier()
    a.apply(Request(0, 0, PutRequest(b"k", b"1")), 1)
    assert a.apply(Request(7, 1, RangeRequest(b"k")), 2).kvs[0].value == b"1"  # type: ignore[union-attr]
    assert a.apply(Request(7, 2, AlarmRequest(AlarmAction.GET)), 3) == AlarmResponse()
    assert not a.has_session(7)
    # Request ids used by reads are free for writes, and reads see the latest state.
    a.apply(Request(7, 1, PutRequest(b"k", b"2")), 4)
    assert a.apply(Request(7, 1, RangeRequest(b"k")), 5).kvs[0].value == b"2"  # type: ignore[union-attr]


def test_requests_within_the_window_may_commit_in_any_order() -> None:
    a = new_applier(window=4)
    results = {
        rid: a.apply(Request(7, rid, PutRequest(b"k%d" % rid)), i)
        for i, rid in enumerate([3, 1, 4, 2], start=1)
    }
    assert a.state.store.revision == 5
    for i, rid in enumerate([1, 2, 3, 4], start=10):
        assert a.apply(Request(7, rid, PutRequest(b"k%d" % rid)), i) == results[rid]
    assert a.state.store.revision == 5


def test_ids_that_fell_out_of_the_window_are_refused_not_applied() -> None:
    a = new_applier(window=4)
    for rid in range(1, 7):
        a.apply(Request(7, rid, PutRequest(b"k", b"%d" % rid)), rid)
    with pytest.raises(RequestIdExpiredError):
        a.apply(Request(7, 2, PutRequest(b"k", b"2")), 7)  # 2 <= 6 - 4: unknown fate
    assert a.state.store.revision == 7
    assert a.apply(Request(7, 3, PutRequest(b"k", b"3")), 8).revision == 4  # type: ignore[union-attr]
    with pytest.raises(RequestIdExpiredError):
        a.apply(Request(7, 1, PutRequest(b"never", b"sent before")), 9)
    assert a.state.store.get(b"never") is None


def test_a_far_jump_in_request_ids_forgets_everything_older() -> None:
    a = new_applier(window=4)
    a.apply(Request(7, 1, PutRequest(b"a")), 1)
    a.apply(Request(7, 1000, PutRequest(b"b")), 2)
    with pytest.raises(RequestIdExpiredError):
        a.apply(Request(7, 1, PutRequest(b"a")), 3)
    assert a.apply(Request(7, 1000, PutRequest(b"b")), 4).revision == 3  # type: ignore[union-attr]


def test_an_unknown_client_must_start_with_a_low_request_id() -> None:
    a = new_applier(window=4)
    with pytest.raises(RequestIdExpiredError):
        a.apply(Request(7, 5, PutRequest(b"k")), 1)
    assert not a.has_session(7)
    assert a.state.store.revision == 1
    a.apply(Request(7, 4, PutRequest(b"k")), 2)
    assert a.has_session(7)


def test_idle_sessions_expire_by_log_index_and_their_retries_are_refused() -> None:
    a = new_applier(window=4, idle_entries=10)
    for rid in range(1, 6):
        a.apply(Request(7, rid, PutRequest(b"k", b"%d" % rid)), rid)  # last at index 5
    a.apply(Request(8, 1, PutRequest(b"other")), 15)  # 15 - 5 = 10: not idle for more
    assert a.has_session(7)
    a.apply(Request(8, 2, PutRequest(b"other")), 16)
    assert not a.has_session(7)
    revision = a.state.store.revision
    with pytest.raises(RequestIdExpiredError):
        a.apply(Request(7, 5, PutRequest(b"k", b"5")), 17)
    assert a.state.store.revision == revision


def test_index_gaps_count_towards_expiry() -> None:
    """Entries not applied here (empty, configuration changes) still age sessions."""
    a = new_applier(idle_entries=10)
    a.apply(Request(7, 1, PutRequest(b"k")), 1)
    a.apply(Request(0, 0, PutRequest(b"x")), 100)
    assert a.session_count == 0


def test_a_retry_keeps_its_session_alive() -> None:
    a = new_applier(idle_entries=10)
    put = Request(7, 1, PutRequest(b"k"))
    a.apply(put, 1)
    a.apply(put, 10)
    a.apply(Request(8, 1, PutRequest(b"x")), 20)
    assert a.has_session(7)


def test_beyond_max_clients_the_least_recently_active_session_goes() -> None:
    a = new_applier(max_clients=2)
    a.apply(Request(1, 1, PutRequest(b"a")), 1)
    a.apply(Request(2, 1, PutRequest(b"b")), 2)
    a.apply(Request(1, 2, PutRequest(b"a")), 3)
    a.apply(Request(3, 1, PutRequest(b"c")), 4)
    assert [a.has_session(c) for c in (1, 2, 3)] == [True, False, True]


def test_indexes_must_increase() -> None:
    a = new_applier()
    a.apply(Request(7, 1, PutRequest(b"k")), 5)
    for index in (5, 4):
        with pytest.raises(ValueError, match="out of order"):
            a.apply(Request(7, 2, PutRequest(b"k")), index)
    assert a.state.store.revision == 2
    assert a.applied_index == 5


def test_bad_limits_are_refused() -> None:
    for kwargs in ({"window": 0}, {"idle_entries": 0}, {"max_clients": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            new_applier(**kwargs)


# -- membership and alarms -----------------------------------------------------------------------


class Members:
    def __init__(self) -> None:
        self.calls: list[MemberRequest] = []

    def __call__(self, request: MemberRequest) -> MemberResponse:
        self.calls.append(request)
        if isinstance(request, MemberAddRequest):
            member = MemberInfo(request.id, "", request.peer_urls, (), request.is_learner)
            return MemberAddResponse(member, [member])
        raise MemberNotFoundError


def test_membership_requests_go_to_the_handler_once_per_request_id() -> None:
    members = Members()
    a = new_applier(members=members)
    add = Request(7, 1, MemberAddRequest(0x42, ["http://h:2380"], is_learner=True))
    first = a.apply(add, 1)
    assert isinstance(first, MemberAddResponse)
    assert first.member.is_learner
    assert a.apply(add, 2) == first
    remove = Request(7, 2, MemberRemoveRequest(0x99))
    for index in (3, 4):
        with pytest.raises(MemberNotFoundError):
            a.apply(remove, index)
    assert members.calls == [add.body, remove.body]


def test_membership_requests_need_a_handler() -> None:
    with pytest.raises(RuntimeError, match="member handler"):
        new_applier().apply(Request(0, 0, MemberRemoveRequest(1)), 1)


def _alarm(action: AlarmAction, member: int = 0, alarm: AlarmType = AlarmType.NONE) -> Request:
    return Request(0, 0, AlarmRequest(action, member, alarm))


def test_nospace_refuses_what_needs_space_until_disarmed() -> None:
    a = new_applier()
    a.apply(Request(0, 0, PutRequest(b"k", b"v")), 1)
    a.apply(Request(0, 0, LeaseGrantRequest(10, 5)), 2)
    raised = a.apply(_alarm(AlarmAction.ACTIVATE, 3, AlarmType.NOSPACE), 3)
    assert raised == AlarmResponse([AlarmMember(3, AlarmType.NOSPACE)])
    nested_put = TxnRequest([], [DeleteRangeRequest(b"k"), TxnRequest([], [], [PutRequest(b"x")])])
    index = 4
    for body in (PutRequest(b"k"), nested_put, LeaseGrantRequest(10)):
        with pytest.raises(NoSpaceError):
            a.apply(Request(0, 0, body), index)
        index += 1
    revision = a.state.store.revision
    allowed: list[Body] = [
        RangeRequest(b"k"),
        TxnRequest([], [RangeRequest(b"k")]),
        DeleteRangeRequest(b"k"),
        CompactRequest(2),
        LeaseRevokeRequest(5),
        LeaseCheckpointRequest([LeaseCheckpoint(5, 1)]),
    ]
    for ok in allowed:
        a.apply(Request(0, 0, ok), index)
        index += 1
    assert a.state.store.revision == revision + 1  # the delete
    assert a.apply(_alarm(AlarmAction.DEACTIVATE, 3, AlarmType.NOSPACE), index) == raised
    assert a.apply(Request(0, 0, PutRequest(b"k")), index + 1).revision == revision + 2  # type: ignore[union-attr]


def test_corrupt_refuses_reads_and_writes_through_the_log() -> None:
    a = new_applier()
    a.apply(_alarm(AlarmAction.ACTIVATE, 1, AlarmType.CORRUPT), 1)
    index = 2
    for body in (
        RangeRequest(b"k"),
        PutRequest(b"k"),
        DeleteRangeRequest(b"k"),
        TxnRequest(),
        CompactRequest(1),
        LeaseGrantRequest(5),
        LeaseRevokeRequest(1),
    ):
        with pytest.raises(CorruptClusterError):
            a.apply(Request(0, 0, body), index)
        index += 1
    a.apply(Request(0, 0, LeaseCheckpointRequest([])), index)
    assert a.alarms() == (AlarmMember(1, AlarmType.CORRUPT),)


def test_alarm_requests_behave_as_etcds() -> None:
    a = new_applier()
    assert a.apply(_alarm(AlarmAction.ACTIVATE, 1, AlarmType.NONE), 1) == AlarmResponse()
    a.apply(_alarm(AlarmAction.ACTIVATE, 2, AlarmType.NOSPACE), 2)
    again = a.apply(_alarm(AlarmAction.ACTIVATE, 2, AlarmType.NOSPACE), 3)
    assert again == AlarmResponse([AlarmMember(2, AlarmType.NOSPACE)])
    a.apply(_alarm(AlarmAction.ACTIVATE, 1, AlarmType.CORRUPT), 4)
    assert a.apply(_alarm(AlarmAction.GET), 5) == AlarmResponse(
        [AlarmMember(1, AlarmType.CORRUPT), AlarmMember(2, AlarmType.NOSPACE)]
    )
    only = a.apply(_alarm(AlarmAction.GET, 0, AlarmType.NOSPACE), 6)
    assert only == AlarmResponse([AlarmMember(2, AlarmType.NOSPACE)])
    assert a.apply(_alarm(AlarmAction.DEACTIVATE, 9, AlarmType.NOSPACE), 7) == AlarmResponse()
    a.apply(_alarm(AlarmAction.DEACTIVATE, 1, AlarmType.CORRUPT), 8)
    assert a.alarms() == (AlarmMember(2, AlarmType.NOSPACE),)


# -- determinism: the compacted-revision txn (etcd-io/etcd#18667) ---------------------------------


def _compaction_history() -> list[Request]:
    return [
        Request(0, 0, PutRequest(b"a", b"1")),  # revision 2
        Request(0, 0, PutRequest(b"a", b"2")),  # 3
        Request(0, 0, PutRequest(b"b", b"1")),  # 4
        Request(0, 0, CompactRequest(4)),
        # A write txn whose taken branch reads a compacted revision: fails everywhere.
        Request(5, 1, TxnRequest([], [RangeRequest(b"a", revision=2), PutRequest(b"c", b"1")])),
        # The same read in the branch not taken does not matter.
        Request(
            5,
            2,
            TxnRequest(
                [Compare(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b"2")],
                [PutRequest(b"c", b"2")],
                [RangeRequest(b"a", revision=2), PutRequest(b"c", b"3")],
            ),
        ),
        # At the compacted revision itself the read succeeds.
        Request(5, 3, TxnRequest([], [RangeRequest(b"a", revision=4), PutRequest(b"d", b"1")])),
        Request(5, 1, TxnRequest([], [RangeRequest(b"a", revision=2), PutRequest(b"c", b"1")])),
    ]


def test_a_write_txn_reading_a_compacted_revision_fails_on_every_member_alike() -> None:
    members = [new_applier() for _ in range(3)]
    snapshot_taker = new_applier()
    history = _compaction_history()
    results: list[list[Any]] = [
        [outcome(m, decode_request(encode_request(r)), i) for i, r in enumerate(history, 1)]
        for m in members
    ]
    # A fourth member joins from a snapshot taken right after the compaction.
    for i, r in enumerate(history[:4], start=1):
        snapshot_taker.apply(r, i)
    late = new_applier()
    late.restore_bytes(snapshot_taker.snapshot_bytes())
    results.append(
        results[0][:4] + [outcome(late, r, i) for i, r in enumerate(history[4:], start=5)]
    )
    members.append(late)

    assert all(r == results[0] for r in results)
    first = results[0]
    assert first[4] == (CompactedError, "etcdserver: mvcc: required revision has been compacted")
    assert isinstance(first[5], TxnResponse)
    assert first[5].succeeded
    assert isinstance(first[6], TxnResponse)
    assert first[6].responses[0].kvs  # type: ignore[union-attr]
    assert first[7] == first[4]  # the retry gets the same error
    assert len({m.hash() for m in members}) == 1
    assert len({m.state.hash() for m in members}) == 1
    assert members[0].state.store.get(b"c").value == b"2"  # type: ignore[union-attr]


def test_two_kvstates_agree_on_a_compacted_read_in_a_write_txn() -> None:
    """Without the applier too: KvState alone is deterministic there."""
    states = [new_state(), new_state()]
    bodies: list[Any] = [r.body for r in _compaction_history()]
    seen: list[list[Any]] = [[], []]
    for state, out in zip(states, seen, strict=True):
        for body in bodies:
            try:
                out.append(state.apply(body))
            except EtcdError as e:
                out.append(type(e))
    assert seen[0] == seen[1]
    assert seen[0][4] is CompactedError
    assert states[0].hash() == states[1].hash()
    assert states[0].store.revision == 6


# -- snapshots -----------------------------------------------------------------------------------


def _busy_applier(**kwargs: Any) -> Applier:
    a = new_applier(window=4, idle_entries=50, **kwargs)
    index = 0
    for client in (11, 12, 13):
        for rid in (1, 2, 3, 5):
            index += 1
            body: Body = PutRequest(b"k%d" % client, b"%d" % rid, prev_kv=True)
            if rid == 3:
                body = PutRequest(b"missing", ignore_lease=True)
            with contextlib.suppress(EtcdError):
                a.apply(Request(client, rid, body), index)
    a.apply(_alarm(AlarmAction.ACTIVATE, 2, AlarmType.NOSPACE), index + 1)
    return a


def test_snapshot_restore_gives_identical_state_hash_and_answers() -> None:
    a = _busy_applier()
    data = a.snapshot_bytes()
    b = new_applier(window=4, idle_entries=50)
    b.apply(Request(99, 1, PutRequest(b"junk")), 1)
    b.restore_bytes(data)
    assert b.hash() == a.hash()
    assert b.snapshot_bytes() == data
    assert b.applied_index == a.applied_index
    assert b.alarms() == a.alarms()
    assert not b.has_session(99)
    index = a.applied_index + 1
    for client in (11, 12, 13):
        for rid in (1, 2, 3, 4, 5, 6):
            request = Request(client, rid, DeleteRangeRequest(b"k%d" % client))
            assert outcome(b, request, index) == outcome(a, request, index)
            index += 1
    assert b.hash() == a.hash()


def test_a_snapshot_image_is_the_state_when_taken_whatever_is_applied_later() -> None:
    a = _busy_applier()
    before = a.snapshot_bytes()
    image = a.snapshot_image()
    index = a.applied_index + 1
    a.apply(_alarm(AlarmAction.DEACTIVATE, 2, AlarmType.NOSPACE), index)
    for client, rid in ((11, 6), (12, 7), (14, 1)):
        index += 1
        a.apply(Request(client, rid, PutRequest(b"k%d" % client, b"later")), index)
    assert a.snapshot_bytes() != before
    assert image.to_bytes() == before


def test_many_sessions_snapshot_in_chunks() -> None:
    a = new_applier()
    for client in range(1, 2500):
        a.apply(Request(client, 1, RangeRequest(b"k") if client % 2 else PutRequest(b"k")), client)
    b = new_applier()
    b.restore_bytes(a.snapshot_bytes())
    assert b.session_count == a.session_count == 1249
    assert b.hash() == a.hash()


def test_the_hash_covers_sessions_and_alarms() -> None:
    base = new_applier()
    retried = new_applier()
    alarmed = new_applier()
    for a in (base, retried, alarmed):
        a.apply(Request(7, 1, PutRequest(b"k")), 1)
        a.apply(Request(0, 0, PutRequest(b"x")), 2)
    retried.apply(Request(7, 1, PutRequest(b"k")), 3)  # only the session's last index moves
    base.apply(Request(0, 0, RangeRequest(b"x")), 3)
    alarmed.apply(_alarm(AlarmAction.ACTIVATE, 1, AlarmType.NOSPACE), 3)
    assert base.state.hash() == retried.state.hash() == alarmed.state.hash()
    assert len({base.hash(), retried.hash(), alarmed.hash()}) == 3


class _Unseekable(io.RawIOBase):
    """A stream that cannot seek, so a decoder that read ahead could not put bytes back."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        chunk = self._buf.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


def test_restore_reads_from_unseekable_streams() -> None:
    a = _busy_applier()
    b = new_applier(window=4, idle_entries=50)
    b.restore(_Unseekable(a.snapshot_bytes()))  # type: ignore[arg-type]
    assert b.hash() == a.hash()


def _assert_rejected(data: bytes) -> None:
    b = _busy_applier()
    before = (b.hash(), b.snapshot_bytes())
    with pytest.raises(StateSnapshotError):
        b.restore_bytes(data)
    assert (b.hash(), b.snapshot_bytes()) == before


def test_every_truncation_is_rejected_and_changes_nothing() -> None:
    data = _busy_applier().snapshot_bytes()
    for cut in range(0, len(data), 3):
        _assert_rejected(data[:cut])


def test_every_byte_flip_in_the_section_is_rejected_and_changes_nothing() -> None:
    data = _busy_applier().snapshot_bytes()
    section = len(data) - len(_busy_applier().state.snapshot_bytes())
    for i in range(section):
        flipped = bytearray(data)
        flipped[i] ^= 0x41
        _assert_rejected(bytes(flipped))


def test_a_snapshot_from_differently_configured_members_is_refused() -> None:
    data = _busy_applier().snapshot_bytes()
    other = Applier(new_state(), window=5, idle_entries=50)
    with pytest.raises(StateSnapshotError, match="must agree"):
        other.restore_bytes(data)


def test_trailing_data_is_rejected() -> None:
    _assert_rejected(_busy_applier().snapshot_bytes() + b"\x00")


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_state_snapshot_error(data: bytes) -> None:
    a = new_applier()
    with contextlib.suppress(StateSnapshotError):
        a.restore_bytes(data)
    assert a.state.store.revision == 1


# -- property: the applier against a naive model of the documented rules --------------------------

WINDOW, IDLE, MAX_CLIENTS = 3, 12, 2


class Model:
    """Sessions as the module docstring states them, kept naively (every id ever applied)."""

    def __init__(self) -> None:
        self.sessions: dict[int, tuple[int, dict[int, Any]]] = {}  # client -> (last, results)

    def decide(self, client: int, rid: int, index: int) -> str:
        self.sessions = {c: s for c, s in self.sessions.items() if s[0] >= index - IDLE}
        if client == 0:
            return "apply"
        session = self.sessions.get(client)
        if session is None:
            return "apply" if rid <= WINDOW else "refuse"
        results = session[1]
        self.sessions[client] = (index, results)
        high = max(results)
        if rid in results and rid > high - WINDOW:
            return "replay"
        return "refuse" if rid <= high - WINDOW else "apply"

    def applied(self, client: int, rid: int, index: int, result: Any) -> None:
        if client == 0:
            return
        if client not in self.sessions:
            self.sessions[client] = (index, {})
            if len(self.sessions) > MAX_CLIENTS:
                oldest = min(self.sessions, key=lambda c: self.sessions[c][0])
                del self.sessions[oldest]
        self.sessions[client][1][rid] = result


def body_for(client: int, rid: int) -> Body:
    """Every attempt of (client, rid) carries the same body, as a real retry does."""
    key = b"k%d" % (rid % 3)
    match (client * 7 + rid) % 4:
        case 0:
            return PutRequest(key, b"%d/%d" % (client, rid), prev_kv=True)
        case 1:
            return DeleteRangeRequest(key, prev_kv=True)
        case 2:
            return TxnRequest(
                [Compare(key, CompareTarget.VERSION, CompareResult.GREATER, 0)],
                [PutRequest(key, b"%d/%d" % (client, rid))],
                [RangeRequest(key)],
            )
        case _:
            return PutRequest(key, ignore_value=True)  # fails while the key is missing


steps = st.lists(
    st.tuples(st.sampled_from([0, 1, 2, 3]), st.integers(1, 6), st.integers(1, 6)),
    min_size=5,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(steps, st.integers(0, 60))
def test_the_applier_follows_the_session_rules_and_replicas_agree(
    drawn: list[tuple[int, int, int]], split: int
) -> None:
    applier = Applier(new_state(), window=WINDOW, idle_entries=IDLE, max_clients=MAX_CLIENTS)
    replica = Applier(new_state(), window=WINDOW, idle_entries=IDLE, max_clients=MAX_CLIENTS)
    shadow = new_state()  # applies exactly what the model says is applied
    model = Model()
    index = 0
    for n, (client, rid, gap) in enumerate(drawn):
        index += gap
        request = Request(client, rid if client else 0, body_for(client, rid))
        if n == split:  # a member that joins from a snapshot taken here
            replica.restore_bytes(applier.snapshot_bytes())
        got = outcome(applier, request, index)
        if n >= split:
            assert outcome(replica, request, index) == got
        decision = model.decide(client, rid, index)
        event(decision)
        match decision:
            case "apply":
                try:
                    expected: Any = shadow.apply(request.body)  # type: ignore[arg-type]
                except EtcdError as e:
                    expected = (type(e), str(e))
                model.applied(client, rid, index, expected)
            case "replay":
                expected = model.sessions[client][1][rid]
            case _:
                expected = (RequestIdExpiredError, RequestIdExpiredError.message)
        assert got == expected, (n, client, rid, index)
    assert applier.state.hash() == shadow.hash()
    if split >= len(drawn):
        replica.restore_bytes(applier.snapshot_bytes())
    assert replica.hash() == applier.hash()
    assert replica.snapshot_bytes() == applier.snapshot_bytes()
    assert {c for c in (1, 2, 3) if applier.has_session(c)} == set(model.sessions)
