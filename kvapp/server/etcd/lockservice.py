"""etcd's Lock (``v3lockpb``) and Election (``v3electionpb``) services, on kvapp.recipes.

etcd serves these with its ``concurrency`` package running in the member on an in-process
client (``etcdserver/api/v3lock/lock.go``, ``v3election/election.go``); kvapp does the same
with :mod:`kvapp.recipes`' queue on :func:`~kvapp.server.etcd.inprocess.in_process_client`,
so a lock taken through the service and one taken by a client-side recipe (kvapp's, or
clientv3's ``concurrency.Mutex`` as ``etcdctl lock`` uses it) share one queue:

- **Lock** ``{name, lease}``: waits until ``<name>/<lease hex>``, attached to the lease, is
  the oldest key under ``<name>/`` and answers that key. The lease is the client's to keep
  alive; lease 0 grants one of 60 s that nobody renews (as etcd does). Locking again with the
  same lease is the same acquisition (the same key). The header's revision is that of the
  read that found the lock held (etcdctl's ``ETCD_LOCK_REV``).
- **Unlock** ``{key}``: deletes the key.
- **Campaign** ``{name, lease, value}``: the same queue, the key holding ``value`` (a
  candidate campaigning again replaces its value); answers the LeaderKey ``{name, key, rev,
  lease}``, ``rev`` being the key's create revision, and the header of the request that
  queued it.
- **Proclaim** ``{leader, value}`` / **Resign** ``{leader}``: put / delete the leader key if
  its create revision is still ``rev``; Proclaim answers "election: not leader" otherwise.
- **Leader** ``{name}``: the oldest key under ``<name>/`` ("election: no leader" if none).
- **Observe** ``{name}``: the leader's key-value now and after each change (a new leader or
  a proclamation).

Errors are answered as etcd's services answer them: gRPC code UNKNOWN with the text, the
member's errors included (e.g. "etcdserver: requested lease not found"), since etcd's
in-process client hands them over as plain errors. Where kvapp differs from etcd 3.4: a
contender whose key disappears while it waits (its lease expired, or someone deleted it) is
answered "mutex: session is expired" (etcd 3.5's answer; etcd 3.4 answers as if it held the
lock, etcd issue 11456) or, for Campaign, "election: session expired" (etcd answers with a
leader key that no longer exists); a Campaign that fails other than by cancellation also
withdraws its key (etcd leaves it); an empty name queues under ``/``, as etcd's does.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc

from kvapp.client import AsyncClient
from kvapp.client.errors import ClientError
from kvapp.errors import EtcdError, GrpcCode, LeaseNotFoundError, RequestTimeoutError
from kvapp.etcdpb import rpc_pb2, v3election_pb2, v3lock_pb2
from kvapp.etcdpb.v3election_pb2 import LeaderKey
from kvapp.mvcc.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    SortOrder,
    SortTarget,
)
from kvapp.recipes import DEFAULT_TTL, AsyncSession, LeaderObserver, LockLost, SessionLost
from kvapp.recipes._queue import Contender, queue_prefix
from kvapp.requests import ErrorResult
from kvapp.server.etcd import convert
from kvapp.server.etcd.inprocess import in_process_client
from kvapp.server.etcd.services import EtcdApi, is_abort, unary_handler
from kvapp.service import OutcomeUnknown

__all__ = [
    "ConcurrencyServices",
    "ElectionNoLeaderError",
    "ElectionNotLeaderError",
    "ElectionServicer",
    "ElectionSessionExpiredError",
    "GatewayPath",
    "LockServicer",
    "MissingLeaderKeyError",
    "MutexSessionExpiredError",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")

LOCK_SERVICE: Final = "v3lockpb.Lock"
ELECTION_SERVICE: Final = "v3electionpb.Election"


class ElectionNotLeaderError(EtcdError):
    """Proclaim with a leader key that no longer leads (etcd's ``ErrElectionNotLeader``)."""

    message = "election: not leader"
    code = GrpcCode.UNKNOWN


class ElectionNoLeaderError(EtcdError):
    """Leader of an election nobody leads (etcd's ``ErrElectionNoLeader``)."""

    message = "election: no leader"
    code = GrpcCode.UNKNOWN


class MissingLeaderKeyError(EtcdError):
    """Proclaim or Resign without a leader key (etcd's ``ErrMissingLeaderKey``)."""

    message = '"leader" field must be provided'
    code = GrpcCode.UNKNOWN


class MutexSessionExpiredError(EtcdError):
    """A Lock whose key disappeared while it waited (etcd 3.5's ``ErrSessionExpired``)."""

    message = "mutex: session is expired"
    code = GrpcCode.UNKNOWN


class ElectionSessionExpiredError(EtcdError):
    """A Campaign whose key disappeared while it waited (kvapp's; etcd answers success)."""

    message = "election: session expired"
    code = GrpcCode.UNKNOWN


def _as_answer(e: Exception) -> Exception:
    """What etcd's server answers for an error of its in-process client: UNKNOWN and its text."""
    match e:
        case EtcdError() if e.code == GrpcCode.UNKNOWN:
            return e
        case EtcdError() | ClientError():
            return ErrorResult(GrpcCode.UNKNOWN, str(e)).to_exception()
        case OutcomeUnknown():
            return ErrorResult(GrpcCode.UNKNOWN, RequestTimeoutError.message).to_exception()
        case _:
            return e


def _answers(
    fn: Callable[[_T, Any, Any], Awaitable[_R]],
) -> Callable[[_T, Any, Any], Awaitable[_R]]:
    """Turn a unary servicer method's errors into etcd's answers (see :func:`_as_answer`)."""

    @functools.wraps(fn)
    async def method(self: _T, request: Any, context: Any) -> _R:
        try:
            return await fn(self, request, context)
        except Exception as e:
            if is_abort(e):
                raise
            answer = _as_answer(e)
            if answer is e:
                raise
            raise answer from e

    return method


class ConcurrencyServices:
    """The Lock and Election services of one member, sharing its in-process client.

    Args:
        api: the member's etcd API state (its ``service`` is looked up on each call).

    Attributes:
        lock: the ``v3lockpb.Lock`` servicer.
        election: the ``v3electionpb.Election`` servicer.
    """

    def __init__(self, api: EtcdApi) -> None:
        self.api = api
        self._client: AsyncClient | None = None
        self.lock = LockServicer(self)
        self.election = ElectionServicer(self)

    @property
    def client(self) -> AsyncClient:
        """The in-process client (made on first use, on the member's loop)."""
        if self._client is None:
            self._client = in_process_client(self.api)
        return self._client

    def servicers(self) -> dict[str, object]:
        """The servicers by gRPC service name, for the gRPC server."""
        return {LOCK_SERVICE: self.lock, ELECTION_SERVICE: self.election}

    def gateway_paths(self) -> list[GatewayPath]:
        """The two services' paths on etcd 3.4's JSON gateway."""
        lock, el, pb, epb = self.lock, self.election, v3lock_pb2, v3election_pb2
        rpc = f"/{ELECTION_SERVICE}/"
        return [
            GatewayPath("/v3/lock/lock", f"/{LOCK_SERVICE}/Lock", pb.LockRequest, lock.Lock),
            GatewayPath(
                "/v3/lock/unlock", f"/{LOCK_SERVICE}/Unlock", pb.UnlockRequest, lock.Unlock
            ),
            GatewayPath(
                "/v3/election/campaign", rpc + "Campaign", epb.CampaignRequest, el.Campaign
            ),
            GatewayPath(
                "/v3/election/proclaim", rpc + "Proclaim", epb.ProclaimRequest, el.Proclaim
            ),
            GatewayPath("/v3/election/leader", rpc + "Leader", epb.LeaderRequest, el.Leader),
            GatewayPath(
                "/v3/election/observe",
                rpc + "Observe",
                epb.LeaderRequest,
                el.Observe,
                streaming=True,
            ),
            GatewayPath("/v3/election/resign", rpc + "Resign", epb.ResignRequest, el.Resign),
        ]

    async def session(self, lease: int) -> AsyncSession:
        """A session on ``lease``, not renewed (etcd's server orphans its sessions).

        Lease 0 grants a lease of :data:`~kvapp.recipes.DEFAULT_TTL` seconds, as etcd's does.

        Raises:
            LeaseNotFoundError: a negative lease id.
        """
        if lease < 0:
            raise LeaseNotFoundError(f"lease {lease}")
        return await AsyncSession(self.client, DEFAULT_TTL, lease_id=lease, renew=False).open()

    def header(self, revision: int) -> rpc_pb2.ResponseHeader:
        """A response header at ``revision``."""
        return self.api.header(revision)

    async def close(self) -> None:
        """Close the in-process client (its watches end; calls still waiting fail)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class GatewayPath:
    """One gateway path of these services: the RPC, its request class and servicer method.

    Attributes:
        path: the HTTP path.
        rpc: the gRPC method name (``/v3lockpb.Lock/Lock``).
        request: the request message class.
        call: the servicer method.
        streaming: whether it answers with a stream (Observe).
    """

    def __init__(
        self,
        path: str,
        rpc: str,
        request: type[Any],
        call: Callable[[Any, Any], Any],
        *,
        streaming: bool = False,
    ) -> None:
        self.path = path
        self.rpc = rpc
        self.request = request
        self.call = call
        self.streaming = streaming


class LockServicer:
    """v3lockpb.Lock: Lock and Unlock (see the module docstring)."""

    def __init__(self, shared: ConcurrencyServices) -> None:
        self.shared = shared

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method handlers to register under ``v3lockpb.Lock``."""
        pb = v3lock_pb2
        return {
            "Lock": unary_handler(self.Lock, pb.LockRequest, pb.LockResponse),
            "Unlock": unary_handler(self.Unlock, pb.UnlockRequest, pb.UnlockResponse),
        }

    @_answers
    async def Lock(
        self, request: v3lock_pb2.LockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.LockResponse:
        """Wait until the lock is held through the lease; answer its key."""
        shared = self.shared
        session = await shared.session(request.lease)
        mutex = Contender(shared.client, request.name, session, rejoin=True, allow_empty_name=True)
        try:
            await mutex._enter(None, None)
        except (LockLost, SessionLost) as e:
            raise MutexSessionExpiredError(str(e)) from e
        key = mutex.key
        assert key is not None
        return v3lock_pb2.LockResponse(header=shared.header(mutex.held_revision), key=key)

    @_answers
    async def Unlock(
        self, request: v3lock_pb2.UnlockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.UnlockResponse:
        """Delete the key Lock answered (whoever holds it)."""
        resp = await self.shared.client.delete(request.key)
        return v3lock_pb2.UnlockResponse(header=self.shared.header(resp.revision))


class ElectionServicer:
    """v3electionpb.Election: Campaign, Proclaim, Leader, Observe, Resign."""

    def __init__(self, shared: ConcurrencyServices) -> None:
        self.shared = shared

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method handlers to register under ``v3electionpb.Election``."""
        pb = v3election_pb2
        return {
            "Campaign": unary_handler(self.Campaign, pb.CampaignRequest, pb.CampaignResponse),
            "Proclaim": unary_handler(self.Proclaim, pb.ProclaimRequest, pb.ProclaimResponse),
            "Leader": unary_handler(self.Leader, pb.LeaderRequest, pb.LeaderResponse),
            "Observe": grpc.unary_stream_rpc_method_handler(
                self.Observe,
                request_deserializer=pb.LeaderRequest.FromString,
                response_serializer=pb.LeaderResponse.SerializeToString,
            ),
            "Resign": unary_handler(self.Resign, pb.ResignRequest, pb.ResignResponse),
        }

    @_answers
    async def Campaign(
        self, request: v3election_pb2.CampaignRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.CampaignResponse:
        """Wait until the candidate leads; answer its LeaderKey."""
        shared = self.shared
        session = await shared.session(request.lease)
        candidate = Contender(
            shared.client, request.name, session, rejoin=True, allow_empty_name=True
        )
        candidate._what = "election"
        try:
            await candidate._enter(request.value, None)
        except (LockLost, SessionLost) as e:
            raise ElectionSessionExpiredError(str(e)) from e
        key = candidate.key
        assert key is not None
        leader = LeaderKey(
            name=request.name,
            key=key,
            rev=candidate._token(),
            lease=session.lease_id,
        )
        return v3election_pb2.CampaignResponse(
            header=shared.header(candidate.queued_revision), leader=leader
        )

    @_answers
    async def Proclaim(
        self, request: v3election_pb2.ProclaimRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.ProclaimResponse:
        """Put the leader key's new value if it still leads."""
        if not request.HasField("leader"):
            raise MissingLeaderKeyError
        leader = request.leader
        # etcd's server makes a session on the leader key's lease for the put; lease 0 makes
        # it grant one (of 60 s, not renewed), which the key is then attached to.
        session = await self.shared.session(leader.lease)
        resp = await self.shared.client.txn(
            [_still_leads(leader)], [PutRequest(leader.key, request.value, session.lease_id)], []
        )
        if not resp.succeeded:
            raise ElectionNotLeaderError
        return v3election_pb2.ProclaimResponse(header=self.shared.header(resp.revision))

    @_answers
    async def Resign(
        self, request: v3election_pb2.ResignRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.ResignResponse:
        """Delete the leader key if it still leads (nothing otherwise; not an error)."""
        if not request.HasField("leader"):
            raise MissingLeaderKeyError
        resp = await self.shared.client.txn(
            [_still_leads(request.leader)], [DeleteRangeRequest(request.leader.key)], []
        )
        return v3election_pb2.ResignResponse(header=self.shared.header(resp.revision))

    @_answers
    async def Leader(
        self, request: v3election_pb2.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.LeaderResponse:
        """The leader's key-value: the oldest key under ``<name>/``."""
        resp = await self.shared.client.get(
            queue_prefix(request.name, allow_empty=True),
            prefix=True,
            limit=1,
            sort_order=SortOrder.ASCEND,
            sort_target=SortTarget.CREATE,
        )
        if not resp.kvs:
            raise ElectionNoLeaderError
        return v3election_pb2.LeaderResponse(
            header=self.shared.header(resp.revision), kv=convert.kv_to_pb(resp.kvs[0])
        )

    async def Observe(
        self, request: v3election_pb2.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        """Stream the leader's key-value now and after each change, until cancelled.

        As etcd's, the stream ends without an error if observing fails.
        """
        shared = self.shared
        observer = LeaderObserver(shared.client, queue_prefix(request.name, allow_empty=True))
        try:
            async for kv in observer:
                yield v3election_pb2.LeaderResponse(
                    header=shared.header(observer.revision), kv=convert.kv_to_pb(kv)
                )
        except Exception as e:
            if is_abort(e):
                raise
            log.info("etcd API: observing election %r ended: %s", request.name, e)
        finally:
            await observer.close()


def _still_leads(leader: LeaderKey) -> Compare:
    return Compare(leader.key, CompareTarget.CREATE, CompareResult.EQUAL, leader.rev)
