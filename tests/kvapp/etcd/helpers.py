"""A small typed etcd v3 gRPC client for tests, and fake members served by EtcdGrpcServer."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import attrs
import grpc

from kvapp.etcdpb import rpc_pb2
from kvapp.kvstate import KvState
from kvapp.mvcc.types import HashKVResponse
from kvapp.server.etcd import EtcdGrpcServer, publish_grpc_urls
from tests.kvapp.fake_service import FakeCluster, FakeService

_R = TypeVar("_R")


def aio(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh loop, bounded by an overall timeout."""

    @functools.wraps(fn)
    def run() -> None:
        async def bounded() -> None:
            async with asyncio.timeout(30):
                await fn()

        asyncio.run(bounded())

    return run


class Etcd:
    """Calls etcd's RPCs by name over one channel (a stand-in for clientv3 in tests)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)

    async def call(
        self,
        service: str,
        method: str,
        request: Any,
        response: type[_R],
        *,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> _R:
        rpc = self.channel.unary_unary(
            f"/etcdserverpb.{service}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,  # type: ignore[attr-defined]
        )
        result: _R = await rpc(request, timeout=10, metadata=metadata)
        return result

    def stream(
        self,
        service: str,
        method: str,
        request: type[Any],
        response: type[Any],
        *,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        """A bidirectional stream call (``write``, ``read``, ``done_writing``, ``cancel``)."""
        rpc = self.channel.stream_stream(
            f"/etcdserverpb.{service}/{method}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
        return rpc(metadata=metadata, timeout=20)

    async def put(self, key: bytes, value: bytes = b"", **kw: Any) -> rpc_pb2.PutResponse:
        return await self.call(
            "KV", "Put", rpc_pb2.PutRequest(key=key, value=value, **kw), rpc_pb2.PutResponse
        )

    async def range(self, key: bytes, **kw: Any) -> rpc_pb2.RangeResponse:
        return await self.call(
            "KV", "Range", rpc_pb2.RangeRequest(key=key, **kw), rpc_pb2.RangeResponse
        )

    async def close(self) -> None:
        await self.channel.close()


class StateMaintenance:
    """A MaintenanceBackend over a fake cluster's shared state."""

    def __init__(self, state: KvState) -> None:
        self.state = state
        self.moved_to: list[int] = []

    def hash_kv(self, revision: int) -> HashKVResponse:
        return self.state.store.hash_kv(revision)

    def hash(self) -> int:
        return self.state.hash()

    async def move_leader(self, target_id: int) -> None:
        self.moved_to.append(target_id)


@attrs.define
class FakeMember:
    service: FakeService
    server: EtcdGrpcServer
    client: Etcd


class FakeEtcdCluster:
    """Fake members (one shared state, the first leads), each behind its own gRPC server."""

    def __init__(self) -> None:
        self.cluster = FakeCluster()
        self.maintenance = StateMaintenance(self.cluster.state)
        self.members: list[FakeMember] = []

    async def start(self, size: int = 2) -> FakeEtcdCluster:
        for i in range(size):
            member_id = 0x100 + i
            service = self.cluster.service(member_id, name=f"m{i + 1}")
            server = EtcdGrpcServer(
                service,
                host="127.0.0.1",
                port=0,
                maintenance=self.maintenance,
                request_timeout=5.0,
                leader_check_interval=0.1,
            )
            await server.start()
            info = self.cluster.members[member_id]
            self.cluster.members[member_id] = attrs.evolve(
                info,
                client_urls=(
                    f"http://127.0.0.1:{40000 + i}",  # a native URL: not shown to etcd clients
                    *publish_grpc_urls((f"http://{server.endpoint}",)),
                ),
            )
            self.members.append(FakeMember(service, server, Etcd(server.endpoint)))
        return self

    @property
    def leader(self) -> FakeMember:
        return self.members[0]

    @property
    def follower(self) -> FakeMember:
        return self.members[1]

    async def close(self) -> None:
        for m in self.members:
            await m.client.close()
            await m.server.stop(grace=0)
