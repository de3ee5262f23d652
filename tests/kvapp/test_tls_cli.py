"""``kvapp serve``'s TLS flags (etcd's names): checked before anything touches the disk.

https:// URLs without certificate files, certificate files with http:// URLs, half a key pair,
client certificate authentication without a CA, and missing, unreadable or mismatched files
are each refused with exit status 2, a message naming the flag, and no data directory made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kvapp.cli import main, parse_serve_args
from tests.kvapp.tls_certs import TestCA

PEER = "https://127.0.0.1:2380"
CLIENT = "https://127.0.0.1:2379"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d: Path = tmp_path_factory.mktemp("pki")
    ca = TestCA(d, "ca")
    m1 = ca.issue("m1")
    other = ca.issue("other")
    unreadable = d / "unreadable.pem"
    unreadable.write_bytes(m1.cert.read_bytes())
    unreadable.chmod(0)
    garbage = d / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return {
        "ca": str(ca.cert),
        "cert": str(m1.cert),
        "key": str(m1.key),
        "other_key": str(other.key),
        "unreadable": str(unreadable),
        "garbage": str(garbage),
        "missing": str(d / "missing.pem"),
        "directory": str(d),
    }


def serve_args(
    *, peer: str = PEER, client: str = CLIENT, grpc: str | None = None, extra: tuple[str, ...] = ()
) -> list[str]:
    args = [
        "--name",
        "m1",
        "--listen-peer-urls",
        peer,
        "--listen-client-urls",
        client,
        "--initial-cluster",
        f"m1={peer}",
    ]
    if grpc is not None:
        args += ["--listen-grpc-urls", grpc]
    return [*args, *extra]


def tls_flags(
    pki: dict[str, Any], *, peer_auth: bool = True, client_auth: bool = True
) -> tuple[str, ...]:
    flags = [
        "--cert-file", pki["cert"], "--key-file", pki["key"], "--trusted-ca-file", pki["ca"],
        "--peer-cert-file", pki["cert"], "--peer-key-file", pki["key"],
        "--peer-trusted-ca-file", pki["ca"],
    ]  # fmt: skip
    if client_auth:
        flags.append("--client-cert-auth")
    if peer_auth:
        flags.append("--peer-client-cert-auth")
    return tuple(flags)


def test_the_eight_flags_give_both_sides_tls(pki: dict[str, Any]) -> None:
    opts, _ = parse_serve_args(serve_args(grpc="https://127.0.0.1:2479", extra=tls_flags(pki)))
    assert opts.client_tls is not None
    assert opts.peer_tls is not None
    assert str(opts.client_tls.cert_file) == pki["cert"]
    assert opts.client_tls.client_cert_auth
    assert opts.peer_tls.client_cert_auth
    assert str(opts.peer_tls.trusted_ca_file) == pki["ca"]
    plain, _ = parse_serve_args(serve_args(peer="http://127.0.0.1:2380", client="http://h:1"))
    assert plain.client_tls is None
    assert plain.peer_tls is None


def test_one_side_alone_may_use_tls(pki: dict[str, Any]) -> None:
    peer_only = (
        "--peer-cert-file", pki["cert"], "--peer-key-file", pki["key"],
        "--peer-trusted-ca-file", pki["ca"],
    )  # fmt: skip
    opts, _ = parse_serve_args(serve_args(client="http://127.0.0.1:2379", extra=peer_only))
    assert opts.client_tls is None
    assert opts.peer_tls is not None
    assert not opts.peer_tls.client_cert_auth


def with_files(pki: dict[str, Any], **replace: str) -> tuple[str, ...]:
    """tls_flags with some flags' values replaced (``cert_file="missing"`` ...)."""
    flags = list(tls_flags(pki))
    for name, which in replace.items():
        i = flags.index(f"--{name.replace('_', '-')}")
        flags[i + 1] = pki[which]
    return tuple(flags)


REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "https client URL without certificate": (
        {"peer": "http://127.0.0.1:2380"},
        "--listen-client-urls: https://127.0.0.1:2379 is https:// but no TLS certificate is "
        "given: add --cert-file and --key-file",
    ),
    "https peer URL without certificate": (
        {"client": "http://127.0.0.1:2379"},
        "--listen-peer-urls: https://127.0.0.1:2380 is https:// but no TLS certificate is "
        "given: add --peer-cert-file and --peer-key-file",
    ),
    "https gRPC URL without certificate": (
        {
            "peer": "http://127.0.0.1:2380",
            "client": "http://127.0.0.1:2379",
            "grpc": "https://127.0.0.1:2479",
        },
        "--listen-grpc-urls: https://127.0.0.1:2479 is https://",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_https_without_certificate_files_is_refused(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kwargs, message = REFUSALS[case]
    data = tmp_path / "data"
    assert main(["serve", *serve_args(**kwargs), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not data.exists()


def flag_cases(pki: dict[str, Any]) -> dict[str, tuple[list[str], str]]:
    http = {"peer": "http://127.0.0.1:2380", "client": "http://127.0.0.1:2379"}
    return {
        "certificate with http client URL": (
            serve_args(client="http://127.0.0.1:2379", extra=tls_flags(pki)),
            "--listen-client-urls: http://127.0.0.1:2379 is http:// but --cert-file turns TLS "
            "on for clients: use https://",
        ),
        "certificate with http gRPC URL": (
            serve_args(grpc="http://127.0.0.1:2479", extra=tls_flags(pki)),
            "--listen-grpc-urls: http://127.0.0.1:2479 is http:// but --cert-file",
        ),
        "peer certificate with an http member in --initial-cluster": (
            [
                *serve_args(extra=tls_flags(pki)),
                "--initial-cluster",
                f"m1={PEER},m2=http://127.0.0.1:2382",
            ],
            "--initial-cluster: http://127.0.0.1:2382 is http:// but --peer-cert-file turns "
            "TLS on for peer links: use https://",
        ),
        "certificate without key": (
            serve_args(**http, extra=("--cert-file", pki["cert"])),
            "--cert-file needs --key-file too",
        ),
        "peer key without certificate": (
            serve_args(**http, extra=("--peer-key-file", pki["key"])),
            "--peer-key-file needs --peer-cert-file too",
        ),
        "client-cert-auth without CA": (
            serve_args(
                peer="http://127.0.0.1:2380",
                extra=("--cert-file", pki["cert"], "--key-file", pki["key"], "--client-cert-auth"),
            ),
            "--client-cert-auth needs --trusted-ca-file",
        ),
        "CA without certificate": (
            serve_args(**http, extra=("--peer-trusted-ca-file", pki["ca"])),
            "--peer-trusted-ca-file needs --peer-cert-file and --peer-key-file",
        ),
        "missing certificate": (
            serve_args(extra=with_files(pki, cert_file="missing")),
            f"--cert-file: {pki['missing']}: cannot read it: No such file or directory",
        ),
        "missing peer CA": (
            serve_args(extra=with_files(pki, peer_trusted_ca_file="missing")),
            f"--peer-trusted-ca-file: {pki['missing']}: cannot read it",
        ),
        "not a certificate": (
            serve_args(extra=with_files(pki, peer_cert_file="garbage")),
            f"--peer-cert-file: {pki['garbage']}: not a PEM certificate",
        ),
        "not a key": (
            serve_args(extra=with_files(pki, key_file="garbage")),
            f"--key-file: {pki['garbage']}: not a PEM private key",
        ),
        "key of another certificate": (
            serve_args(extra=with_files(pki, peer_key_file="other_key")),
            f"--peer-key-file: {pki['other_key']}: this key does not belong to the "
            f"certificate in {pki['cert']}",
        ),
        "unreadable CA": (
            serve_args(extra=with_files(pki, trusted_ca_file="unreadable")),
            f"--trusted-ca-file: {pki['unreadable']}: cannot read it: Permission denied",
        ),
        "a directory as the key": (
            serve_args(extra=with_files(pki, peer_key_file="directory")),
            f"--peer-key-file: {pki['directory']}: cannot read it: Is a directory",
        ),
    }


CASES = [
    "certificate with http client URL",
    "certificate with http gRPC URL",
    "peer certificate with an http member in --initial-cluster",
    "certificate without key",
    "peer key without certificate",
    "client-cert-auth without CA",
    "CA without certificate",
    "missing certificate",
    "missing peer CA",
    "not a certificate",
    "not a key",
    "key of another certificate",
    "unreadable CA",
    "a directory as the key",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_tls_flags_exit_2_with_a_message_and_create_nothing(
    case: str, pki: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if case == "unreadable CA" and os.geteuid() == 0:
        pytest.skip("root reads a file without read permission")
    argv, message = flag_cases(pki)[case]
    data = tmp_path / "data"
    assert main(["serve", *argv, "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvapp serve: error: "), err
    assert message in err, err
    assert not data.exists()
