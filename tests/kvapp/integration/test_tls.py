"""A 3-member ``kvapp serve`` cluster with TLS on both sides, started through the CLI.

Every member gets etcd's eight TLS flags with certificates from a throwaway CA made by the
test (tests/kvapp/tls_certs.py), ``https://`` peer, client and gRPC URLs, and client
certificate authentication on both sides. The test writes and reads through kvapp's client
with TLS, reads through etcd's gRPC API with TLS, and checks that a plaintext client is
refused with a log line while the cluster keeps serving. Everything listens on 127.0.0.1;
waits are bounded (the harness's polls); every member is killed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest

from kvapp.client import Client, ClientError
from kvapp.errors import EtcdError
from kvapp.etcdpb import rpc_pb2
from kvapp.snapfile import read_info
from kvapp.tls import ClientTls
from tests.kvapp.integration.harness import (
    REPO_ROOT,
    ProcCluster,
    ProcMember,
    free_ports,
    poll,
)
from tests.kvapp.tls_certs import TestCA

pytestmark = pytest.mark.integration


@attrs.define(eq=False)
class TlsMember(ProcMember):
    """A planned member whose peer URL is ``https://`` (its id is computed from it)."""

    grpc_port: int = 0

    @property
    def peer_url(self) -> str:
        """Its peer URL."""
        return f"https://127.0.0.1:{self.peer_port}"


class TlsCluster(ProcCluster):
    """A ProcCluster whose members and clients use TLS on every link (see the module)."""

    def __init__(self, root: Path, size: int, **options: Any) -> None:
        self.ca = TestCA(root / "pki", "ca")
        self.client_cert = self.ca.issue("client")
        self.tls = ClientTls(self.ca.cert, self.client_cert.cert, self.client_cert.key)
        super().__init__(root, size, **options)

    def plan(self, name: str) -> ProcMember:
        peer, client, grpc_port = free_ports(3)
        m = TlsMember(name, peer, client, self.root / name, self.root / f"{name}.log")
        m.grpc_port = grpc_port
        self.members[name] = m
        return m

    def serve_args(self, m: ProcMember, *, initial: Sequence[str] | None, state: str) -> list[str]:
        args = super().serve_args(m, initial=initial, state=state)
        args[args.index("--listen-client-urls") + 1] = f"https://{m.endpoint}"
        leaf = self.ca.issue(m.name)
        assert isinstance(m, TlsMember)
        return [
            *args,
            "--listen-grpc-urls", f"https://127.0.0.1:{m.grpc_port}",
            "--cert-file", str(leaf.cert), "--key-file", str(leaf.key),
            "--trusted-ca-file", str(self.ca.cert), "--client-cert-auth",
            "--peer-cert-file", str(leaf.cert), "--peer-key-file", str(leaf.key),
            "--peer-trusted-ca-file", str(self.ca.cert), "--peer-client-cert-auth",
        ]  # fmt: skip

    def probe(self) -> Client:
        """The harness's status client, over TLS."""
        if self._probe is None:
            self._probe = Client(
                [m.endpoint for m in self.members.values()],
                connect_timeout=1.0,
                request_timeout=2.0,
                max_attempts=1,
                tls=self.tls,
            )
        return self._probe

    def client(self, *names: str, **options: Any) -> Client:
        """A client over TLS (see ProcCluster.client)."""
        options.setdefault("tls", self.tls)
        return super().client(*names, **options)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[TlsCluster]:
    c = TlsCluster(tmp_path, 3)
    try:
        c.start()
        c.wait_leader()
        yield c
    except BaseException:
        print(c.logs())  # shown with a failing test's report
        raise
    finally:
        c.close()


@pytest.mark.timeout(300)
def test_a_tls_cluster_started_from_the_cli_serves_tls_clients(cluster: TlsCluster) -> None:
    try:
        leader = cluster.wait_leader()
        writer = cluster.client()
        for i in range(10):
            writer.put(b"tls/%d" % i, b"v%d" % i)
        for name in cluster.members:  # every member serves the data over TLS
            got = cluster.client(name).get(b"tls/", prefix=True)
            assert [kv.value for kv in got.kvs] == [b"v%d" % i for i in range(10)], name

        # etcd's gRPC API, over TLS with the client certificate
        m = cluster.members[cluster.followers(leader)[0]]
        assert isinstance(m, TlsMember)
        pem = {
            "root_certificates": cluster.ca.cert.read_bytes(),
            "private_key": cluster.client_cert.key.read_bytes(),
            "certificate_chain": cluster.client_cert.cert.read_bytes(),
        }
        with grpc.secure_channel(
            f"127.0.0.1:{m.grpc_port}", grpc.ssl_channel_credentials(**pem)
        ) as channel:
            rng = channel.unary_unary(
                "/etcdserverpb.KV/Range",
                request_serializer=rpc_pb2.RangeRequest.SerializeToString,
                response_deserializer=rpc_pb2.RangeResponse.FromString,
            )
            resp = rng(rpc_pb2.RangeRequest(key=b"tls/3"), timeout=10)
            assert [kv.value for kv in resp.kvs] == [b"v3"]

        # kvctl with etcdctl's TLS flags, and etcdctl itself when installed
        files = [
            str(p) for p in (cluster.ca.cert, cluster.client_cert.cert, cluster.client_cert.key)
        ]
        tls_flags = ["--cacert", files[0], "--cert", files[1], "--key", files[2]]
        kvapp_ctl = [sys.executable, "-m", "kvapp.ctl", f"--endpoints={m.endpoint}"]
        kvctl = _run([*kvapp_ctl, *tls_flags, "get", "tls/1"])
        assert (kvctl.returncode, kvctl.stdout) == (0, "tls/1\nv1\n"), kvctl
        snap = cluster.ca.cert.parent / "tls.snap"
        saved = _run(
            [sys.executable, "-m", "kvapp", "snapshot", "save", str(snap),
             f"--endpoints={m.endpoint}", *tls_flags]
        )  # fmt: skip
        assert saved.returncode == 0, saved
        assert read_info(snap).header.revision >= 11
        etcdctl = shutil.which("etcdctl")
        if etcdctl is not None:
            url = f"https://127.0.0.1:{m.grpc_port}"
            ran = _run([etcdctl, f"--endpoints={url}", *tls_flags, "get", "tls/2"])
            assert (ran.returncode, ran.stdout) == (0, "tls/2\nv2\n"), ran

        # a plaintext client is refused, with a log line naming it, and nothing else changes
        target = cluster.members[leader]
        with (
            Client([target.endpoint], connect_timeout=2.0, max_attempts=1) as plain,
            pytest.raises((ClientError, EtcdError, OSError)),
        ):
            plain.get(b"tls/0")
        poll(
            lambda: (
                True
                if "native: refused a connection from 127.0.0.1:" in target.log_text()
                and "the other side does not speak TLS" in target.log_text()
                else None
            ),
            timeout=10,
            what=f"{leader}'s log line refusing the plaintext client",
        )
        writer.put(b"tls/after", b"still serving")
        assert cluster.client(leader).get(b"tls/after").kvs[0].value == b"still serving"
    except BaseException:
        print(cluster.logs())
        raise


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ETCDCTL_API": "3"}
    return subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
