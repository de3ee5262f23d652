"""The etcd API server's translation helpers: kvapp's types <-> etcd's protobuf messages.

The message mapping itself lives in :mod:`kvapp.etcdconv` (shared with the client's etcd
transport) and is re-exported here under the same names. What only the server needs is here:
gRPC status codes for kvapp's errors, and the ``grpc+`` marking of the gRPC URLs a member
publishes among its client URLs.
"""

from __future__ import annotations

from typing import Final

import grpc

from kvapp.errors import GrpcCode
from kvapp.etcdconv import (
    InvalidRequestError,
    compare_from_pb,
    delete_range_from_pb,
    delete_range_response_to_pb,
    event_to_pb,
    header_to_pb,
    kv_to_pb,
    put_from_pb,
    put_response_to_pb,
    range_from_pb,
    range_response_to_pb,
    request_op_from_pb,
    response_op_to_pb,
    txn_from_pb,
    txn_response_to_pb,
    watch_filters_from_pb,
    watch_response_to_pb,
)
from kvapp.etcdpb import rpc_pb2
from kvapp.service import MemberInfo

__all__ = [
    "GRPC_URL_PREFIX",
    "InvalidRequestError",
    "compare_from_pb",
    "delete_range_from_pb",
    "delete_range_response_to_pb",
    "event_to_pb",
    "grpc_status",
    "grpc_urls_of",
    "header_to_pb",
    "kv_to_pb",
    "member_to_pb",
    "publish_grpc_urls",
    "put_from_pb",
    "put_response_to_pb",
    "range_from_pb",
    "range_response_to_pb",
    "request_op_from_pb",
    "response_op_to_pb",
    "txn_from_pb",
    "txn_response_to_pb",
    "watch_filters_from_pb",
    "watch_response_to_pb",
]

GRPC_URL_PREFIX: Final = "grpc+"
"""Marks a member's etcd-API (gRPC) URLs among the client URLs it publishes.

A member publishes its native-protocol URLs as they are and its gRPC URLs with this prefix
(``grpc+http://127.0.0.1:2479``); the Cluster service shows etcd clients only the gRPC ones,
prefix removed, so ``etcdctl member list`` and ``--cluster`` commands get URLs they can use.
"""

_STATUS: Final[dict[int, grpc.StatusCode]] = {code.value[0]: code for code in grpc.StatusCode}


def grpc_status(code: GrpcCode) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` with ``code``'s number."""
    return _STATUS[int(code)]


def publish_grpc_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    """The form in which a member publishes its gRPC URLs among its client URLs."""
    return tuple(GRPC_URL_PREFIX + u for u in urls)


def grpc_urls_of(member: MemberInfo) -> tuple[str, ...]:
    """A member's published gRPC URLs, prefix removed (empty if it publishes none)."""
    n = len(GRPC_URL_PREFIX)
    return tuple(u[n:] for u in member.client_urls if u.startswith(GRPC_URL_PREFIX))


def member_to_pb(m: MemberInfo) -> rpc_pb2.Member:
    """Make etcd's Member; its client URLs are the gRPC URLs it publishes (GRPC_URL_PREFIX)."""
    return rpc_pb2.Member(
        ID=m.id,
        name=m.name,
        peerURLs=list(m.peer_urls),
        clientURLs=list(grpc_urls_of(m)),
        isLearner=m.is_learner,
    )
