r"""kvctl's output, in etcdctl's three formats.

- ``simple`` (default): etcdctl's plain lines, e.g. ``OK``, ``key\\nvalue``, ``SUCCESS``,
  ``lease 0000000000000001 granted with TTL(10s)``, comma-separated member and status rows.
- ``json``: what ``etcdctl -w json`` prints, i.e. Go's ``encoding/json`` of etcd's responses:
  snake_case protobuf field names with zero values left out, 64-bit integers as JSON numbers,
  keys and values in standard base64, and the ``header`` with ``cluster_id``, ``member_id``,
  ``revision`` and ``raft_term``. Lease responses are flat, as clientv3 embeds the header.
- ``table``: ASCII tables for ``member list``, ``endpoint status`` and ``endpoint health``.

Keys and values are written as raw bytes (like etcdctl's ``string(bytes)``), or hex-escaped
with ``--hex``; everything else is UTF-8 text.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import BinaryIO, Final

import attrs

from kvapp.lease import LeaseGrantResponse, LeaseKeepAliveResponse, LeaseTimeToLiveResponse
from kvapp.mvcc.types import (
    DeleteRangeResponse,
    Event,
    EventType,
    KeyValue,
    PutResponse,
    RangeResponse,
    ResponseOp,
    TxnResponse,
)
from kvapp.requests import AlarmMember
from kvapp.service import MemberInfo, ResponseHeader, StatusInfo, alarm_text

__all__ = [
    "TABLE_COMMANDS",
    "EndpointHealth",
    "EndpointStatus",
    "Output",
    "Printer",
    "go_duration",
    "go_quote",
    "render_table",
]

TABLE_COMMANDS: Final = frozenset({"member list", "endpoint status", "endpoint health"})
"""The commands that can print ``-w table``."""

JsonObject = dict[str, object]


class Output:
    """A line writer over a binary stream (raw bytes for keys and values, UTF-8 for text).

    Args:
        stream: the stream.
        autoflush: flush after every line (for standard error).
    """

    def __init__(self, stream: BinaryIO, *, autoflush: bool = False) -> None:
        self._stream = stream
        self._autoflush = autoflush

    def line(self, text: str = "") -> None:
        """Write ``text`` and a newline."""
        self._stream.write(text.encode("utf-8", "surrogateescape") + b"\n")
        if self._autoflush:
            self._stream.flush()

    def raw(self, data: bytes) -> None:
        """Write ``data`` and a newline."""
        self._stream.write(data + b"\n")

    def flush(self) -> None:
        """Push what was written to the reader (for streaming commands)."""
        self._stream.flush()


@attrs.frozen
class EndpointStatus:
    """One endpoint's status, for ``endpoint status``."""

    endpoint: str
    status: StatusInfo


@attrs.frozen
class EndpointHealth:
    """One endpoint's health check, for ``endpoint health``.

    Attributes:
        endpoint: the endpoint.
        health: whether a linearizable read succeeded and no alarm is raised.
        took: seconds the read took.
        error: why it is unhealthy (empty when healthy).
    """

    endpoint: str
    health: bool
    took: float
    error: str = ""


# -- formatting helpers ------------------------------------------------------------------------


def go_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration.String()`` prints it (``1.234ms``, ``2m3.5s``)."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def frac(value: int, digits: int) -> str:
        whole, rest = divmod(value, 10**digits)
        tail = f"{rest:0{digits}d}".rstrip("0")
        return f"{whole}.{tail}" if tail else str(whole)

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{frac(ns, 6)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = f"{frac(rest, 9)}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


_GO_ESCAPES: Final = {
    7: "\\a",
    8: "\\b",
    12: "\\f",
    10: "\\n",
    13: "\\r",
    9: "\\t",
    11: "\\v",
    92: "\\\\",
    34: '\\"',
}


def go_quote(text: str) -> str:
    """``text`` as Go's ``%q`` prints it (a double-quoted, escaped string literal)."""
    out = []
    for ch in text:
        code = ord(ch)
        if code in _GO_ESCAPES:
            out.append(_GO_ESCAPES[code])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable():
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """An ASCII table like etcdctl's: upper-case centred headings, right-aligned cells."""
    heads = [h.upper() for h in header]
    widths = [len(h) for h in heads]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def row_line(cells: Sequence[str], align: Callable[[str, int], str]) -> str:
        return "| " + " | ".join(align(c, w) for c, w in zip(cells, widths, strict=True)) + " |"

    lines = [rule, row_line(heads, str.center), rule]
    lines.extend(row_line(row, str.rjust) for row in rows)
    if rows:
        lines.append(rule)
    return lines


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _omit_empty(obj: JsonObject) -> JsonObject:
    """Go's ``omitempty``: drop zero numbers, false, empty strings/lists and None."""
    return {k: v for k, v in obj.items() if v not in (0, False, "", None, [], {})}


def kv_json(kv: KeyValue) -> JsonObject:
    """The etcd ``mvccpb.KeyValue`` in JSON."""
    return _omit_empty(
        {
            "key": _b64(kv.key),
            "create_revision": kv.create_revision,
            "mod_revision": kv.mod_revision,
            "version": kv.version,
            "value": _b64(kv.value),
            "lease": kv.lease,
        }
    )


def header_json(h: ResponseHeader, *, hex_ids: bool = False) -> JsonObject:
    """The etcd ``ResponseHeader`` in JSON (ids in hex strings with ``--hex``, as etcdctl)."""
    if hex_ids:
        out: JsonObject = {"cluster_id": f"{h.cluster_id:x}", "member_id": f"{h.member_id:x}"}
        out.update(_omit_empty({"revision": h.revision, "raft_term": h.raft_term}))
        return out
    return _omit_empty(
        {
            "cluster_id": h.cluster_id,
            "member_id": h.member_id,
            "revision": h.revision,
            "raft_term": h.raft_term,
        }
    )


def range_json(r: RangeResponse, header: JsonObject) -> JsonObject:
    """The etcd ``RangeResponse`` in JSON."""
    return _omit_empty(
        {
            "header": header,
            "kvs": [kv_json(kv) for kv in r.kvs],
            "more": r.more,
            "count": r.count,
        }
    )


def put_json(r: PutResponse, header: JsonObject) -> JsonObject:
    """The etcd ``PutResponse`` in JSON."""
    return _omit_empty(
        {"header": header, "prev_kv": kv_json(r.prev_kv) if r.prev_kv is not None else None}
    )


def delete_json(r: DeleteRangeResponse, header: JsonObject) -> JsonObject:
    """The etcd ``DeleteRangeResponse`` in JSON."""
    return _omit_empty(
        {"header": header, "deleted": r.deleted, "prev_kvs": [kv_json(kv) for kv in r.prev_kvs]}
    )


def txn_json(r: TxnResponse, header: JsonObject) -> JsonObject:
    """As etcdctl's ``TxnResponseJSON``: responses as ``{"Response": {"response_put": ...}}``."""
    responses: list[object] = []
    for op in r.responses:
        inner = _omit_empty({"revision": op.revision})
        item: JsonObject
        if isinstance(op, RangeResponse):
            item = {"response_range": range_json(op, inner)}
        elif isinstance(op, PutResponse):
            item = {"response_put": put_json(op, inner)}
        elif isinstance(op, DeleteRangeResponse):
            item = {"response_delete_range": delete_json(op, inner)}
        else:
            item = {"response_txn": txn_json(op, inner)}
        responses.append({"Response": item})
    return _omit_empty({"header": header, "succeeded": r.succeeded, "responses": responses})


def member_json(m: MemberInfo, *, hex_ids: bool = False) -> JsonObject:
    """The etcd ``Member`` in JSON."""
    out: JsonObject = {"ID": f"{m.id:x}" if hex_ids else m.id}
    out.update(
        _omit_empty(
            {
                "name": m.name,
                "peerURLs": list(m.peer_urls),
                "clientURLs": list(m.client_urls),
                "isLearner": m.is_learner,
            }
        )
    )
    return out


def status_json(st: StatusInfo) -> JsonObject:
    """The etcd ``StatusResponse`` in JSON (there are no database-size fields here)."""
    return _omit_empty(
        {
            "header": header_json(st.header),
            "version": st.version,
            "leader": st.leader,
            "raftIndex": st.raft_index,
            "raftTerm": st.raft_term,
            "raftAppliedIndex": st.raft_applied_index,
            "errors": list(st.errors),
            "isLearner": st.is_learner,
        }
    )


def _flat_header(h: ResponseHeader) -> JsonObject:
    """clientv3's lease responses embed ``*pb.ResponseHeader``: its fields come first, flat."""
    return header_json(h)


# -- the printer -------------------------------------------------------------------------------


class Printer:
    """Prints each command's result in one format (``simple``, ``json`` or ``table``).

    Args:
        fmt: the format.
        out: where to write.
        hex_: print keys and values hex-escaped (simple) and ids as hex strings (json).
    """

    def __init__(self, fmt: str, out: Output, *, hex_: bool = False) -> None:
        self.fmt = fmt
        self.out = out
        self.hex = hex_

    @property
    def json(self) -> bool:
        """Whether the format is JSON."""
        return self.fmt == "json"

    def _json(self, obj: object) -> None:
        self.out.line(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))

    def _bytes(self, data: bytes) -> None:
        if self.hex:
            self.out.line("".join(f"\\x{byte:02x}" for byte in data))
        else:
            self.out.raw(data)

    def _kv(self, kv: KeyValue, *, value_only: bool = False) -> None:
        if not value_only:
            self._bytes(kv.key)
        self._bytes(kv.value)

    # -- KV --

    def get(
        self, r: RangeResponse, header: ResponseHeader | None, *, value_only: bool = False
    ) -> None:
        r"""``get``: ``key\\nvalue`` per key (the count alone for ``--count-only``)."""
        if self.json:
            assert header is not None
            self._json(range_json(r, header_json(header)))
            return
        self._get_simple(r, value_only=value_only)

    def _get_simple(self, r: RangeResponse, *, value_only: bool = False) -> None:
        for kv in r.kvs:
            self._kv(kv, value_only=value_only)

    def count(self, r: RangeResponse) -> None:
        """``get --count-only`` in the simple format: the count (etcdctl prints nothing)."""
        self.out.line(str(r.count))

    def put(self, r: PutResponse, header: ResponseHeader | None) -> None:
        """``put``: ``OK`` and the previous key-value pair if asked for."""
        if self.json:
            assert header is not None
            self._json(put_json(r, header_json(header)))
            return
        self._put_simple(r)

    def _put_simple(self, r: PutResponse) -> None:
        self.out.line("OK")
        if r.prev_kv is not None:
            self._kv(r.prev_kv)

    def delete(self, r: DeleteRangeResponse, header: ResponseHeader | None) -> None:
        """``del``: the number deleted, and the deleted pairs if asked for."""
        if self.json:
            assert header is not None
            self._json(delete_json(r, header_json(header)))
            return
        self._delete_simple(r)

    def _delete_simple(self, r: DeleteRangeResponse) -> None:
        self.out.line(str(r.deleted))
        for kv in r.prev_kvs:
            self._kv(kv)

    def txn(self, r: TxnResponse, header: ResponseHeader | None) -> None:
        """``txn``: SUCCESS or FAILURE, then a blank line and each operation's output."""
        if self.json:
            assert header is not None
            self._json(txn_json(r, header_json(header)))
            return
        self.out.line("SUCCESS" if r.succeeded else "FAILURE")
        for op in r.responses:
            self.out.line()
            self._op_simple(op)

    def _op_simple(self, op: ResponseOp) -> None:
        if isinstance(op, RangeResponse):
            self._get_simple(op)
        elif isinstance(op, PutResponse):
            self._put_simple(op)
        elif isinstance(op, DeleteRangeResponse):
            self._delete_simple(op)
        else:
            self.out.line(f"unexpected response {op!r}")

    def watch(self, event: Event, header: ResponseHeader | None) -> None:
        """One watch event: ``PUT``/``DELETE``, the previous pair if asked for, the pair."""
        if self.json:
            assert header is not None
            ev = _omit_empty(
                {
                    "type": int(event.type),
                    "kv": kv_json(event.kv),
                    "prev_kv": kv_json(event.prev_kv) if event.prev_kv is not None else None,
                }
            )
            self._json(
                {
                    "Header": header_json(attrs.evolve(header, revision=event.kv.mod_revision)),
                    "Events": [ev],
                    "CompactRevision": 0,
                    "Canceled": False,
                    "Created": False,
                }
            )
            return
        self.out.line("PUT" if event.type is EventType.PUT else "DELETE")
        if event.prev_kv is not None:
            self._kv(event.prev_kv)
        self._kv(event.kv)

    # -- leases --

    def grant(self, r: LeaseGrantResponse, header: ResponseHeader | None) -> None:
        """``lease grant``."""
        if self.json:
            assert header is not None
            self._json({**_flat_header(header), "ID": r.id, "TTL": r.ttl, "Error": ""})
            return
        self.out.line(f"lease {r.id:016x} granted with TTL({r.ttl}s)")

    def revoke(self, lease_id: int, header: ResponseHeader | None) -> None:
        """``lease revoke``."""
        if self.json:
            assert header is not None
            self._json({"header": header_json(header)})
            return
        self.out.line(f"lease {lease_id:016x} revoked")

    def keep_alive(self, r: LeaseKeepAliveResponse, header: ResponseHeader | None) -> None:
        """One ``lease keep-alive`` renewal."""
        if self.json:
            assert header is not None
            self._json({**_flat_header(header), "ID": r.id, "TTL": r.ttl})
            return
        self.out.line(f"lease {r.id:016x} keepalived with TTL({r.ttl})")

    def time_to_live(
        self, r: LeaseTimeToLiveResponse, header: ResponseHeader | None, *, keys: bool
    ) -> None:
        """``lease timetolive`` (a lease that is gone has TTL -1 and granted TTL 0)."""
        if self.json:
            assert header is not None
            self._json(
                {
                    **_flat_header(header),
                    "id": r.id,
                    "ttl": r.ttl,
                    "granted-ttl": r.granted_ttl,
                    "keys": [_b64(k) for k in r.keys] if r.keys else None,
                }
            )
            return
        if r.granted_ttl == 0 and r.ttl == -1:
            self.out.line(f"lease {r.id:016x} already expired")
            return
        text = f"lease {r.id:016x} granted with TTL({r.granted_ttl}s), remaining({r.ttl}s)"
        if keys:
            names = " ".join(k.decode("utf-8", "surrogateescape") for k in r.keys)
            text += f", attached keys([{names}])"
        self.out.line(text)

    def leases(self, ids: Sequence[int], header: ResponseHeader | None) -> None:
        """``lease list``."""
        if self.json:
            assert header is not None
            self._json({**_flat_header(header), "leases": [{"id": i} for i in ids]})
            return
        self.out.line(f"found {len(ids)} leases")
        for i in ids:
            self.out.line(f"{i:016x}")

    # -- members --

    def _members_json(
        self, header: ResponseHeader, members: Sequence[MemberInfo], member: MemberInfo | None
    ) -> None:
        obj: JsonObject = {"header": header_json(header, hex_ids=self.hex)}
        if member is not None:
            obj["member"] = member_json(member, hex_ids=self.hex)
        obj["members"] = [member_json(m, hex_ids=self.hex) for m in members]
        self._json(obj)

    def member_list(self, members: Sequence[MemberInfo], header: ResponseHeader | None) -> None:
        """``member list``: ``id, started, name, peer urls, client urls, is learner``."""
        if self.json:
            assert header is not None
            self._members_json(header, members, None)
            return
        rows = [
            [
                f"{m.id:x}",
                "started" if m.name else "unstarted",
                m.name,
                ",".join(m.peer_urls),
                ",".join(m.client_urls),
                str(m.is_learner).lower(),
            ]
            for m in members
        ]
        if self.fmt == "table":
            heads = ["ID", "Status", "Name", "Peer Addrs", "Client Addrs", "Is Learner"]
            for line in render_table(heads, rows):
                self.out.line(line)
            return
        for row in rows:
            self.out.line(", ".join(row))

    def member_added(
        self, member: MemberInfo, members: Sequence[MemberInfo], header: ResponseHeader
    ) -> None:
        """``member add``'s first line (or its JSON); the caller prints the start instructions."""
        if self.json:
            self._members_json(header, members, member)
            return
        learner = " as learner " if member.is_learner else " "
        self.out.line(f"Member {member.id:16x} added{learner}to cluster {header.cluster_id:16x}")

    def member_changed(
        self, what: str, member_id: int, members: Sequence[MemberInfo], header: ResponseHeader
    ) -> None:
        """``member remove`` (``what`` "removed from") or ``promote`` ("promoted in")."""
        if self.json:
            self._members_json(header, members, None)
            return
        self.out.line(f"Member {member_id:16x} {what} cluster {header.cluster_id:16x}")

    # -- alarms --

    def alarms(self, alarms: Sequence[AlarmMember]) -> None:
        """``alarm list`` / ``alarm disarm``: ``memberID:<id> alarm:<TYPE> `` per alarm.

        In JSON, etcd 3.4's answer has no header (its server sets none, and etcdctl's disarm
        builds its answer itself): ``{}`` when there is no alarm.
        """
        if self.json:
            obj: JsonObject = {}
            if alarms:
                obj["alarms"] = [
                    _omit_empty({"memberID": a.member_id, "alarm": int(a.alarm)}) for a in alarms
                ]
            self._json(obj)
            return
        for a in alarms:
            self.out.line(alarm_text(a))

    # -- endpoints --

    def endpoint_status(self, statuses: Sequence[EndpointStatus]) -> None:
        """``endpoint status``: one row per endpoint that answered."""
        if self.json:
            self._json(
                [{"Endpoint": e.endpoint, "Status": status_json(e.status)} for e in statuses]
            )
            return
        rows = [
            [
                e.endpoint,
                f"{e.status.header.member_id:x}",
                e.status.version,
                str(e.status.leader == e.status.header.member_id).lower(),
                str(e.status.is_learner).lower(),
                str(e.status.raft_term),
                str(e.status.raft_index),
                str(e.status.raft_applied_index),
                ", ".join(e.status.errors),
            ]
            for e in statuses
        ]
        if self.fmt == "table":
            heads = [
                "endpoint",
                "ID",
                "version",
                "is leader",
                "is learner",
                "raft term",
                "raft index",
                "raft applied index",
                "errors",
            ]
            for line in render_table(heads, rows):
                self.out.line(line)
            return
        for row in rows:
            self.out.line(", ".join(row))

    def endpoint_health(self, results: Sequence[EndpointHealth], err: Output) -> None:
        """``endpoint health``: healthy endpoints on stdout, unhealthy ones on ``err``."""
        if self.json:
            items: list[JsonObject] = []
            for h in results:
                item: JsonObject = {
                    "endpoint": h.endpoint,
                    "health": h.health,
                    "took": go_duration(h.took),
                }
                if h.error:
                    item["error"] = h.error
                items.append(item)
            self._json(items)
            return
        if self.fmt == "table":
            rows = [
                [h.endpoint, str(h.health).lower(), go_duration(h.took), h.error] for h in results
            ]
            for line in render_table(["endpoint", "health", "took", "error"], rows):
                self.out.line(line)
            return
        for h in results:
            if h.health:
                self.out.line(
                    f"{h.endpoint} is healthy: successfully committed proposal: "
                    f"took = {go_duration(h.took)}"
                )
            else:
                err.line(f"{h.endpoint} is unhealthy: failed to commit proposal: {h.error}")
