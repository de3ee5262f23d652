"""etcd's HTTP/JSON gateway: the v3 API's ``POST /v3/...`` paths, answered by the gRPC servicers.

etcd serves grpc-gateway v1 (1.9.5 in etcd 3.4) on its client URLs: each RPC with a
``google.api.http`` annotation in ``rpc.proto`` is a ``POST`` path whose JSON body is the
request and whose JSON answer is the response. :class:`EtcdGateway` is that mapping with no
HTTP in it (:mod:`kvapp.server.etcd.gateway_http` serves it): a request is decoded from JSON
into :mod:`kvapp.etcdpb`'s message, handed to the same servicer method the gRPC server calls
(:mod:`kvapp.server.etcd.services`, :mod:`kvapp.server.etcd.watch`), and its response or error
is encoded as grpc-gateway encodes it, so the semantics, headers and errors are the gRPC API's.

JSON, as grpc-gateway's default marshaler (``JSONPb{OrigName: true}``) writes and reads it:

- field names as spelled in the .proto (``range_end``, ``create_revision``, ``TTL``, ``ID``,
  ``peerURLs``); the lowerCamel JSON names are accepted in requests too;
- fields with their default value (0, false, empty, the first enum value) are left out;
- ``bytes`` are standard base64 with padding (URL-safe base64 is accepted in requests);
  anything else in a bytes field is refused, so ``{"key": "foo"}`` is an error, not a key;
- 64-bit integers are JSON strings (numbers are accepted in requests); enums are names
  (numbers accepted); unknown fields in requests are ignored.

Errors are grpc-gateway's body ``{"error": text, "message": text, "code": grpc_code}`` with
the HTTP status it maps the gRPC code to (:func:`http_status`). Streaming RPCs (Watch,
LeaseKeepAlive, Snapshot) answer with newline-delimited ``{"result": response}`` objects; the
request body of Watch and LeaseKeepAlive holds one or more JSON requests, sent in order, after
which the client's side of the stream is closed (a keep-alive stream then ends; a watch stream
goes on until the client disconnects, as etcd's does). An error during a stream ends it with
``{"error": {"grpc_code", "http_code", "message", "http_status"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import http
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, Final

import attrs
from google.protobuf import json_format  # type: ignore[import-untyped]
from google.protobuf.descriptor import (  # type: ignore[import-untyped]
    Descriptor,
    FieldDescriptor,
)
from google.protobuf.message import Message  # type: ignore[import-untyped]

from kvapp.errors import GrpcCode
from kvapp.etcdpb import rpc_pb2
from kvapp.node import MAX_REQUEST_BYTES
from kvapp.server.etcd.lockservice import ConcurrencyServices
from kvapp.server.etcd.maintenance import MaintenanceBackend
from kvapp.server.etcd.services import (
    ClusterServicer,
    EtcdApi,
    KVServicer,
    LeaseServicer,
    MaintenanceServicer,
    abort_with,
)
from kvapp.server.etcd.watch import GRPC_OVERHEAD_BYTES, WatchServicer
from kvapp.server.grpc_h2 import Aborted, ServicerContext
from kvapp.service import KvService

__all__ = [
    "ETCD_API_VERSION",
    "EtcdGateway",
    "GatewayError",
    "Kind",
    "Metadata",
    "Route",
    "http_status",
]

log = logging.getLogger(__name__)

ETCD_API_VERSION: Final = "3.4.0"
"""The etcd version whose API kvapp speaks; ``GET /version`` reports it as ``etcdserver``
(clients such as etcd3gw pick the ``/v3/`` paths from it)."""

Metadata = tuple[tuple[str, str], ...]
"""gRPC metadata for a request: grpc-gateway passes ``Grpc-Metadata-<key>`` HTTP headers on."""

_MAX_DEPTH: Final = 100  # protobuf's own nesting limit when decoding (C++ and json_format)

# grpc-gateway v1.9.5 runtime.HTTPStatusFromCode (FailedPrecondition is 400, not 412).
_HTTP_STATUS: Final = {
    GrpcCode.OK: 200,
    GrpcCode.CANCELLED: 408,
    GrpcCode.UNKNOWN: 500,
    GrpcCode.INVALID_ARGUMENT: 400,
    GrpcCode.DEADLINE_EXCEEDED: 504,
    GrpcCode.NOT_FOUND: 404,
    GrpcCode.ALREADY_EXISTS: 409,
    GrpcCode.PERMISSION_DENIED: 403,
    GrpcCode.UNAUTHENTICATED: 401,
    GrpcCode.RESOURCE_EXHAUSTED: 429,
    GrpcCode.FAILED_PRECONDITION: 400,
    GrpcCode.ABORTED: 409,
    GrpcCode.OUT_OF_RANGE: 400,
    GrpcCode.UNIMPLEMENTED: 501,
    GrpcCode.INTERNAL: 500,
    GrpcCode.UNAVAILABLE: 503,
    GrpcCode.DATA_LOSS: 500,
}


def http_status(code: GrpcCode) -> int:
    """The HTTP status grpc-gateway answers a gRPC status code with."""
    return _HTTP_STATUS.get(code, 500)


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class GatewayError(Exception):
    """A request's failure, answered with a gRPC code and text as grpc-gateway answers them."""

    def __init__(self, code: GrpcCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status of the answer."""
        return http_status(self.code)

    def body(self) -> bytes:
        """grpc-gateway's error body (``errorBody``; empty fields are left out, as jsonpb does)."""
        fields: dict[str, object] = {}
        if self.message:
            fields |= {"error": self.message, "message": self.message}
        fields["code"] = int(self.code)
        return _dumps(fields)

    def stream_chunk(self) -> bytes:
        """The error object that ends a stream (grpc-gateway's ``StreamError``)."""
        status = self.http_status
        fields: dict[str, object] = {"grpc_code": int(self.code), "http_code": status}
        if self.message:
            fields["message"] = self.message
        fields["http_status"] = http.HTTPStatus(status).phrase
        return _dumps({"error": fields})


async def _gateway_error(context: ServicerContext, exc: Exception) -> GatewayError:
    """The status the gRPC server would end the RPC with for ``exc`` (``abort_with``'s)."""
    if not isinstance(exc, Aborted):
        try:
            await abort_with(context, exc)
        except Aborted as aborted:
            exc = aborted
    return GatewayError(GrpcCode(exc.code.value[0]), exc.details)


class Kind(enum.Enum):
    """How an RPC's messages flow."""

    UNARY = "unary"
    SERVER_STREAM = "server stream"
    BIDI_STREAM = "bidirectional stream"


@attrs.frozen
class Route:
    """One gateway path: the RPC it calls.

    Attributes:
        path: the HTTP path (``/v3/kv/range``).
        rpc: the gRPC method (``/etcdserverpb.KV/Range``), for messages and logs.
        request: the request message class.
        kind: unary or streaming.
        call: the servicer method (``(request or request iterator, context)``).
    """

    path: str
    rpc: str
    request: type[Message]
    kind: Kind
    call: Callable[[Any, Any], Any]


# Services of etcd 3.4's gateway that kvapp does not serve: answered as a gRPC server without
# the service answers (grpc-go's "unknown service", UNIMPLEMENTED, HTTP 501).
_UNSERVED: Final = {
    f"/v3/auth/{p}": "etcdserverpb.Auth"
    for p in (
        *("enable", "disable", "authenticate"),
        *(f"user/{op}" for op in ("add", "get", "list", "delete", "changepw", "grant", "revoke")),
        *(f"role/{op}" for op in ("add", "get", "list", "delete", "grant", "revoke")),
    )
}


class EtcdGateway:
    """etcd 3.4's gateway paths over one member, answered by the etcd API's servicers.

    Args:
        service: the member.
        maintenance: hashes and leader transfer (None: those RPCs answer UNIMPLEMENTED).
        max_request_bytes: the member's request limit; a request whose protobuf encoding is
            larger than it plus :data:`~kvapp.server.etcd.watch.GRPC_OVERHEAD_BYTES` is refused
            as etcd's gRPC server refuses it (RESOURCE_EXHAUSTED, HTTP 429); a smaller one
            that is still too large gets the member's "request is too large".
        request_timeout: seconds a lease call forwarded to the leader may take.
        leader_check_interval: seconds between leader checks on streams requiring a leader.
    """

    def __init__(
        self,
        service: KvService,
        maintenance: MaintenanceBackend | None = None,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        request_timeout: float = 5.0,
        leader_check_interval: float = 1.0,
    ) -> None:
        self.api = EtcdApi(service, maintenance, request_timeout=request_timeout)
        self.max_message_bytes = max_request_bytes + GRPC_OVERHEAD_BYTES
        kv, lease = KVServicer(self.api), LeaseServicer(self.api)
        cluster, maint = ClusterServicer(self.api), MaintenanceServicer(self.api)
        watch = WatchServicer(
            self.api,
            max_request_bytes=max_request_bytes,
            leader_check_interval=leader_check_interval,
        )
        pb = rpc_pb2
        unary, bidi = Kind.UNARY, Kind.BIDI_STREAM
        table: list[tuple[str, str, type[Message], Kind, Callable[[Any, Any], Any]]] = [
            ("/v3/kv/range", "KV/Range", pb.RangeRequest, unary, kv.Range),
            ("/v3/kv/put", "KV/Put", pb.PutRequest, unary, kv.Put),
            ("/v3/kv/deleterange", "KV/DeleteRange", pb.DeleteRangeRequest, unary, kv.DeleteRange),
            ("/v3/kv/txn", "KV/Txn", pb.TxnRequest, unary, kv.Txn),
            ("/v3/kv/compaction", "KV/Compact", pb.CompactionRequest, unary, kv.Compact),
            ("/v3/watch", "Watch/Watch", pb.WatchRequest, bidi, watch.Watch),
            ("/v3/lease/grant", "Lease/LeaseGrant", pb.LeaseGrantRequest, unary, lease.LeaseGrant),
            (
                "/v3/lease/revoke",
                "Lease/LeaseRevoke",
                pb.LeaseRevokeRequest,
                unary,
                lease.LeaseRevoke,
            ),
            (
                "/v3/lease/keepalive",
                "Lease/LeaseKeepAlive",
                pb.LeaseKeepAliveRequest,
                bidi,
                lease.LeaseKeepAlive,
            ),
            (
                "/v3/lease/timetolive",
                "Lease/LeaseTimeToLive",
                pb.LeaseTimeToLiveRequest,
                unary,
                lease.LeaseTimeToLive,
            ),
            (
                "/v3/lease/leases",
                "Lease/LeaseLeases",
                pb.LeaseLeasesRequest,
                unary,
                lease.LeaseLeases,
            ),
            (
                "/v3/cluster/member/add",
                "Cluster/MemberAdd",
                pb.MemberAddRequest,
                unary,
                cluster.MemberAdd,
            ),
            (
                "/v3/cluster/member/remove",
                "Cluster/MemberRemove",
                pb.MemberRemoveRequest,
                unary,
                cluster.MemberRemove,
            ),
            (
                "/v3/cluster/member/update",
                "Cluster/MemberUpdate",
                pb.MemberUpdateRequest,
                unary,
                cluster.MemberUpdate,
            ),
            (
                "/v3/cluster/member/list",
                "Cluster/MemberList",
                pb.MemberListRequest,
                unary,
                cluster.MemberList,
            ),
            (
                "/v3/cluster/member/promote",
                "Cluster/MemberPromote",
                pb.MemberPromoteRequest,
                unary,
                cluster.MemberPromote,
            ),
            ("/v3/maintenance/alarm", "Maintenance/Alarm", pb.AlarmRequest, unary, maint.Alarm),
            ("/v3/maintenance/status", "Maintenance/Status", pb.StatusRequest, unary, maint.Status),
            (
                "/v3/maintenance/defragment",
                "Maintenance/Defragment",
                pb.DefragmentRequest,
                unary,
                maint.Defragment,
            ),
            # etcd 3.4 annotates Hash and HashKV with this same path; grpc-gateway v1 takes the
            # first registered, Hash. etcd 3.5 moved HashKV to /v3/maintenance/hashkv.
            ("/v3/maintenance/hash", "Maintenance/Hash", pb.HashRequest, unary, maint.Hash),
            ("/v3/maintenance/hashkv", "Maintenance/HashKV", pb.HashKVRequest, unary, maint.HashKV),
            (
                "/v3/maintenance/snapshot",
                "Maintenance/Snapshot",
                pb.SnapshotRequest,
                Kind.SERVER_STREAM,
                maint.Snapshot,
            ),
            (
                "/v3/maintenance/transfer-leadership",
                "Maintenance/MoveLeader",
                pb.MoveLeaderRequest,
                unary,
                maint.MoveLeader,
            ),
        ]
        routes = {p: Route(p, f"/etcdserverpb.{r}", req, k, c) for p, r, req, k, c in table}
        self.concurrency = ConcurrencyServices(self.api)
        for g in self.concurrency.gateway_paths():  # v3lock and v3election
            kind = Kind.SERVER_STREAM if g.streaming else unary
            routes[g.path] = Route(g.path, g.rpc, g.request, kind, g.call)
        # additional_bindings in rpc.proto
        for alias in ("revoke", "timetolive", "leases"):
            routes[f"/v3/kv/lease/{alias}"] = attrs.evolve(
                routes[f"/v3/lease/{alias}"], path=f"/v3/kv/lease/{alias}"
            )
        self.routes: dict[str, Route] = routes

    def route(self, path: str) -> Route | None:
        """The route of ``path`` (``/v3/...``), or None."""
        return self.routes.get(path)

    def unserved(self, path: str) -> GatewayError | None:
        """For a path of an etcd service kvapp does not serve (Auth): its error."""
        service = _UNSERVED.get(path)
        if service is None:
            return None
        return GatewayError(GrpcCode.UNIMPLEMENTED, f"unknown service {service}")

    # -- calls ---------------------------------------------------------------------------------

    async def unary(self, route: Route, body: bytes, metadata: Metadata = ()) -> bytes:
        """Call a unary route with a JSON body; its JSON response.

        Raises:
            GatewayError: the body is not a valid request, or the RPC failed (etcd's code and
                text).
        """
        requests = self.decode(route.request, body, first_only=True)
        request = requests[0] if requests else route.request()
        context = ServicerContext(metadata)
        try:
            response: Message = await route.call(request, context)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise await _gateway_error(context, e) from e
        return encode(response)

    def stream(
        self, route: Route, body: bytes, metadata: Metadata = ()
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        r"""Open a streaming route with a JSON body (decoded now, before anything is sent).

        The generator yields ``(status, chunk)``: ``(200, b'{"result":...}\n')`` per
        response, and once, last, an error chunk with the HTTP status of the error (the
        response's status if nothing was sent before it). Close it (``aclose``) to cancel.

        Raises:
            GatewayError: the body is not a valid request (nothing was started).
        """
        requests = self.decode(route.request, body, first_only=route.kind is Kind.SERVER_STREAM)
        return self._stream(route, requests, ServicerContext(metadata))

    async def _stream(
        self, route: Route, requests: Sequence[Message], context: ServicerContext
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        if route.kind is Kind.BIDI_STREAM:
            source: AsyncGenerator[Message, None] = route.call(_iterate(requests), context)
        else:
            source = route.call(requests[0] if requests else route.request(), context)
        try:
            async for response in source:
                yield 200, _dumps({"result": _to_dict(response)}) + b"\n"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - it ends the stream with its status, as in gRPC
            error = await _gateway_error(context, e)
            yield error.http_status, error.stream_chunk()
        finally:
            await source.aclose()

    # -- JSON ----------------------------------------------------------------------------------

    def decode(self, cls: type[Message], body: bytes, *, first_only: bool) -> list[Message]:
        """The requests a JSON body holds (whitespace-separated JSON objects; none if empty).

        With ``first_only`` only the first is decoded and anything after it is ignored, as
        grpc-gateway does for a unary RPC. After the first, a request that does not decode
        ends the list (grpc-gateway stops sending there).

        Raises:
            GatewayError: the body is not UTF-8, or its first request does not decode
                (INVALID_ARGUMENT), or a request is larger than the gRPC limit
                (RESOURCE_EXHAUSTED).
        """
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GatewayError(
                GrpcCode.INVALID_ARGUMENT, f"request body is not UTF-8: {e}"
            ) from None
        decoder = json.JSONDecoder()
        out: list[Message] = []
        pos = _skip_space(text, 0)
        while pos < len(text):
            try:
                try:
                    value, pos = decoder.raw_decode(text, pos)
                except ValueError as e:  # JSONDecodeError, or a number of over 4300 digits
                    raise GatewayError(GrpcCode.INVALID_ARGUMENT, f"invalid JSON: {e}") from None
                except RecursionError:
                    raise GatewayError(
                        GrpcCode.INVALID_ARGUMENT, "JSON nested too deeply"
                    ) from None
                out.append(self._message(cls, value))
            except GatewayError:
                if not out:
                    raise
                break
            if first_only:
                break
            pos = _skip_space(text, pos)
        return out

    def _message(self, cls: type[Message], value: object) -> Message:
        _check_json(value, cls.DESCRIPTOR, cls.DESCRIPTOR.name, 0)
        message = cls()
        try:
            json_format.ParseDict(value, message, ignore_unknown_fields=True)
        except (json_format.ParseError, RecursionError) as e:
            raise GatewayError(
                GrpcCode.INVALID_ARGUMENT, f"invalid {cls.DESCRIPTOR.name}: {e}"
            ) from None
        size = message.ByteSize()
        if size > self.max_message_bytes:
            # grpc-go's text for a message above the server's receive limit
            raise GatewayError(
                GrpcCode.RESOURCE_EXHAUSTED,
                f"grpc: received message larger than max ({size} vs. {self.max_message_bytes})",
            )
        return message

    async def close(self) -> None:
        """Close the channels to the leader that lease calls were forwarded on."""
        await self.concurrency.close()
        await self.api.close()


def encode(message: Message) -> bytes:
    """A message as grpc-gateway's marshaler writes it (see the module docstring)."""
    return _dumps(_to_dict(message))


def _to_dict(message: Message) -> dict[str, Any]:
    fields: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return fields


async def _iterate(items: Sequence[Message]) -> AsyncIterator[Message]:
    for item in items:
        yield item


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


_FIELDS: dict[str, dict[str, FieldDescriptor]] = {}


def _fields(desc: Descriptor) -> dict[str, FieldDescriptor]:
    fields = _FIELDS.get(desc.full_name)
    if fields is None:
        fields = {f.json_name: f for f in desc.fields} | {f.name: f for f in desc.fields}
        _FIELDS[desc.full_name] = fields
    return fields


def _check_json(value: object, desc: Descriptor, where: str, depth: int) -> None:
    """Refuse what jsonpb refuses and json_format would let through.

    That is: a request that is not a JSON object, bytes that are not base64 (json_format
    decodes any string, so ``"foo"`` would silently become two bytes), and enum names that do
    not exist (json_format drops them when unknown fields are ignored).

    Raises:
        GatewayError: INVALID_ARGUMENT, saying which field.
    """
    if depth > _MAX_DEPTH:
        raise GatewayError(GrpcCode.INVALID_ARGUMENT, f"{where}: messages nested too deeply")
    if not isinstance(value, dict):
        raise GatewayError(
            GrpcCode.INVALID_ARGUMENT, f"{where}: expected a JSON object, got {_kind(value)}"
        )
    fields = _fields(desc)
    for name, item in value.items():
        field = fields.get(name)
        if field is None or item is None:
            continue  # unknown fields are ignored (grpc-gateway v1's default); null is unset
        items = item if field.is_repeated and isinstance(item, list) else [item]
        for i, one in enumerate(items):
            at = f"{where}.{field.name}" + (f"[{i}]" if field.is_repeated else "")
            _check_field(one, field, at, depth)


def _check_field(value: object, field: FieldDescriptor, where: str, depth: int) -> None:
    if field.type == FieldDescriptor.TYPE_BYTES and value is not None:
        if not isinstance(value, str) or not _is_base64(value):
            raise GatewayError(
                GrpcCode.INVALID_ARGUMENT,
                f"{where}: {json.dumps(value)[:60]} is not base64 (bytes fields are standard "
                "base64 with padding)",
            )
    elif field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        if value not in field.enum_type.values_by_name:
            names = ", ".join(field.enum_type.values_by_name)
            raise GatewayError(
                GrpcCode.INVALID_ARGUMENT,
                f"{where}: unknown value {json.dumps(value)[:60]} (one of {names})",
            )
    elif field.type == FieldDescriptor.TYPE_MESSAGE and value is not None:
        _check_json(value, field.message_type, where, depth + 1)


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:
            base64.b64decode(text, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return False
    return True


def _kind(value: object) -> str:
    match value:
        case list():
            return "an array"
        case str():
            return "a string"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case _:
            return type(value).__name__
