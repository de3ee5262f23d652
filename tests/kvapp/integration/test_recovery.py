"""Disaster recovery with real ``kvapp serve`` processes on 127.0.0.1.

``kvctl snapshot save`` from a running member, ``kvapp snapshot restore`` of that file into the
data directories of a new cluster, which then serves the data and takes writes; damaged files
refused without creating anything; and ``kvapp serve --force-new-cluster`` from one member's
data directory of a stopped cluster, which keeps every acknowledged write, takes writes alone,
and then grows again with ``member add``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kvapp.integration.harness import REPO_ROOT, ProcCluster, keys_present, poll

pytestmark = pytest.mark.integration

MakeCluster = Callable[..., ProcCluster]


def run(module: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` to completion, from the repository, with its output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def restore_args(snap: Path, new: ProcCluster, name: str) -> list[str]:
    m = new[name]
    return [
        "snapshot",
        "restore",
        str(snap),
        "--name",
        name,
        "--data-dir",
        str(m.data_dir),
        "--initial-cluster",
        new.initial_cluster(),
        "--initial-cluster-token",
        new.token,
        "--initial-advertise-peer-urls",
        m.peer_url,
    ]


@pytest.mark.timeout(300)
def test_a_saved_snapshot_restores_into_a_new_cluster_that_serves_it(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    old = make_cluster(3)
    c = old.client()
    for i in range(50):
        c.put(b"key/%02d" % i, b"value-%d" % i)
    c.delete(b"key/00")
    last = c.put(b"last", b"write")
    follower = old.followers(old.wait_leader())[0]

    snap = tmp_path / "backup.snap"
    out = ok(
        run("kvapp.ctl", f"--endpoints={old[follower].endpoint}", "snapshot", "save", str(snap))
    )
    assert out == f"Snapshot saved at {snap}\n"
    status = ok(run("kvapp", "snapshot", "status", str(snap), "-w", "json"))
    assert f'"revision":{last.revision}' in status
    assert '"totalKey":50' in status

    new = make_cluster(3, start=False, token="restored-cluster")
    # A damaged or truncated file, or a missing one, is refused with a message; nothing made.
    data = snap.read_bytes()
    damaged = tmp_path / "damaged.snap"
    damaged.write_bytes(data[:200] + bytes([data[200] ^ 0x40]) + data[201:])
    truncated = tmp_path / "truncated.snap"
    truncated.write_bytes(data[: len(data) - 100])
    for bad, message in (
        (damaged, "hash mismatch"),
        (truncated, "hash mismatch"),
        (tmp_path / "missing.snap", "no such file"),
    ):
        done = run("kvapp", *restore_args(bad, new, "m1"))
        assert done.returncode == 1, f"{bad.name}: exit {done.returncode}\n{done.stderr}"
        assert message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert not new["m1"].data_dir.exists(), f"{bad.name}: {new['m1'].data_dir} was created"

    for name in new.members:
        out = ok(run("kvapp", *restore_args(snap, new, name)))
        assert f"into {new[name].data_dir}" in out
    # The target exists now: a second restore refuses to overwrite it.
    again = run("kvapp", *restore_args(snap, new, "m1"))
    assert again.returncode == 1
    assert "not empty; refusing to overwrite" in again.stderr
    assert snap.read_bytes() == data

    new.start()
    new.wait_leader()
    c2 = new.client()
    got = c2.get(b"key/", prefix=True)
    assert [kv.key for kv in got.kvs] == [b"key/%02d" % i for i in range(1, 50)]
    assert all(kv.value == b"value-%d" % i for i, kv in enumerate(got.kvs, 1))
    assert c2.get(b"last").kvs[0].mod_revision == last.revision
    put = c2.put(b"after-restore", b"yes")
    assert put.revision == last.revision + 1
    for name in new.members:
        assert keys_present(new.client(name), b"after-restore") == {b"after-restore"}
    members = c2.member_list()
    assert sorted(m.name for m in members) == ["m1", "m2", "m3"]
    assert {m.peer_urls[0] for m in members} == {m.peer_url for m in new.members.values()}
    assert new.status("m1").header.cluster_id == new.cluster_id != old.cluster_id
    # The old cluster is untouched.
    assert c.get(b"after-restore").kvs == ()


@pytest.mark.timeout(300)
def test_force_new_cluster_from_one_members_data_keeps_every_acknowledged_write(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(3)
    c = cluster.client()
    acked = []
    for i in range(60):
        c.put(b"acked/%02d" % i, b"v")
        acked.append(b"acked/%02d" % i)
    leader = cluster.wait_leader()
    applied = cluster.status(leader).raft_applied_index

    def all_applied() -> bool | None:
        done = all(cluster.status(n).raft_applied_index >= applied for n in cluster.running())
        return True if done else None

    poll(all_applied, timeout=20, what=f"every member to apply index {applied}")
    # Killed, not stopped: the commit index a member recorded may lag what it applied (a
    # commit-only change is not written), and those entries must survive the forcing too.
    for name in list(cluster.running()):
        cluster.kill(name)

    survivor = next(n for n in cluster.members if n != leader)
    m = cluster[survivor]
    m.extra_args = ("--force-new-cluster",)
    cluster.start(survivor)
    assert cluster.wait_leader(among=[survivor]) == survivor
    assert "--force-new-cluster: kept every entry" in m.log_text()
    solo = cluster.client(survivor)
    assert keys_present(solo, b"acked/") == set(acked)
    solo.put(b"after-force", b"alone")
    assert [x.name for x in solo.member_list()] == [survivor]

    # Restarted without the flag (as the log says to), it keeps serving on its own.
    assert cluster.terminate(survivor) == 0
    m.extra_args = ()
    cluster.start(survivor)
    assert cluster.wait_leader(among=[survivor]) == survivor
    assert keys_present(cluster.client(survivor), b"after-force") == {b"after-force"}

    # Another member joins again from an empty directory and catches up.
    joiner = next(n for n in cluster.members if n != survivor)
    shutil.rmtree(cluster[joiner].data_dir)
    cluster.client(survivor).member_add([cluster[joiner].peer_url])
    cluster.start(joiner, initial=[survivor, joiner], state="existing")

    def joined() -> bool | None:
        st = cluster.status(joiner)
        target = cluster.status(survivor).raft_applied_index
        return True if st.leader and st.raft_applied_index >= target else None

    poll(joined, timeout=30, what=f"{joiner} to catch up with {survivor}")
    both = cluster.client(joiner)
    assert keys_present(both, b"acked/") == set(acked)
    both.put(b"after-join", b"two")
    assert sorted(x.name for x in both.member_list()) == sorted([survivor, joiner])
