"""kvapp.client (``protocol="etcd"``) against a REAL etcd (Debian's etcd-server, etcd 3.4).

Needs the ``etcd`` binary (``apt-get install etcd-server``; ``.ci/run`` installs it): skipped
without it locally, failed under ``CI=true``. Each etcd runs on 127.0.0.1 with free ports and a
temporary data directory, is polled (bounded) until it serves with a leader, and is killed at
the end. One single-member etcd serves the module's tests (each uses its own key prefix); the
failover test starts a 3-member cluster of its own and kills the member the client is on.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvapp.client import AsyncClient, Client, LeaseLoss, Unavailable
from kvapp.client import txn as tx
from kvapp.errors import (
    CompactedError,
    DuplicateKeyError,
    EmptyKeyError,
    EtcdError,
    FutureRevisionError,
    GrpcCode,
    LearnerNotReadyError,
    LeaseNotFoundError,
    MemberNotFoundError,
    MemberNotLearnerError,
    NoSpaceError,
    PeerUrlExistsError,
    TooManyOpsError,
)
from kvapp.etcdpb import rpc_pb2
from kvapp.mvcc.types import EventType, SortOrder, TxnResponse
from kvapp.requests import AlarmMember, AlarmType, UnknownEtcdError
from kvapp.watch import WatchFilter
from tests.kvapp.etcd.helpers import Etcd
from tests.kvapp.integration.harness import free_ports, poll
from tests.kvapp.test_client import collect, eventually, run

pytestmark = pytest.mark.integration

ETCD = shutil.which("etcd")


@pytest.fixture(scope="module")
def etcd_binary() -> str:
    if ETCD is None:
        if os.environ.get("CI") == "true":
            pytest.fail("etcd is missing: .ci/run installs Debian's etcd-server package")
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    return ETCD


class EtcdCluster:
    """Real etcd members on 127.0.0.1 (fast elections: 50 ms heartbeats, 500 ms timeout)."""

    def __init__(self, binary: str, base: Path, size: int) -> None:
        self.base = base
        ports = free_ports(2 * size)
        self.endpoints = [f"127.0.0.1:{ports[2 * i]}" for i in range(size)]
        peers = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(size)]
        initial = ",".join(f"e{i}={peers[i]}" for i in range(size))
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(size):
            with (base / f"e{i}.log").open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [binary, "--name", f"e{i}", "--data-dir", str(base / f"e{i}"),
                         "--listen-client-urls", f"http://{self.endpoints[i]}",
                         "--advertise-client-urls", f"http://{self.endpoints[i]}",
                         "--listen-peer-urls", peers[i],
                         "--initial-advertise-peer-urls", peers[i],
                         "--initial-cluster", initial, "--initial-cluster-state", "new",
                         "--initial-cluster-token", f"kvapp-test-{ports[0]}",
                         "--heartbeat-interval", "50", "--election-timeout", "500"],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )  # fmt: skip

    def logs(self) -> str:
        return "\n".join(
            f"--- e{i}: exit {p.poll()}\n"
            + (self.base / f"e{i}.log").read_text(errors="replace")[-1500:]
            for i, p in enumerate(self.procs)
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll (bounded) until every member answers Status with a leader."""

        def ready() -> bool | None:
            if any(p.poll() is not None for p in self.procs):
                raise AssertionError(f"an etcd member exited:\n{self.logs()}")
            try:
                with Client(
                    self.endpoints,
                    protocol="etcd",
                    connect_timeout=0.5,
                    request_timeout=0.5,
                    max_attempts=1,
                ) as c:
                    leaders = {c.status(e).leader for e in self.endpoints}
            except (EtcdError, OSError, Unavailable):
                return None  # not serving yet
            return True if len(leaders) == 1 and 0 not in leaders else None

        poll(ready, timeout=timeout, interval=0.2, what="etcd to serve", describe=self.logs)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)


@pytest.fixture(scope="module")
def etcd(etcd_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    cluster = EtcdCluster(etcd_binary, tmp_path_factory.mktemp("etcd"), 1)
    try:
        cluster.wait_ready()
        yield cluster.endpoints
    finally:
        cluster.close()


def client_for(endpoints: list[str], **options: object) -> AsyncClient:
    return AsyncClient(endpoints, protocol="etcd", request_timeout=5.0, **options)  # type: ignore[arg-type]


def test_kv_and_txn(etcd: list[str]) -> None:
    @run()
    async def scenario() -> None:
        async with client_for(etcd) as client:
            first = await client.put(b"kv/a/1", b"x")
            again = await client.put(b"kv/a/1", b"z", prev_kv=True)
            assert again.revision == first.revision + 1
            assert again.prev_kv is not None
            assert again.prev_kv.value == b"x"
            await client.put("kv/a/2", "y")
            await client.put(b"kv/b", b"w")
            got = await client.get(b"kv/a/1")
            assert [(kv.key, kv.value, kv.version) for kv in got.kvs] == [(b"kv/a/1", b"z", 2)]
            assert got.kvs[0].create_revision == first.revision
            assert got.revision == first.revision + 3
            prefix = await client.get(b"kv/a/", prefix=True, sort_order=SortOrder.DESCEND)
            assert [kv.key for kv in prefix.kvs] == [b"kv/a/2", b"kv/a/1"]
            keys = await client.get(b"kv/", prefix=True, keys_only=True, serializable=True)
            assert [(kv.key, kv.value) for kv in keys.kvs] == [
                (b"kv/a/1", b""),
                (b"kv/a/2", b""),
                (b"kv/b", b""),
            ]
            assert (await client.get(b"kv/", prefix=True, count_only=True)).count == 3
            limited = await client.get(b"kv/", prefix=True, limit=1)
            assert (len(limited.kvs), limited.more, limited.count) == (1, True, 3)
            assert (await client.get(b"kv/a/1", revision=first.revision)).kvs[0].value == b"x"

            deleted = await client.delete(b"kv/a/", prefix=True, prev_kv=True)
            assert deleted.deleted == 2
            assert sorted(kv.key for kv in deleted.prev_kvs) == [b"kv/a/1", b"kv/a/2"]

            won = await client.txn(
                [tx.version(b"kv/lock", "==", 0), tx.value(b"kv/b", "==", b"w")],
                [tx.put(b"kv/lock", b"me"), tx.get(b"kv/b"), tx.txn([], [tx.get(b"kv/lock")])],
                [tx.get(b"kv/lock")],
            )
            assert won.succeeded
            assert won.responses[1].kvs[0].value == b"w"  # type: ignore[union-attr]
            nested = won.responses[2]
            assert isinstance(nested, TxnResponse)
            assert nested.revision == 0, "etcd 3.4 gives a nested txn's header no revision"
            assert nested.responses[0].kvs[0].value == b"me"  # type: ignore[union-attr]
            lost = await client.txn(
                [tx.version(b"kv/lock", "==", 0)],
                [tx.put(b"kv/lock", b"you")],
                [tx.get(b"kv/lock")],
            )
            assert not lost.succeeded
            assert lost.responses[0].kvs[0].value == b"me"  # type: ignore[union-attr]

    scenario()


def test_errors_are_etcds_mapped_to_kvapps_classes(etcd: list[str]) -> None:
    @run()
    async def scenario() -> None:
        async with client_for(etcd) as client:
            put = await client.put(b"err/k", b"v")
            me = (await client.status()).header.member_id
            cases = [
                (client.get(b"err/k", revision=put.revision + 1000), FutureRevisionError),
                (client.put(b"", b"v"), EmptyKeyError),
                (client.txn([tx.version(b"err/k", ">", 0)] * 129), TooManyOpsError),
                (
                    client.txn([], [tx.put(b"err/d", b"1"), tx.put(b"err/d", b"2")]),
                    DuplicateKeyError,
                ),
                (client.lease_revoke(12345), LeaseNotFoundError),
                (client.lease_time_to_live(12345), LeaseNotFoundError),
                (client.keep_alive_once(12345), LeaseNotFoundError),
                (client.member_remove(999), MemberNotFoundError),
                (client.member_promote(me), MemberNotLearnerError),
            ]
            for call, cls in cases:
                with pytest.raises(EtcdError) as info:
                    await call
                assert type(info.value) is cls
                assert str(info.value) == cls.message
                assert info.value.code == cls.code
            with pytest.raises(UnknownEtcdError) as unknown:
                await client.watch(b"err/b", b"err/a")
            assert str(unknown.value) == "mvcc: watcher range is empty"
            assert unknown.value.code == GrpcCode.INVALID_ARGUMENT

    scenario()


def test_watch_replay_cancel_and_compaction(etcd: list[str]) -> None:
    @run()
    async def scenario() -> None:
        async with client_for(etcd) as client:
            watch = await client.watch(b"w/", prefix=True, prev_kv=True)
            puts_only = await client.watch(b"w/", prefix=True, filters=[WatchFilter.NODELETE])
            revs = [(await client.put(b"w/%d" % i, b"v%d" % i)).revision for i in range(5)]
            await client.put(b"w/1", b"again")
            deleted = await client.delete(b"w/1")
            events = await collect(watch, 7)
            assert [e.kv.mod_revision for e in events] == [*revs, revs[-1] + 1, deleted.revision]
            assert [e.type for e in events[-2:]] == [EventType.PUT, EventType.DELETE]
            assert events[-1].prev_kv is not None
            assert events[-1].prev_kv.value == b"again"
            assert all(e.type is EventType.PUT for e in await collect(puts_only, 6))
            await watch.cancel()
            await puts_only.cancel()
            await client.put(b"w/after", b"v")
            assert [e async for e in watch] == [], "nothing after cancel"

            replay = await client.watch(b"w/3", start_revision=revs[0])
            assert [e.kv.value for e in await collect(replay, 1)] == [b"v3"]
            await replay.cancel()
            await client.compact(revs[3])
            with pytest.raises(CompactedError):
                await client.get(b"w/0", revision=revs[0])
            gone = await client.watch(b"w/", prefix=True, start_revision=revs[0])
            with pytest.raises(CompactedError):
                await collect(gone, 1)
            assert gone.compact_revision == revs[3]

    scenario()


def test_leases_keep_alive_in_the_background_and_report_revocation(etcd: list[str]) -> None:
    @run()
    async def scenario() -> None:
        async with client_for(etcd) as client:
            grant = await client.lease_grant(2)
            assert grant.ttl == 2
            await client.put(b"lease/k", b"v", lease=grant.id)
            assert grant.id in await client.leases()
            lost: list[object] = []
            ka = await client.keep_alive(grant.id, on_lost=lost.append)
            await eventually(lambda: ka.renewals >= 3, "two background renewals", within=5)
            ttl = await client.lease_time_to_live(grant.id, keys=True)
            assert (ttl.granted_ttl, ttl.keys) == (2, (b"lease/k",))
            assert ttl.ttl >= 1, "renewed: not about to expire"
            await client.lease_revoke(grant.id)
            async with asyncio.timeout(3):
                assert await ka.wait_lost() is LeaseLoss.GONE
            assert lost == [ka]
            assert (await client.get(b"lease/k")).kvs == ()
            assert grant.id not in await client.leases()

    scenario()


def test_members_status_and_snapshot(etcd: list[str]) -> None:
    @run()
    async def scenario() -> None:
        async with client_for(etcd) as client:
            status = await client.status(etcd[0])
            assert status.version.startswith("3.")
            assert status.leader == status.header.member_id
            (member,) = await client.member_list()
            assert (member.id, member.name) == (status.leader, "e0")
            assert member.client_urls == (f"http://{etcd[0]}",)
            learner = await client.member_add(
                [f"http://127.0.0.1:{free_ports(1)[0]}"], is_learner=True
            )
            assert learner.is_learner
            with pytest.raises(LearnerNotReadyError):  # never started, so never in sync
                await client.member_promote(learner.id)
            await client.member_remove(learner.id)
            assert [m.id for m in await client.member_list()] == [member.id]

            pieces: list[bytes] = []
            size = await client.snapshot(pieces.append)
            data = b"".join(pieces)
            assert size == len(data) > 0
            # etcd streams its bbolt database and appends its SHA-256 (what etcdctl checks).
            assert len(data) % 512 == 32
            assert hashlib.sha256(data[:-32]).digest() == data[-32:]

    scenario()


def test_alarm_list_disarm_and_member_update(etcd: list[str]) -> None:
    """etcd's alarms (raised over raw gRPC: clientv3 has no call for it) and MemberUpdate."""

    @run()
    async def scenario() -> None:
        raw = Etcd(etcd[0])
        async with client_for(etcd) as client:
            me = (await client.status()).header.member_id
            try:
                assert await client.alarm_list() == []
                assert await client.alarm_disarm() == []
                for member_id in (me, 0):  # etcd records an alarm for any member id
                    await raw.call(
                        "Maintenance",
                        "Alarm",
                        rpc_pb2.AlarmRequest(
                            action=rpc_pb2.AlarmRequest.ACTIVATE,
                            memberID=member_id,
                            alarm=rpc_pb2.NOSPACE,
                        ),
                        rpc_pb2.AlarmResponse,
                    )
                mine, zero = AlarmMember(me, AlarmType.NOSPACE), AlarmMember(0, AlarmType.NOSPACE)
                assert sorted(await client.alarm_list(), key=lambda a: a.member_id) == [zero, mine]
                with pytest.raises(NoSpaceError):
                    await client.put(b"alarm/k", b"v")
                assert await client.alarm_disarm(mine) == [mine]
                assert await client.alarm_list() == [zero]
                assert await client.alarm_disarm() == [zero]
                assert await client.alarm_list() == []
                assert await client.alarm_disarm(zero) == []  # not raised: nothing cleared
                await client.put(b"alarm/k", b"v")
            finally:
                await client.alarm_disarm()  # the module's etcd serves the other tests
                await raw.close()

            # MemberUpdate: of a learner added for it (never started), then etcd's errors.
            old, new = (f"http://127.0.0.1:{p}" for p in free_ports(2))
            learner = await client.member_add([old], is_learner=True)
            try:
                await client.member_update(learner.id, [new])
                listed = {m.id: m for m in await client.member_list()}
                # (etcd 3.4 also drops the member's learner flag here, etcd-io/etcd#21694,
                # fixed in later releases; kvapp keeps it: not asserted either way.)
                assert listed[learner.id].peer_urls == (new,)
                with pytest.raises(MemberNotFoundError):
                    await client.member_update(12345, [old])
                with pytest.raises(PeerUrlExistsError):
                    await client.member_update(learner.id, listed[me].peer_urls)
            finally:
                await client.member_remove(learner.id)
            assert [m.id for m in await client.member_list()] == [me]

    scenario()


def test_the_sync_client(etcd: list[str]) -> None:
    with Client(etcd, protocol="etcd") as client:
        watch = client.watch(b"sync/", prefix=True)
        put = client.put(b"sync/1", b"one")
        assert client.get(b"sync/1").kvs[0].mod_revision == put.revision
        event = watch.get(timeout=5)
        assert event is not None
        assert (event.type, event.kv.key, event.kv.value) == (EventType.PUT, b"sync/1", b"one")
        watch.cancel()


def test_watch_and_keep_alive_survive_killing_the_member_the_client_is_on(
    etcd_binary: str, tmp_path: Path
) -> None:
    cluster = EtcdCluster(etcd_binary, tmp_path, 3)
    try:
        cluster.wait_ready()

        @run(30)
        async def scenario() -> None:
            async with client_for(cluster.endpoints) as probe:
                leader = (await probe.status()).leader
                ids = [(await probe.status(e)).header.member_id for e in cluster.endpoints]
            # The client starts on a follower (killing the leader would add an election).
            order = sorted(range(3), key=lambda i: ids[i] == leader)
            endpoints = [cluster.endpoints[i] for i in order]
            async with client_for(endpoints, max_attempts=8) as client:
                watch = await client.watch(b"fo/", prefix=True)
                grant = await client.lease_grant(2)
                ka = await client.keep_alive(grant.id)
                first = await client.put(b"fo/0", b"v", lease=grant.id)
                assert [e.kv.key for e in await collect(watch, 1)] == [b"fo/0"]
                assert (await client.status()).header.member_id == ids[order[0]]

                cluster.kill(order[0])
                start = time.monotonic()
                # A read first: a write sent just as the connection breaks would be honestly
                # OutcomeUnknown (etcd cannot deduplicate it); a read is retried elsewhere.
                assert (await client.get(b"fo/0")).kvs[0].lease == grant.id
                assert client.endpoints[client._current] != endpoints[0]
                for i in range(1, 6):
                    await client.put(b"fo/%d" % i, b"v")
                events = await collect(watch, 5, within=10)
                assert [e.kv.key for e in events] == [b"fo/%d" % i for i in range(1, 6)]
                revs = [e.kv.mod_revision for e in events]
                assert revs == list(range(first.revision + 1, first.revision + 6))
                assert watch.resumes >= 1
                renewed = ka.renewals
                await eventually(lambda: ka.renewals >= renewed + 2, "renewals after the kill")
                assert ka.alive
                assert time.monotonic() - start < 15

        scenario()
    finally:
        cluster.close()


def test_once_a_dead_member_is_known_writes_to_it_are_unavailable_not_outcome_unknown(
    etcd_binary: str, tmp_path: Path
) -> None:
    """A write that never went out is Unavailable; only one that may have is OutcomeUnknown."""
    cluster = EtcdCluster(etcd_binary, tmp_path, 1)
    try:
        cluster.wait_ready()

        @run(30)
        async def scenario() -> None:
            async with client_for(cluster.endpoints, max_attempts=2, retry_backoff=0.01) as client:
                await client.put(b"dead/k", b"v")
                cluster.kill(0)
                with pytest.raises(Unavailable):  # a read: retried, then given up
                    await client.get(b"dead/k")
                # The client knows the connection is down: the write never goes out.
                with pytest.raises(Unavailable):
                    await client.put(b"dead/k", b"w")

        scenario()
    finally:
        cluster.close()
