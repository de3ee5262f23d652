"""A real cluster of ``kvapp serve`` processes on 127.0.0.1: replication, watches, leases,
crashes, snapshots, membership changes, retried writes and bad input.

Each test starts its own members through the CLI (:mod:`tests.kvapp.integration.harness`)
and kills them afterwards. Durability is checked with fsync on (the SIGKILL tests); the other
tests run with ``--unsafe-no-fsync`` to keep the module fast on a loaded machine.

A member restarted from its log counts a lease from when it applied the newest checkpoint, so
up to a checkpoint interval and two lease ticks late (kvapp.lease, "Staleness"): the lease test
allows that much when such a member takes over, and restarts it late enough that a TTL counted
from its restart would still fail. The lease test skips itself, rather than flake, on a machine
so slow that its schedule of kills and elections does not fit in the lease's TTL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import cbor2
import pytest

from kvapp.client import Client, ClientError
from kvapp.errors import (
    EtcdError,
    LearnerNotReadyError,
    LeaseNotFoundError,
    RequestTooLargeError,
)
from kvapp.mvcc.types import EventType, PutResponse
from kvapp.node import MAX_REQUEST_BYTES
from kvapp.server import native
from kvapp.transport.wire import (
    FRAME_HEADER,
    KIND_STREAM,
    FrameKind,
    encode_frame_header,
    encode_hello,
)
from tests.kvapp.integration.harness import (
    REPO_ROOT,
    AnswerCatcher,
    ProcCluster,
    Writer,
    free_ports,
    keys_present,
    poll,
    run_serve,
)

pytestmark = pytest.mark.integration

MakeCluster = Callable[..., ProcCluster]


def wait_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (a schedule, not a wait for state)."""
    time.sleep(max(0.0, deadline - time.monotonic()))


def test_a_write_to_any_member_is_read_linearizably_on_every_member(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    statuses = {n: cluster.status(n) for n in cluster.running()}
    assert {s.leader for s in statuses.values()} == {cluster.member_id(leader)}
    assert sum(not s.is_learner for s in statuses.values()) == 3
    clients = {n: cluster.client(n) for n in cluster.members}
    for writer in cluster.members:
        key = f"from-{writer}".encode()
        put = clients[writer].put(key, writer.encode())
        for reader, c in clients.items():
            resp = c.get(key)
            assert [kv.value for kv in resp.kvs] == [writer.encode()], (writer, reader)
            assert resp.kvs[0].mod_revision == put.revision, (writer, reader)
            assert resp.revision >= put.revision, (writer, reader)
    # SIGTERM: the leader hands over and exits cleanly; the others go on with everything.
    assert cluster.terminate(leader) == 0
    rest = cluster.followers(leader)
    assert cluster.wait_leader(among=rest) in rest
    for name in rest:
        assert clients[name].get(b"from-", prefix=True).count == 3, name


def test_a_watch_sees_every_event_in_order_across_a_member_crash(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    watched = cluster.followers(leader)[0]
    others = [n for n in cluster.members if n != watched]
    watcher = cluster.client(watched, *others)
    writer = cluster.client(*others)
    start = writer.put(b"w/start", b"0").revision
    watch = watcher.watch(b"w/", prefix=True, start_revision=start + 1)
    expected: list[tuple[int, EventType, bytes, bytes]] = []  # revision, type, key, value
    for i in range(120):
        if i == 60:
            cluster.kill(watched)  # the watch must resume on another member, losing nothing
        if i % 7 == 6:  # delete the key just written (a delete of nothing makes no event)
            key = b"w/%03d" % ((i - 1) % 40)
            deleted = writer.delete(key)
            assert deleted.deleted == 1
            expected.append((deleted.revision, EventType.DELETE, key, b""))
        else:
            key = b"w/%03d" % (i % 40)
            value = b"v%d" % i
            expected.append((writer.put(key, value).revision, EventType.PUT, key, value))
    revisions = [e[0] for e in expected]
    assert revisions == list(range(start + 1, start + 1 + len(expected))), "writes not contiguous"
    seen: list[tuple[int, EventType, bytes, bytes]] = []
    while len(seen) < len(expected):
        event = watch.get(timeout=15.0)
        assert event is not None, f"no event after {len(seen)} of {len(expected)}"
        seen.append((event.kv.mod_revision, event.type, event.kv.key, event.kv.value))
    assert seen == expected
    assert watch._watch.resumes >= 1, "the watch never failed over: the crash tested nothing"
    assert watch.get(timeout=0.3) is None, "an event beyond the writes"
    watch.cancel()


# kvapp.lease ("Staleness"): a member restarted from its log counts a lease from when it
# applied the newest checkpoint; a leader checkpoints every lease at its first lease tick and
# then every checkpoint interval, so a restarted successor's view is at most one interval plus
# two lease ticks late (the member's defaults: 1 s and 0.5 s).
RESTARTED_STALENESS = 1.0 + 2 * 0.5


@pytest.mark.parametrize("next_leader", ["never-restarted", "restarted"])
def test_a_lease_expires_on_time_however_often_the_leader_is_killed(
    make_cluster: MakeCluster, next_leader: str
) -> None:
    """Grant an 8 s lease, stop renewing it, SIGKILL (and restart) the leader twice, ~1.5 s apart.

    The member that takes over after the second kill is chosen by leaving the other survivor
    behind in the log (killed while an entry commits, restarted after the leader's kill): the
    member never restarted, or the one restarted after the first kill. Either way the new
    leader must count the lease from its grant (time-to-live at most TTL + grace since the
    grant), and the key must be gone within TTL + one election timeout (the new leader's grace)
    + slack of the grant, well before a TTL after the last kill. (Skipped if the machine is so
    slow that the last election ends after the TTL: the scenario then did not happen.)
    """
    # 8 s rather than 5: two kills, two restarts and three elections must fit in the TTL on a
    # loaded machine (a restart takes a second or more, and the peers redial with back-off).
    ttl, election, slack = 8.0, 0.5, 1.5
    cluster = make_cluster(3, heartbeat_ms=50, election_ms=int(election * 1000))
    client = cluster.client()
    sent_at = time.monotonic()
    lease = client.lease_grant(int(ttl)).id
    granted_at = time.monotonic()
    client.put(b"leased", b"x", lease=lease)

    wait_until(sent_at + 1.5)
    first = cluster.wait_leader()
    cluster.kill(first)
    stale = 0.0
    if next_leader == "restarted":
        # Restarted 4 s after the grant, so that a TTL counted from its restart stands out
        # beyond the staleness a restarted leader may have.
        wait_until(sent_at + 4.0)
        stale = RESTARTED_STALENESS
    cluster.start(first)  # restarted from its log
    survivors = [n for n in cluster.members if n != first]
    second = cluster.wait_leader(among=survivors)
    (untouched,) = set(survivors) - {second}
    if next_leader == "never-restarted":
        lagging, successor = first, untouched
    else:
        lagging, successor = untouched, first
    # Leave one survivor behind in the log, so that only the other can win the next election:
    # kill it (a paused one would still find the entries in its socket buffer), commit an entry
    # without it, kill the leader, and only then restart it.
    cluster.kill(lagging)
    cluster.client(second, successor).put(b"marker", b"committed without the lagging member")
    last_kill = time.monotonic()
    cluster.kill(second)
    cluster.start(lagging)
    assert cluster.wait_leader(among=[first, untouched]) == successor
    elected_at = time.monotonic()
    if elected_at >= granted_at + ttl:
        pytest.skip(
            f"the machine was too slow for this schedule: {successor} was elected "
            f"{elected_at - granted_at:.1f}s after the grant, after the lease's TTL"
        )
    on_leader = cluster.client(successor)
    cluster.start(second, wait=False)  # restarted too, while the lease runs out

    def timeline() -> str:
        return (
            f"last kill at +{last_kill - sent_at:.2f}s, {successor} elected by "
            f"+{elected_at - sent_at:.2f}s"
        )

    asked_at = time.monotonic()
    try:
        left = on_leader.lease_time_to_live(lease).ttl
    except LeaseNotFoundError:
        left = -1  # already revoked: when is checked below
    # Its TTL counts from the grant: what is left of it, plus the grace, plus half a second
    # for this member to have applied the grant after the client's reply.
    most = granted_at + ttl + election + 0.5 + stale - asked_at
    assert left <= max(most, 0), f"{successor} gives the lease {left}s, at most {most:.1f}s due"

    def gone() -> float | None:
        try:
            resp = on_leader.get(b"leased")
        except (ClientError, EtcdError):
            return None
        return None if resp.count else time.monotonic()

    gone_at = poll(gone, timeout=ttl + 10, interval=0.05, what="the leased key to be deleted")
    when = f"key gone at +{gone_at - sent_at:.2f}s, {timeline()}"
    due = granted_at + ttl + election + slack + stale  # a reset from the restart is later
    assert gone_at >= sent_at + ttl, f"the lease expired before its TTL: {when}"
    assert gone_at <= due, f"due by +{due - sent_at:.2f}s: {when}"
    cluster.wait_serving(second)


def assert_all_present(cluster: ProcCluster, acked: list[bytes], prefix: bytes) -> None:
    """Every acknowledged key is read (linearizably) on every running member."""
    assert acked, "no write was acknowledged: nothing was tested"
    for name in cluster.running():
        present = keys_present(cluster.client(name), prefix)
        lost = sorted(set(acked) - present)
        assert not lost, f"{name} lost {len(lost)} of {len(acked)} acknowledged writes: {lost[:5]}"


def test_sigkill_of_the_leader_elects_another_and_loses_no_acknowledged_write(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3, fsync=True)
    leader = cluster.wait_leader()
    with Writer(cluster.client(), b"ack/") as writer:
        writer.wait_acked(30, timeout=30)
        cluster.kill(leader)
        successor = cluster.wait_leader(among=cluster.followers(leader))
        assert successor != leader
        writer.wait_acked(30, timeout=30)  # the cluster writes again under the new leader
        cluster.start(leader)
        writer.wait_acked(10, timeout=30)
    assert_all_present(cluster, writer.acked, b"ack/")


def test_sigkill_of_every_member_then_restart_loses_no_acknowledged_write(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3, fsync=True)
    with Writer(cluster.client(), b"ack/") as writer:
        writer.wait_acked(50, timeout=30)
        for name in cluster.members:
            cluster.kill(name)
    acked = len(writer.acked)
    cluster.start()
    cluster.wait_leader()
    assert_all_present(cluster, writer.acked, b"ack/")
    assert len(writer.acked) == acked


def test_a_member_compacted_past_catches_up_by_snapshot(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3, snapshot_count=50)
    leader = cluster.wait_leader()
    behind = cluster.followers(leader)[0]
    client = cluster.client(*[n for n in cluster.members if n != behind])
    client.put(b"snap/before", b"0")
    cluster.kill(behind)
    written = {b"snap/%04d" % i: b"v%d" % i for i in range(300)}
    for key, value in written.items():
        client.put(key, value)
    cluster.start(behind)
    on_behind = cluster.client(behind)

    def converged() -> bool | None:
        try:
            resp = on_behind.get(b"snap/", prefix=True, serializable=True)
        except (ClientError, EtcdError):
            return None
        return True if len(resp.kvs) == len(written) + 1 else None

    poll(converged, timeout=30, what=f"{behind} to hold all {len(written) + 1} keys")
    resp = on_behind.get(b"snap/", prefix=True, serializable=True)
    assert {kv.key: kv.value for kv in resp.kvs} == {**written, b"snap/before": b"0"}
    assert resp.revision == client.get(b"snap/before").revision
    log = cluster[behind].log_text().split(f"start #2 of {behind}")[1]
    assert "received snapshot at index" in log, f"{behind} caught up without a snapshot"
    # Spooled to a file and handed on unread, never held whole in memory; the file is gone.
    assert "kept in its spool file" in log
    assert list((cluster[behind].data_dir / "spool").iterdir()) == []


def test_a_learner_joins_is_promoted_and_a_member_is_removed_under_write_load(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    admin = cluster.client()
    with Writer(cluster.client(), b"load/") as writer:
        writer.wait_acked(20, timeout=30)
        m4 = cluster.plan("m4")
        added = admin.member_add([m4.peer_url], is_learner=True)
        assert added.is_learner
        assert added.id == cluster.member_id("m4")
        cluster.start("m4", initial=["m1", "m2", "m3", "m4"], state="existing")

        def promoted() -> bool | None:
            me = {m.id: m for m in admin.member_list()}.get(added.id)
            return True if me is not None and not me.is_learner and me.name == "m4" else None

        poll(promoted, timeout=30, what="m4 to be promoted to voter and publish its name")
        writer.wait_acked(20, timeout=30)

        leader = cluster.wait_leader()
        victim = next(n for n in cluster.followers(leader) if n != "m4")
        admin.member_remove(cluster.member_id(victim))
        assert cluster.wait_exit(victim, timeout=20) == 0, f"{victim} did not exit cleanly"
        writer.wait_acked(20, timeout=30)
    members = admin.member_list()
    assert sorted(m.name for m in members) == sorted(set(cluster.members) - {victim})
    assert not any(m.is_learner for m in members)
    assert_all_present(cluster, writer.acked, b"load/")
    assert "removed from the cluster" in cluster[victim].log_text()


def test_a_member_started_to_join_before_member_add_says_so_and_joins_once_added(
    make_cluster: MakeCluster,
) -> None:
    """``--initial-cluster-state existing`` without ``member add`` first: the others refuse
    its links with a message that says what is missing; it keeps trying, and joins (as a
    learner, then promoted) once it is added. Nothing is lost meanwhile."""
    cluster = make_cluster(3)
    admin = cluster.client()
    admin.put(b"k", b"v")
    m4 = cluster.plan("m4")
    cluster.start("m4", initial=["m1", "m2", "m3", "m4"], state="existing")
    poll(
        lambda: "must be added with 'member add' before it starts" in m4.log_text() or None,
        timeout=30,
        what="m4 to log why it is refused",
    )
    assert m4.running
    added = admin.member_add([m4.peer_url], is_learner=True)

    def promoted() -> bool | None:
        me = {m.id: m for m in admin.member_list()}.get(added.id)
        return True if me is not None and not me.is_learner else None

    poll(promoted, timeout=30, what="m4 to join and be promoted")
    assert cluster.client("m4").get(b"k").kvs[0].value == b"v"


def test_with_auto_promotion_off_a_learner_waits_for_member_promote_sent_to_any_member(
    make_cluster: MakeCluster,
) -> None:
    """etcd's way: ``--auto-promote-learners false`` keeps a caught-up learner one until a
    promote request, which a follower hands to the leader (only it knows the learner is in
    sync)."""
    cluster = make_cluster(3, extra_args=["--auto-promote-learners", "false"])
    follower = cluster.followers(cluster.wait_leader())[0]
    admin = cluster.client(follower)
    admin.put(b"k", b"v")
    m4 = cluster.plan("m4")
    added = admin.member_add([m4.peer_url], is_learner=True)
    cluster.start("m4", initial=["m1", "m2", "m3", "m4"], state="existing")
    learner = cluster.client("m4")
    poll(lambda: learner.get(b"k", serializable=True).kvs or None, timeout=30, what="m4's data")
    time.sleep(1.5)  # three of the leader's lease ticks, when it would promote a learner
    assert {m.id: m for m in admin.member_list()}[added.id].is_learner

    def promote() -> bool | None:
        try:
            admin.member_promote(added.id)
        except LearnerNotReadyError:
            return None
        return True

    poll(promote, timeout=30, what="the promotion of m4")
    assert not {m.id: m for m in admin.member_list()}[added.id].is_learner
    assert cluster.status("m4").is_learner is False


@pytest.mark.parametrize("how", ["SIGTERM", "removed by a follower", "removed by itself"])
def test_a_leader_that_stops_or_is_removed_hands_leadership_over_first(
    make_cluster: MakeCluster, how: str
) -> None:
    """With a 4 s election timeout, the others elect a new leader well inside it.

    Without the hand-over they would wait at least one election timeout after the leader
    goes (the followers' randomised timeouts are 4-8 s).
    """
    cluster = make_cluster(3, election_ms=4000)
    leader = cluster.wait_leader()
    rest = cluster.followers(leader)
    admin = cluster.client(*rest)
    admin.put(b"before", b"1")
    started = time.monotonic()
    if how == "SIGTERM":
        assert cluster.terminate(leader) == 0
    else:
        remover = admin if how == "removed by a follower" else cluster.client(leader)
        remover.member_remove(cluster.member_id(leader))
    new = cluster.wait_leader(among=rest, timeout=10)
    took = time.monotonic() - started
    assert took < 2.0, f"{new} led only {took:.1f}s after {leader} went ({how})"
    if how != "SIGTERM":
        assert cluster.wait_exit(leader, timeout=20) == 0, f"{leader} did not exit cleanly"
        assert sorted(m.name for m in admin.member_list()) == sorted(rest)
    admin.put(b"after", b"2")
    assert [kv.key for kv in admin.get(b"", prefix=True).kvs] == [b"after", b"before"]


def test_a_write_retried_after_its_member_was_killed_is_applied_once(
    make_cluster: MakeCluster,
) -> None:
    """The member applies a put, then is SIGKILLed before its answer reaches the client.

    A proxy in front of the member keeps the answer, so the write certainly happened; the
    client sees its connection cut and retries on another member under the same request id.
    """
    cluster = make_cluster(3)
    leader = cluster.wait_leader()
    victim, other = cluster.followers(leader)
    catcher = AnswerCatcher(cluster[victim].client_port)
    try:
        client = cluster.client()  # only for the checks below
        writer = Client(
            [catcher.endpoint, cluster[other].endpoint],
            connect_timeout=1.0,
            request_timeout=3.0,
            max_attempts=8,
            writes_to_leader=False,  # the put goes to the victim, which forwards it
        )
        try:
            assert writer.status().header.member_id == cluster.member_id(victim)
            catcher.arm("put")
            answer: dict[str, object] = {}

            def put() -> None:
                try:
                    answer["put"] = writer.put(b"once", b"1")
                except BaseException as e:  # noqa: BLE001 - reported below
                    answer["error"] = e

            thread = threading.Thread(target=put)
            thread.start()
            assert catcher.caught.wait(15), "the member never answered the put"
            cluster.kill(victim)
            thread.join(30)
            assert not thread.is_alive(), "the retried put did not finish"
        finally:
            writer.close()
    finally:
        catcher.close()
    assert "error" not in answer, f"the retried put failed: {answer['error']!r}"
    put_resp = answer["put"]
    assert isinstance(put_resp, PutResponse)
    (kept,) = cbor2.loads(catcher.kept[4:])  # the victim's answer: the put was applied there
    assert kept[0] == 0, f"the victim answered the put with {kept!r}"
    assert kept[2][2] == put_resp.revision, "the retry was applied again, at a new revision"
    (kv,) = client.get(b"once").kvs
    assert kv.version == 1, f"the put was applied {kv.version} times"
    assert kv.mod_revision == put_resp.revision, "the retry got another write's answer"


def metric(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no sample {name!r} in:\n{text}")


def test_members_serve_health_and_metrics_that_follow_the_cluster(
    make_cluster: MakeCluster,
) -> None:
    """``--listen-metrics-urls``: /health is 200 while a leader is known; etcd's metric names
    count leader changes, committed proposals and WAL fsyncs."""
    cluster = make_cluster(3, start=False, fsync=True)
    http = {name: free_ports(1)[0] for name in cluster.members}
    for name, m in cluster.members.items():
        m.extra_args = ("--listen-metrics-urls", f"http://127.0.0.1:{http[name]}")
    cluster.start()
    leader = cluster.wait_leader()

    def get(name: str, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{http[name]}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()

    def scrape(name: str) -> str:
        return get(name, "/metrics")[1]

    for name in cluster.members:
        assert get(name, "/health") == (200, '{"health": "true"}'), name
    before = {name: scrape(name) for name in cluster.members}
    cluster.client().put(b"k", b"v")
    after = scrape(leader)
    assert metric(after, "etcd_server_is_leader") == 1
    assert metric(after, "etcd_server_has_leader") == 1
    assert metric(after, "etcd_server_proposals_committed_total") > metric(
        before[leader], "etcd_server_proposals_committed_total"
    )
    assert metric(after, "etcd_disk_wal_fsync_duration_seconds_count") > 0
    cluster.kill(leader)
    rest = cluster.followers(leader)
    cluster.wait_leader(among=rest)
    changes = "etcd_server_leader_changes_seen_total"
    for name in rest:

        def counted(name: str = name) -> bool | None:
            return metric(scrape(name), changes) > metric(before[name], changes) or None

        poll(counted, timeout=10, what=f"{name} to count the leader change")


def assert_cluster_serves(cluster: ProcCluster, data: dict[bytes, bytes]) -> None:
    """Every running member still has ``data`` and takes a write that every member reads."""
    key = b"after-%d" % time.monotonic_ns()
    cluster.client().put(key, b"ok")
    for name in cluster.running():
        c = cluster.client(name)
        for k, v in {**data, key: b"ok"}.items():
            assert [kv.value for kv in c.get(k).kvs] == [v], f"{name}: {k!r}"


def read_until_closed(sock: socket.socket, *, timeout: float = 10.0) -> bytes:
    """Everything ``sock`` receives until the peer closes it (a reset counts as closed)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the member kept the connection open for {timeout}s") from None
    return data


def peer_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The ``(kind, payload)`` frames of the peer wire format in ``data``."""
    frames = []
    while len(data) >= FRAME_HEADER.size:
        length, kind = FRAME_HEADER.unpack_from(data)
        frames.append((kind, data[FRAME_HEADER.size : 4 + length]))
        data = data[4 + length :]
    return frames


def test_bad_peer_input_is_refused_and_the_member_keeps_serving(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    client = cluster.client()
    client.put(b"before", b"1")
    target = cluster["m1"]
    peer = ("127.0.0.1", target.peer_port)
    hello = encode_hello(
        KIND_STREAM, cluster.cluster_id, cluster.member_id("m2"), cluster.member_id("m1")
    )

    # Not the peer protocol at all.
    with socket.create_connection(peer, timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        frames = peer_frames(read_until_closed(s))
    assert frames, "refused without a reason"
    assert frames[0][0] == FrameKind.REFUSE
    assert b"not a kvapp peer" in frames[0][1]

    # A well-formed handshake (as m2), then a frame longer than any limit.
    with socket.create_connection(peer, timeout=5) as s:
        s.sendall(hello)
        s.sendall(encode_frame_header(FrameKind.MESSAGES, 0xFFFF_FFF0))
        frames = peer_frames(read_until_closed(s))
    assert [k for k, _ in frames] == [FrameKind.ACCEPT]

    # A frame of the right size whose payload is not a message batch.
    with socket.create_connection(peer, timeout=5) as s:
        s.sendall(hello)
        junk = b"\xff\x00 not cbor \x00" * 10
        s.sendall(encode_frame_header(FrameKind.MESSAGES, len(junk)) + junk)
        read_until_closed(s)

    # A real member of another cluster (another token) that names m1 as its peer.
    stranger = ProcCluster(cluster.root / "other", 0, token="another-cluster")
    stranger.members["m1"] = attrs.evolve(target, proc=None, data_dir=cluster.root / "unused")
    stranger.plan("x")
    stranger.initial = ["x", "m1"]
    try:
        stranger.start("x")
        poll(
            lambda: True if "belongs to cluster" in target.log_text() else None,
            timeout=15,
            what="m1 to refuse the other cluster's member",
        )
        poll(
            lambda: True if "refused our connection" in stranger["x"].log_text() else None,
            timeout=15,
            what="the other cluster's member to report the refusal",
        )
    finally:
        stranger.close()

    log = target.log_text()
    assert "exceeds the limit" in log
    assert "undecodable message batch" in log
    assert_cluster_serves(cluster, {b"before": b"1"})


def native_frame(payload: bytes) -> bytes:
    """``payload`` as a frame of the native client protocol."""
    return struct.pack(">I", len(payload)) + payload


def native_frames(data: bytes) -> list[Any]:
    """The decoded frames of the native client protocol in ``data``."""
    frames = []
    while len(data) >= 4:
        (n,) = struct.unpack_from(">I", data)
        frames.append(cbor2.loads(data[4 : 4 + n]))
        data = data[4 + n :]
    return frames


def test_bad_client_input_is_refused_and_the_member_keeps_serving(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    target = cluster["m1"]
    client = cluster.client("m1")
    client.put(b"before", b"1")
    address = ("127.0.0.1", target.client_port)

    # Not the native protocol: an HTTP request (curl, as at etcd's client port) is told so.
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(b"GET /v3/kv/range HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(s)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert b"native client port" in answer

    # Other bytes whose first four read as a huge first frame: closed without an answer.
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(b"\x7f\xff\xff\xff garbage")
        assert read_until_closed(s) == b"", "answered something that does not speak the protocol"

    # A small first frame that is not a handshake: closed without an answer.
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(native_frame(b"hello"))
        assert read_until_closed(s) == b""

    # After a good handshake: a frame over the frame limit, then a frame that is not CBOR.
    bad_frames = {
        "etcdserver: request is too large": struct.pack(">I", 0x7FFF_FFFF),
        "": native_frame(b"\xff\xfe garbage"),
    }
    for message, bad in bad_frames.items():
        with socket.create_connection(address, timeout=5) as s:
            s.sendall(native_frame(cbor2.dumps([native.MAGIC, native.VERSION, 12345])))
            s.sendall(bad)
            s.shutdown(socket.SHUT_WR)
            frames = native_frames(read_until_closed(s))
        assert frames[0][0] == native.MAGIC, "no handshake answer"
        assert len(frames) == 2, f"no connection error before closing: {frames}"
        ((kind, _code, text),) = frames[1]
        assert kind == 3, f"not a connection error: {frames[1]!r}"
        assert message in text

    # A request over --max-request-bytes (1.5 MiB): etcd's error, and the connection stays.
    with pytest.raises(RequestTooLargeError, match="etcdserver: request is too large"):
        client.put(b"big", b"x" * (MAX_REQUEST_BYTES + 1))
    assert client.get(b"big").count == 0
    client.put(b"small", b"2")

    log = target.log_text()
    assert "an HTTP request on the native client port" in log
    assert "is not a handshake" in log
    assert "bad handshake" in log
    assert_cluster_serves(cluster, {b"before": b"1", b"small": b"2"})


def test_bad_command_lines_are_refused_with_a_message_and_touch_nothing(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    cluster.client().put(b"before", b"1")
    m2 = cluster["m2"]
    spare = cluster.root / "spare"
    peer, client_port = free_ports(2)
    me = f"http://127.0.0.1:{peer}"
    own = ["--listen-peer-urls", me, "--listen-client-urls", f"http://127.0.0.1:{client_port}"]
    refusals = {
        "does not name this member": [
            "--name", "m9", "--data-dir", str(spare), *own,
            "--initial-cluster", cluster.initial_cluster(),
        ],
        "is not name=http://host:port": [
            "--name", "m9", "--data-dir", str(spare), *own,
            "--initial-cluster", f"m9={me},m1 127.0.0.1:1",
        ],
        "but --listen-peer-urls is": [
            "--name", "m9", "--data-dir", str(spare), *own,
            "--initial-cluster", f"m9=http://127.0.0.1:1,{cluster.initial_cluster()}",
        ],
        "is the data directory of member 'm2', not 'm9'": [
            "--name", "m9", "--data-dir", str(m2.data_dir), *own,
            "--initial-cluster", f"m9={me}",
        ],
        "belongs to cluster": [
            "--name", "m2", "--data-dir", str(m2.data_dir), *own,
            "--initial-cluster", f"m2={me}", "--initial-cluster-token", "another-cluster",
        ],
    }  # fmt: skip
    for message, args in refusals.items():
        done = run_serve(args)
        assert done.returncode == 2, f"{message!r}: exit {done.returncode}\n{done.stderr}"
        assert message in done.stderr, f"{message!r} not in:\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        assert not spare.exists(), f"{message!r}: created {spare}"
    assert m2.running, "m2 stopped"
    assert_cluster_serves(cluster, {b"before": b"1"})


def test_a_member_whose_port_is_taken_says_so_and_starts_once_it_is_free(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(1, start=False)
    m = cluster["m1"]
    for what, port in (("peers", m.peer_port), ("clients", m.client_port)):
        with socket.create_server(("127.0.0.1", port)):
            done = run_serve(cluster.serve_args(m, initial=None, state="new"))
        assert done.returncode == 1, done.stderr
        assert f"kvapp serve: error: cannot listen for {what} on 127.0.0.1:{port}: " in done.stderr
        assert "in use" in done.stderr
        assert "Traceback" not in done.stderr, done.stderr
    cluster.start()
    cluster.wait_leader()
    c = cluster.client()
    c.put(b"k", b"v")
    assert c.get(b"k").kvs[0].value == b"v"


def test_a_data_dir_in_use_or_corrupt_is_refused_in_one_line(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    cluster.client().put(b"before", b"1")
    m2 = cluster["m2"]
    peer, client_port = free_ports(2)
    twin = [
        "--name", "m2", "--data-dir", str(m2.data_dir), "--initial-cluster-token", cluster.token,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--listen-client-urls", f"http://127.0.0.1:{client_port}",
    ]  # fmt: skip
    done = run_serve(twin)
    assert done.returncode == 2, done.stderr
    assert f"{m2.data_dir} is in use by another process" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert_cluster_serves(cluster, {b"before": b"1"})

    # A WAL damaged before its tail: the member refuses to start and names the file.
    for i in range(20):
        cluster.client().put(b"k%d" % i, b"v")
    cluster.terminate("m2")
    (wal,) = (m2.data_dir / "raft" / "wal").iterdir()
    data = bytearray(wal.read_bytes())
    used = len(data.rstrip(b"\0"))  # the file is preallocated with zeros
    data[used // 3] ^= 0xFF
    wal.write_bytes(bytes(data))
    done = run_serve(cluster.serve_args(m2, initial=None, state="new"))
    assert done.returncode == 1, done.stderr
    assert f"kvapp serve: error: cannot open the Raft store in {m2.data_dir}: " in done.stderr
    assert wal.name in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_kvapp_cluster_runs_a_local_cluster_stops_it_on_sigterm_and_restarts_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "local"
    out_path = tmp_path / "launcher.out"

    def launch() -> subprocess.Popen[bytes]:
        with out_path.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "kvapp", "cluster", "--size", "3", "--data-dir", str(data),
                 "--unsafe-no-fsync"],
                cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: its members can be killed too
            )  # fmt: skip

    def output() -> str:
        return out_path.read_text(errors="replace")

    def stop(proc: subprocess.Popen[bytes]) -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=30)

    def leaders_reported(n: int) -> Callable[[], bool | None]:
        return lambda: True if output().count("leader is") >= n else None

    for run in (1, 2):
        proc = launch()
        try:
            poll(
                leaders_reported(run),
                timeout=30,
                what=f"the launcher (run {run}) to report a leader",
                describe=output,
            )
            plan = json.loads((data / "cluster.json").read_text())
            endpoints = [f"127.0.0.1:{m['client_port']}" for m in plan["members"]]
            with Client(endpoints, connect_timeout=1.0, request_timeout=3.0) as c:
                if run == 1:
                    c.put(b"kept", b"across launcher runs")
                assert [kv.value for kv in c.get(b"kept").kvs] == [b"across launcher runs"]
            assert stop(proc) == 0, output()
        finally:
            if proc.poll() is None:  # the test failed while it ran: stop it and its members
                try:
                    stop(proc)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet: still its group
                    proc.wait(timeout=10)
        assert output().count("all members stopped") == run, output()
        for endpoint in endpoints:
            host, port = endpoint.split(":")
            with (
                pytest.raises(ConnectionRefusedError),
                socket.create_connection((host, int(port)), timeout=2),
            ):
                pass  # every member has exited: nothing listens any more


def test_a_kept_alive_lease_survives_leader_kills_and_expires_once_abandoned(
    make_cluster: MakeCluster,
) -> None:
    ttl, election = 5, 0.5
    cluster = make_cluster(3, heartbeat_ms=50, election_ms=int(election * 1000))
    client = cluster.client()
    lease = client.lease_grant(ttl).id
    client.put(b"held", b"x", lease=lease)
    keep = client.keep_alive(lease)
    try:
        started = time.monotonic()
        for _ in range(2):
            leader = cluster.wait_leader()
            cluster.kill(leader)
            cluster.start(leader)
        wait_until(started + ttl + 1)  # past the TTL: only acknowledged renewals kept it
        assert keep.alive, f"the keep-alive lost the lease: {keep.reason} ({keep.error!r})"
        assert client.get(b"held").count == 1, "a renewed lease expired"
    finally:
        keep.stop()
    stopped = time.monotonic()
    poll(
        lambda: True if client.get(b"held").count == 0 else None,
        timeout=ttl + election + 10,
        what="the abandoned lease to expire",
    )
    gone = time.monotonic() - stopped
    assert gone <= ttl + election + 2.0, f"the abandoned lease lived {gone:.1f}s"
