"""kvapp's Python client: :class:`AsyncClient` (asyncio) and its blocking twin :class:`Client`.

One API over a transport interface (:mod:`kvapp.client.transport`); the transport here is the
native protocol (:mod:`kvapp.server.native`). See :mod:`kvapp.client.aio` for failover, retries
and what each failure means; :mod:`kvapp.client.txn` builds txn compares and operations.

Example::

    async with AsyncClient(["127.0.0.1:2379", "127.0.0.1:22379"]) as client:
        await client.put(b"k", b"v")
        resp = await client.get(b"k")
        async for event in await client.watch(b"k"):
            ...
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
