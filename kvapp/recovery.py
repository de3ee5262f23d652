"""Disaster recovery: ``kvapp snapshot restore|status`` and ``kvapp serve --force-new-cluster``.

Modelled on etcd's tools (docs/kvapp.md, "Disaster recovery", is the operator's guide):

- :func:`restore` (``kvapp snapshot restore FILE``, etcdutl's ``snapshot restore``) builds the
  data directory of one member of a *new* cluster from a snapshot file
  (:mod:`kvapp.snapfile`): a new cluster id from ``--initial-cluster-token``, members from
  ``--initial-cluster``, the file's replicated state. Run it once per member with the same file
  and flags (``--name``, ``--data-dir`` and ``--initial-advertise-peer-urls`` differing); each
  directory then starts with ``kvapp serve`` as if it had been bootstrapped with that state.
  The file is checked whole (hash, framing, the state's own checksums) before anything is
  created; the directory is built aside and renamed into place, so a failure leaves nothing
  behind; an existing non-empty directory is refused; the file is only read.
- :func:`status` (``kvapp snapshot status FILE``) checks a file the same way and reports its
  hash, revision, key count and size.
- :func:`force_new_cluster` (``kvapp serve --force-new-cluster``, etcd's flag of that name)
  rewrites one member's own Raft log so it restarts as the only voter of its cluster, keeping
  every entry of it (etcd drops those past its recorded commit index; see the function).

How a restored directory bootstraps: a fresh member (``kvapp.node.Member``) starts from an empty
Raft store and the initial members' ``ADD_NODE`` entries. A restored one instead holds a Raft
snapshot, at the log index the file's state was taken at (term 1), whose configuration has the
new members as voters and whose data is the member snapshot format ``kvapp.node`` restores
(the new member table and the file's state); its hard state has that index committed. Every
member restored from the same file holds the identical snapshot, so they agree from the start
and elect a leader at term 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import secrets
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from kvapp import requests as kvreq
from kvapp.dedup import Applier
from kvapp.errors import EtcdError, KvappError
from kvapp.kvstate import KvState
from kvapp.mvcc.types import RangeRequest, RangeResponse
from kvapp.node import (
    cluster_id_for,
    encode_member_info,
    member_snapshot_data,
    member_snapshot_members,
    parse_peer_url,
)
from kvapp.service import MemberInfo
from kvapp.snapfile import (
    SnapshotFileError,
    SnapshotFileInfo,
    load_state,
    read_info,
    read_payload,
)
from kvapp.storage import DiskStorageError, RaftStore
from kvapp.storage.fileutil import fsync, fsync_dir
from kvapp.tls import ClientTls, TlsConfigError
from raftlib import (
    ConfChange,
    ConfChangeType,
    ConfChangeV2,
    Config,
    ConfigError,
    ConfState,
    DecodeError,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    RawNode,
    Snapshot,
    SnapshotMetadata,
)
from raftlib.codec import decode_conf_change, encode_conf_change

if TYPE_CHECKING:
    from kvapp.client import AsyncClient

__all__ = [
    "ForcedCluster",
    "RecoveryError",
    "RestoreOptions",
    "Restored",
    "SnapshotStatus",
    "force_new_cluster",
    "parse_restore_args",
    "restore",
    "save_snapshot",
    "snapshot_main",
    "status",
]

logger = logging.getLogger(__name__)

RESTORED_TERM = 1
"""The term of a restored member's snapshot and hard state: a new cluster's first."""


class RecoveryError(KvappError):
    """A recovery step cannot be done; the message says why and what was left untouched."""


# -- reading a snapshot file's state ---------------------------------------------------------------


def _scratch_applier() -> Applier:
    # The member's own Applier settings (kvapp.node.Member uses the defaults), so a file made
    # by a member restores here exactly when it restores there.
    return Applier(KvState(time.monotonic, grace=1.0))


def _load(info: SnapshotFileInfo) -> Applier:
    applier = _scratch_applier()
    load_state(info, applier.restore)
    return applier


def _count_keys(applier: Applier) -> int:
    resp = applier.state.store.apply(RangeRequest(b"\0", b"\0", count_only=True))
    if not isinstance(resp, RangeResponse):  # pragma: no cover - a range answers a range
        raise TypeError(type(resp).__name__)
    return resp.count


@attrs.frozen
class SnapshotStatus:
    """What ``kvapp snapshot status`` reports (etcdutl's fields).

    Attributes:
        hash: the CRC-32 of the whole replicated state (:meth:`kvapp.dedup.Applier.hash`; equal
            on members that applied the same requests).
        revision: the key-value store's revision.
        total_keys: the keys present at that revision.
        total_size: the file's size in bytes.
        raft_index: the log index the state reflects.
        sha256: the file's trailing SHA-256 (hex).
    """

    hash: int
    revision: int
    total_keys: int
    total_size: int
    raft_index: int
    sha256: str


def status(path: str | Path) -> SnapshotStatus:
    """Check a snapshot file whole and describe it; the file is only read.

    Raises:
        SnapshotFileError: the file is missing, unreadable, truncated or damaged.
    """
    info = read_info(path)
    applier = _load(info)
    return SnapshotStatus(
        hash=applier.hash(),
        revision=applier.state.store.revision,
        total_keys=_count_keys(applier),
        total_size=info.size,
        raft_index=info.header.raft_index,
        sha256=info.sha256,
    )


# -- save ----------------------------------------------------------------------------------------


async def save_snapshot(
    client: AsyncClient,
    path: str | Path,
    *,
    endpoint: str,
    linearizable: bool = True,
    idle_timeout: float = 5.0,
) -> SnapshotFileInfo:
    """Stream ``endpoint``'s snapshot into ``path`` (``kvctl snapshot save``), checked and synced.

    Written to ``<path>.part``, fsynced, checked (framing and hash), then renamed over
    ``path``: ``path`` is only ever a whole, verified file. On any failure the partial file
    is removed.

    Args:
        client: a client (its connect timeout applies).
        path: the file to write.
        endpoint: the member to ask.
        linearizable: see :meth:`kvapp.client.AsyncClient.snapshot`.
        idle_timeout: give up when no data arrived for this many seconds.

    Raises:
        RecoveryError: nothing arrived for ``idle_timeout`` s, the file cannot be written, or
            what arrived is not a valid snapshot file.
        EtcdError, Unavailable: from the member or the client.
    """
    target = Path(path)
    part = target.with_name(target.name + ".part")
    loop = asyncio.get_running_loop()
    try:
        with part.open("wb") as f:
            async with asyncio.timeout(idle_timeout) as idle:

                def sink(data: bytes) -> None:
                    f.write(data)
                    idle.reschedule(loop.time() + idle_timeout)

                await client.snapshot(sink, endpoint=endpoint, linearizable=linearizable)
            f.flush()
            fsync(f.fileno())
        info = read_info(part)
        part.replace(target)
        fsync_dir(target.parent.resolve())
    except TimeoutError:
        part.unlink(missing_ok=True)
        raise RecoveryError(
            f"snapshot from {endpoint}: no data for {idle_timeout:g} s; nothing saved"
        ) from None
    except SnapshotFileError as e:
        part.unlink(missing_ok=True)
        raise RecoveryError(f"snapshot from {endpoint} is not valid: {e}") from None
    except OSError as e:
        part.unlink(missing_ok=True)
        raise RecoveryError(f"cannot write {part}: {e.strerror or e}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return attrs.evolve(info, path=target)


# -- restore ---------------------------------------------------------------------------------------


@attrs.frozen
class RestoreOptions:
    """Validated ``kvapp snapshot restore`` options.

    Attributes:
        file: the snapshot file.
        name: the member to build.
        data_dir: its data directory (must not exist, or be empty).
        initial_members: the new cluster's members, with the ids ``kvapp serve`` gives them.
        cluster_token: the new cluster's token.
    """

    file: Path
    name: str
    data_dir: Path
    initial_members: tuple[MemberInfo, ...]
    cluster_token: str

    @property
    def member(self) -> MemberInfo:
        """The member being built."""
        return next(m for m in self.initial_members if m.name == self.name)


@attrs.frozen
class Restored:
    """What :func:`restore` did.

    Attributes:
        data_dir: the directory built.
        member_id: the member's id.
        cluster_id: the new cluster's id.
        raft_index: the index of the Raft snapshot the member starts from.
        revision: the restored store's revision.
        total_keys: the keys it holds.
        hash: :meth:`kvapp.dedup.Applier.hash` of the restored state.
        cleared_alarms: alarms of the old cluster that were cleared (``"NOSPACE member ..."``).
    """

    data_dir: Path
    member_id: int
    cluster_id: int
    raft_index: int
    revision: int
    total_keys: int
    hash: int
    cleared_alarms: tuple[str, ...]


def _restore_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvapp snapshot restore",
        description="Build a member's data directory for a new cluster from a snapshot file.",
    )
    p.add_argument("file", help="the snapshot file (from kvapp snapshot save)")
    p.add_argument("--name", default="default", help="this member's name (default: default)")
    p.add_argument("--data-dir", help="the directory to create (default: ./<name>.kvapp)")
    p.add_argument(
        "--initial-cluster",
        help="name=peer-url,... of the new cluster's members (default: this member alone)",
    )
    p.add_argument(
        "--initial-cluster-token",
        default="kvapp-cluster",
        help="the new cluster's token; use a new one, and the same for every member",
    )
    p.add_argument(
        "--initial-advertise-peer-urls",
        help="this member's peer URLs (default: its entry in --initial-cluster, else "
        "http://127.0.0.1:2380)",
    )
    return p


def parse_restore_args(argv: Sequence[str]) -> RestoreOptions:
    """Parse and validate ``kvapp snapshot restore`` arguments; nothing is touched.

    Raises:
        UsageError: a value is invalid (the message names the flag).
        SystemExit: argparse's own errors, with status 2.
    """
    from kvapp.cli import UsageError, parse_initial_cluster  # noqa: PLC0415 - cli imports us

    a = _restore_parser().parse_args(argv)
    if not a.name or "," in a.name or "=" in a.name:
        raise UsageError(f"--name: {a.name!r} must be non-empty without ',' or '='")
    if not a.initial_cluster_token:
        raise UsageError("--initial-cluster-token must not be empty")
    advertise: tuple[str, ...] = ()
    if a.initial_advertise_peer_urls:
        advertise = tuple(u.strip() for u in a.initial_advertise_peer_urls.split(",") if u.strip())
        if not advertise:
            raise UsageError("--initial-advertise-peer-urls: no URL given")
        for u in advertise:
            try:
                parse_peer_url(u)
            except ValueError as e:
                raise UsageError(f"--initial-advertise-peer-urls: {e}") from None
    cluster_id = cluster_id_for(a.initial_cluster_token)
    default = f"{a.name}={advertise[0] if advertise else 'http://127.0.0.1:2380'}"
    members = parse_initial_cluster(a.initial_cluster or default, cluster_id)
    mine = [m for m in members if m.name == a.name]
    if not mine:
        raise UsageError(
            f"--initial-cluster does not name this member ({a.name!r}); it names "
            + ", ".join(repr(m.name) for m in members)
        )
    if advertise and set(mine[0].peer_urls) != set(advertise):
        raise UsageError(
            f"--initial-cluster gives {a.name!r} the peer URLs {', '.join(mine[0].peer_urls)} "
            f"but --initial-advertise-peer-urls is {', '.join(advertise)}"
        )
    return RestoreOptions(
        file=Path(a.file),
        name=a.name,
        data_dir=Path(a.data_dir or f"{a.name}.kvapp"),
        initial_members=members,
        cluster_token=a.initial_cluster_token,
    )


def _check_target(data_dir: Path) -> None:
    if data_dir.is_symlink() or (data_dir.exists() and not data_dir.is_dir()):
        raise RecoveryError(f"{data_dir} exists and is not a directory; refusing to touch it")
    if data_dir.exists():
        try:
            empty = not any(data_dir.iterdir())
        except OSError as e:
            raise RecoveryError(f"{data_dir}: cannot read: {e.strerror or e}") from None
        if not empty:
            raise RecoveryError(
                f"data directory {data_dir} exists and is not empty; refusing to overwrite it "
                "(restore into a new directory)"
            )


def _clear_alarms(applier: Applier, index: int) -> tuple[tuple[str, ...], int]:
    """Clear the old cluster's alarms (they name its members and disks); returns them."""
    cleared = []
    for alarm in applier.alarms():
        index += 1
        request = kvreq.AlarmRequest(kvreq.AlarmAction.DEACTIVATE, alarm.member_id, alarm.alarm)
        with contextlib.suppress(EtcdError):
            applier.apply(kvreq.Request(0, 0, request), index)
        cleared.append(f"{alarm.alarm.name} member {alarm.member_id:x}")
    return tuple(cleared), index


def restore(opts: RestoreOptions, *, fsync: bool = True) -> Restored:
    """Build ``opts.data_dir`` for member ``opts.name`` of a new cluster from ``opts.file``.

    The file is checked whole first; the directory is built beside the target and renamed into
    place only when complete (the parent directories are created if missing).

    Args:
        opts: what to build.
        fsync: ``False`` skips fsyncs (tests only).

    Raises:
        SnapshotFileError: the file is missing, unreadable, truncated or damaged; nothing was
            created.
        RecoveryError: the target exists and is not an empty directory, or writing it failed;
            nothing was created.
    """
    from kvapp.cli import write_identity  # noqa: PLC0415 - cli imports us

    _check_target(opts.data_dir)
    info = read_info(opts.file)
    applier = _load(info)
    state = read_payload(info)
    index = max(info.header.raft_index, applier.applied_index, 1)
    cleared, index = _clear_alarms(applier, index)
    if cleared:
        state = applier.snapshot_bytes()
    members = tuple(sorted(opts.initial_members, key=lambda m: m.id))
    me = opts.member
    cluster_id = cluster_id_for(opts.cluster_token)
    snapshot = Snapshot(
        data=member_snapshot_data(members, state),
        metadata=SnapshotMetadata(
            conf_state=ConfState(voters=tuple(m.id for m in members)),
            index=index,
            term=RESTORED_TERM,
        ),
    )

    target = opts.data_dir
    parent = target.parent
    tmp = parent / f".{target.name}.restoring-{secrets.token_hex(4)}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        write_identity(tmp, opts.name, me.id, cluster_id, opts.initial_members)
        with RaftStore.open(
            tmp / "raft", cluster_id=cluster_id, member_id=me.id, fsync=fsync
        ) as store:
            store.apply_snapshot(snapshot)
            store.save(HardState(term=RESTORED_TERM, vote=0, commit=index))
        _check_target(target)
        tmp.replace(target)
        if fsync:
            fsync_dir(parent)
    except (OSError, DiskStorageError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RecoveryError(f"cannot create {target}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "restored %s into %s: member %s (%x) of cluster %x, snapshot index %d, revision %d",
        info.path,
        target,
        opts.name,
        me.id,
        cluster_id,
        index,
        applier.state.store.revision,
    )
    return Restored(
        data_dir=target,
        member_id=me.id,
        cluster_id=cluster_id,
        raft_index=index,
        revision=applier.state.store.revision,
        total_keys=_count_keys(applier),
        hash=applier.hash(),
        cleared_alarms=cleared,
    )


# -- force-new-cluster -----------------------------------------------------------------------------


@attrs.frozen
class ForcedCluster:
    """What :func:`force_new_cluster` did to a member's log.

    Attributes:
        snapshot_index: the index of the member's snapshot (kept).
        commit_index: the commit index the member had recorded.
        kept_uncommitted: how many entries after it were kept (and are now committed).
        removed: the members removed from the configuration.
        added_self: whether the member had to be added as a voter (it was not one).
        last_index: the log's last index now; every entry up to it is committed.
    """

    snapshot_index: int
    commit_index: int
    kept_uncommitted: int
    removed: tuple[int, ...]
    added_self: bool
    last_index: int

    @property
    def changed(self) -> bool:
        """Whether the log was rewritten at all."""
        return bool(self.kept_uncommitted or self.removed or self.added_self)


def _snapshot_member_ids(data: bytes) -> set[int]:
    try:
        return {m.id for m in member_snapshot_members(data)}
    except KvappError as e:
        raise RecoveryError(f"the member's snapshot is unreadable: {e}") from e


def force_new_cluster(
    store: RaftStore, me: MemberInfo, *, known_members: Iterable[int] = ()
) -> ForcedCluster:
    """Rewrite ``store`` so its member restarts as the only voter of its cluster.

    etcd's ``--force-new-cluster``, except that every entry in the member's log is kept and
    committed, where etcd drops those after its recorded commit index. kvapp's recorded commit
    index may lag: a Ready that only moves it is not written (see ``RaftStore.save_ready``), so
    after a crash entries beyond it may have been committed and acknowledged. Keeping them never
    loses an acknowledged write; at worst it applies a write whose client was told its outcome
    is unknown, which that answer allows. Then configuration-change entries are appended and
    committed that leave any joint configuration, make ``me`` a voter if it is a learner, and
    remove every other member (of the Raft configuration, and of the member table
    ``kvapp.node.Member`` keeps: the snapshot's, or ``known_members`` without one, changed by the
    committed configuration changes). When the member starts, it applies them like any committed
    entries, so its Raft configuration and its member table both end with itself alone.
    Running it again on a store already in that shape changes nothing.

    Args:
        store: the member's open store.
        me: the member (its ``ADD_NODE`` context, if it must be added).
        known_members: the cluster's initial members (the member table before any snapshot).

    Returns:
        What was done.

    Raises:
        RecoveryError: the member is not in its configuration (it was removed, or never
            joined), or its configuration changes or snapshot are unreadable; nothing was
            written.
        DiskStorageError: writing failed (the store's own errors).
    """
    hard, conf = store.initial_state()
    snap = store.snapshot()
    snap_index = snap.metadata.index
    recorded = max(hard.commit, snap_index)
    last = store.last_index()
    commit = last  # every durable entry is kept (see above)
    # The configuration as of the commit index: the snapshot's, then each committed change
    # applied as raftlib's Node applies them (refused ones skipped).
    scratch = RawNode(Config(id=me.id, storage=MemoryStorage(conf), rng=random.Random(0)))
    cs = conf
    # The member table as kvapp.node.Member will have it at the commit index: the snapshot's
    # (or the initial members'), changed by each applied one-node configuration change.
    table = _snapshot_member_ids(snap.data) if snap.data else set(known_members)
    entries = store.entries(snap_index + 1, commit + 1) if commit > snap_index else []
    for e in entries:
        if e.type == EntryType.NORMAL:
            continue
        try:
            cc = decode_conf_change(e.type, e.data) if e.data else ConfChangeV2()
        except DecodeError as exc:
            raise RecoveryError(
                f"unreadable configuration change at index {e.index}: {exc}"
            ) from exc
        try:
            cs = scratch.apply_conf_change(cc)
        except ConfigError:
            continue
        if isinstance(cc, ConfChange) and cc.type == ConfChangeType.REMOVE_NODE:
            table.discard(cc.node_id)
        elif isinstance(cc, ConfChange) and cc.type != ConfChangeType.UPDATE_NODE:
            table.add(cc.node_id)

    if me.id not in {*cs.voters, *cs.learners, *cs.voters_outgoing, *cs.learners_next}:
        raise RecoveryError(
            f"member {me.id:x} is not in its cluster's configuration as of its last committed "
            f"entry ({commit}): it was removed, or never finished joining; its data cannot be "
            "forced into a new cluster (use another member's data directory, or restore a "
            "snapshot file)"
        )
    changes: list[ConfChange | ConfChangeV2] = []

    def plan(cc: ConfChange | ConfChangeV2) -> ConfState:
        try:
            new_cs = scratch.apply_conf_change(cc)
        except ConfigError as exc:  # pragma: no cover - the plan keeps this member a voter
            raise RecoveryError(f"cannot make a one-member configuration: {exc}") from exc
        changes.append(cc)
        return new_cs

    others = table | {*cs.voters, *cs.learners, *cs.voters_outgoing, *cs.learners_next}
    others.discard(me.id)
    if cs.voters_outgoing:
        cs = plan(ConfChangeV2())  # leave the joint configuration first
    added_self = me.id not in cs.voters
    if added_self:
        cs = plan(ConfChange(ConfChangeType.ADD_NODE, me.id, encode_member_info(me)))
    removed = tuple(sorted(others))
    for node in removed:
        cs = plan(ConfChange(ConfChangeType.REMOVE_NODE, node))

    beyond = last - recorded
    if not changes and not beyond:
        return ForcedCluster(snap_index, recorded, 0, (), False, last)
    new_entries = [
        Entry(
            term=hard.term,
            index=commit + 1 + i,
            type=EntryType.CONF_CHANGE if isinstance(cc, ConfChange) else EntryType.CONF_CHANGE_V2,
            data=encode_conf_change(cc),
        )
        for i, cc in enumerate(changes)
    ]
    if not new_entries:  # only the commit index moves (a new leader commits the tail anyway)
        new_entries = [Entry(term=hard.term, index=commit + 1)]
    new_commit = new_entries[-1].index
    store.save(HardState(term=hard.term, vote=hard.vote, commit=new_commit), new_entries)
    return ForcedCluster(
        snapshot_index=snap_index,
        commit_index=recorded,
        kept_uncommitted=beyond,
        removed=removed,
        added_self=added_self,
        last_index=new_commit,
    )


# -- the command line ------------------------------------------------------------------------------


def _human_bytes(n: int) -> str:
    """go-humanize's ``Bytes`` (SI units), as etcdutl prints sizes: ``2.1 MB``."""
    if n < 10:
        return f"{n} B"
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    e = 0
    value = float(n)
    while value >= 1000 and e < len(units) - 1:
        value /= 1000
        e += 1
    value = int(value * 10 + 0.5) / 10
    return f"{value:.0f} {units[e]}" if value >= 10 else f"{value:.1f} {units[e]}"


def _status_main(argv: Sequence[str]) -> int:
    from kvapp.ctl.output import render_table  # noqa: PLC0415

    p = argparse.ArgumentParser(
        prog="kvapp snapshot status", description="Check a snapshot file and describe it."
    )
    p.add_argument("file")
    p.add_argument("-w", "--write-out", choices=("simple", "json", "table"), default="simple")
    a = p.parse_args(argv)
    try:
        st = status(a.file)
    except SnapshotFileError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    if a.write_out == "json":
        print(
            json.dumps(
                {
                    "hash": st.hash,
                    "revision": st.revision,
                    "totalKey": st.total_keys,
                    "totalSize": st.total_size,
                },
                separators=(",", ":"),
            )
        )
    else:
        cells = [f"{st.hash:x}", str(st.revision), str(st.total_keys), _human_bytes(st.total_size)]
        if a.write_out == "table":
            print(
                "\n".join(render_table(["hash", "revision", "total keys", "total size"], [cells]))
            )
        else:
            print(", ".join(cells))
    return 0


def _restore_main(argv: Sequence[str]) -> int:
    from kvapp.cli import UsageError  # noqa: PLC0415 - cli imports us

    try:
        opts = parse_restore_args(argv)
    except UsageError as e:
        print(f"kvapp snapshot restore: error: {e}", file=sys.stderr)
        return 2
    try:
        done = restore(opts)
    except (SnapshotFileError, RecoveryError) as e:
        print(f"kvapp snapshot restore: error: {e}", file=sys.stderr)
        return 1
    me = opts.member
    print(
        f"restored {opts.file} (revision {done.revision}, {done.total_keys} keys, "
        f"hash {done.hash:x}) into {done.data_dir}"
    )
    print(
        f"member {opts.name} ({done.member_id:x}) of the new cluster {done.cluster_id:x}; "
        f"members: {', '.join(m.name for m in opts.initial_members)}"
    )
    for alarm in done.cleared_alarms:
        print(f"cleared the old cluster's alarm: {alarm}")
    initial = ",".join(f"{m.name}={u}" for m in opts.initial_members for u in m.peer_urls)
    print("start it with:")
    print(
        f"kvapp serve --name {opts.name} --data-dir {done.data_dir} "
        f"--listen-peer-urls {','.join(me.peer_urls)} --listen-client-urls <client-url> "
        f"--initial-cluster {initial} --initial-cluster-token {opts.cluster_token}"
    )
    return 0


def _save_main(argv: Sequence[str]) -> int:
    from kvapp.client import AsyncClient  # noqa: PLC0415 - only when saving
    from kvapp.client.native import parse_endpoint  # noqa: PLC0415

    p = argparse.ArgumentParser(
        prog="kvapp snapshot save",
        description="Stream a snapshot of a running member's state into a file.",
    )
    p.add_argument("file")
    p.add_argument("--endpoints", default="127.0.0.1:2379", help="the one member to ask")
    p.add_argument(
        "--consistency",
        choices=("l", "s"),
        default="l",
        help="l: every write acknowledged before is in it (needs a leader); s: the member's "
        "own state (works without a quorum)",
    )
    p.add_argument("--dial-timeout", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument(
        "--command-timeout", type=float, default=5.0, help="seconds without data (default 5)"
    )
    p.add_argument("--cacert", help="verify the member's certificate with this CA bundle (PEM)")
    p.add_argument("--cert", help="present this client certificate (PEM)")
    p.add_argument("--key", help="the client certificate's private key (PEM)")
    a = p.parse_args(argv)
    endpoints = [e.strip() for e in a.endpoints.split(",") if e.strip()]
    if len(endpoints) != 1:
        print(
            "kvapp snapshot save: error: a snapshot is requested from one member: give "
            f"exactly one endpoint (got {a.endpoints!r})",
            file=sys.stderr,
        )
        return 2
    try:
        parse_endpoint(endpoints[0])
    except ValueError as e:
        print(f"kvapp snapshot save: error: --endpoints: {e}", file=sys.stderr)
        return 2
    tls = None
    if a.cacert or a.cert or a.key or endpoints[0].startswith("https://"):
        tls = ClientTls(a.cacert, a.cert, a.key)
        try:
            tls.context()
        except TlsConfigError as e:
            print(f"kvapp snapshot save: error: {e}", file=sys.stderr)
            return 2

    async def save() -> SnapshotFileInfo:
        async with AsyncClient(endpoints, connect_timeout=a.dial_timeout, tls=tls) as client:
            return await save_snapshot(
                client,
                a.file,
                endpoint=endpoints[0],
                linearizable=a.consistency == "l",
                idle_timeout=a.command_timeout,
            )

    try:
        info = asyncio.run(save())
    except KvappError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"Snapshot saved at {info.path}")
    return 0


def snapshot_main(argv: Sequence[str]) -> int:
    """``kvapp snapshot {save,restore,status}``."""
    args = list(argv)
    commands = {"save": _save_main, "restore": _restore_main, "status": _status_main}
    if not args or args[0] not in commands:
        print(
            "usage: kvapp snapshot {save,restore,status} ...\n"
            "  save FILE --endpoints HOST:PORT [--cacert CA --cert CERT --key KEY]\n"
            "           stream a snapshot of a running member's state into FILE\n"
            "  restore FILE --name N --initial-cluster ... --initial-cluster-token T "
            "--data-dir D\n"
            "           build a member's data directory for a new cluster from a snapshot file\n"
            "  status FILE [-w simple|json|table]\n"
            "           check a snapshot file; print its hash, revision, keys and size",
            file=sys.stderr,
        )
        return 2
    return commands[args[0]](args[1:])
