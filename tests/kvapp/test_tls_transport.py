"""TLS on kvapp's peer links (TcpTransport with kvapp.tls contexts), on 127.0.0.1.

Each test makes its own throwaway CAs (tests/kvapp/tls_certs.py), runs its members on a fresh
loop under an overall timeout, and stops them; waits are bounded and fail with a message.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from kvapp.tls import TlsInfo, client_context
from tests.kvapp.test_transport import (
    LOGGER,
    Member,
    app,
    cluster,
    eventually,
    run,
    snap_msg,
    wait_for,
)
from tests.kvapp.tls_certs import Issued, TestCA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA with member certificates m1..m3, and a rogue CA with one of its own."""
    d: Path = tmp_path_factory.mktemp("pki")
    ca = TestCA(d, "ca")
    rogue = TestCA(d, "rogue")
    return {
        "ca": ca,
        "m1": ca.issue("m1"),
        "m2": ca.issue("m2"),
        "m3": ca.issue("m3"),
        "intruder": rogue.issue("intruder"),
        "expired": ca.issue("expired", expired=True),
        "elsewhere": ca.issue("elsewhere", ips=("127.0.0.2",), dns=("elsewhere.example",)),
    }


def tls_kwargs(leaf: Issued, ca: TestCA, *, present: bool = True) -> dict[str, Any]:
    """TcpTransport's server_ssl and client_ssl for a member with ``leaf`` (peer client auth on).

    With ``present=False`` its dialing side presents no certificate.
    """
    info = TlsInfo(leaf.cert, leaf.key, ca.cert, client_cert_auth=True)
    client = info.client_context() if present else client_context(ca_file=ca.cert)
    return {"server_ssl": info.server_context(), "client_ssl": client}


def test_tls_peer_links_carry_messages_and_snapshots(pki: dict[str, Any]) -> None:
    @run()
    async def main() -> None:
        members = {i: Member(i, **tls_kwargs(pki[f"m{i}"], pki["ca"])) for i in (1, 2, 3)}
        try:
            for m in members.values():
                await m.t.start()
            for m in members.values():
                for o in members.values():
                    if o is not m:
                        m.t.add_peer(o.id, o.t.address)
            for m in members.values():
                for o in members.values():
                    if o is not m:
                        await wait_for(m.t.wait_connected(o.id), f"{m.id} linked to {o.id}")
            for i in range(1, 51):
                members[1].t.send([app(1, 2, i), app(1, 3, i)])
                members[3].t.send([app(3, 2, i)])
                await asyncio.sleep(0)
            await eventually(
                lambda: (
                    members[2].indexes_from(1) == list(range(1, 51))
                    and members[2].indexes_from(3) == list(range(1, 51))
                    and members[3].indexes_from(1) == list(range(1, 51))
                ),
                "every message, in order, over TLS",
            )
            data = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: several chunks
            members[1].t.send([snap_msg(1, 2, data)])
            await wait_for(members[1].got_status.wait(), "the snapshot's status")
            assert members[1].snap_status == [(2, True)]
            snaps = [m for m in members[2].received if m.snapshot is not None]
            assert len(snaps) == 1
            assert snaps[0].snapshot is not None
            assert snaps[0].snapshot.data == data
        finally:
            for m in members.values():
                await m.t.stop()

    main()


# case -> (how member 3 is made, the reason member 1 logs refusing 3's connection or None,
#          the reason member 1 logs failing to dial 3 or None)
BAD_PEERS: dict[str, tuple[str, str | None, str | None]] = {
    "another CA": (
        "intruder",
        "certificate verify failed: unable to get local issuer certificate",
        "certificate verify failed: unable to get local issuer certificate",
    ),
    "expired": (
        "expired",
        "certificate verify failed: certificate has expired",
        "certificate verify failed: certificate has expired",
    ),
    "no client certificate": ("no-cert", "no certificate presented", None),
    "certificate for another host": ("elsewhere", None, "IP address mismatch"),
}


@pytest.mark.parametrize("case", list(BAD_PEERS))
def test_a_peer_without_a_valid_certificate_is_refused_with_a_log_line(
    case: str, pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    how, inbound_reason, outbound_reason = BAD_PEERS[case]
    third: dict[str, Any]
    if how == "no-cert":
        third = tls_kwargs(pki["m3"], pki["ca"], present=False)
    else:
        third = tls_kwargs(pki[how], pki["ca"])
    addresses: dict[int, tuple[str, int]] = {}

    @run(timeout=60)
    async def main() -> None:
        members = {i: Member(i, **tls_kwargs(pki[f"m{i}"], pki["ca"])) for i in (1, 2)}
        members[3] = Member(3, **third)
        try:
            for m in members.values():
                await m.t.start()
                addresses[m.id] = m.t.address
            for m in members.values():
                for o in members.values():
                    if o is not m:
                        m.t.add_peer(o.id, o.t.address)
            for a, b in ((1, 2), (2, 1)):
                await wait_for(members[a].t.wait_connected(b), f"{a} linked to {b}")
            if inbound_reason is not None:
                await eventually(
                    lambda: members[3].t.stats(1).dial_failures >= 2, "3's dials to 1 failing"
                )
                assert not members[3].t.is_connected(1)
            if outbound_reason is not None:
                await eventually(
                    lambda: members[1].t.stats(3).dial_failures >= 2, "1's dials to 3 failing"
                )
                assert not members[1].t.is_connected(3)
            # the valid members keep working together
            members[1].t.send([app(1, 2, 7)])
            members[2].t.send([app(2, 1, 8)])
            await eventually(
                lambda: members[2].indexes_from(1) == [7] and members[1].indexes_from(2) == [8],
                "messages between the valid members",
            )
            if inbound_reason is not None:
                assert members[1].indexes_from(3) == []
        finally:
            for m in members.values():
                await m.t.stop()

    main()
    lines = [r.getMessage() for r in caplog.records]
    if inbound_reason is not None:
        refused = [
            line
            for line in lines
            if line.startswith("member 1: peer links: refused a connection from 127.0.0.1:")
        ]
        assert refused, "\n".join(lines)
        assert all(inbound_reason in line for line in refused), refused
    if outbound_reason is not None:
        host, port = addresses[3]
        prefix = f"member 1: peer 3 at {host}:{port} failed the TLS handshake: "
        failed = [line for line in lines if line.startswith(prefix)]
        assert failed, "\n".join(lines)
        assert outbound_reason in failed[0], failed


def test_plaintext_and_tls_members_do_not_link_and_both_say_why(
    pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    @run(timeout=60)
    async def main() -> None:
        secure = Member(1, **tls_kwargs(pki["m1"], pki["ca"]))
        plain = Member(2)
        try:
            await secure.t.start()
            await plain.t.start()
            secure.t.add_peer(2, plain.t.address)
            plain.t.add_peer(1, secure.t.address)
            await eventually(
                lambda: (
                    secure.t.stats(2).dial_failures >= 2 and plain.t.stats(1).dial_failures >= 2
                ),
                "both sides' dials failing",
            )
            assert not secure.t.is_connected(2)
            assert not plain.t.is_connected(1)
            plain.t.send([app(2, 1, 1)])
            secure.t.send([app(1, 2, 1)])
            assert secure.received == []
            assert plain.received == []
        finally:
            await secure.t.stop()
            await plain.t.stop()

    main()
    text = caplog.text
    # the TLS member refuses the plaintext dialer ...
    assert "member 1: peer links: refused a connection from 127.0.0.1:" in text
    assert "the other side does not speak TLS" in text
    # ... and the plaintext member refuses the TLS dialer's handshake
    assert "member 2: refused connection from 127.0.0.1:" in text
    assert "a TLS handshake, but this member's peer links are plaintext" in text


def test_a_tls_handshake_that_never_comes_is_cut_off(
    pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    @run()
    async def main() -> None:
        async with cluster(1, 2, **tls_kwargs(pki["m1"], pki["ca"])) as ms:
            reader, writer = await asyncio.open_connection(*ms[1].t.address)
            try:
                # FAST's handshake timeout is 2 s
                got = await wait_for(reader.read(100), "the silent connection closed", 10)
                assert got == b""
            finally:
                writer.close()
            ms[2].t.send([app(2, 1, 3)])
            await wait_for(ms[1].got_message.wait(), "the real peer still gets through")

    main()
    assert "refused a connection from 127.0.0.1:" in caplog.text
    assert "TLS handshake not completed in time" in caplog.text


def test_stop_aborts_handshakes_in_progress(pki: dict[str, Any]) -> None:
    @run()
    async def main() -> None:
        m = Member(1, **tls_kwargs(pki["m1"], pki["ca"]))
        await m.t.start()
        reader, writer = await asyncio.open_connection(*m.t.address)
        try:
            await asyncio.sleep(0.05)  # accepted; its handshake waits for our hello
            await wait_for(m.t.stop(), "stop with a handshake in progress", 5)
            got = await wait_for(reader.read(100), "the connection closed by stop", 5)
            assert got == b""
        finally:
            writer.close()

    main()
