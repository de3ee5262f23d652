"""The gRPC server that serves etcd's v3 API (KV, Watch, Lease, Cluster, Maintenance, ...).

One :class:`EtcdGrpcServer` per member, on the member's event loop (kvapp's own gRPC server,
:mod:`kvapp.server.grpc_h2`, which says why not grpcio's).
It serves the Lock and Election services too (:mod:`kvapp.server.etcd.lockservice`); the
Auth service is not registered, so its RPCs answer UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
import ssl

import grpc

from kvapp.node import MAX_REQUEST_BYTES
from kvapp.server.etcd.lockservice import ConcurrencyServices
from kvapp.server.etcd.maintenance import MaintenanceBackend
from kvapp.server.etcd.services import (
    ClusterServicer,
    EtcdApi,
    KVServicer,
    LeaseServicer,
    MaintenanceServicer,
)
from kvapp.server.etcd.watch import GRPC_OVERHEAD_BYTES, WatchServicer
from kvapp.server.grpc_h2 import GrpcH2Server
from kvapp.service import KvService
from kvapp.tls import TlsInfo

__all__ = ["EtcdGrpcServer"]

log = logging.getLogger(__name__)


class EtcdGrpcServer:
    """etcd's v3 gRPC services on one member.

    Args:
        service: the member.
        host: the address to listen on.
        port: the port (0: any free one; see :attr:`port` once started).
        maintenance: alarms, hashes and leader transfer for the Maintenance service.
        max_request_bytes: the largest request accepted; gRPC messages may be
            :data:`~kvapp.server.etcd.watch.GRPC_OVERHEAD_BYTES` larger, as in etcd.
        request_timeout: seconds a request forwarded to the leader may take.
        leader_check_interval: seconds between leader checks on streams requiring a leader.
        tls: serve over TLS with these files (etcd's ``--cert-file --key-file
            --trusted-ca-file --client-cert-auth``); with ``client_cert_auth`` a client must
            present a certificate signed by ``trusted_ca_file``. A follower forwarding lease
            calls to its leader's ``https`` gRPC URL dials it with the same files (verifying the
            leader against ``trusted_ca_file`` and presenting its own certificate).

    Raises:
        kvapp.tls.TlsConfigError: a TLS file is missing, unreadable or unusable.
    """

    def __init__(
        self,
        service: KvService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        maintenance: MaintenanceBackend | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        request_timeout: float = 5.0,
        leader_check_interval: float = 1.0,
        tls: TlsInfo | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.max_request_bytes = max_request_bytes
        self._ssl: ssl.SSLContext | None = None
        forward: grpc.ChannelCredentials | None = None
        if tls is not None:
            cert, key, ca = tls.pem()
            self._ssl = tls.server_context()
            forward = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
        self.api = EtcdApi(
            service, maintenance, request_timeout=request_timeout, channel_credentials=forward
        )
        self.concurrency = ConcurrencyServices(self.api)
        self._servicers = {
            **self.concurrency.servicers(),
            "etcdserverpb.KV": KVServicer(self.api),
            "etcdserverpb.Watch": WatchServicer(
                self.api,
                max_request_bytes=max_request_bytes,
                leader_check_interval=leader_check_interval,
            ),
            "etcdserverpb.Lease": LeaseServicer(self.api),
            "etcdserverpb.Cluster": ClusterServicer(self.api),
            "etcdserverpb.Maintenance": MaintenanceServicer(self.api),
        }
        self._server: GrpcH2Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (the bound one once started)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """``host:port``, as etcd clients take it."""
        return f"{self.host}:{self._port}"

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            OSError: the address cannot be bound (``EADDRINUSE`` when it is taken).
        """
        server = GrpcH2Server(
            {name: servicer.handlers() for name, servicer in self._servicers.items()},  # type: ignore[attr-defined]
            host=self.host,
            port=self._port,
            max_receive=self.max_request_bytes + GRPC_OVERHEAD_BYTES,
            ssl_context=self._ssl,
        )
        await server.start()
        self._port = server.port
        self._server = server
        log.info("etcd gRPC API listening on %s%s", self.endpoint, " (TLS)" if self._ssl else "")

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving: open streams are cancelled after ``grace`` seconds."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
        await self.concurrency.close()
        await self.api.close()

    async def __aenter__(self) -> EtcdGrpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
