"""kvapp's Python client: :class:`AsyncClient` (asyncio) and its blocking twin :class:`Client`.

One API over a transport interface (:mod:`kvapp.client.transport`) with two transports: kvapp's
native protocol (:mod:`kvapp.client.native`, the default) and etcd's v3 gRPC API
(:mod:`kvapp.client.etcd`, ``protocol="etcd"``), which also talks to real etcd. See
:mod:`kvapp.client.aio` for failover, retries and what each failure means (and where etcd's
API differs); :mod:`kvapp.client.txn` builds txn compares and operations.

Example::

    async with AsyncClient(["127.0.0.1:2379", "127.0.0.1:22379"]) as client:
        await client.put(b"k", b"v")
        resp = await client.get(b"k")
        async for event in await client.watch(b"k"):
            ...

    async with AsyncClient(["127.0.0.1:2379"], protocol="etcd") as etcd:  # real etcd too
        await etcd.put(b"k", b"v")
"""

from kvapp.client.aio import AsyncClient, KeepAlive, LeaseLoss, Watch, key_range
from kvapp.client.errors import ClientError, LinkClosed, ProtocolError, Unavailable
from kvapp.client.sync import Client, SyncKeepAlive, SyncWatch
from kvapp.service import OutcomeUnknown

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "KeepAlive",
    "LeaseLoss",
    "LinkClosed",
    "OutcomeUnknown",
    "ProtocolError",
    "SyncKeepAlive",
    "SyncWatch",
    "Unavailable",
    "Watch",
    "key_range",
]
