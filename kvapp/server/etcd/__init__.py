"""etcd's v3 gRPC API on a kvapp member, so etcd clients (``etcdctl``, clientv3, ...) work.

:class:`EtcdGrpcServer` serves the KV, Watch, Lease, Cluster and Maintenance services as thin
translations onto one :class:`~kvapp.service.KvService` (see :mod:`kvapp.server.etcd.services`
and :mod:`kvapp.server.etcd.watch`), and the Lock and Election services with kvapp.recipes on
an in-process client (:mod:`kvapp.server.etcd.lockservice`); the messages are
:mod:`kvapp.etcdpb`'s. ``kvapp serve --listen-grpc-urls`` starts one; ``docs/etcd-api.md``
says what is served.
"""

from kvapp.server.etcd.convert import GRPC_URL_PREFIX, grpc_urls_of, publish_grpc_urls
from kvapp.server.etcd.maintenance import MaintenanceBackend, MemberMaintenance
from kvapp.server.etcd.server import EtcdGrpcServer

__all__ = [
    "GRPC_URL_PREFIX",
    "EtcdGrpcServer",
    "MaintenanceBackend",
    "MemberMaintenance",
    "grpc_urls_of",
    "publish_grpc_urls",
]
