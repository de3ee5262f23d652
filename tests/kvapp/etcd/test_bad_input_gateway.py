"""Bad input on etcd's JSON gateway, over three real in-process members (issue 12).

The members of tests/kvapp/etcd/test_bad_input.py, each also serving the gateway
(:class:`~kvapp.server.etcd.gateway_http.GatewayHttpServer` on 127.0.0.1), answered over
plain HTTP/1.1 (tests/kvapp/etcd/test_gateway.py's curl-like client). The same checks after
every test: the answer is grpc-gateway's (400 with gRPC code 3 for what does not decode, as
etcd's gateway answers JSON it cannot unmarshal), nothing refused was applied, nothing written
before is lost, every member goes on serving, and nothing was logged as an error. Oversized
bodies and requests are covered on real members by test_gateway_members.py.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from kvapp.server.etcd import MemberMaintenance
from kvapp.server.etcd.gateway import EtcdGateway
from kvapp.server.etcd.gateway_http import GatewayHttpServer
from tests.kvapp.etcd.test_bad_input import (
    INT64_MAX,
    INT64_MIN,
    Api,
    no_errors_logged,
    run,
    start_api,
)
from tests.kvapp.etcd.test_gateway import b64, ok, post, stream, unb64

UINT64_MAX = 2**64 - 1


@attrs.define
class Gateways:
    api: Api
    servers: list[GatewayHttpServer]

    @property
    def follower(self) -> int:
        return self.servers[self.api.clients.index(self.api.follower)].port

    async def revision(self) -> int:
        got = await ok(self.follower, "/v3/kv/range", {"key": b64("before")})
        return int(got["header"]["revision"])


def with_gateways(fn: Any) -> Any:
    def test() -> None:
        async def body() -> None:
            api = await start_api(published=True)  # followers forward lease calls
            servers = []
            try:
                for m in api.members:
                    gateway = EtcdGateway(m, MemberMaintenance(m))
                    server = GatewayHttpServer(gateway, host="127.0.0.1", port=0)
                    await server.start()
                    servers.append(server)
                with no_errors_logged():
                    await fn(Gateways(api, servers))
                    await api.check()
            finally:
                for s in servers:
                    await s.stop()
                await api.stop()

        run(body)

    test.__name__ = fn.__name__
    test.__doc__ = fn.__doc__
    return test


async def invalid(port: int, path: str, body: bytes | dict[str, Any], field: str) -> None:
    """``body`` is refused as JSON that does not unmarshal: 400, code 3, naming ``field``."""
    resp = await post(port, path, body if isinstance(body, bytes) else json.dumps(body).encode())
    assert resp.status == 400, (path, body if isinstance(body, dict) else body[:80], resp)
    error = resp.json()
    assert error["code"] == 3, error
    assert field in error["message"], error


@with_gateways
async def test_int64_overflows_in_json(g: Gateways) -> None:
    port = g.follower
    rev = await g.revision()
    key = b64("before")
    too_big, too_small = str(INT64_MAX + 1), str(INT64_MIN - 1)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v3/kv/range", {"key": key, "limit": too_big}, "limit"),
        ("/v3/kv/range", {"key": key, "limit": INT64_MAX + 1}, "limit"),  # a JSON number too
        ("/v3/kv/range", {"key": key, "revision": too_small}, "revision"),
        ("/v3/kv/range", {"key": key, "min_mod_revision": 1e30}, "min_mod_revision"),
        ("/v3/kv/range", {"key": key, "max_create_revision": 1.5}, "max_create_revision"),
        ("/v3/kv/put", {"key": key, "value": b64("lost"), "lease": str(2**64)}, "lease"),
        ("/v3/kv/deleterange", {"key": key, "range_end": "AA==", "prev_kv": 7}, "prev_kv"),
        (
            "/v3/kv/txn",
            {
                "compare": [{"key": key, "target": "VERSION", "version": too_big}],
                "success": [{"request_delete_range": {"key": key}}],
            },
            "version",
        ),
        ("/v3/kv/compaction", {"revision": too_big}, "revision"),
        ("/v3/lease/grant", {"TTL": too_big}, "TTL"),
        ("/v3/lease/grant", {"TTL": 10, "ID": INT64_MIN - 1}, "ID"),
        ("/v3/kv/lease/revoke", {"ID": "99999999999999999999"}, "ID"),
        ("/v3/kv/lease/timetolive", {"ID": too_small}, "ID"),
        ("/v3/cluster/member/remove", {"ID": str(UINT64_MAX + 1)}, "ID"),
        ("/v3/cluster/member/remove", {"ID": "-1"}, "ID"),  # uint64
        ("/v3/watch", {"create_request": {"key": key, "start_revision": too_big}}, "start_"),
        ("/v3/watch", {"create_request": {"key": key, "watch_id": too_small}}, "watch_id"),
        ("/v3/lease/keepalive", {"ID": too_big}, "ID"),
    ]
    for path, body, field in cases:
        await invalid(port, path, body, field)
    # Regression: a number of more than 4300 digits (Python's limit for int()) made the gateway
    # drop the connection without an answer and log a traceback.
    huge = b"1" + b"0" * 5000
    raw: tuple[tuple[str, bytes], ...] = (
        ("/v3/kv/range", b'{"key": "%s", "limit": %s}' % (key.encode(), huge)),
        ("/v3/kv/put", b'{"key": "%s", "value": "", "bogus": -%s}' % (key.encode(), huge)),
        ("/v3/lease/keepalive", b'{"ID": %s}' % huge),
    )
    for path, data in raw:
        await invalid(port, path, data, "invalid JSON")
    await invalid(port, "/v3/kv/range", {"key": key, "limit": "1" + "0" * 5000}, "limit")
    assert await g.revision() == rev, "a refused request was applied"
    # the extremes that fit are taken, and answered as over gRPC
    got = await ok(port, "/v3/kv/range", {"key": key, "limit": str(INT64_MAX)})
    assert unb64(got["kvs"][0]["value"]) == b"kept"
    got = await ok(port, "/v3/kv/range", {"key": key, "revision": str(INT64_MIN)})
    assert got["header"]["revision"] == str(rev)
    too_long = await post(port, "/v3/lease/grant", {"TTL": str(INT64_MAX)})
    assert (too_long.status, too_long.json()["message"]) == (400, "etcdserver: too large lease TTL")
    unknown = await post(port, "/v3/cluster/member/remove", {"ID": str(UINT64_MAX)})
    assert (unknown.status, unknown.json()["code"]) == (404, 5)
    assert await g.revision() == rev


@with_gateways
async def test_unknown_lease_ids_over_the_gateway(g: Gateways) -> None:
    port = g.follower
    rev = await g.revision()
    put = await post(port, "/v3/kv/put", {"key": b64("k"), "lease": "12345"})
    assert (put.status, put.json()["code"], put.json()["message"]) == (
        404,
        5,
        "etcdserver: requested lease not found",
    )
    revoke = await post(port, "/v3/kv/lease/revoke", {"ID": str(INT64_MIN)})
    assert (revoke.status, revoke.json()["code"]) == (404, 5)
    ttl = await ok(port, "/v3/kv/lease/timetolive", {"ID": "12345"})
    assert (ttl["ID"], ttl["TTL"], "grantedTTL" in ttl) == ("12345", "-1", False)
    keep = await post(port, "/v3/lease/keepalive", {"ID": "12345"})
    result = keep.json()["result"]
    assert (result["ID"], "TTL" in result) == ("12345", False)  # TTL 0: left out
    assert await g.revision() == rev


@with_gateways
async def test_half_closed_and_abandoned_gateway_streams(g: Gateways) -> None:
    port = g.follower
    member = g.api.member_of(g.api.follower)
    lease = (await ok(port, "/v3/lease/grant", {"TTL": 30}))["ID"]
    # a keep-alive body is the whole client side: answered, then the stream ends
    async with stream(port, "/v3/lease/keepalive", {"ID": lease}, {"ID": "12345"}) as keep:
        first, second = await keep.result(), await keep.result()
        assert (first["ID"], first["TTL"], second["ID"]) == (lease, "30", "12345")
        assert await keep.chunk() is None
    # a watch stream goes on after its body (etcd's), until the client disconnects, which
    # removes its watchers: also after a flood of creates in one body
    creates = [{"create_request": {"key": b64(f"w/{i}")}} for i in range(500)]
    async with stream(port, "/v3/watch", {"create_request": {"key": b64("w")}}, *creates) as w:
        assert (await w.result())["created"] is True
        for _ in creates:
            assert (await w.result())["created"] is True
        await g.api.watchers(member, 501, "after the creates")
        put = await ok(port, "/v3/kv/put", {"key": b64("w/7"), "value": b64("v")})
        event = await w.result()
        assert event["header"]["revision"] == put["header"]["revision"]
        assert unb64(event["events"][0]["kv"]["key"]) == b"w/7"
    await g.api.watchers(member, 0, "after the client disconnected")
    # a client that disconnects before reading anything leaks nothing either
    async with stream(port, "/v3/watch", *creates) as w:
        await g.api.watchers(member, 500, "before reading")
    await g.api.watchers(member, 0, "after the unread stream was dropped")
