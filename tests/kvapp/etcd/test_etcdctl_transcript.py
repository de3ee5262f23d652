"""One scripted etcdctl session against ``kvapp cluster`` and real etcd 3.4: the same transcript.

The session (:func:`session`) runs etcd 3.4's own ``etcdctl`` against a 3-member ``kvapp
cluster`` and against a 3-member etcd cluster started here (Debian's ``etcd-server``), both on
127.0.0.1, both fresh (so revisions start equal). Every command's standard output, standard
error and exit status go into a transcript; the two transcripts, normalised, must be
identical. Normalising replaces only what legitimately differs between two clusters (each
replacement says why in :class:`Normaliser`): member and cluster ids, URLs and ports, lease ids
(etcd derives them from the member id and time, kvapp counts from 1), Raft terms and indexes,
version strings, database and snapshot sizes and hashes, timings, the order of lines that
etcdctl prints in the order of member ids or of concurrent answers, which member leads (for
``move-leader``, recorded as roles), and how many renewals a streaming ``lease keep-alive``
printed before its lease was revoked (at least two, checked).

Needs ``etcdctl`` and ``etcd`` (Debian's ``etcd-client`` and ``etcd-server``, which ``.ci/run``
installs): skipped without them locally, failed under ``CI=true``. Every wait is bounded; every
process started is stopped.
"""

from __future__ import annotations

import difflib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest

from kvapp.etcdpb import rpc_pb2
from tests.kvapp.etcd.test_etcdctl import Cluster, Ctl, Watcher
from tests.kvapp.integration.harness import REPO_ROOT, free_ports, poll

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")
NAMES = ("m1", "m2", "m3")


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    if ETCD is None or ETCDCTL is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "etcd or etcdctl is missing: .ci/run installs Debian's etcd-server and etcd-client"
            )
        pytest.skip("etcd and etcdctl are not installed (apt-get install etcd-server etcd-client)")
    return ETCD, ETCDCTL


class EtcdCluster:
    """Three real etcd 3.4 members on free 127.0.0.1 ports, data and logs under ``root``."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        ports = free_ports(6)
        self.client = {n: f"127.0.0.1:{ports[2 * i]}" for i, n in enumerate(NAMES)}
        self.peer = {n: f"http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(NAMES)}
        self.root = root
        self.token = f"transcript-{ports[0]}"
        self.logs = {n: root / f"{n}.log" for n in NAMES}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        initial = ",".join(f"{n}={self.peer[n]}" for n in NAMES)
        root = self.root
        for n in NAMES:
            with self.logs[n].open("ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        [self.binary, "--name", n, "--data-dir", str(root / n),
                         "--listen-client-urls", f"http://{self.client[n]}",
                         "--advertise-client-urls", f"http://{self.client[n]}",
                         "--listen-peer-urls", self.peer[n],
                         "--initial-advertise-peer-urls", self.peer[n],
                         "--initial-cluster", initial, "--initial-cluster-state", "new",
                         "--initial-cluster-token", self.token],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip

    @property
    def endpoints(self) -> list[str]:
        return [self.client[n] for n in NAMES]

    def output(self) -> str:
        return "\n".join(
            f"== {n}\n{p.read_text(errors='replace')[-3000:]}" for n, p in self.logs.items()
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


@pytest.fixture(scope="module")
def etcd_cluster(
    tmp_path_factory: pytest.TempPathFactory, binaries: tuple[str, str]
) -> Iterator[EtcdCluster]:
    c = EtcdCluster(binaries[0], tmp_path_factory.mktemp("etcd"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def kvapp_cluster(
    tmp_path_factory: pytest.TempPathFactory, binaries: tuple[str, str]
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("kvapp")
    c = Cluster(tmp / "data", tmp / "cluster.out")
    try:
        yield c
    finally:
        c.stop()


# -- running etcdctl and recording what it said ----------------------------------------------------


@attrs.define
class Recorder:
    """Runs etcdctl against one cluster's endpoints and writes a transcript of every command."""

    etcdctl: str
    endpoints: list[str]
    lines: list[str] = attrs.field(factory=list)

    def run(
        self,
        *args: str,
        stdin: str = "",
        sort: bool = False,
        output: Callable[[str], str] | None = None,
        endpoints: list[str] | None = None,
        roles: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``etcdctl --endpoints=... ARGS`` and record it.

        ``sort``: its lines may come in any order; ``output``: records ``output(stdout)``;
        ``endpoints``: instead of every member's; ``roles``: text (in the command, its output
        and errors) recorded as a placeholder, e.g. the leader's id (elections pick it).
        """
        done = self.quiet(*args, stdin=stdin, endpoints=endpoints)
        stdout = output(done.stdout) if output is not None and done.returncode == 0 else done.stdout
        shown = f"--endpoints={','.join(endpoints)} " if endpoints else ""
        texts = [shown + " ".join(args), stdout, done.stderr]
        for text, placeholder in (roles or {}).items():
            texts = [t.replace(text, placeholder) for t in texts]
        self.record((texts[0],), stdin, texts[1], texts[2], done.returncode, sort=sort)
        return done

    def quiet(
        self, *args: str, stdin: str = "", endpoints: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``etcdctl --endpoints=... ARGS`` without recording it."""
        return subprocess.run(
            [self.etcdctl, f"--endpoints={','.join(endpoints or self.endpoints)}",
             "--command-timeout=10s", *args],
            input=stdin, capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip

    def record(
        self,
        args: tuple[str, ...],
        stdin: str,
        stdout: str,
        stderr: str,
        status: int | None,
        *,
        sort: bool = False,
    ) -> None:
        self.lines.append("$ etcdctl " + " ".join(args))
        self.lines += [f"< {line}" for line in stdin.splitlines()]
        mark = "~" if sort else ""  # lines to sort once normalised
        self.lines += [f"  {mark}{line}" for line in stdout.splitlines()]
        self.lines += [f"! {mark}{line}" for line in stderr.splitlines()]
        if status:
            self.lines.append(f"[exit status {status}]")

    def note(self, text: str) -> None:
        """A line of the test's own (e.g. what it did outside etcdctl)."""
        self.lines.append(f"# {text}")


def _ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"{done.args}: {done.stderr}"


def _grab(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    assert m is not None, f"no {pattern!r} in {text!r}"
    return m.group(1)


def _raise_alarm(endpoint: str) -> None:
    """ACTIVATE NOSPACE for member id 0 over gRPC (etcdctl has no command for it).

    Member 0 because etcd records any id, and a kvapp member clears a NOSPACE raised for its own
    id once its disk has room (kvapp's NOSPACE describes a disk; docs/etcd-api.md).
    """
    with grpc.insecure_channel(endpoint) as channel:
        channel.unary_unary(
            "/etcdserverpb.Maintenance/Alarm",
            request_serializer=rpc_pb2.AlarmRequest.SerializeToString,
            response_deserializer=rpc_pb2.AlarmResponse.FromString,
        )(
            rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.ACTIVATE, alarm=rpc_pb2.NOSPACE),
            timeout=10,
        )


def _watch(
    ctl: Recorder,
    args: tuple[str, ...],
    done: Callable[[list[str]], bool],
    write: Callable[[], None],
    output: Callable[[list[str]], list[str]] = lambda lines: lines,
) -> None:
    """``etcdctl watch ARGS`` in the background, after ``write``, until ``done(lines)``."""
    w = Watcher(Ctl(ctl.etcdctl, ctl.endpoints), "watch", *args)
    try:
        write()
        deadline = time.monotonic() + 15
        while not done(w.seen):
            try:
                line = w.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"etcdctl watch {' '.join(args)} printed only {w.seen}")
            w.seen.append(line)
    finally:
        w.stop()
    ctl.record(("watch", *args), "", "\n".join(output(w.seen)), "", None)


def _watch_events(lines: list[str]) -> list[str]:
    """``watch -w json`` output as one line per event, with its response's other fields.

    How events are grouped into responses differs: etcd sends a watcher catching up on history
    the events of up to 1000 revisions in one response, kvapp one revision per response (live
    events: one revision per response in both). The events and headers are the same.
    """
    out = []
    for line in lines:
        response = json.loads(line)
        events = response.pop("Events") or []
        out += [json.dumps({**response, "Event": e}, separators=(",", ":")) for e in events]
    return out


def _events(lines: list[str]) -> int:
    return sum(len(json.loads(line)["Events"] or ()) for line in lines)


def _settle(ctl: Recorder) -> None:
    """Wait until every member applied the same revision and alarms (not part of the session).

    Status is answered from each member's own state, which may lag the leader's for a moment.
    """

    def settled() -> bool | None:
        done = ctl.quiet("endpoint", "status", "-w", "json")
        if done.returncode != 0:
            return None
        st = [e["Status"] for e in json.loads(done.stdout)]
        views = {(s["header"]["revision"], s["leader"], tuple(s.get("errors", ()))) for s in st}
        return True if len(st) == len(ctl.endpoints) and len(views) == 1 else None

    poll(settled, timeout=10, what="every member to apply the same revision and alarms")


def _keep_alive_until_revoked(ctl: Recorder, lease: str) -> None:
    """``etcdctl lease keep-alive LEASE`` (streaming) renews until the lease is revoked.

    etcdctl renews every TTL/3 seconds, so how many renewals it prints depends on timing: the
    transcript shows the (identical) renewal line once, after checking there were at least two.
    """
    ka = Watcher(Ctl(ctl.etcdctl, ctl.endpoints), "lease", "keep-alive", lease)
    try:
        deadline = time.monotonic() + 15

        def until(done: Callable[[], bool]) -> None:
            while not done():
                try:
                    line = ka.lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    line = None
                if line is None:
                    raise AssertionError(f"etcdctl lease keep-alive {lease} printed {ka.seen}")
                ka.seen.append(line)

        until(lambda: sum("keepalived" in line for line in ka.seen) >= 2)
        ctl.run("lease", "revoke", lease)
        until(lambda: bool(ka.seen) and "revoked" in ka.seen[-1])
        status = ka.proc.wait(timeout=10)
        assert ka.proc.stderr is not None
        errors = ka.proc.stderr.read()
    finally:
        ka.stop()
    ctl.note(f"etcdctl lease keep-alive {lease} ran meanwhile; it printed (renewals once):")
    shown = [line for i, line in enumerate(ka.seen) if i == 0 or line != ka.seen[i - 1]]
    ctl.record(("lease", "keep-alive", lease), "", "\n".join(shown), errors, status)


def _statuses(ctl: Recorder) -> dict[str, dict[str, Any]]:
    """Each endpoint's status (``endpoint status -w json``), by endpoint."""
    done = ctl.quiet("endpoint", "status", "-w", "json")
    _ok(done)
    return {e["Endpoint"]: e["Status"] for e in json.loads(done.stdout)}


def _until_listed(ctl: Recorder, member: str, listed: bool) -> None:
    """Wait until every member lists (or no longer lists) ``member`` (not part of the session).

    A member lists its own view, which may lag the leader's for a moment (etcd's MemberList
    is not linearizable either), and etcdctl asks the first endpoint.
    """

    def agreed() -> bool | None:
        for endpoint in ctl.endpoints:
            done = ctl.quiet("member", "list", endpoints=[endpoint])
            if done.returncode != 0 or (f"{member}," in done.stdout) != listed:
                return None
        return True

    poll(agreed, timeout=10, what=f"every member to {'' if listed else 'un'}list {member}")


def _sort_initial_cluster(stdout: str) -> str:
    """``member add``'s ETCD_INITIAL_CLUSTER with its members by name (servers: by member id)."""

    def by_name(m: re.Match[str]) -> str:
        return m.group(1) + ",".join(sorted(m.group(2).split(","))) + '"'

    return re.sub(r'^(ETCD_INITIAL_CLUSTER=")([^"]*)"', by_name, stdout, flags=re.M)


def _added(ctl: Recorder, add: tuple[str, ...]) -> subprocess.CompletedProcess[str] | None:
    """``member add``, or None if refused as "unhealthy cluster" (tried again, not recorded).

    etcd's strict reconfiguration check refuses a member add until every voter has been
    connected for 5 s (its health interval): right after the cluster started, not later.
    """
    done = ctl.quiet(*add)
    if done.returncode != 0 and "etcdserver: unhealthy cluster" in done.stderr:
        return None
    _ok(done)
    return done


UNREACHABLE = "http://127.0.0.1:9"
"""The peer URL of a learner that is never started: it never catches up, so is never promoted."""


def session(ctl: Recorder, alarm: Callable[[], None], scratch: Path) -> None:
    """The scripted etcdctl session (the same commands against either cluster).

    ``scratch``: a directory of this cluster's own, for the snapshot file.
    """
    # -- put / get with etcdctl's options
    for key, value in [("a/1", "one"), ("a/2", "two"), ("a/3", "three"), ("b", "bee")]:
        ctl.run("put", key, value)
    ctl.run("put", "a/1", "uno", "--prev-kv")
    ctl.run("put", "a/2", "--ignore-value")
    ctl.run("put", "c", "--ignore-value")
    ctl.run("get", "a/", "--prefix")
    ctl.run("get", "a/", "--prefix", "-w", "json")
    ctl.run(
        "get", "a/", "--prefix", "--limit", "2", "--sort-by=KEY", "--order=DESCEND", "-w", "json"
    )
    ctl.run("get", "a/", "--prefix", "--keys-only")
    ctl.run("get", "a/2", "--from-key", "--keys-only")
    ctl.run("get", "a/1", "--rev=2")
    ctl.run("get", "a/1", "--rev=2", "-w", "json")
    ctl.run("get", "a/", "--prefix", "--sort-by=MODIFY", "--order=ASCEND", "--print-value-only")
    ctl.run("get", "a/", "--prefix", "--sort-by=VERSION", "--order=DESCEND", "--keys-only")
    ctl.run("get", "a/", "--prefix", "--limit", "1", "--rev=4", "-w", "json")
    ctl.run("get", "", "--from-key", "--limit", "3")
    ctl.run("get", "a/1", "a/3")
    ctl.run("get", "nope", "-w", "json")
    ctl.run("get", "a/1", "--rev=99")

    # -- txn from stdin: both branches, then JSON
    txn = 'value("a/1") = "uno"\n\nput a/1 txn-ok\nget a/2\n\nput a/1 txn-failed\n\n'
    ctl.run("txn", stdin=txn)
    ctl.run("txn", stdin=txn)
    ctl.run("txn", "-w", "json", stdin='mod("a/3") > "0"\n\ndel a/3 --prev-kv\n\n\n')
    ctl.run("put", "a/3", "three again")

    # -- watch: history from revision 2 with previous values, then a live event
    _watch(
        ctl,
        ("a/", "--prefix", "--rev=2", "--prev-kv"),
        lambda seen: "live" in seen,
        lambda: _ok(ctl.quiet("put", "a/2", "live")),
    )
    ctl.note("put a/2 live (while watching)")
    _watch(
        ctl,
        ("a/3", "--rev=5", "-w", "json"),
        lambda seen: _events(seen) >= 2,
        lambda: None,
        _watch_events,
    )

    # -- leases
    lease = _grab(r"lease (\w+) granted", ctl.run("lease", "grant", "60").stdout)
    ctl.run("put", "leased", "x", f"--lease={lease}")
    ctl.run("lease", "keep-alive", "--once", lease)
    ctl.run("lease", "timetolive", lease, "--keys")
    ctl.run("lease", "timetolive", lease, "--keys", "-w", "json")
    second = _grab(r'"ID":(\d+)', ctl.run("lease", "grant", "120", "-w", "json").stdout)
    ctl.run("lease", "list", sort=True)  # etcd sorts by expiry: ties in map order
    ctl.run("lease", "revoke", lease)
    ctl.run("lease", "timetolive", lease)
    ctl.run("get", "leased")
    ctl.run("lease", "revoke", lease)
    ctl.run("lease", "keep-alive", "--once", lease)
    ctl.run("lease", "revoke", f"{int(second):016x}")
    ctl.run("lease", "list", sort=True)  # etcd sorts by expiry: ties in map order
    # a streaming keep-alive, until the lease is revoked; then of the revoked lease
    third = _grab(r"lease (\w+) granted", ctl.run("lease", "grant", "3").stdout)
    _keep_alive_until_revoked(ctl, third)
    ctl.run("lease", "keep-alive", third)

    # -- members and endpoints
    _settle(ctl)
    ctl.run("member", "list", sort=True)
    ctl.run("member", "list", "-w", "json", output=_sort_members)
    ctl.run("member", "list", "-w", "table", sort=True)
    ctl.run("endpoint", "status")
    ctl.run("endpoint", "status", "-w", "json")
    ctl.run("endpoint", "status", "-w", "table")
    ctl.run("endpoint", "health", sort=True)
    ctl.run("endpoint", "hashkv")
    ctl.run("endpoint", "hashkv", "-w", "json")

    # -- membership and move-leader. Which member leads is the elections' choice, and etcdctl
    # sends move-leader to the leader: recorded as roles (<leader>, <leader-ep>, <follower>).
    _settle(ctl)
    statuses = _statuses(ctl)
    leader = next(iter(statuses.values()))["leader"]
    leader_ep = next(e for e, s in statuses.items() if s["header"]["member_id"] == leader)
    follower = next(
        s["header"]["member_id"]
        for s in statuses.values()
        if s["leader"] != s["header"]["member_id"]
    )
    roles = {f"{leader:x}": "<leader>", f"{follower:x}": "<follower>", leader_ep: "<leader-ep>"}
    members = json.loads(ctl.quiet("member", "list", "-w", "json").stdout)["members"]
    peers = {m["name"]: m["peerURLs"][0] for m in members}
    ids = {m["name"]: f"{m['ID']:x}" for m in members}

    # a learner at an unreachable peer URL is never in sync, so never promoted; removed
    add = ("member", "add", "extra", "--learner", f"--peer-urls={UNREACHABLE}")
    added = poll(
        lambda: _added(ctl, add),
        timeout=15,
        what="etcd's strict reconfiguration check to pass (members connected for 5 s)",
    )
    ctl.record(add, "", _sort_initial_cluster(added.stdout), added.stderr, added.returncode)
    learner = _grab(r"Member\s+(\w+) added", added.stdout)
    _until_listed(ctl, learner, listed=True)
    ctl.run("member", "list", sort=True)
    ctl.run("member", "promote", learner)
    ctl.run("member", "promote", ids["m2"])
    ctl.run("move-leader", learner, roles=roles)
    ctl.run("member", "add", "again", f"--peer-urls={peers['m3']}")
    ctl.run("member", "remove", learner)
    _until_listed(ctl, learner, listed=False)
    ctl.run("member", "list", sort=True)
    ctl.run("member", "remove", learner)
    # (To the leader: etcd 3.4's leader answers "member not found" for a removed member, but a
    # follower forwarding the promotion gets an error it does not map, retries and times out.)
    ctl.run("member", "promote", learner, endpoints=[leader_ep], roles=roles)

    # move-leader: to an unknown member, to the leader itself, to a follower, through a
    # follower only
    ctl.run("move-leader", "1234", roles=roles)
    ctl.run("move-leader", f"{leader:x}", roles=roles)
    ctl.run("move-leader", f"{follower:x}", roles=roles)
    poll(
        lambda: {s["leader"] for s in _statuses(ctl).values()} == {follower} or None,
        timeout=10,
        what=f"every member to see {follower:x} lead after move-leader",
        describe=lambda: ctl.quiet("endpoint", "status").stdout,
    )
    ctl.run("move-leader", f"{leader:x}", endpoints=[leader_ep], roles=roles)
    ctl.run("endpoint", "status")

    # -- alarms: none, then NOSPACE (raised over gRPC), what it refuses, disarmed
    ctl.run("alarm", "list")
    ctl.run("alarm", "list", "-w", "json")
    ctl.run("alarm", "disarm")
    alarm()
    ctl.note("AlarmRequest ACTIVATE NOSPACE for member 0 over gRPC")
    ctl.run("alarm", "list")
    ctl.run("put", "x", "y")
    ctl.run("lease", "grant", "60")
    ctl.run("get", "b")
    _settle(ctl)
    ctl.run("endpoint", "status")
    ctl.run("alarm", "disarm")
    ctl.run("alarm", "list")
    ctl.run("put", "x", "y")

    # -- compaction, then the compacted revisions are gone with etcd's error
    rev = json.loads(ctl.run("get", "b", "-w", "json").stdout)["header"]["revision"]
    ctl.run("compaction", str(rev - 2))
    ctl.run("get", "a/1", "--rev=2")
    ctl.run("compaction", str(rev - 3))
    ctl.run("compaction", str(rev + 100))
    ctl.run("get", "a/1", f"--rev={rev - 2}")
    ctl.run("watch", "a/", "--prefix", "--rev=2")

    # -- snapshot save: from one member only
    snapshot = scratch / "snapshot.db"
    ctl.run("snapshot", "save", str(snapshot), roles={str(scratch): "<dir>"})
    ctl.run(
        "snapshot", "save", str(snapshot), endpoints=ctl.endpoints[:1],
        roles={str(scratch): "<dir>"},
    )  # fmt: skip
    assert snapshot.stat().st_size > 0, f"etcdctl snapshot save wrote an empty {snapshot}"

    # -- delete with a prefix and with --from-key
    ctl.run("del", "a/", "--prefix")
    ctl.run("del", "b", "--from-key", "--prev-kv")
    ctl.run("del", "nothing")
    ctl.run("get", "", "--from-key", "-w", "json")


# -- normalising ---------------------------------------------------------------------------------


@attrs.define
class Normaliser:
    """Replaces what legitimately differs between two clusters by placeholders."""

    words: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def for_cluster(cls, members: list[dict[str, Any]], header: dict[str, Any]) -> Normaliser:
        n = cls()
        # Member and cluster ids: etcd derives them from URLs, token and time; kvapp too, from
        # its own inputs. URLs: each cluster has its own free ports.
        n.word(str(header["cluster_id"]), "<cluster-id>")
        n.word(f"{header['cluster_id']:x}", "<cluster-id>")
        for m in members:
            name = m["name"]
            n.word(str(m["ID"]), f"<id-{name}>")
            n.word(f"{m['ID']:x}", f"<id-{name}>")
            for url in m["peerURLs"]:
                n.word(url, f"<peer-{name}>")
            for url in m["clientURLs"]:
                n.word(url, f"<url-{name}>")
                n.word(url.removeprefix("http://"), f"<ep-{name}>")
        return n

    def word(self, text: str, placeholder: str) -> None:
        self.words[text] = placeholder

    def lease(self, text: str, number: int) -> None:
        """Lease ids: etcd makes them from the member id and a clock, kvapp counts from 1.

        etcdctl prints them as 16 hex digits, and in JSON as decimal ``ID`` and ``lease``.
        """
        value = int(text, 16)
        self.word(f"{value:016x}", f"<lease{number}>")
        self.word(f'"ID":{value}', f'"ID":<lease{number}>')
        self.word(f'"lease":{value}', f'"lease":<lease{number}>')
        self.word(f'"id":{value}', f'"id":<lease{number}>')

    def __call__(self, lines: list[str]) -> list[str]:
        words = sorted(self.words, key=len, reverse=True)
        pattern = re.compile(r"(?<![\w])(" + "|".join(re.escape(w) for w in words) + r")(?![\w])")
        out = [_fields(pattern.sub(lambda m: self.words[m.group(1)], line)) for line in lines]
        return _sorted_runs(out)


_FIELDS: list[tuple[re.Pattern[str], str]] = [
    # Raft terms and indexes count elections and log entries (kvapp logs its own entries, e.g.
    # members publishing their URLs and lease checkpoints), not client-visible history.
    (re.compile(r'"(raft_term|raftTerm|raftIndex|raftAppliedIndex)":\d+'), r'"\1":<n>'),
    # Versions: etcd's own; kvapp's. Sizes: etcd's bbolt file; kvapp's Raft storage (docs).
    (re.compile(r'"version":"[^"]*"'), '"version":<version>'),
    (re.compile(r'"(dbSize|dbSizeInUse)":\d+'), r'"\1":<size>'),
    # Hashes: etcd hashes its bbolt keys and values, kvapp its own encoding of the history.
    (re.compile(r'"hash":\d+'), '"hash":<hash>'),
    # Which member answers (etcdctl's balancer picks one) and which one leads (elections).
    (re.compile(r'"member_id":<id-m\d>'), '"member_id":<id>'),
    (re.compile(r'"leader":<id-m\d>'), '"leader":<leader>'),
    # clientv3's log lines: their time and the client's random name.
    (re.compile(r'"ts":("[^"]*"|[0-9.e+-]+)'), '"ts":<time>'),
    (re.compile(r"endpoint://client-[0-9a-f-]+/"), "endpoint://client-<uuid>/"),
    # The time a health check or a snapshot took, and the snapshot's size (see "Sizes").
    (re.compile(r"took = [0-9.]+[µmn]?s"), "took = <t>"),
    (re.compile(r'"took":[0-9.e+-]+'), '"took":<t>'),
    (re.compile(r'"size":"[^"]*"'), '"size":<size>'),
    # etcdctl pads member and cluster ids to 16 characters with spaces in `member add/remove`.
    (re.compile(r"\b(Member|cluster) +<"), r"\1 <"),
    # A lease's remaining time depends on when the command ran.
    (re.compile(r"remaining\(\d+s\)"), "remaining(<ttl>s)"),
    (re.compile(r'"ttl":\d+,"granted-ttl"'), '"ttl":<ttl>,"granted-ttl"'),
]

_STATUS_CELLS = 10
"""`endpoint status` columns: endpoint, id, version, db size, is leader, is learner, raft term,
raft index, raft applied index, errors."""


def _fields(line: str) -> str:
    for pattern, replacement in _FIELDS:
        line = pattern.sub(replacement, line)
    split = 3 if line[2:3] == "~" else 2
    head, body = line[:split], line[split:]
    # Table borders and padding depend on the widths of ids, URLs and versions.
    if re.fullmatch(r"\s*\+[-+]+\+\s*", body):
        return head + "+--+"
    table = body.strip().startswith("|")
    cells = (
        [c.strip() for c in body.strip().strip("|").split("|")]
        if table
        else body.split(", ", _STATUS_CELLS - 1)
    )
    if len(cells) == _STATUS_CELLS and re.fullmatch(r"<ep-m\d>", cells[0]):
        # endpoint status: the id, version, size, leadership, term and indexes differ (that
        # exactly one member leads is checked on the raw output: _one_leader).
        cells[1:5] = ["<id>", "<version>", "<size>", "<is-leader>"]
        cells[6:9] = ["<term>", "<index>", "<applied>"]
    elif len(cells) == 2 and re.fullmatch(r"<ep-m\d>", cells[0]) and cells[1].isdigit():
        cells[1] = "<hash>"  # endpoint hashkv: each server hashes its own encoding
    if table:
        return head + "| " + " | ".join(cells) + " |"
    return head + ", ".join(cells)


def _one_leader(lines: list[str]) -> None:
    """Each ``endpoint status`` (simple format) names exactly one member as the leader."""
    blocks = "\n".join(lines).split("$ etcdctl ")
    statuses = [b for b in blocks if b.startswith("endpoint status\n")]
    assert statuses, "no endpoint status in the session"
    for block in statuses:
        flags = [line.split(", ")[4] for line in block.splitlines()[1:]]
        assert sorted(flags) == ["false", "false", "true"], block


def _sorted_runs(lines: list[str]) -> list[str]:
    """Sort each run of lines marked ``~`` (printed in member-id order, or as answers came)."""
    out: list[str] = []
    run: list[str] = []
    for line in [*lines, ""]:
        if line[2:3] == "~":
            run.append(line[:2] + line[3:])
            continue
        out += sorted(run)
        run = []
        out.append(line)
    return out[:-1]


def _sort_members(stdout: str) -> str:
    """``member list -w json`` with the members by name (servers list them by member id)."""
    data = json.loads(stdout)
    data["members"].sort(key=lambda m: m["name"])
    return json.dumps(data, separators=(",", ":"))


def _members(ctl: Recorder) -> dict[str, Any] | None:
    done = ctl.quiet("member", "list", "-w", "json")
    if done.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(done.stdout)
    members = data["members"]
    if len(members) == 3 and all(m.get("clientURLs") and m.get("name") for m in members):
        return data
    return None


def _transcript(
    etcdctl: str, endpoints: list[str], describe: Callable[[], str], scratch: Path
) -> list[str]:
    ctl = Recorder(etcdctl, endpoints)
    listed = poll(
        lambda: _members(ctl),
        timeout=30,
        what="3 members with names and client URLs",
        describe=describe,
    )
    ctl.endpoints = [
        u.removeprefix("http://")
        for m in sorted(listed["members"], key=lambda m: m["name"])
        for u in m["clientURLs"]
    ]
    session(ctl, lambda: _raise_alarm(ctl.endpoints[0]), scratch)
    _one_leader(ctl.lines)
    normalise = Normaliser.for_cluster(listed["members"], listed["header"])
    for learner in re.findall(r"Member\s+(\w+) added", "\n".join(ctl.lines)):
        normalise.word(learner, "<id-learner>")  # etcd draws member ids; kvapp hashes URLs
    leases = re.findall(r"lease (\w{16}) granted", "\n".join(ctl.lines))
    leases += [f"{int(x):x}" for x in re.findall(r'"ID":(\d+),"TTL":120', "\n".join(ctl.lines))]
    for number, lease in enumerate(dict.fromkeys(leases), 1):
        normalise.lease(lease, number)
    return normalise(ctl.lines)


def test_an_etcdctl_session_gives_the_same_transcript_on_kvapp_and_on_etcd(
    binaries: tuple[str, str], etcd_cluster: EtcdCluster, kvapp_cluster: Cluster, tmp_path: Path
) -> None:
    etcdctl = binaries[1]
    (tmp_path / "etcd").mkdir()
    (tmp_path / "kvapp").mkdir()
    on_etcd = _transcript(etcdctl, etcd_cluster.endpoints, etcd_cluster.output, tmp_path / "etcd")
    on_kvapp = _transcript(etcdctl, kvapp_cluster.grpc, kvapp_cluster.output, tmp_path / "kvapp")
    if os.environ.get("KVAPP_TRANSCRIPTS"):  # to look at them: KVAPP_TRANSCRIPTS=dir
        out = Path(os.environ["KVAPP_TRANSCRIPTS"])
        (out / "etcd.txt").write_text("\n".join(on_etcd) + "\n")
        (out / "kvapp.txt").write_text("\n".join(on_kvapp) + "\n")
    diff = list(difflib.unified_diff(on_etcd, on_kvapp, "etcd 3.4", "kvapp", lineterm="", n=2))
    assert not diff, "normalised etcdctl transcripts differ:\n" + "\n".join(diff)
    # The normalisation keeps what matters: the session did what it says.
    text = "\n".join(on_kvapp)
    for expected in [
        "  a/1\n  uno",
        "  SUCCESS",
        "  FAILURE",
        "! Error: etcdserver: mvcc: required revision has been compacted",
        "! Error: etcdserver: mvcc: database space exceeded",
        "  alarm:NOSPACE ",
        "  <lease1>",
        "lease <lease1> granted with TTL(60s), remaining(<ttl>s), attached keys([leased])",
        "  lease <lease2> keepalived with TTL(3)\n  lease <lease2> expired or revoked.",
        "  <id-learner>, unstarted, , http://127.0.0.1:9, , true",
        "! Error: etcdserver: can only promote a learner member which is in sync with leader",
        "! Error: etcdserver: bad leader transferee",
        "  Member <id-learner> removed from cluster <cluster-id>",
        "  Leadership transferred from <leader> to <follower>",
        "! Error: no leader endpoint given at [<leader-ep>]",
        "  Snapshot saved at <dir>/snapshot.db",
    ]:
        assert expected in text, f"{expected!r} missing from the transcript:\n{text}"


# -- kvctl prints what etcdctl prints: alarm list/disarm, member update ---------------------------


def _kvctl(endpoints: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvapp.ctl", f"--endpoints={endpoints}", *args],
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip


def _last_line(text: str) -> str:
    """etcdctl logs clientv3's retry warning before its error; kvctl prints only the error."""
    return text.strip().splitlines()[-1]


def test_kvctl_alarm_and_member_update_print_what_etcdctl_prints(
    binaries: tuple[str, str], kvapp_cluster: Cluster
) -> None:
    native = _grab(r"kvapp\.ctl --endpoints=(\S+)", kvapp_cluster.output())
    etcdctl = Recorder(binaries[1], kvapp_cluster.grpc)
    poll(lambda: _members(etcdctl), timeout=30, what="3 members with client URLs")

    def both(*args: str) -> tuple[str, str]:
        ours, theirs = _kvctl(native, *args), etcdctl.quiet(*args)
        assert ours.returncode == 0, f"kvctl {' '.join(args)}: {ours.stderr}"
        assert theirs.returncode == 0, f"etcdctl {' '.join(args)}: {theirs.stderr}"
        return ours.stdout, theirs.stdout

    assert both("alarm", "list") == ("", "")
    assert both("alarm", "list", "-w", "json") == ("{}\n", "{}\n")
    _raise_alarm(kvapp_cluster.grpc[0])
    for args in [("alarm", "list"), ("alarm", "list", "-w", "json")]:
        ours, theirs = both(*args)
        assert ours == theirs, f"{args}: kvctl printed {ours!r}, etcdctl {theirs!r}"
    assert both("alarm", "list")[0] == "alarm:NOSPACE \n"
    disarmed = []
    for program in (_kvctl, lambda _, *args: etcdctl.quiet(*args)):
        for fmt in ("simple", "json"):
            _raise_alarm(kvapp_cluster.grpc[0])
            done = program(native, "alarm", "disarm", "-w", fmt)
            assert done.returncode == 0, done.stderr
            disarmed.append(done.stdout)
            assert etcdctl.quiet("alarm", "list").stdout == ""
    assert disarmed == ["alarm:NOSPACE \n", '{"alarms":[{"alarm":1}]}\n'] * 2

    # member update: of a learner added for it (not started), then its errors
    added = etcdctl.quiet("member", "add", "extra", "--learner", "--peer-urls=http://127.0.0.1:1")
    learner = _grab(r"Member\s+(\w+) added", added.stdout)
    try:
        mine = _kvctl(native, "member", "update", learner, "--peer-urls=http://127.0.0.1:2")
        etcds = etcdctl.quiet("member", "update", learner, "--peer-urls=http://127.0.0.1:3")
        assert (mine.returncode, etcds.returncode) == (0, 0), mine.stderr + etcds.stderr
        assert mine.stdout == etcds.stdout
        assert re.fullmatch(rf"Member +{learner} updated in cluster +\w+\n", mine.stdout)
        listed = etcdctl.quiet("member", "list").stdout
        assert f"{learner}, unstarted, , http://127.0.0.1:3, , true" in listed, listed
        members = json.loads(etcdctl.quiet("member", "list", "-w", "json").stdout)["members"]
        other = next(m["peerURLs"][0] for m in members if m.get("name") == "m1")
        for args, error in [
            (("member", "update", "1234", "--peer-urls=http://127.0.0.1:4"), "member not found"),
            (("member", "update", learner, f"--peer-urls={other}"), "Peer URLs already exists"),
        ]:
            mine, etcds = _kvctl(native, *args), etcdctl.quiet(*args)
            assert (mine.returncode, etcds.returncode) == (1, 1), mine.stderr + etcds.stderr
            assert _last_line(mine.stderr) == _last_line(etcds.stderr)
            assert _last_line(mine.stderr) == f"Error: etcdserver: {error}"
        assert _kvctl(native, "member", "update", learner).stderr.strip() == (
            "Error: member peer urls not provided"
        )
    finally:
        etcdctl.quiet("member", "remove", learner)
