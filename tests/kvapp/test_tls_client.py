"""kvapp's client over TLS (``tls=ClientTls(...)``): the native protocol and etcd's gRPC API.

Fake members served on 127.0.0.1 with TLS (tests/kvapp/test_tls_servers.py's helpers); each
test makes its own throwaway CA and stops what it starts.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from kvapp.client import AsyncClient, Unavailable
from kvapp.ctl.app import run as ctl_run
from kvapp.ctl.parse import build_parser, global_options
from kvapp.tls import ClientTls, TlsConfigError
from tests.kvapp.test_native import run
from tests.kvapp.test_tls_servers import grpc_tls, native_tls, server_tls
from tests.kvapp.tls_certs import TestCA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d: Path = tmp_path_factory.mktemp("pki")
    ca = TestCA(d, "ca")
    rogue = TestCA(d, "rogue")
    return {
        "ca": ca,
        "rogue": rogue,
        "server": ca.issue("server"),
        "follower": ca.issue("follower"),
        "client": ca.issue("client"),
        "intruder": rogue.issue("intruder"),
    }


def client_tls(pki: dict[str, Any], leaf: str | None, *, ca: str = "ca") -> ClientTls:
    if leaf is None:
        return ClientTls(pki[ca].cert)
    return ClientTls(pki[ca].cert, pki[leaf].cert, pki[leaf].key)


@pytest.mark.parametrize("client_cert_auth", [False, True], ids=["server-auth", "mutual"])
def test_the_client_speaks_the_native_protocol_over_tls(
    client_cert_auth: bool, pki: dict[str, Any]
) -> None:
    @run()
    async def main() -> None:
        async with native_tls(server_tls(pki, client_cert_auth=client_cert_auth)) as server:
            endpoint = server.endpoint
            async with AsyncClient([endpoint], tls=client_tls(pki, "client")) as c:
                await c.put(b"k", b"v")
                assert (await c.get(b"k")).kvs[0].value == b"v"
            bare = AsyncClient([endpoint], tls=client_tls(pki, None), max_attempts=1)
            async with bare:
                if client_cert_auth:
                    with pytest.raises(Unavailable):
                        await bare.get(b"k")
                else:
                    assert (await bare.get(b"k")).kvs[0].value == b"v"
            for wrong in (
                AsyncClient([endpoint], tls=client_tls(pki, None, ca="rogue"), max_attempts=1),
                AsyncClient([endpoint], max_attempts=1),  # plaintext
            ):
                async with wrong:
                    with pytest.raises(Unavailable):
                        await wrong.get(b"k")

    main()


@pytest.mark.parametrize("client_cert_auth", [False, True], ids=["server-auth", "mutual"])
def test_the_client_speaks_etcds_grpc_api_over_tls(
    client_cert_auth: bool, pki: dict[str, Any]
) -> None:
    @run()
    async def main() -> None:
        async with grpc_tls(pki, client_cert_auth=client_cert_auth) as endpoints:
            good = AsyncClient(endpoints, protocol="etcd", tls=client_tls(pki, "client"))
            async with good:
                await good.put(b"k", b"v")
                assert (await good.get(b"k")).kvs[0].value == b"v"
                lease = await good.lease_grant(30)
                assert lease.ttl == 30
            bare = AsyncClient(
                endpoints, protocol="etcd", tls=client_tls(pki, None), max_attempts=1
            )
            async with bare:
                if client_cert_auth:
                    with pytest.raises(Unavailable):
                        await bare.get(b"k")
                else:
                    assert (await bare.get(b"k")).kvs[0].value == b"v"
            plain = AsyncClient(endpoints, protocol="etcd", max_attempts=1, connect_timeout=2)
            async with plain:
                with pytest.raises(Unavailable):
                    await plain.get(b"k")

    main()


def test_unusable_client_tls_files_are_refused_at_once(pki: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsConfigError, match=r"missing\.pem: cannot read it") as info:
        AsyncClient(["127.0.0.1:1"], tls=ClientTls(missing))
    assert info.value.field == "trusted_ca_file"
    with pytest.raises(TlsConfigError, match="needs both") as info:
        AsyncClient(["127.0.0.1:1"], tls=ClientTls(pki["ca"].cert, pki["client"].cert))
    with pytest.raises(TlsConfigError, match="does not belong to the certificate"):
        AsyncClient(
            ["127.0.0.1:1"],
            protocol="etcd",
            tls=ClientTls(pki["ca"].cert, pki["client"].cert, pki["server"].key),
        )


# -- kvctl --------------------------------------------------------------------------------------


async def kvctl(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run kvctl in-process; (status, stdout, stderr)."""
    out, err = io.BytesIO(), io.BytesIO()
    status = await ctl_run(
        list(argv), stdin=io.BytesIO(), stdout=out, stderr=err, environ=environ or {}
    )
    return status, out.getvalue().decode(), err.getvalue().decode()


def test_kvctl_takes_etcdctls_tls_flags_and_environment(pki: dict[str, Any]) -> None:
    ca, cert, key = (str(p) for p in (pki["ca"].cert, pki["client"].cert, pki["client"].key))

    @run()
    async def main() -> None:
        async with native_tls(server_tls(pki, client_cert_auth=True)) as server:
            ep = f"--endpoints={server.endpoint}"
            status, out, err = await kvctl(
                ep, "--cacert", ca, "--cert", cert, "--key", key, "put", "k", "v"
            )
            assert (status, out) == (0, "OK\n"), err
            env = {"ETCDCTL_CACERT": ca, "ETCDCTL_CERT": cert, "ETCDCTL_KEY": key}
            status, out, err = await kvctl(ep, "get", "k", environ=env)
            assert (status, out) == (0, "k\nv\n"), err
            status, out, err = await kvctl(ep, "--dial-timeout=1s", "get", "k")  # plaintext
            assert status == 1, (out, err)
            status, out, err = await kvctl(ep, "--dial-timeout=1s", "--cacert", ca, "get", "k")
            assert status == 1, (out, err)  # no client certificate

    main()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--cacert", "/nonexistent/ca.pem"), "Error: --cacert: /nonexistent/ca.pem: cannot read"),
        (("--cert", "CERT"), "Error: --key: a client certificate needs both"),
        (("--cert", "CERT", "--key", "CA"), "Error: --key: CA: not a PEM private key"),
    ],
)
def test_kvctl_refuses_unusable_tls_files_with_status_2(
    flags: tuple[str, ...], message: str, pki: dict[str, Any]
) -> None:
    names = {"CERT": str(pki["client"].cert), "CA": str(pki["ca"].cert)}
    argv = [names.get(f, f) for f in flags]
    message = message.replace("CA:", f"{pki['ca'].cert}:")

    @run()
    async def main() -> None:
        status, _, err = await kvctl("--endpoints=127.0.0.1:1", *argv, "get", "k")
        assert status == 2, err
        assert err.startswith(message), err

    main()


def test_kvctl_uses_tls_for_an_https_endpoint() -> None:
    ns = build_parser().parse_args(["--endpoints=https://127.0.0.1:2379", "get", "k"])
    opts = global_options(ns, {})
    assert opts.tls == ClientTls()
    assert global_options(build_parser().parse_args(["get", "k"]), {}).tls is None
