"""etcdctl (etcd 3.4's, unchanged) against ``kvapp cluster``: a scripted session, asserted.

Needs Debian's ``etcd-client`` package (``.ci/run`` installs it): skipped without ``etcdctl``
locally, failed under ``CI=true``. The cluster runs as a real ``python -m kvapp cluster``
process group on 127.0.0.1; every wait is bounded and the group is killed at the end.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvapp.snapfile import read_info
from tests.kvapp.integration.harness import REPO_ROOT, poll

pytestmark = pytest.mark.integration

ETCDCTL = shutil.which("etcdctl")


@pytest.fixture(scope="module")
def etcdctl() -> str:
    if ETCDCTL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("etcdctl is missing: .ci/run installs Debian's etcd-client package")
        pytest.skip("etcdctl is not installed (apt-get install etcd-client)")
    return ETCDCTL


class Cluster:
    """A ``kvapp cluster`` process group and the gRPC endpoints it printed."""

    def __init__(self, data: Path, out: Path) -> None:
        self.out = out
        with out.open("ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvapp", "cluster", "--size", "3", "--data-dir", str(data),
                 "--unsafe-no-fsync"],
                cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                    "PYTHONPATH": str(REPO_ROOT)},
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.grpc: list[str] = poll(
            self._endpoints, timeout=30, what="kvapp cluster's etcdctl line", describe=self.output
        )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def _endpoints(self) -> list[str] | None:
        m = re.search(r"etcdctl --endpoints=(\S+)", self.output())
        return m.group(1).split(",") if m else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, etcdctl: str) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("etcdctl")
    c = Cluster(tmp / "data", tmp / "cluster.out")
    try:
        yield c
    finally:
        c.stop()
    assert "all members stopped" in c.output(), c.output()


class Ctl:
    def __init__(self, binary: str, endpoints: list[str]) -> None:
        self.binary = binary
        self.endpoints = endpoints

    def run(
        self, *args: str, stdin: str = "", ok: bool = True, endpoints: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        eps = ",".join(endpoints or self.endpoints)
        done = subprocess.run(
            [self.binary, f"--endpoints={eps}", "--command-timeout=10s", *args],
            input=stdin, capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip
        if ok:
            assert done.returncode == 0, f"etcdctl {' '.join(args)}: {done.stderr}"
        return done

    def out(self, *args: str, stdin: str = "") -> str:
        return self.run(*args, stdin=stdin).stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.out(*args, "-w", "json"))


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _kvs(resp: Any) -> list[tuple[str, str]]:
    return [
        (base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")).decode())
        for kv in resp.get("kvs", [])
    ]


def _members_published(ctl: Ctl) -> list[Any] | None:
    done = ctl.run("member", "list", "-w", "json", ok=False)
    if done.returncode != 0:
        return None
    members = json.loads(done.stdout)["members"]
    if len(members) == 3 and all(m.get("clientURLs") for m in members):
        return list(members)
    return None


def test_an_etcdctl_session_against_kvapp_cluster(cluster: Cluster, etcdctl: str) -> None:
    ctl = Ctl(etcdctl, cluster.grpc)
    members = poll(
        lambda: _members_published(ctl),
        timeout=30,
        what="every member to publish its gRPC URL",
        describe=lambda: ctl.run("member", "list", ok=False).stdout + cluster.output(),
    )
    urls = sorted(u for m in members for u in m["clientURLs"])
    assert urls == sorted(f"http://{e}" for e in cluster.grpc)
    assert sorted(m["name"] for m in members) == ["m1", "m2", "m3"]

    # put / get with etcdctl's options
    first = ctl.json("put", "a/1", "one")["header"]["revision"]
    for key, value in [("a/2", "two"), ("a/3", "three"), ("b", "bee")]:
        assert ctl.out("put", key, value) == "OK\n"
    ctl.out("put", "a/1", "uno")
    got = ctl.json("get", "a/", "--prefix")
    assert _kvs(got) == [("a/1", "uno"), ("a/2", "two"), ("a/3", "three")]
    assert got["count"] == 3
    limited = ctl.json("get", "a/", "--prefix", "--limit", "2", "--sort-by=KEY", "--order=DESCEND")
    assert _kvs(limited) == [("a/3", "three"), ("a/2", "two")]
    assert limited["more"] is True
    assert ctl.out("get", "a/", "--prefix", "--keys-only").split() == ["a/1", "a/2", "a/3"]
    assert ctl.out("get", "a/2", "--from-key", "--keys-only").split() == ["a/2", "a/3", "b"]
    assert _kvs(ctl.json("get", "a/1", f"--rev={first}")) == [("a/1", "one")]
    by_mod = ctl.json("get", "a/", "--prefix", "--sort-by=MODIFY", "--order=ASCEND")
    assert [k for k, _ in _kvs(by_mod)] == ["a/2", "a/3", "a/1"]

    # txn from stdin, both branches
    txn = 'value("a/1") = "uno"\n\nput a/1 txn-ok\n\nput a/1 txn-failed\n\n'
    assert ctl.out("txn", stdin=txn).split() == ["SUCCESS", "OK"]
    assert ctl.out("txn", stdin=txn).split() == ["FAILURE", "OK"]
    assert _kvs(ctl.json("get", "a/1")) == [("a/1", "txn-failed")]

    # watch: history from a revision with previous values, then a live event
    watch = Watcher(ctl, "watch", "a/", "--prefix", f"--rev={first}", "--prev-kv")
    try:
        history = watch.lines_until("txn-failed", timeout=15)
        assert history[:3] == ["PUT", "a/1", "one"]
        ctl.out("put", "a/2", "live")
        assert watch.lines_until("live", timeout=15)[-4:] == ["a/2", "two", "a/2", "live"]
    finally:
        watch.stop()

    # leases
    lease = ctl.out("lease", "grant", "60").split()[1]
    assert ctl.out("put", "leased", "x", f"--lease={lease}") == "OK\n"
    assert f"lease {lease} keepalived with TTL(60)" in ctl.out(
        "lease", "keep-alive", "--once", lease
    )
    ttl = ctl.out("lease", "timetolive", lease, "--keys")
    assert f"lease {lease} granted with TTL(60s)" in ttl
    assert "attached keys([leased])" in ttl
    assert lease in ctl.out("lease", "list")
    # Every member answers keep-alives (followers forward them to the leader).
    for endpoint in cluster.grpc:
        one = ctl.run("lease", "keep-alive", "--once", lease, endpoints=[endpoint]).stdout
        assert "keepalived with TTL(60)" in one
    assert f"lease {lease} revoked" in ctl.out("lease", "revoke", lease)
    assert "already expired" in ctl.out("lease", "timetolive", lease)
    assert not ctl.json("get", "leased").get("kvs")

    # cluster and maintenance
    statuses = ctl.json("endpoint", "status", "--cluster")
    assert len(statuses) == 3
    leaders = {s["Status"]["leader"] for s in statuses}
    assert len(leaders) == 1
    assert leaders.pop() in {s["Status"]["header"]["member_id"] for s in statuses}
    health = ctl.run("endpoint", "health")
    assert health.stderr.count("is healthy") + health.stdout.count("is healthy") == 3
    # Equal once every member has applied the same revisions (a follower may lag a moment).
    poll(
        lambda: (
            len({h["HashKV"]["hash"] for h in ctl.json("endpoint", "hashkv", "--cluster")}) == 1
            or None
        ),
        timeout=10,
        what="every member to report the same HashKV",
        describe=lambda: ctl.out("endpoint", "hashkv", "--cluster"),
    )
    assert ctl.out("alarm", "list") == ""

    # membership: a learner added (not started), refused promotion, removed
    added = ctl.out("member", "add", "extra", "--learner", "--peer-urls=http://127.0.0.1:1")
    learner = re.search(r"Member\s+(\w+) added", added)
    assert learner is not None, added
    # A member lists its own view, so one that has not applied the change yet omits the learner
    # (etcd 3.4's MemberList is not linearizable either); etcdctl may ask any member.
    row = f"{learner.group(1)}, unstarted, , http://127.0.0.1:1, , true"
    poll(
        lambda: row in ctl.out("member", "list") or None,
        timeout=10,
        what=f"member list to show the learner: {row}",
        describe=lambda: ctl.out("member", "list"),
    )
    refused = ctl.run("member", "promote", learner.group(1), ok=False)
    assert "can only promote a learner member which is in sync with leader" in refused.stderr
    assert "removed from cluster" in ctl.out("member", "remove", learner.group(1))

    # move-leader: to a follower, found through the endpoints' statuses
    follower = next(
        s["Status"]["header"]["member_id"]
        for s in statuses
        if s["Status"]["header"]["member_id"] != s["Status"]["leader"]
    )
    moved = ctl.out("move-leader", f"{follower:x}")
    assert f"to {follower:x}" in moved
    poll(
        lambda: (
            {s["Status"]["leader"] for s in ctl.json("endpoint", "status")} == {follower} or None
        ),
        timeout=10,
        what=f"every member to see {follower:x} as the leader",
        describe=lambda: ctl.out("endpoint", "status"),
    )

    # compaction, then the compacted revision is gone with etcd's error
    rev = ctl.json("get", "b")["header"]["revision"]
    assert ctl.out("compaction", str(rev)) == f"compacted revision {rev}\n"
    old = ctl.run("get", "a/1", f"--rev={first}", ok=False)
    assert old.returncode != 0
    assert "required revision has been compacted" in old.stderr

    # snapshot save from one endpoint: a kvapp snapshot file, checked by kvapp snapshot status
    snap = cluster.out.parent / "etcdctl.snapshot"
    saved = ctl.run("snapshot", "save", str(snap), endpoints=ctl.endpoints[:1])
    assert f"Snapshot saved at {snap}" in saved.stdout + saved.stderr
    info = read_info(snap)
    assert info.header.revision == rev
    assert (snap.stat().st_size - 32) % 512 == 0

    # delete with a prefix and with --from-key
    assert ctl.out("del", "a/", "--prefix") == "3\n"
    assert ctl.out("del", "b", "--from-key", "--prev-kv").split() == ["1", "b", "bee"]
    assert not ctl.json("get", "", "--from-key").get("kvs")


class Watcher:
    """``etcdctl watch ...`` in the background; its output lines read with a deadline."""

    def __init__(self, ctl: Ctl, *args: str) -> None:
        self.proc = subprocess.Popen(
            [ctl.binary, f"--endpoints={','.join(ctl.endpoints)}", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def lines_until(self, last: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if line == last:
                return self.seen[start:]
        raise AssertionError(f"etcdctl watch printed no {last!r} line; it printed: {self.seen}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.thread.join(timeout=10)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
