"""kvctl (``python -m kvapp.ctl``) against a real three-member cluster, plus its pure parts.

One cluster of three ``kvapp serve`` processes (127.0.0.1, ports from binding port 0,
``--unsafe-no-fsync``) serves the whole module; every kvctl command runs as a subprocess with a
timeout. Tests share the cluster, so each uses its own key prefix and asserts only on it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from kvapp import recovery
from kvapp.cli import main as kvapp_main
from kvapp.ctl import run
from kvapp.ctl.output import go_duration, go_quote, render_table
from kvapp.ctl.parse import UsageError, argify, go_unquote, parse_compare, parse_duration
from kvapp.launcher import free_ports
from kvapp.mvcc.types import CompareResult, CompareTarget

CTL = [sys.executable, "-m", "kvapp.ctl"]
TIMEOUT = 30.0
LEADER_DEADLINE = 30.0


@attrs.frozen
class Cluster:
    endpoints: tuple[str, ...]
    token: str
    data: Path

    @property
    def flag(self) -> str:
        return "--endpoints=" + ",".join(self.endpoints)


def kvctl(
    cluster: Cluster | None, *args: str, stdin: bytes = b"", timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    argv = [*CTL, *([cluster.flag] if cluster is not None else []), *args]
    proc = subprocess.run(
        argv, input=stdin.decode(), capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc


def ok(cluster: Cluster, *args: str, stdin: bytes = b"") -> str:
    proc = kvctl(cluster, *args, stdin=stdin)
    assert proc.returncode == 0, f"kvctl {shlex.join(args)}: {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def run_all(cluster: Cluster, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands at once (process start-up dominates the time)."""
    procs = [
        subprocess.Popen(
            [*CTL, cluster.flag, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    done = []
    try:
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    return done


def ok_all(cluster: Cluster, *commands: tuple[str, ...]) -> list[str]:
    """Run independent commands at once; their outputs, in order, if they all succeed."""
    done = run_all(cluster, *commands)
    for p in done:
        assert p.returncode == 0, f"kvctl {shlex.join(p.args)}: {p.returncode}\n{p.stderr}"
    return [p.stdout for p in done]


def fails(cluster: Cluster | None, *args: str, status: int = 1) -> str:
    proc = kvctl(cluster, *args)
    assert proc.returncode == status, (
        f"kvctl {shlex.join(args)} exited {proc.returncode}, wanted {status}\n"
        f"{proc.stdout}\n{proc.stderr}"
    )
    return proc.stderr


def _log_tails(data: Path) -> str:
    out = []
    for log in sorted(data.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        out.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(out)


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def wait_for_leader(cluster: Cluster, procs: list[subprocess.Popen[bytes]]) -> None:
    """Poll ``kvctl endpoint status`` until every endpoint names the same leader."""
    deadline = time.monotonic() + LEADER_DEADLINE
    last = ""
    while time.monotonic() < deadline:
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"members exited: {dead}\n{_log_tails(cluster.data)}"
        proc = kvctl(cluster, "endpoint", "status", "-w", "json", "--command-timeout", "1s")
        last = proc.stdout + proc.stderr
        if proc.returncode == 0:
            leaders = {s["Status"].get("leader", 0) for s in json.loads(proc.stdout)}
            if len(leaders) == 1 and 0 not in leaders:
                return
        time.sleep(0.2)
    pytest.fail(f"no leader within {LEADER_DEADLINE}s: {last}\n{_log_tails(cluster.data)}")


def wait_for_client_urls(cluster: Cluster) -> None:
    """Poll ``kvctl member list`` until every member has published its client URLs.

    A member publishes them once it has joined and knows a leader, a moment after the leader
    is agreed on; ``--cluster`` commands read them.
    """
    deadline = time.monotonic() + LEADER_DEADLINE
    last = ""
    while time.monotonic() < deadline:
        proc = kvctl(cluster, "member", "list", "-w", "json", "--command-timeout", "1s")
        last = proc.stdout + proc.stderr
        if proc.returncode == 0:
            members = json.loads(proc.stdout)["members"]
            if len(members) == len(cluster.endpoints) and all(m.get("clientURLs") for m in members):
                return
        time.sleep(0.2)
    pytest.fail(f"client URLs not all published within {LEADER_DEADLINE}s: {last}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data = tmp_path_factory.mktemp("kvctl-cluster")
    ports = free_ports(6)
    names = ["m1", "m2", "m3"]
    peers = {n: f"http://127.0.0.1:{ports[2 * i]}" for i, n in enumerate(names)}
    clients = {n: f"127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names)}
    token = "kvctl-test"
    initial = ",".join(f"{n}={peers[n]}" for n in names)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in names:
            argv = [
                sys.executable,
                "-m",
                "kvapp",
                "serve",
                "--name",
                n,
                "--data-dir",
                str(data / n),
                "--listen-peer-urls",
                peers[n],
                "--listen-client-urls",
                f"http://{clients[n]}",
                "--initial-cluster",
                initial,
                "--initial-cluster-token",
                token,
                "--unsafe-no-fsync",
            ]
            procs.append(_start(argv, data / f"{n}.log"))
        c = Cluster(tuple(clients.values()), token, data)
        wait_for_leader(c, procs)
        wait_for_client_urls(c)
        yield c
    finally:
        _stop(procs)


def header_of(cluster: Cluster) -> dict[str, int]:
    out = ok(cluster, "get", "-w", "json", "--", "-no-such-key-")
    header: dict[str, int] = json.loads(out)["header"]
    return header


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- KV ----------------------------------------------------------------------------------------


def test_put_get_del_print_like_etcdctl(cluster: Cluster) -> None:
    assert ok_all(cluster, ("put", "kv/a", "1"), ("put", "kv/c", "--", "-dash")) == ["OK\n"] * 2
    assert ok(cluster, "put", "kv/b", stdin=b"from stdin") == "OK\n"
    assert ok(cluster, "put", "kv/a", "2", "--prev-kv") == "OK\nkv/a\n1\n"
    reads = {
        ("get", "kv/a"): "kv/a\n2\n",
        ("get", "kv/", "--prefix"): "kv/a\n2\nkv/b\nfrom stdin\nkv/c\n-dash\n",
        ("get", "kv/a", "kv/c"): "kv/a\n2\nkv/b\nfrom stdin\n",
        ("get", "kv/b", "--from-key", "--limit", "1"): "kv/b\nfrom stdin\n",
        ("get", "kv/", "--prefix", "--keys-only"): "kv/a\n\nkv/b\n\nkv/c\n\n",
        ("get", "kv/", "--prefix", "--count-only"): "3\n",
        ("get", "kv/a", "--print-value-only"): "2\n",
        ("get", "kv/", "--prefix", "--sort-by=VALUE", "--order=DESCEND"): (
            "kv/b\nfrom stdin\nkv/a\n2\nkv/c\n-dash\n"
        ),
        ("get", "kv/a", "--consistency", "s"): "kv/a\n2\n",
        ("get", "kv/none"): "",
    }
    assert ok_all(cluster, *reads) == list(reads.values())
    assert ok(cluster, "del", "kv/a", "--prev-kv") == "1\nkv/a\n2\n"
    assert ok(cluster, "del", "kv/", "--prefix") == "2\n"
    assert ok(cluster, "get", "kv/", "--prefix") == ""


def test_json_output_has_etcds_header_and_base64_kvs(cluster: Cluster) -> None:
    status_out, put_out = ok_all(
        cluster, ("endpoint", "status", "-w", "json"), ("put", "js/k", "v1", "-w", "json")
    )
    status = json.loads(status_out)
    cluster_id = status[0]["Status"]["header"]["cluster_id"]
    put = json.loads(put_out)
    assert set(put) == {"header"}
    header = put["header"]
    assert set(header) == {"cluster_id", "member_id", "revision", "raft_term"}
    assert header["cluster_id"] == cluster_id
    assert header["member_id"] in {s["Status"]["header"]["member_id"] for s in status}
    assert header["raft_term"] >= 1
    rev = header["revision"]

    put2 = json.loads(ok(cluster, "put", "js/k", "v2", "--prev-kv", "-w", "json"))
    assert put2["header"]["revision"] == rev + 1
    assert put2["prev_kv"] == {
        "key": b64("js/k"),
        "create_revision": rev,
        "mod_revision": rev,
        "version": 1,
        "value": b64("v1"),
    }
    got_out, counted_out = ok_all(
        cluster,
        ("get", "js/", "--prefix", "-w", "json"),
        ("get", "js/", "--prefix", "--count-only", "-w", "json"),
    )
    got = json.loads(got_out)
    assert got["kvs"] == [
        {
            "key": b64("js/k"),
            "create_revision": rev,
            "mod_revision": rev + 1,
            "version": 2,
            "value": b64("v2"),
        }
    ]
    assert got["count"] == 1
    assert "more" not in got  # false is left out, as Go's omitempty does
    counted = json.loads(counted_out)
    assert counted["count"] == 1
    assert "kvs" not in counted
    deleted = json.loads(ok(cluster, "del", "js/k", "-w", "json"))
    assert deleted["deleted"] == 1
    assert deleted["header"]["revision"] == rev + 2


# -- txn ---------------------------------------------------------------------------------------

TXN = b"""value("tx/k") = "v"
mod("tx/k") > "0"

put tx/k "v 2"
get tx/k
del tx/other

put tx/k failed

"""


def test_txn_reads_etcdctls_syntax_from_stdin(cluster: Cluster) -> None:
    ok_all(cluster, ("put", "tx/k", "v"), ("put", "tx/other", "x"))
    assert ok(cluster, "txn", stdin=TXN) == "SUCCESS\n\nOK\n\ntx/k\nv 2\n\n1\n"
    # Now value("tx/k") is "v 2": the failure branch runs.
    out = json.loads(ok(cluster, "txn", "-w", "json", stdin=TXN))
    assert "succeeded" not in out  # false: omitted
    assert out["header"]["revision"] > 0
    assert list(out["responses"][0]["Response"]) == ["response_put"]
    assert ok(cluster, "get", "tx/k") == "tx/k\nfailed\n"
    # -i prints etcdctl's prompts; a final section may end at the end of input.
    prompted = ok(cluster, "txn", "-i", stdin=b'version("tx/k") = "3"\n\nget tx/k\n')
    assert prompted == (
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n"
        "SUCCESS\n\ntx/k\nfailed\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'bogus("k") = "1"\n\n\n', "unknown target bogus"),
        (b'value("k") ~ "1"\n\n\n', "unknown operator ~"),
        (b'version("k") = "x"\n\n\n', "invalid txn compare request"),
        (b"\nfrob k\n\n", "invalid txn request: frob k"),
        (b"\nput k\n\n", "invalid txn request: put k"),
    ],
)
def test_malformed_txn_input_exits_2_before_anything_is_sent(text: bytes, message: str) -> None:
    code, _, err = run_inline(["--endpoints", "127.0.0.1:1", "txn"], stdin=text)
    assert code == 2
    assert err.startswith("Error: ")
    assert message in err


# -- watch -------------------------------------------------------------------------------------


class LineReader:
    """Reads a process's stdout lines on a thread; :meth:`next` waits a bounded time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float = 15.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output line within {timeout}s; seen so far: {self.seen}")
        assert line is not None, f"output ended; seen: {self.seen}"
        self.seen.append(line)
        return line

    def take(self, n: int) -> list[str]:
        return [self.next() for _ in range(n)]


@contextlib.contextmanager
def background(cluster: Cluster, *args: str) -> Iterator[LineReader]:
    proc = subprocess.Popen(
        [*CTL, cluster.flag, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield LineReader(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def interrupt(reader: LineReader) -> int:
    reader.proc.send_signal(signal.SIGINT)
    return reader.proc.wait(timeout=10)


def test_watch_prints_later_changes_in_order_until_interrupted(cluster: Cluster) -> None:
    start = header_of(cluster)["revision"] + 1
    with (
        background(cluster, "watch", "w/", "--prefix", "--prev-kv", "--rev", str(start)) as w,
        background(cluster, "watch", "w/a", "--rev", str(start), "-w", "json") as wj,
    ):
        ok(cluster, "put", "w/a", "1")
        ok(cluster, "put", "w/b", "2")
        ok(cluster, "put", "w/a", "3")
        ok(cluster, "del", "w/a")
        assert w.take(3) == ["PUT", "w/a", "1"]
        assert w.take(3) == ["PUT", "w/b", "2"]
        assert w.take(5) == ["PUT", "w/a", "1", "w/a", "3"]  # the previous pair first
        assert w.take(5) == ["DELETE", "w/a", "3", "w/a", ""]
        events = [json.loads(wj.next()) for _ in range(3)]
        assert [e["Header"]["revision"] for e in events] == [start, start + 2, start + 3]
        assert [e["Events"][0].get("type", 0) for e in events] == [0, 0, 1]
        assert events[1]["Events"][0]["kv"]["value"] == b64("3")
        assert interrupt(w) == 130
        assert interrupt(wj) == 130


# -- leases ------------------------------------------------------------------------------------


def _grant(cluster: Cluster, ttl: int) -> int:
    out = ok(cluster, "lease", "grant", str(ttl))
    m = re.fullmatch(r"lease ([0-9a-f]{16}) granted with TTL\((\d+)s\)\n", out)
    assert m, out
    assert int(m.group(2)) >= ttl
    return int(m.group(1), 16)


def test_lease_grant_attach_revoke_deletes_the_key(cluster: Cluster) -> None:
    lease = _grant(cluster, 60)
    hex_id = f"{lease:x}"
    assert ok(cluster, "put", "ls/k", "v", "--lease", hex_id) == "OK\n"
    leases, ttl, ttl_out, once, got = ok_all(
        cluster,
        ("lease", "list"),
        ("lease", "timetolive", hex_id, "--keys"),
        ("lease", "timetolive", hex_id, "--keys", "-w", "json"),
        ("lease", "keep-alive", "--once", hex_id),
        ("get", "ls/k", "-w", "json"),
    )
    assert f"{lease:016x}" in leases.splitlines()[1:]
    assert re.fullmatch(
        rf"lease {lease:016x} granted with TTL\(60s\), remaining\((\d+)s\), "
        r"attached keys\(\[ls/k\]\)\n",
        ttl,
    ), ttl
    ttl_json = json.loads(ttl_out)
    assert ttl_json["id"] == lease
    assert ttl_json["granted-ttl"] == 60
    assert ttl_json["keys"] == [b64("ls/k")]
    assert once == f"lease {lease:016x} keepalived with TTL(60)\n"
    assert json.loads(got)["kvs"][0]["lease"] == lease

    assert ok(cluster, "lease", "revoke", hex_id) == f"lease {lease:016x} revoked\n"
    assert ok_all(cluster, ("get", "ls/k"), ("lease", "timetolive", hex_id)) == [
        "",
        f"lease {lease:016x} already expired\n",
    ]
    err = fails(cluster, "lease", "revoke", hex_id)
    assert err == "Error: failed to revoke lease (etcdserver: requested lease not found)\n"


def test_lease_keep_alive_prints_renewals_until_the_lease_is_revoked(cluster: Cluster) -> None:
    lease = _grant(cluster, 3)
    granted = json.loads(ok(cluster, "lease", "grant", "5", "-w", "json"))
    assert set(granted) >= {"cluster_id", "member_id", "revision", "raft_term", "ID", "TTL"}
    with background(cluster, "lease", "keep-alive", f"{lease:x}") as ka:
        renewal = re.compile(rf"lease {lease:016x} keepalived with TTL\(\d+\)")
        first, second = ka.take(2)  # renewed every TTL/3
        assert renewal.fullmatch(first), first
        assert renewal.fullmatch(second), second
        ok(cluster, "lease", "revoke", f"{lease:x}")
        while (line := ka.next()) != f"lease {lease:016x} expired or revoked.":
            assert renewal.fullmatch(line), line
        assert ka.proc.wait(timeout=10) == 0


# -- members -----------------------------------------------------------------------------------


def _members(cluster: Cluster) -> list[list[str]]:
    return [line.split(", ") for line in ok(cluster, "member", "list").splitlines()]


def test_member_list_in_three_formats(cluster: Cluster) -> None:
    rows = _members(cluster)
    assert sorted(r[2] for r in rows) == ["m1", "m2", "m3"]
    for r in rows:
        assert len(r) == 6
        assert re.fullmatch(r"[0-9a-f]+", r[0])
        assert r[1] == "started"
        assert r[3].startswith("http://127.0.0.1:")
        assert r[4].startswith("http://127.0.0.1:")
        assert r[5] == "false"
    table = ok(cluster, "member", "list", "-w", "table").splitlines()
    assert re.fullmatch(r"\+[-+]+\+", table[0])
    assert [c.strip() for c in table[1].strip("|").split("|")] == [
        "ID",
        "STATUS",
        "NAME",
        "PEER ADDRS",
        "CLIENT ADDRS",
        "IS LEARNER",
    ]
    assert len(table) == 3 + len(rows) + 1
    js = json.loads(ok(cluster, "member", "list", "-w", "json"))
    assert sorted(f"{m['ID']:x}" for m in js["members"]) == sorted(r[0] for r in rows)
    assert all("isLearner" not in m for m in js["members"])
    hexed = json.loads(ok(cluster, "member", "list", "-w", "json", "--hex"))
    assert sorted(m["ID"] for m in hexed["members"]) == sorted(r[0] for r in rows)


def test_member_add_learner_then_remove(cluster: Cluster) -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    out = ok(cluster, "member", "add", "m9", f"--peer-urls={url}", "--learner").splitlines()
    m = re.fullmatch(r"Member ([ 0-9a-f]{16}) added as learner to cluster ([ 0-9a-f]{16})", out[0])
    assert m, out
    new_id = m.group(1).strip()
    assert out[1:3] == ["", 'ETCD_NAME="m9"']
    assert re.fullmatch(r'ETCD_INITIAL_CLUSTER="(m\d=http://127\.0\.0\.1:\d+,?){4}"', out[3])
    assert f"m9={url}" in out[3]
    assert out[4:6] == [
        f'ETCD_INITIAL_ADVERTISE_PEER_URLS="{url}"',
        'ETCD_INITIAL_CLUSTER_STATE="existing"',
    ]
    assert out[-1].startswith("kvapp serve --name m9 ")
    assert "--initial-cluster-state existing" in out[-1]
    assert "<cluster-token>" in out[-1]  # not given, and not kvapp serve's default

    listed, promote = run_all(cluster, ("member", "list"), ("member", "promote", new_id))
    learner = [r.split(", ") for r in listed.stdout.splitlines() if r.startswith(new_id)]
    assert learner == [[new_id, "unstarted", "", url, "", "true"]]
    assert promote.returncode == 1
    assert promote.stderr == (
        "Error: etcdserver: can only promote a learner member which is in sync with leader\n"
    )
    removed = ok(cluster, "member", "remove", new_id)
    assert re.fullmatch(rf"Member +{new_id} removed from cluster +[0-9a-f]+\n", removed)
    assert new_id not in [r[0] for r in _members(cluster)]


def test_member_add_prints_a_kvapp_serve_command_that_joins(cluster: Cluster) -> None:
    peer, client = free_ports(2)
    err = fails(
        cluster,
        "member",
        "add",
        "m8",
        f"--peer-urls=http://127.0.0.1:{peer}",
        "--initial-cluster-token",
        "not-the-token",
        status=2,
    )
    assert "is not this cluster's token" in err
    assert "unstarted" not in ok(cluster, "member", "list")  # refused before adding

    out = ok(
        cluster,
        "member",
        "add",
        "m8",
        f"--peer-urls=http://127.0.0.1:{peer}",
        "--learner",
        "--initial-cluster-token",
        cluster.token,
        "--listen-client-urls",
        f"http://127.0.0.1:{client}",
    )
    command = shlex.split(out.splitlines()[-1])
    assert command[:2] == ["kvapp", "serve"]
    assert "<" not in out.splitlines()[-1]
    argv = [
        sys.executable,
        "-m",
        "kvapp",
        *command[1:],
        "--data-dir",
        str(cluster.data / "m8"),
        "--unsafe-no-fsync",
    ]
    proc = _start(argv, cluster.data / "m8.log")
    new_id = ""
    try:
        deadline = time.monotonic() + LEADER_DEADLINE
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"m8 exited\n{_log_tails(cluster.data)}"
            rows = [r for r in _members(cluster) if r[2] == "m8"]
            if rows and rows[0][1] == "started":
                new_id = rows[0][0]
                assert rows[0][4] == f"http://127.0.0.1:{client}"
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"m8 never started: {_members(cluster)}\n{_log_tails(cluster.data)}")
        status = ok(cluster, "endpoint", "status", f"--endpoints=127.0.0.1:{client}")
        assert status.startswith(f"127.0.0.1:{client}, {new_id}, ")
        ok(cluster, "member", "remove", new_id)
        assert "m8" not in ok(cluster, "member", "list")
    finally:
        _stop([proc])


# -- endpoints and compaction ------------------------------------------------------------------


def test_endpoint_status_and_health(cluster: Cluster) -> None:
    lines = ok(cluster, "endpoint", "status").splitlines()
    assert [line.split(", ")[0] for line in lines] == list(cluster.endpoints)
    rows = [line.split(", ") for line in lines]
    assert all(len(r) == 9 for r in rows), rows
    assert [r[3] for r in rows].count("true") == 1  # exactly one leader
    assert all(r[4] == "false" for r in rows)
    assert len({r[5] for r in rows}) == 1  # one term
    table = ok(cluster, "endpoint", "status", "-w", "table").splitlines()
    assert "RAFT APPLIED INDEX" in table[1]
    assert len(table) == 3 + len(cluster.endpoints) + 1
    health = ok(cluster, "endpoint", "health").splitlines()
    assert len(health) == len(cluster.endpoints)
    for ep, line in zip(cluster.endpoints, health, strict=True):
        assert re.fullmatch(rf"{ep} is healthy: successfully committed proposal: took = \S+", line)
    js = json.loads(ok(cluster, "endpoint", "health", "-w", "json"))
    assert [h["health"] for h in js] == [True] * len(cluster.endpoints)
    cluster_eps = ok(cluster, "endpoint", "status", "--cluster").splitlines()
    assert sorted(line.split(", ")[0] for line in cluster_eps) == sorted(
        f"http://{ep}" for ep in cluster.endpoints
    )


def test_endpoint_status_reports_a_dead_endpoint_and_exits_1(cluster: Cluster) -> None:
    (dead,) = free_ports(1)
    eps = f"--endpoints={cluster.endpoints[0]},127.0.0.1:{dead}"
    proc = kvctl(None, eps, "endpoint", "status")
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"{cluster.endpoints[0]}, ")
    assert f"Failed to get the status of endpoint 127.0.0.1:{dead}" in proc.stderr


def test_get_at_old_and_future_revisions_then_compaction(cluster: Cluster) -> None:
    old = json.loads(ok(cluster, "put", "cp/k", "1", "-w", "json"))["header"]["revision"]
    now = json.loads(ok(cluster, "put", "cp/k", "2", "-w", "json"))["header"]["revision"]
    at_old, future = run_all(
        cluster, ("get", "cp/k", "--rev", str(old)), ("get", "cp/k", "--rev", str(now + 10_000))
    )
    assert (at_old.returncode, at_old.stdout) == (0, "cp/k\n1\n")
    assert future.returncode == 1
    assert future.stderr == "Error: etcdserver: mvcc: required revision is a future revision\n"
    assert ok(cluster, "compaction", str(now)) == f"compacted revision {now}\n"
    compacted, current = run_all(cluster, ("get", "cp/k", "--rev", str(old)), ("get", "cp/k"))
    assert compacted.returncode == 1
    assert compacted.stderr == "Error: etcdserver: mvcc: required revision has been compacted\n"
    assert (current.returncode, current.stdout) == (0, "cp/k\n2\n")


# -- failures without a cluster ----------------------------------------------------------------


def test_an_unreachable_endpoint_exits_1_with_a_message() -> None:
    (port,) = free_ports(1)
    started = time.monotonic()
    err = fails(None, f"--endpoints=127.0.0.1:{port}", "get", "k")
    assert err.startswith("Error: ")
    assert "no endpoint reachable" in err
    assert f"127.0.0.1:{port}" in err
    assert time.monotonic() - started < TIMEOUT


def test_a_silent_endpoint_times_out_with_a_message() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        err = fails(
            None,
            f"--endpoints=127.0.0.1:{port}",
            "--dial-timeout=200ms",
            "--command-timeout=300ms",
            "get",
            "k",
        )
        took = time.monotonic() - started
    assert err.startswith("Error: "), err
    assert f"127.0.0.1:{port}" in err
    assert took < 10, took


def run_inline(argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = io.BytesIO(), io.BytesIO()
    code = asyncio.run(run(argv, stdin=io.BytesIO(stdin), stdout=out, stderr=err, environ={}))
    return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["get"], "the following arguments are required: key"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--endpoints", "nope", "get", "k"], "bad endpoint 'nope'"),
        (["get", "k", "-w", "yaml"], "'yaml' is not supported as output format"),
        (["get", "k", "--dial-timeout", "soon"], "invalid duration 'soon'"),
        (["put", "k", "v", "--lease", "xyz"], "expecting ID in Hex"),
        (["lease", "revoke", "0x10"], "expecting ID in Hex"),
        (["lease", "grant", "ten"], "bad TTL 'ten'"),
        (["get", "k", "--consistency", "x"], "unknown consistency flag"),
        (["compaction", "0"], "must be positive"),
        (["member", "remove", "xyz"], "bad member ID arg"),
        (["get", "k", "--prefi"], "unrecognized arguments: --prefi"),
    ],
)
def test_bad_arguments_exit_2_with_argparses_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_inline(argv)
    assert code == 2
    assert out == ""
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["get", "k", "--prefix", "--from-key"], "cannot be set at the same time"),
        (["get", "k", "z", "--prefix"], "too many arguments"),
        (["get", "k", "--keys-only", "--count-only"], "cannot be set at the same time"),
        (["get", "k", "--sort-by", "SIZE"], "bad sort target SIZE"),
        (["get", "k", "--order", "UP"], "bad sort order UP"),
        (["get", "k", "--print-value-only", "-w", "json"], "only for `--write-out=simple`"),
        (["get", "k", "-w", "table"], "table is not supported as output format for get"),
        (["watch", "k", "z", "--prefix"], "mutually exclusive"),
        (["put", "k", "v", "--ignore-value"], "needs only 1 argument"),
        (["member", "add", "m7", "http://127.0.0.1:1"], "did you mean --peer-urls=http://"),
        (["member", "add", "m7"], "member peer urls not provided"),
        (["member", "add", "a=b", "--peer-urls=http://127.0.0.1:1"], "without ',' or '='"),
    ],
)
def test_inconsistent_arguments_exit_2_before_connecting(argv: list[str], message: str) -> None:
    code, out, err = run_inline(["--endpoints", "127.0.0.1:1", *argv])
    assert (code, out) == (2, "")
    assert err.startswith("Error: ")
    assert message in err


def test_bad_arguments_exit_2_from_the_command_line_too() -> None:
    proc = kvctl(None, "lease", "grant")
    assert proc.returncode == 2
    assert "kvctl lease grant: error: the following arguments are required: ttl" in proc.stderr


def test_global_flags_come_from_the_environment_and_may_follow_the_command() -> None:
    code, _, err = run_inline(["get", "k", "--endpoints", "127.0.0.1:1", "--dial-timeout", "1s"])
    assert code == 1
    assert "127.0.0.1:1" in err
    out, errs = io.BytesIO(), io.BytesIO()
    env = {"ETCDCTL_ENDPOINTS": "127.0.0.1:1", "ETCDCTL_WRITE_OUT": "table"}
    code = asyncio.run(run(["get", "k"], stdin=io.BytesIO(), stdout=out, stderr=errs, environ=env))
    assert code == 2
    assert "table is not supported" in errs.getvalue().decode()


# -- pure helpers ------------------------------------------------------------------------------


def test_parse_compare_reads_etcdctls_compare_syntax() -> None:
    c = parse_compare('mod("k") > "3"')
    assert (c.key, c.target, c.result, c.operand) == (
        b"k",
        CompareTarget.MOD,
        CompareResult.GREATER,
        3,
    )
    c = parse_compare('val("a \\"b\\"") != "x\\ny"')
    assert (c.key, c.target, c.result, c.operand) == (
        b'a "b"',
        CompareTarget.VALUE,
        CompareResult.NOT_EQUAL,
        b"x\ny",
    )
    assert parse_compare('lease("k") = "1f"').operand == 0x1F
    assert parse_compare('c("k") < "7"').target is CompareTarget.CREATE
    assert parse_compare('ver("k") = "0"').target is CompareTarget.VERSION
    for bad in ('mod"k" > "1"', 'mod("k" > "1"', 'mod("k") >', "mod(k) > 1"):
        with pytest.raises(UsageError, match="malformed comparison"):
            parse_compare(bad)


def test_argify_and_go_unquote_follow_etcdctl() -> None:
    assert argify("put k1 \"a b\" 'c d' --prev-kv") == ["put", "k1", "a b", "c d", "--prev-kv"]
    assert go_unquote('"\\x41\\101\\u00e9\\t"') == b"AA\xc3\xa9\t"
    assert go_unquote("`raw\\n`") == b"raw\\n"
    for bad in ('"\\q"', '"\\x4"', '"a"b"', "plain"):
        with pytest.raises(ValueError):  # noqa: PT011 - messages vary by case
            go_unquote(bad)


def test_go_formats() -> None:
    assert go_duration(0.0052345) == "5.2345ms"
    assert go_duration(0.000001) == "1µs"
    assert go_duration(2.5) == "2.5s"
    assert go_duration(3723) == "1h2m3s"
    assert go_quote('a "b"\n') == '"a \\"b\\"\\n"'
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == 0.25
    assert parse_duration("3") == 3
    assert render_table(["a", "bb"], [["1", "2"]]) == [
        "+---+----+",
        "| A | BB |",
        "+---+----+",
        "| 1 |  2 |",
        "+---+----+",
    ]


def test_snapshot_save_writes_a_verified_file_from_one_endpoint(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(cluster, "put", "snap-key", "snap-value")
    path = tmp_path / "backup.snap"
    one = Cluster(cluster.endpoints[1:2], cluster.token, cluster.data)
    assert ok(one, "snapshot", "save", str(path)) == f"Snapshot saved at {path}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.snap"]
    st = recovery.status(path)
    revision = json.loads(ok(cluster, "get", "snap-key", "-w", "json"))["header"]["revision"]
    assert st.revision >= revision  # linearizable: the put is in it
    assert "one selected node, not multiple" in fails(
        cluster, "snapshot", "save", str(tmp_path / "x"), status=2
    )
    # kvapp snapshot save is the same, serializable on request.
    again = tmp_path / "again.snap"
    argv = ["snapshot", "save", str(again), f"--endpoints={cluster.endpoints[0]}"]
    assert kvapp_main([*argv, "--consistency", "s"]) == 0
    assert capsys.readouterr().out == f"Snapshot saved at {again}\n"
    assert recovery.status(again).total_keys >= 1
    assert kvapp_main(["snapshot", "save", str(tmp_path / "y"), "--endpoints=127.0.0.1:1"]) == 1
    assert "127.0.0.1:1" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.snap", "backup.snap"]


def test_cluster_wide_commands_use_only_native_client_urls() -> None:
    from kvapp.server.etcd import publish_grpc_urls
    from kvapp.service import MemberInfo

    grpc_urls = publish_grpc_urls(("http://127.0.0.1:2479",))
    m = MemberInfo(1, "m1", ("http://127.0.0.1:2380",), ("http://127.0.0.1:2379", *grpc_urls))
    assert m.native_client_urls == ("http://127.0.0.1:2379",)
