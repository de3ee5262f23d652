"""etcd3gw (OpenStack's etcd v3 JSON-gateway client) and curl against ``kvapp cluster``.

The cluster runs as a real ``python -m kvapp cluster`` process group on 127.0.0.1, whose
members serve the gateway (``--listen-client-http-urls``); every wait is bounded and the group
is stopped at the end. etcd3gw is unchanged: it discovers the ``/v3/`` paths from ``GET
/version`` and speaks the gateway's JSON with ``requests``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from etcd3gw.client import Etcd3Client

from tests.kvapp.integration.harness import REPO_ROOT, poll

pytestmark = pytest.mark.integration


class Cluster:
    """A ``kvapp cluster`` process group, its gateway URLs and the curl line it printed."""

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
        self.curl: str = poll(
            self._curl_line,
            timeout=30,
            what="kvapp cluster's curl line",
            describe=self.output,
        )
        self.ports = [int(p) for p in re.findall(r" http http://127\.0\.0\.1:(\d+)", self.output())]
        assert len(self.ports) == 3, self.output()

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def _curl_line(self) -> str | None:
        m = re.search(r"^  (curl .*)$", self.output(), re.M)
        return m.group(1) if m else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def _status(port: int) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v3/maintenance/status", data=b"{}", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def _ready(ports: list[int]) -> list[Any] | None:
    """Every member's status once all serve, agree on a leader and publish their gRPC URLs."""
    statuses = [_status(p) for p in ports]
    if not all(s and s.get("leader") for s in statuses):
        return None
    if len({s["leader"] for s in statuses}) != 1:
        return None
    members = Etcd3Client("127.0.0.1", ports[0], timeout=5).members()
    if len(members) != 3 or not all(m.get("clientURLs") for m in members):
        return None
    return statuses


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("gateway")
    c = Cluster(tmp / "data", tmp / "cluster.out")
    try:
        poll(
            lambda: _ready(c.ports),
            timeout=30,
            interval=0.2,
            what="every member's gateway to serve with a leader",
            describe=c.output,
        )
        yield c
    finally:
        c.stop()
    assert "all members stopped" in c.output(), c.output()


@pytest.fixture
def clients(cluster: Cluster) -> list[Etcd3Client]:
    """A client per member; the leader's first."""
    statuses = [_status(p) for p in cluster.ports]
    leader = next(i for i, s in enumerate(statuses) if s["leader"] == s["header"]["member_id"])
    order = [leader] + [i for i in range(3) if i != leader]
    return [Etcd3Client("127.0.0.1", cluster.ports[i], timeout=10) for i in order]


def test_etcd3gw_kv_and_txn(clients: list[Etcd3Client]) -> None:
    leader, follower, _ = clients
    assert follower.api_path == "/v3/"  # discovered from GET /version
    assert follower.put("kv/a", "1")
    assert leader.put("kv/b", b"\x00\xff")
    assert follower.get("kv/a") == [b"1"]
    assert [v for v, _ in leader.get_prefix("kv/")] == [b"1", b"\x00\xff"]
    value, meta = leader.get("kv/a", metadata=True)[0]
    assert (value, meta["key"], meta["version"]) == (b"1", b"kv/a", "1")
    assert follower.get("missing") == []
    assert leader.create("kv/new", "x") is True  # a txn on create_revision == 0
    assert follower.create("kv/new", "y") is False
    assert follower.replace("kv/new", "x", "z") is True
    assert leader.replace("kv/new", "x", "w") is False
    assert leader.get("kv/new") == [b"z"]
    txn = follower.transaction(
        {
            "compare": [{"key": base64.b64encode(b"kv/a").decode(), "target": "VALUE",
                         "result": "EQUAL", "value": base64.b64encode(b"1").decode()}],
            "success": [{"request_range": {"key": base64.b64encode(b"kv/b").decode()}}],
        }
    )  # fmt: skip
    assert txn["succeeded"] is True
    kvs = txn["responses"][0]["response_range"]["kvs"]
    assert base64.b64decode(kvs[0]["value"]) == b"\x00\xff"
    assert follower.delete("kv/a") is True
    assert follower.delete("kv/a") is False
    assert leader.delete_prefix("kv/") is True
    assert leader.get_prefix("kv/") == []
    status = follower.status()
    assert status["leader"] == leader.status()["header"]["member_id"]
    assert {m["name"] for m in leader.members()} == {"m1", "m2", "m3"}


def test_etcd3gw_leases_and_lock(clients: list[Etcd3Client]) -> None:
    leader, follower, other = clients
    lease = follower.lease(ttl=30)
    assert follower.put("leased/k", "v", lease=lease)
    assert lease.refresh() == 30  # a follower forwards the keep-alive to the leader
    assert 0 < lease.ttl() <= 30
    assert lease.keys() == [b"leased/k"]
    assert lease.revoke()
    assert leader.get("leased/k") == []
    assert lease.refresh() == -1  # the TTL is left out for a lease that is gone
    lock = other.lock("gateway-lock", ttl=30)
    assert lock.acquire()
    assert lock.is_acquired()
    assert lock.refresh() == 30
    assert not leader.lock("gateway-lock", ttl=30).acquire()
    assert lock.release()


def test_etcd3gw_watch(clients: list[Etcd3Client]) -> None:
    leader, follower, _ = clients
    first = leader.put("w/before", "0")
    assert first
    start = int(leader.status()["header"]["revision"])
    with ThreadPoolExecutor(max_workers=2) as pool:
        events, cancel = follower.watch_prefix("w/")
        try:
            leader.put("w/a", "1")
            follower.delete("w/a")
            put = pool.submit(next, events).result(timeout=10)
            deleted = pool.submit(next, events).result(timeout=10)
        finally:
            cancel()
        assert (put["kv"]["key"], put["kv"]["value"], put.get("type", "PUT")) == (
            b"w/a",
            b"1",
            "PUT",
        )
        assert (deleted["kv"]["key"], deleted["type"]) == (b"w/a", "DELETE")
        # history from a revision, then one event and done
        once = pool.submit(follower.watch_once, "w/before", 10, start_revision=start)
        assert once.result(timeout=15)["kv"]["value"] == b"0"


def test_the_printed_curl_line(cluster: Cluster, clients: list[Etcd3Client]) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    clients[0].put("hello", "world")
    args = shlex.split(cluster.curl)
    done = subprocess.run(
        [curl, *args[1:]], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    kvs = json.loads(done.stdout)["kvs"]
    assert base64.b64decode(kvs[0]["value"]) == b"world"
