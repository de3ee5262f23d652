"""``/v3/cluster/member/promote`` on etcd's JSON gateway: kvapp answers as real etcd 3.4 does.

The same requests go to kvapp's gateway (three real in-process members, each serving it: see
test_gateway_members.py) and to real etcd 3.4's (a single-member etcd, Debian's
``etcd-server``, started here on free 127.0.0.1 ports; its client URL serves the gateway).
Every promotion is refused, so the answers carry no member ids and must be equal: the HTTP
status (but see :func:`_as_upstream`), the content type and the JSON body. Needs the ``etcd``
binary: skipped without it locally, failed under ``CI=true``. Every wait is bounded and etcd
is killed at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kvapp.etcd.test_gateway import ok, post
from tests.kvapp.etcd.test_gateway_members import _start
from tests.kvapp.test_client_grpc_etcd import EtcdCluster
from tests.kvapp.test_member import leader_of

pytestmark = pytest.mark.integration

PROMOTE = "/v3/cluster/member/promote"
UNREACHABLE = "http://127.0.0.1:9"
"""The peer URL of a learner that is never started: never in sync, so never promoted."""


@pytest.fixture(scope="module")
def etcd_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = shutil.which("etcd")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("etcd is missing: .ci/run installs Debian's etcd-server package")
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    cluster = EtcdCluster(binary, tmp_path_factory.mktemp("etcd"), 1)
    try:
        cluster.wait_ready()
        yield int(cluster.endpoints[0].rsplit(":", 1)[1])
    finally:
        cluster.close()


Answer = tuple[int, str, Any]


async def _promotions(port: int) -> list[Answer]:
    """The session: promotions of an unknown id, a voter, a learner never started, a removed
    learner; each answer as (HTTP status, content type, JSON body)."""
    answers: list[Answer] = []

    async def promote(body: object) -> None:
        resp = await post(port, PROMOTE, body)
        answers.append((resp.status, resp.headers.get("content-type", ""), resp.json()))

    listed = await ok(port, "/v3/cluster/member/list", {})
    voter = next(m["ID"] for m in listed["members"] if not m.get("isLearner"))
    await promote({"ID": "12345"})
    await promote({})  # ID 0
    await promote({"ID": voter})
    added = await ok(port, "/v3/cluster/member/add", {"peerURLs": [UNREACHABLE], "isLearner": True})
    learner = added["member"]["ID"]
    assert added["member"]["isLearner"] is True, added
    try:
        await promote({"ID": learner})
    finally:
        await ok(port, "/v3/cluster/member/remove", {"ID": learner})
    await promote({"ID": learner})
    return answers


async def _bad_id(port: int) -> tuple[int, int]:
    """An ID that is not a number: refused as JSON that does not unmarshal (the message is Go's
    JSON decoder's in etcd, kvapp's own: only the status and gRPC code are compared)."""
    resp = await post(port, PROMOTE, {"ID": "x"})
    return resp.status, resp.json()["code"]


def _error(status: int, code: int, text: str) -> Answer:
    return status, "application/json", {"error": text, "message": text, "code": code}


NOT_FOUND = _error(404, 5, "etcdserver: member not found")
EXPECTED = [
    NOT_FOUND,
    NOT_FOUND,
    _error(400, 9, "etcdserver: can only promote a learner member"),
    _error(400, 9, "etcdserver: can only promote a learner member which is in sync with leader"),
    NOT_FOUND,
]
"""etcd 3.4's answers, with grpc-gateway v1.9.5's HTTP status for FailedPrecondition (400)."""


def _as_upstream(answer: Answer) -> Answer:
    """Debian's etcd-server 3.4.23 is built with Debian's grpc-gateway 1.6.4, which answers
    FailedPrecondition with 412; etcd 3.4 itself builds with v1.9.5, which answers 400, as
    kvapp does (kvapp/server/etcd/gateway.py). The JSON body is the same."""
    status, kind, body = answer
    return (400 if status == 412 and body.get("code") == 9 else status), kind, body


def test_member_promote_over_the_gateway_answers_as_etcds_gateway(etcd_port: int) -> None:
    async def on_etcd() -> tuple[list[Answer], tuple[int, int]]:
        return await _promotions(etcd_port), await _bad_id(etcd_port)

    async def on_kvapp() -> list[tuple[list[Answer], tuple[int, int]]]:
        c = await _start()
        try:
            lead = leader_of(c.members)
            follower = next(m for m in c.members if m is not lead)
            # The leader decides; a follower's gateway forwards the promotion to it.
            return [
                (await _promotions(c.port(m)), await _bad_id(c.port(m))) for m in (lead, follower)
            ]
        finally:
            await c.stop()

    answers, bad_id = asyncio.run(asyncio.wait_for(on_etcd(), 30))
    etcd = ([_as_upstream(a) for a in answers], bad_id)
    assert etcd == (EXPECTED, (400, 3)), f"etcd 3.4's gateway answered {etcd}"
    kvapp = asyncio.run(asyncio.wait_for(on_kvapp(), 30))
    for at, answered in zip(("leader", "follower"), kvapp, strict=True):
        assert answered == etcd, f"kvapp's gateway at the {at} answered {answered}, etcd {etcd}"
