"""Disaster recovery in one process: snapshot files, ``snapshot restore|status`` and
``--force-new-cluster``, on members with real Raft stores over an in-memory network."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import shutil
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import cbor2
import pytest

from kvapp import requests as kvreq
from kvapp.cli import main
from kvapp.dedup import Applier
from kvapp.kvstate import KvState
from kvapp.mvcc.types import DeleteRangeRequest, PutRequest, RangeRequest
from kvapp.node import Member, MemberConfig, cluster_id_for, member_id_for
from kvapp.recovery import (
    RecoveryError,
    RestoreOptions,
    force_new_cluster,
    parse_restore_args,
    restore,
    status,
)
from kvapp.service import MemberInfo
from kvapp.snapfile import SnapshotFileError, SnapshotHeader, SnapshotWriter, read_info
from kvapp.storage import RaftStore
from raftlib import ConfState, Entry, HardState
from tests.kvapp.test_member import TICK, Clock, Hub

OLD_TOKEN = "old"
_T = TypeVar("_T")
_P = ParamSpec("_P")
NEW_TOKEN = "restored"


def aio(fn: Callable[_P, Coroutine[Any, Any, None]]) -> Callable[_P, None]:
    """Run an async test (fixtures passed through) on a fresh loop, bounded by a timeout."""

    @functools.wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(90):
                await fn(*args, **kwargs)

        asyncio.run(bounded())

    return run


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    async def bounded() -> _T:
        async with asyncio.timeout(90):
            return await coro

    return asyncio.run(bounded())


def infos(n: int, token: str, base: int) -> list[MemberInfo]:
    cluster = cluster_id_for(token)
    out = []
    for i in range(1, n + 1):
        urls = (f"http://127.0.0.1:{base + i}",)
        out.append(MemberInfo(member_id_for(urls, cluster), f"m{i}", urls))
    return out


class Cluster:
    """Members on RaftStores under ``root``, over one in-memory hub."""

    def __init__(
        self, root: Path, initial: Sequence[MemberInfo], token: str, *, snapshot_count: int = 10_000
    ) -> None:
        self.root = root
        self.snapshot_count = snapshot_count
        self.initial = tuple(initial)
        self.cluster_id = cluster_id_for(token)
        self.hub = Hub()
        self.clock = Clock()
        self.members: dict[str, Member] = {}
        self.stores: dict[str, RaftStore] = {}

    def raft_dir(self, name: str) -> Path:
        return self.root / name / "raft"

    async def start(self, *names: str, new_cluster: bool = True) -> None:
        for info in self.initial:
            if names and info.name not in names:
                continue
            store = RaftStore.open(
                self.raft_dir(info.name), cluster_id=self.cluster_id, member_id=info.id, fsync=False
            )
            self.stores[info.name] = store
            config = MemberConfig(
                name=info.name,
                member_id=info.id,
                cluster_id=self.cluster_id,
                initial_members=self.initial,
                tick_interval=TICK,
                lease_tick=TICK * 2,
                request_timeout=2.0,
                snapshot_count=self.snapshot_count,
                keep_entries=min(5000, self.snapshot_count),
                new_cluster=new_cluster,
            )
            m = Member(config, store, self.hub.links(info.id), clock=self.clock)
            self.hub.members[info.id] = m
            self.members[info.name] = m
        for name, m in self.members.items():
            if not names or name in names:
                await m.start()

    async def leader(self) -> Member:
        m = next(iter(self.members.values()))
        lead = await m.node.wait_leader(timeout=10)
        for _ in range(500):
            leaders = [x for x in self.members.values() if x.node.is_leader]
            if leaders and leaders[0].id == lead:
                return leaders[0]
            await asyncio.sleep(TICK)
        raise AssertionError("no member became leader")

    async def wait_applied(self, index: int) -> None:
        for _ in range(1000):
            if all(m.node.applied >= index for m in self.members.values()):
                return
            await asyncio.sleep(TICK)
        applied = {n: m.node.applied for n, m in self.members.items()}
        raise AssertionError(f"not every member applied {index}: {applied}")

    async def stop_one(self, name: str) -> None:
        m = self.members.pop(name)
        await m.stop(transfer=False)
        self.stores.pop(name).close()
        del self.hub.members[m.id]

    async def stop(self) -> None:
        for m in self.members.values():
            await m.stop(transfer=False)
        for s in self.stores.values():
            s.close()
        self.members.clear()
        self.stores.clear()
        self.hub.members.clear()


async def save_file(member: Member, path: Path, *, linearizable: bool = True) -> int:
    """Stream ``member``'s snapshot into ``path`` (what ``kvapp snapshot save`` does)."""
    pieces = [chunk async for chunk in member.snapshot(linearizable=linearizable)]
    path.write_bytes(b"".join(pieces))  # noqa: ASYNC240 - a small file in a test
    return len(pieces)


async def old_cluster_file(tmp_path: Path, keys: int = 20) -> Path:
    """A 3-member cluster with ``keys`` keys (one deleted) and a snapshot file of it."""
    old = Cluster(tmp_path / "old", infos(3, OLD_TOKEN, 21000), OLD_TOKEN)
    await old.start()
    try:
        lead = await old.leader()
        for i in range(keys):
            await lead.write(PutRequest(b"k%03d" % i, b"v%d" % i), client_id=5, request_id=i + 1)
        await lead.write(DeleteRangeRequest(b"k000"))
        path = tmp_path / "backup.snap"
        follower = next(m for m in old.members.values() if m is not lead)
        await save_file(follower, path)  # linearizable: every acknowledged write is in it
        return path
    finally:
        await old.stop()


def restore_opts(
    file: Path, root: Path, name: str, members: Sequence[MemberInfo]
) -> RestoreOptions:
    initial = ",".join(f"{m.name}={m.peer_urls[0]}" for m in members)
    return parse_restore_args(
        [
            str(file),
            "--name",
            name,
            "--data-dir",
            str(root / name),
            "--initial-cluster",
            initial,
            "--initial-cluster-token",
            NEW_TOKEN,
        ]
    )


# -- snapshot files ------------------------------------------------------------------------


@aio
async def test_status_reports_revision_keys_and_hash(tmp_path: Path) -> None:
    path = await old_cluster_file(tmp_path, keys=20)
    st = status(path)
    assert st.revision == 22  # 20 puts and one delete after revision 1
    assert st.total_keys == 19
    assert st.total_size == path.stat().st_size
    info = read_info(path)
    applier = Applier(KvState(lambda: 0.0, grace=1.0))
    end = info.payload_offset + info.payload_size
    applier.restore_bytes(path.read_bytes()[info.payload_offset : end])
    assert st.hash == applier.hash()
    assert (info.size - 32) % 512 == 0  # the size etcdctl 3.4's snapshot save insists on


@aio
async def test_a_version_1_file_without_padding_is_still_read(tmp_path: Path) -> None:
    path = await old_cluster_file(tmp_path, keys=5)
    info = read_info(path)
    data = path.read_bytes()
    payload = data[info.payload_offset : info.payload_offset + info.payload_size]
    header = cbor2.loads(data[12 : info.payload_offset])
    assert header["version"] == 2
    body = cbor2.dumps({**header, "version": 1})
    v1 = b"KVAPPSNP" + len(body).to_bytes(4, "big") + body + payload
    old = tmp_path / "v1.snap"
    old.write_bytes(v1 + hashlib.sha256(v1).digest())
    assert status(old).hash == status(path).hash
    # A version 2 file whose padding length is damaged (hash recomputed) is refused.
    bad = bytearray(data[:-32])
    bad[-2] ^= 0x10  # 4096 more bytes of padding than a 512-byte alignment needs
    damaged = tmp_path / "pad.snap"
    damaged.write_bytes(bytes(bad) + hashlib.sha256(bad).digest())
    with pytest.raises(SnapshotFileError, match="padding"):
        read_info(damaged)


@aio
async def test_damaged_truncated_missing_and_foreign_files_are_refused(tmp_path: Path) -> None:
    path = await old_cluster_file(tmp_path, keys=5)
    data = path.read_bytes()
    flipped = tmp_path / "flipped.snap"
    flipped.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    truncated = tmp_path / "truncated.snap"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"SQLite format 3\0" + bytes(200))
    cases = {
        flipped: "hash mismatch",
        truncated: "hash mismatch",
        tmp_path / "missing.snap": "no such file",
        foreign: "not a kvapp snapshot file",
        tmp_path: "is a directory",
    }
    for bad, message in cases.items():
        with pytest.raises(SnapshotFileError, match=message):
            status(bad)
        target = tmp_path / "restored" / "m1"
        with pytest.raises(SnapshotFileError, match=message):
            restore(restore_opts(bad, tmp_path / "restored", "m1", infos(1, NEW_TOKEN, 22000)))
        assert not (tmp_path / "restored").exists(), f"{bad.name}: {target} was created"
    assert path.read_bytes() == data


def test_a_file_whose_state_is_damaged_under_a_valid_hash_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad-state.snap"
    with path.open("wb") as f:
        w = SnapshotWriter(f, SnapshotHeader(1, 1, 5, 1, 3))
        w.write(b"\x83not an applier snapshot")
        w.finish()
    with pytest.raises(SnapshotFileError, match="damaged state"):
        status(path)


@aio
async def test_a_members_snapshot_streams_in_pieces_and_can_be_abandoned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kvapp.node._SNAPSHOT_CHUNK", 64)
    cluster = Cluster(tmp_path / "c", infos(3, OLD_TOKEN, 21100), OLD_TOKEN)
    await cluster.start()
    try:
        lead = await cluster.leader()
        for i in range(30):
            await lead.write(PutRequest(b"key%02d" % i, b"x" * 40))
        member = next(m for m in cluster.members.values() if m is not lead)
        path = tmp_path / "pieces.snap"
        pieces = await save_file(member, path)
        assert pieces > 20
        info = read_info(path)
        assert info.header.member_id == member.id
        assert info.header.cluster_id == cluster.cluster_id
        assert info.header.revision == 31
        # A consumer that stops after one piece releases the worker and the member.
        stream = member.snapshot(linearizable=False)
        first = await anext(stream)
        assert first.startswith(b"KVAPPSNP")
        await stream.aclose()
        await lead.write(PutRequest(b"after", b"abandon"))
        assert status(path).total_keys == 30
    finally:
        await cluster.stop()


# -- restore -------------------------------------------------------------------------------


@aio
async def test_restored_members_form_a_new_cluster_with_the_data(tmp_path: Path) -> None:
    path = await old_cluster_file(tmp_path, keys=20)
    before = path.read_bytes()
    new = infos(3, NEW_TOKEN, 23000)
    root = tmp_path / "new"
    for m in new:
        done = restore(restore_opts(path, root, m.name, new), fsync=False)
        assert done.member_id == m.id
        assert done.cluster_id == cluster_id_for(NEW_TOKEN)
        assert done.revision == 22
        assert sorted(p.name for p in (root / m.name).iterdir()) == ["member.json", "raft"]
    assert path.read_bytes() == before
    assert not [p for p in root.iterdir() if p.name.startswith(".")]

    cluster = Cluster(root, new, NEW_TOKEN)
    await cluster.start()
    try:
        lead = await cluster.leader()
        got = await lead.range(RangeRequest(b"k", b"l"))
        assert [kv.key for kv in got.kvs] == [b"k%03d" % i for i in range(1, 20)]
        put = await lead.write(PutRequest(b"after", b"restore"))
        assert put.revision == 23
        await cluster.wait_applied(lead.node.applied)
        for member in cluster.members.values():
            assert {i.id for i in member.member_list()} == {i.id for i in new}
            assert sorted(member.node.conf_state.voters) == sorted(i.id for i in new)
            local = await member.range(RangeRequest(b"after", serializable=True))
            assert local.kvs[0].value == b"restore"
        # A write retried with a request id of the old cluster's session is still deduplicated.
        again = await lead.write(PutRequest(b"k003", b"v3"), client_id=5, request_id=4)
        assert again.revision == 5
    finally:
        await cluster.stop()


@aio
async def test_restore_refuses_a_non_empty_directory_and_accepts_an_empty_one(
    tmp_path: Path,
) -> None:
    path = await old_cluster_file(tmp_path, keys=3)
    new = infos(1, NEW_TOKEN, 24000)
    busy = tmp_path / "busy"
    (busy / "m1").mkdir(parents=True)
    (busy / "m1" / "keep.txt").write_text("mine")
    with pytest.raises(RecoveryError, match="not empty; refusing to overwrite"):
        restore(restore_opts(path, busy, "m1", new), fsync=False)
    assert [p.name for p in (busy / "m1").iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    (empty / "m1").mkdir(parents=True)
    restore(restore_opts(path, empty, "m1", new), fsync=False)
    assert (empty / "m1" / "member.json").exists()


def test_restore_flags_are_checked(tmp_path: Path) -> None:
    from kvapp.cli import UsageError

    base = ["f.snap", "--initial-cluster", "a=http://127.0.0.1:1,b=http://127.0.0.1:2"]
    with pytest.raises(UsageError, match="does not name this member"):
        parse_restore_args([*base, "--name", "z"])
    with pytest.raises(UsageError, match="--initial-advertise-peer-urls is"):
        parse_restore_args([*base, "--name", "a", "--initial-advertise-peer-urls", "http://x:9"])
    with pytest.raises(UsageError, match="token"):
        parse_restore_args([*base, "--name", "a", "--initial-cluster-token", ""])
    with pytest.raises(UsageError, match="not name=http"):
        parse_restore_args(["f.snap", "--initial-cluster", "a:http://x:1"])
    solo = parse_restore_args(["f.snap", "--name", "s"])
    assert solo.data_dir == Path("s.kvapp")
    assert [m.peer_urls for m in solo.initial_members] == [("http://127.0.0.1:2380",)]


def test_the_snapshot_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = run(old_cluster_file(tmp_path, keys=4))
    capsys.readouterr()
    assert main(["snapshot", "status", str(path), "-w", "json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js == {
        "hash": status(path).hash,
        "revision": 6,
        "totalKey": 3,
        "totalSize": path.stat().st_size,
    }
    assert main(["snapshot", "status", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{js['hash']:x}, 6, 3, ")
    assert main(["snapshot", "status", str(path), "-w", "table"]) == 0
    assert "| TOTAL KEYS |" in capsys.readouterr().out

    target = tmp_path / "r" / "m1"
    args = ["snapshot", "restore", str(path), "--name", "m1", "--data-dir", str(target)]
    args += ["--initial-cluster", "m1=http://127.0.0.1:25001", "--initial-cluster-token", "t"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"into {target}" in out
    assert "kvapp serve --name m1" in out
    assert main(args) == 1
    assert "not empty; refusing to overwrite" in capsys.readouterr().err
    nowhere = tmp_path / "x"
    assert main(["snapshot", "restore", str(tmp_path / "nope"), "--data-dir", str(nowhere)]) == 1
    assert "no such file" in capsys.readouterr().err
    bad_name = ["--name", "zz", "--data-dir", str(nowhere), *args[7:9]]
    assert main(["snapshot", "restore", str(path), *bad_name]) == 2
    assert "does not name this member" in capsys.readouterr().err
    assert main(["snapshot"]) == 2
    assert not nowhere.exists()


# -- force-new-cluster ---------------------------------------------------------------------


@aio
async def test_force_new_cluster_keeps_the_whole_log_including_the_tail_past_the_commit_index(
    tmp_path: Path,
) -> None:
    initial = infos(3, OLD_TOKEN, 26000)
    old = Cluster(tmp_path, initial, OLD_TOKEN)
    await old.start()
    lead = await old.leader()
    for i in range(10):
        await lead.write(PutRequest(b"k%d" % i, b"v"))
    await old.wait_applied(lead.node.applied)
    await old.stop()

    # An entry this member appended but never saw committed (after a crash it may have been
    # committed and acknowledged: the recorded commit index can lag): it is kept.
    me = initial[1]
    with RaftStore.open(
        old.raft_dir(me.name), cluster_id=old.cluster_id, member_id=me.id, fsync=False
    ) as store:
        hard, _ = store.initial_state()
        tail = kvreq.encode_request(kvreq.Request(0, 0, PutRequest(b"uncommitted", b"x")))
        store.save(None, [Entry(term=hard.term, index=store.last_index() + 1, data=tail)])
        committed = store.hard_state.commit
        forced = force_new_cluster(store, me, known_members=[m.id for m in initial])
        assert forced.commit_index == committed
        assert forced.kept_uncommitted == 1
        assert set(forced.removed) == {initial[0].id, initial[2].id}
        assert not forced.added_self
        assert store.hard_state.commit == store.last_index() == forced.last_index
        again = force_new_cluster(store, me, known_members=[m.id for m in initial])
        assert not again.changed

    solo = Cluster(tmp_path, initial, OLD_TOKEN)
    await solo.start(me.name)
    try:
        member = solo.members[me.name]
        assert await member.node.wait_leader(timeout=10) == me.id
        got = await member.range(RangeRequest(b"k", b"l"))
        assert len(got.kvs) == 10
        assert [kv.value for kv in (await member.range(RangeRequest(b"uncommitted"))).kvs] == [b"x"]
        await member.write(PutRequest(b"after", b"force"))
        assert [m.id for m in member.member_list()] == [me.id]
        assert member.node.conf_state.voters == (me.id,)
    finally:
        await solo.stop()


@aio
async def test_force_new_cluster_from_a_member_with_snapshots_and_a_changed_membership(
    tmp_path: Path,
) -> None:
    initial = infos(3, OLD_TOKEN, 27000)
    old = Cluster(tmp_path, initial, OLD_TOKEN, snapshot_count=4)
    await old.start()
    lead = await old.leader()
    for i in range(12):
        await lead.write(PutRequest(b"k%02d" % i, b"v"))
    victim = next(m for m in old.members.values() if m is not lead)
    await lead.member_remove(victim.id)
    for i in range(12, 20):
        await lead.write(PutRequest(b"k%02d" % i, b"v"))
    me = next(i for i in initial if i.id not in (victim.id, lead.id))
    for _ in range(500):
        if old.members[me.name].node.applied >= lead.node.applied:
            break
        await asyncio.sleep(TICK)
    await old.stop()

    with RaftStore.open(
        old.raft_dir(me.name), cluster_id=old.cluster_id, member_id=me.id, fsync=False
    ) as store:
        assert store.snapshot().metadata.index > 0
        forced = force_new_cluster(store, me, known_members=[m.id for m in initial])
        assert forced.removed == (lead.id,)  # the victim was already gone
        assert not force_new_cluster(store, me, known_members=[m.id for m in initial]).changed

    solo = Cluster(tmp_path, initial, OLD_TOKEN, snapshot_count=4)
    await solo.start(me.name)
    try:
        member = solo.members[me.name]
        assert await member.node.wait_leader(timeout=10) == me.id
        got = await member.range(RangeRequest(b"k", b"l"))
        assert len(got.kvs) == 20
        await member.write(PutRequest(b"after", b"force"))
        assert [m.id for m in member.member_list()] == [me.id]
        assert member.node.conf_state.voters == (me.id,)
    finally:
        await solo.stop()


@aio
async def test_force_new_cluster_makes_a_learner_the_voter(tmp_path: Path) -> None:
    a, b, me = infos(3, OLD_TOKEN, 28000)
    me = MemberInfo(me.id, me.name, me.peer_urls, is_learner=True)
    cluster = cluster_id_for(OLD_TOKEN)
    raft = tmp_path / me.name / "raft"
    put = kvreq.encode_request(kvreq.Request(0, 0, PutRequest(b"kept", b"v")))
    with RaftStore.open(
        raft,
        cluster_id=cluster,
        member_id=me.id,
        fsync=False,
        conf_state=ConfState(voters=(a.id, b.id), learners=(me.id,)),
    ) as store:
        store.save(HardState(term=2, vote=0, commit=1), [Entry(term=2, index=1, data=put)])
        forced = force_new_cluster(store, me, known_members=[a.id, b.id, me.id])
    assert forced.added_self
    assert set(forced.removed) == {a.id, b.id}

    solo = Cluster(tmp_path, [a, b, me], OLD_TOKEN)
    await solo.start(me.name)
    try:
        member = solo.members[me.name]
        assert await member.node.wait_leader(timeout=10) == me.id
        assert (await member.range(RangeRequest(b"kept"))).kvs[0].value == b"v"
        assert [(m.id, m.is_learner) for m in member.member_list()] == [(me.id, False)]
    finally:
        await solo.stop()


def test_force_new_cluster_refuses_a_member_outside_its_configuration(tmp_path: Path) -> None:
    a, b, me = infos(3, OLD_TOKEN, 29000)
    with RaftStore.open(
        tmp_path / "raft",
        cluster_id=cluster_id_for(OLD_TOKEN),
        member_id=me.id,
        fsync=False,
        conf_state=ConfState(voters=(a.id, b.id)),
    ) as store:
        store.save(HardState(term=2, vote=0, commit=0), [Entry(term=2, index=1)])
        with pytest.raises(RecoveryError, match="removed, or never finished joining"):
            force_new_cluster(store, me, known_members=[a.id, b.id, me.id])
        assert store.last_index() == 1
        assert store.hard_state.commit == 0


@aio
async def test_a_member_removed_then_added_again_under_its_id_stays_a_member(
    tmp_path: Path,
) -> None:
    """Replaying the log from scratch, it meets its old removal before its new addition."""
    initial = infos(3, OLD_TOKEN, 21300)
    cluster = Cluster(tmp_path, initial, OLD_TOKEN)
    await cluster.start()
    try:
        lead = await cluster.leader()
        await lead.write(PutRequest(b"k", b"v"))
        gone = next(i for i in initial if i.id != lead.id)
        await lead.member_remove(gone.id)
        await cluster.stop_one(gone.name)
        shutil.rmtree(tmp_path / gone.name)
        await lead.member_add(gone.peer_urls)
        await cluster.start(gone.name, new_cluster=False)
        back = cluster.members[gone.name]
        await cluster.wait_applied(lead.node.applied)
        assert not back.removed
        assert (await back.range(RangeRequest(b"k"))).kvs[0].value == b"v"
        assert gone.id in {m.id for m in back.member_list()}
    finally:
        await cluster.stop()
