"""Command line: ``kvapp serve`` (one member), ``kvapp cluster`` (a local cluster) and ``kvctl``.

Flags take etcd's names where they mean the same (``--name --data-dir --listen-peer-urls
--listen-client-urls --initial-cluster --initial-cluster-state --initial-cluster-token
--snapshot-count --heartbeat-interval --election-timeout --max-request-bytes``), so an etcd
operator's muscle memory works. Every flag is checked before anything is created on disk: a
typo gets a clear message and exit status 2, never a half-made data directory.

The data directory holds ``member.json`` (this member's name, id, cluster id and the initial
member list, written once when the member is created) beside the Raft store. On restart the
file is authoritative: ``--initial-cluster`` is then ignored, as etcd ignores it, and a data
directory of another member or cluster is refused with a message saying whose it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from kvapp import gcpolicy
from kvapp.diskspace import DEFAULT_MIN_FREE_BYTES, min_free_bytes_for
from kvapp.memtrim import release_large_blocks
from kvapp.node import (
    MAX_REQUEST_BYTES,
    Member,
    MemberConfig,
    cluster_id_for,
    member_id_for,
    parse_peer_url,
)
from kvapp.service import MemberInfo
from kvapp.tls import TlsConfigError, TlsInfo, add_serve_flags, tls_from_flags

if TYPE_CHECKING:
    from kvapp.metrics import MemberMetrics
    from kvapp.server.etcd import EtcdGrpcServer
    from kvapp.server.etcd.gateway_http import GatewayHttpServer
    from kvapp.storage import RaftStore

__all__ = [
    "ServeOptions",
    "main",
    "parse_initial_cluster",
    "parse_serve_args",
    "write_identity",
]

logger = logging.getLogger("kvapp")

_META = "member.json"
_META_FORMAT = "kvapp.member"
_META_VERSION = 1


class UsageError(Exception):
    """A command-line value is invalid; the message says which and why."""


class StartupError(Exception):
    """The member cannot start (e.g. an address is taken); the message says why. Exit status 1."""


async def _listen(
    what: str, address: tuple[str, int], start: Callable[[], Awaitable[None]]
) -> None:
    """Run a listener's ``start``, turning a bind failure into a StartupError naming it."""
    try:
        await start()
    except OSError as e:
        raise StartupError(
            f"cannot listen for {what} on {address[0]}:{address[1]}: {e.strerror or e}"
        ) from None


@attrs.frozen
class ServeOptions:
    """Validated ``kvapp serve`` options."""

    name: str
    data_dir: Path
    listen_peer: tuple[str, int]
    listen_client: tuple[str, int]
    advertise_client_urls: tuple[str, ...]
    initial_members: tuple[MemberInfo, ...]
    new_cluster: bool
    cluster_token: str
    snapshot_count: int
    tick_interval: float
    election_tick: int
    max_request_bytes: int
    fsync: bool
    listen_metrics: tuple[str, int] | None = None
    force_new_cluster: bool = False
    grpc_urls: tuple[str, ...] = ()
    client_http_urls: tuple[str, ...] = ()
    min_free_disk_bytes: int = DEFAULT_MIN_FREE_BYTES
    client_tls: TlsInfo | None = None
    peer_tls: TlsInfo | None = None
    progress_notify_interval: float = 600.0
    auto_promote: bool = True


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION_UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_UNIT |= {"\u00b5s": 1e-6, "\u03bcs": 1e-6}  # micro sign and Greek mu, as Go


def parse_duration(value: str, flag: str) -> float:
    """Seconds in a Go duration (``10m``, ``1m30s``, ``500ms``), as etcd's flags take them.

    Raises:
        UsageError: not a duration, or not positive.
    """
    body = value[1:] if value[:1] in ("-", "+") else value  # Go takes a sign: -5s is negative
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            break
        total += float(m.group(1)) * _DURATION_UNIT[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise UsageError(f"{flag}: {value!r} is not a duration (such as 10m, 1m30s, 500ms)")
    if total <= 0 or value.startswith("-"):
        raise UsageError(f"{flag} must be positive, not {value}")
    return total


def _url_list(value: str, flag: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in value.split(",") if u.strip())
    if not urls:
        raise UsageError(f"{flag}: no URL given")
    for u in urls:
        try:
            parse_peer_url(u)
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from None
    return urls


def parse_initial_cluster(value: str, cluster_id: int) -> tuple[MemberInfo, ...]:
    """``--initial-cluster``'s members, with the ids ``kvapp serve`` gives them.

    Raises:
        UsageError: the value is malformed, names no member, or gives one URL to two members.
    """
    members: dict[str, list[str]] = {}
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise UsageError(
                f"--initial-cluster: {item!r} is not name=http://host:port "
                "(example: m1=http://127.0.0.1:2380,m2=http://127.0.0.1:2382)"
            )
        try:
            parse_peer_url(url)
        except ValueError as e:
            raise UsageError(f"--initial-cluster: {e}") from None
        members.setdefault(name, []).append(url)
    if not members:
        raise UsageError("--initial-cluster: no member given")
    seen: dict[str, str] = {}
    for name, urls in members.items():
        for u in urls:
            if u in seen:
                raise UsageError(f"--initial-cluster: {u} is given for both {seen[u]} and {name}")
            seen[u] = name
    return tuple(
        MemberInfo(member_id_for(urls, cluster_id), name, tuple(urls))
        for name, urls in members.items()
    )


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvapp serve", description="Run one kvapp member.")
    p.add_argument("--name", default="default", help="this member's name (default: default)")
    p.add_argument("--data-dir", help="data directory (default: ./<name>.kvapp)")
    p.add_argument("--listen-peer-urls", default="http://127.0.0.1:2380")
    p.add_argument("--listen-client-urls", default="http://127.0.0.1:2379")
    p.add_argument(
        "--advertise-client-urls",
        help="client URLs published to the cluster (default: --listen-client-urls)",
    )
    p.add_argument(
        "--initial-cluster",
        help="name=peer-url,... of the starting members (default: this member alone)",
    )
    p.add_argument("--initial-cluster-state", choices=("new", "existing"), default="new")
    p.add_argument("--initial-cluster-token", default="kvapp-cluster")
    p.add_argument(
        "--snapshot-count",
        type=int,
        default=100_000,
        help="applied requests (or key versions written) between snapshots and log compaction",
    )
    p.add_argument("--heartbeat-interval", type=int, default=100, help="milliseconds")
    p.add_argument("--election-timeout", type=int, default=1000, help="milliseconds")
    p.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES)
    p.add_argument(
        "--min-free-disk-bytes",
        type=int,
        help="raise etcd's NOSPACE alarm (puts and lease grants refused cluster-wide; reads, "
        "deletes and compaction still served) when the data directory's file system has fewer "
        "bytes free, and clear it once 64 MiB more are free again (default: two 64 MiB WAL "
        "segments plus --max-request-bytes; 0: only when a write fails for lack of space)",
    )
    p.add_argument(
        "--unsafe-no-fsync",
        action="store_true",
        help="skip fsync (tests and benchmarks only: a power loss can lose acknowledged writes)",
    )
    p.add_argument(
        "--listen-metrics-urls",
        help="serve /health and /metrics (Prometheus) on this http://host:port",
    )
    p.add_argument(
        "--force-new-cluster",
        action="store_true",
        help="disaster recovery: restart this member's existing data as a one-member cluster "
        "(committed data kept, every other member removed); run once, then drop the flag",
    )
    p.add_argument(
        "--listen-grpc-urls",
        help="serve etcd's v3 gRPC API (etcdctl, etcd clients) on this http://host:port "
        "(default: off); published in the member list for etcd clients",
    )
    p.add_argument(
        "--listen-client-http-urls",
        help="serve etcd's HTTP/JSON gateway (curl, etcd3gw: POST /v3/kv/range ...) on this "
        "http://host:port (default: off)",
    )
    p.add_argument(
        "--experimental-watch-progress-notify-interval",
        default="10m",
        help="how often idle watchers that asked for progress notifications get one "
        "(a Go duration, default 10m)",
    )
    p.add_argument(
        "--auto-promote-learners",
        choices=("true", "false"),
        default="true",
        help="promote a learner to voter once it has caught up (default: true; false: as "
        "etcd, a learner waits for 'member promote')",
    )
    add_serve_flags(p)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def parse_serve_args(argv: Sequence[str]) -> tuple[ServeOptions, str]:
    """Parse and validate ``kvapp serve`` arguments; returns the options and the log level.

    Raises:
        UsageError: a value is invalid (the message names the flag).
        SystemExit: argparse's own errors (unknown flag, bad type), with status 2.
    """
    a = _serve_parser().parse_args(argv)
    if not a.name or "," in a.name or "=" in a.name:
        raise UsageError(f"--name: {a.name!r} must be non-empty without ',' or '='")
    peer_urls = _url_list(a.listen_peer_urls, "--listen-peer-urls")
    client_urls = _url_list(a.listen_client_urls, "--listen-client-urls")
    advertise = (
        _url_list(a.advertise_client_urls, "--advertise-client-urls")
        if a.advertise_client_urls
        else client_urls
    )
    if a.heartbeat_interval <= 0:
        raise UsageError("--heartbeat-interval must be positive (milliseconds)")
    if a.election_timeout < 5 * a.heartbeat_interval:
        raise UsageError(
            "--election-timeout must be at least 5 times --heartbeat-interval "
            f"(got {a.election_timeout} and {a.heartbeat_interval})"
        )
    if a.election_timeout > 50_000:
        raise UsageError("--election-timeout must be at most 50000 milliseconds")
    if a.snapshot_count < 1:
        raise UsageError("--snapshot-count must be positive")
    if not 1024 <= a.max_request_bytes <= 64 * 1024 * 1024:
        raise UsageError("--max-request-bytes must be between 1024 and 67108864")
    if a.min_free_disk_bytes is not None and a.min_free_disk_bytes < 0:
        raise UsageError("--min-free-disk-bytes must not be negative")
    if not a.initial_cluster_token:
        raise UsageError("--initial-cluster-token must not be empty")
    cluster_id = cluster_id_for(a.initial_cluster_token)
    initial = parse_initial_cluster(a.initial_cluster or f"{a.name}={peer_urls[0]}", cluster_id)
    mine = [m for m in initial if m.name == a.name]
    if not mine:
        raise UsageError(
            f"--initial-cluster does not name this member ({a.name!r}); it names "
            + ", ".join(repr(m.name) for m in initial)
        )
    if set(mine[0].peer_urls) != set(peer_urls):
        raise UsageError(
            f"--initial-cluster gives {a.name!r} the peer URLs {', '.join(mine[0].peer_urls)} "
            f"but --listen-peer-urls is {', '.join(peer_urls)}"
        )
    client_tls, peer_tls = _tls(a, client_urls, peer_urls, initial)
    opts = ServeOptions(
        name=a.name,
        data_dir=Path(a.data_dir or f"{a.name}.kvapp"),
        listen_peer=parse_peer_url(peer_urls[0]),
        listen_client=parse_peer_url(client_urls[0]),
        advertise_client_urls=advertise,
        initial_members=initial,
        new_cluster=a.initial_cluster_state == "new",
        cluster_token=a.initial_cluster_token,
        snapshot_count=a.snapshot_count,
        tick_interval=a.heartbeat_interval / 1000,
        election_tick=max(1, round(a.election_timeout / a.heartbeat_interval)),
        max_request_bytes=a.max_request_bytes,
        min_free_disk_bytes=(
            min_free_bytes_for(a.max_request_bytes)
            if a.min_free_disk_bytes is None
            else a.min_free_disk_bytes
        ),
        fsync=not a.unsafe_no_fsync,
        listen_metrics=(
            parse_peer_url(_url_list(a.listen_metrics_urls, "--listen-metrics-urls")[0])
            if a.listen_metrics_urls
            else None
        ),
        force_new_cluster=a.force_new_cluster,
        grpc_urls=(
            _url_list(a.listen_grpc_urls, "--listen-grpc-urls")[:1] if a.listen_grpc_urls else ()
        ),
        client_http_urls=(
            _url_list(a.listen_client_http_urls, "--listen-client-http-urls")[:1]
            if a.listen_client_http_urls
            else ()
        ),
        client_tls=client_tls,
        peer_tls=peer_tls,
        progress_notify_interval=parse_duration(
            a.experimental_watch_progress_notify_interval,
            "--experimental-watch-progress-notify-interval",
        ),
        auto_promote=a.auto_promote_learners == "true",
    )
    return opts, a.log_level


def _tls(
    a: argparse.Namespace,
    client_urls: tuple[str, ...],
    peer_urls: tuple[str, ...],
    initial: tuple[MemberInfo, ...],
) -> tuple[TlsInfo | None, TlsInfo | None]:
    """The client-facing and peer TLS from etcd's flags, checked with the URLs (kvapp.tls)."""
    clients = {"--listen-client-urls": client_urls}
    for flag, value in (
        ("--listen-grpc-urls", a.listen_grpc_urls),
        ("--listen-client-http-urls", a.listen_client_http_urls),
    ):
        if value:
            clients[flag] = _url_list(value, flag)
    peers = {
        "--listen-peer-urls": peer_urls,
        "--initial-cluster": tuple(u for m in initial for u in m.peer_urls),
    }
    try:
        return tls_from_flags(a, peer=False, urls=clients), tls_from_flags(a, peer=True, urls=peers)
    except TlsConfigError as e:
        raise UsageError(str(e)) from None


# -- the data directory's identity file --


def _member_to_json(m: MemberInfo) -> dict[str, object]:
    return {"id": f"{m.id:x}", "name": m.name, "peer_urls": list(m.peer_urls)}


def _read_meta(path: Path) -> dict[str, object]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable member file: {e}") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != _META_FORMAT
        or meta.get("version") != _META_VERSION
    ):
        raise UsageError(f"{path}: not a kvapp member file of version {_META_VERSION}")
    return meta


def load_or_create_identity(opts: ServeOptions) -> tuple[int, int, tuple[MemberInfo, ...]]:
    """This member's (id, cluster id, initial members), from the data directory if it has them.

    Raises:
        UsageError: the data directory belongs to another member or cluster, or its member file
            is damaged.
    """
    path = opts.data_dir / _META
    cluster_id = cluster_id_for(opts.cluster_token)
    if path.exists():
        meta = _read_meta(path)
        try:
            name = str(meta["name"])
            member_id = int(str(meta["member_id"]), 16)
            stored_cluster = int(str(meta["cluster_id"]), 16)
            raw_members = meta["initial_members"]
            if not isinstance(raw_members, list):
                raise TypeError("initial_members")
            members = tuple(
                MemberInfo(int(m["id"], 16), str(m["name"]), tuple(m["peer_urls"]))
                for m in raw_members
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{path}: damaged member file ({e})") from None
        if name != opts.name:
            raise UsageError(
                f"{opts.data_dir} is the data directory of member {name!r}, not {opts.name!r}"
            )
        if stored_cluster != cluster_id:
            raise UsageError(
                f"{opts.data_dir} belongs to cluster {stored_cluster:x}; "
                f"--initial-cluster-token gives cluster {cluster_id:x}"
            )
        return member_id, stored_cluster, members
    me = next(m for m in opts.initial_members if m.name == opts.name)
    if opts.data_dir.exists() and any(opts.data_dir.iterdir()):
        raise UsageError(
            f"{opts.data_dir} is not empty and has no {_META}: refusing to use it as a data "
            "directory"
        )
    if opts.force_new_cluster:
        raise UsageError(
            f"--force-new-cluster: {opts.data_dir} holds no member data to recover from "
            "(it restarts an existing member's data as a one-member cluster)"
        )
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    write_identity(opts.data_dir, opts.name, me.id, cluster_id, opts.initial_members)
    return me.id, cluster_id, opts.initial_members


def write_identity(
    data_dir: Path,
    name: str,
    member_id: int,
    cluster_id: int,
    initial_members: Sequence[MemberInfo],
) -> None:
    """Write ``member.json`` into the existing directory ``data_dir``, durably."""
    path = data_dir / _META
    meta_out = {
        "format": _META_FORMAT,
        "version": _META_VERSION,
        "name": name,
        "member_id": f"{member_id:x}",
        "cluster_id": f"{cluster_id:x}",
        "initial_members": [_member_to_json(m) for m in initial_members],
    }
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        json.dump(meta_out, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    dfd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- running a member --


async def serve(opts: ServeOptions, *, ready: asyncio.Event | None = None) -> int:
    """Run one member until SIGINT/SIGTERM; returns the process exit status."""
    from kvapp.metrics import MemberMetrics, MeteredService, TimedStorage, health, render  # noqa: PLC0415
    from kvapp.server.http import HttpServer  # noqa: PLC0415
    from kvapp.server.native import NativeServer  # noqa: PLC0415 - heavy, only when serving
    from kvapp.storage import DiskStorageError, RaftStore, StoreLockedError  # noqa: PLC0415
    from kvapp.storage.fileutil import free_bytes  # noqa: PLC0415
    from kvapp.transport import TcpTransport  # noqa: PLC0415
    from kvapp.transport.spool import SnapshotSpool  # noqa: PLC0415

    member_id, cluster_id, initial = load_or_create_identity(opts)
    release_large_blocks()
    try:
        store = RaftStore.open(
            opts.data_dir / "raft",
            cluster_id=cluster_id,
            member_id=member_id,
            fsync=opts.fsync,
            snapshot_in_file=True,  # the Member reads it from there (kvapp.storage.snapdata)
        )
    except StoreLockedError:
        raise UsageError(
            f"{opts.data_dir} is in use by another process: is member {opts.name!r} already "
            "running?"
        ) from None
    except DiskStorageError as e:
        raise StartupError(f"cannot open the Raft store in {opts.data_dir}: {e}") from None
    if opts.force_new_cluster:
        try:
            _force_new_cluster(opts, store, member_id, cluster_id, initial)
        except BaseException:
            store.close()
            raise
    member: Member | None = None

    def on_message(m: object) -> None:
        if member is not None:
            member.receive(m)  # type: ignore[arg-type]

    def on_unreachable(peer: int) -> None:
        if member is not None:
            member.report_unreachable(peer)

    def on_snapshot_status(peer: int, ok: bool) -> None:
        if member is not None:
            member.report_snapshot(peer, success=ok)

    def on_removed(peer: int, index: int) -> None:
        if member is not None:
            member.report_removed(peer, index)

    peer_tls = opts.peer_tls
    spool = SnapshotSpool(opts.data_dir / "spool")
    if spool.clear():
        logger.info("removed snapshot spool files an earlier run left unfinished")
    transport = TcpTransport(
        member_id,
        cluster_id,
        listen=opts.listen_peer,
        on_message=on_message,
        on_unreachable=on_unreachable,
        on_snapshot_status=on_snapshot_status,
        on_removed=on_removed,
        server_ssl=peer_tls.server_context() if peer_tls else None,
        client_ssl=peer_tls.client_context() if peer_tls else None,
        snapshot_sink=spool,
    )
    config = MemberConfig(
        name=opts.name,
        member_id=member_id,
        cluster_id=cluster_id,
        initial_members=initial,
        tick_interval=opts.tick_interval,
        election_tick=opts.election_tick,
        snapshot_count=opts.snapshot_count,
        keep_entries=min(5000, opts.snapshot_count),
        max_request_bytes=opts.max_request_bytes,
        min_free_disk_bytes=opts.min_free_disk_bytes,
        new_cluster=opts.new_cluster,
        client_urls=opts.advertise_client_urls + _published_grpc_urls(opts),
        auto_promote=opts.auto_promote,
        progress_notify_interval=opts.progress_notify_interval,
    )
    hist = MemberMetrics.fsync_histogram()
    raft_dir = store.directory
    member = Member(
        config, TimedStorage(store, hist), transport, disk_free=lambda: free_bytes(raft_dir)
    )
    metrics = MemberMetrics(member, fsync=hist)
    server = NativeServer(
        MeteredService(member, metrics),
        host=opts.listen_client[0],
        port=opts.listen_client[1],
        max_request_bytes=opts.max_request_bytes,
        tls=opts.client_tls.server_context() if opts.client_tls else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    http = (
        HttpServer(
            health=lambda: health(member),
            metrics=lambda: render(metrics),
            host=opts.listen_metrics[0],
            port=opts.listen_metrics[1],
        )
        if opts.listen_metrics is not None
        else None
    )
    grpc_server = _grpc_server(opts, metrics, member)
    gateway = _gateway_server(opts, metrics, member)
    status = 0
    try:
        await _listen("peers", opts.listen_peer, transport.start)
        await member.start()
        metrics.start()
        await _listen("clients", opts.listen_client, server.start)
        if http is not None and opts.listen_metrics is not None:
            await _listen("metrics", opts.listen_metrics, http.start)
        if grpc_server is not None:
            grpc_at = parse_peer_url(opts.grpc_urls[0])
            await _listen("etcd gRPC clients", grpc_at, grpc_server.start)
        if gateway is not None:
            http_at = parse_peer_url(opts.client_http_urls[0])
            await _listen("etcd JSON gateway clients", http_at, gateway.start)
        logger.info(
            "%s: member %x of cluster %x serving clients on %s:%d, peers on %s:%d",
            opts.name,
            member_id,
            cluster_id,
            *opts.listen_client,
            *opts.listen_peer,
        )
        if ready is not None:
            ready.set()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
            if member.failure is not None:
                logger.error("%s: stopping: %s", opts.name, member.failure)
                status = 1
                break
            if member.removed:
                logger.warning("%s: removed from the cluster; exiting", opts.name)
                break
    finally:
        if http is not None:
            await http.stop()
        await metrics.stop()
        if gateway is not None:
            await gateway.stop()
        if grpc_server is not None:
            await grpc_server.stop()
        await server.stop()
        if member.failure is None:
            await member.transfer_leadership_away()
        await transport.stop()
        await member.stop(transfer=False)
        with contextlib.suppress(Exception):
            store.close()
    return status


def _force_new_cluster(
    opts: ServeOptions,
    store: RaftStore,
    member_id: int,
    cluster_id: int,
    initial: tuple[MemberInfo, ...],
) -> None:
    """``--force-new-cluster``: make this member's log that of a one-member cluster."""
    from kvapp.recovery import RecoveryError, force_new_cluster  # noqa: PLC0415
    from kvapp.storage import DiskStorageError  # noqa: PLC0415

    mine = next((m for m in initial if m.id == member_id), None)
    me = MemberInfo(
        member_id,
        opts.name,
        mine.peer_urls if mine else (f"http://{opts.listen_peer[0]}:{opts.listen_peer[1]}",),
        opts.advertise_client_urls,
    )
    try:
        forced = force_new_cluster(store, me, known_members=[m.id for m in initial])
    except (RecoveryError, DiskStorageError) as e:
        raise StartupError(f"--force-new-cluster: {e}") from None
    if not forced.changed:
        logger.warning(
            "%s: --force-new-cluster: this member is already the only voter and its whole log is "
            "committed; nothing changed. Remove the flag before the next restart.",
            opts.name,
        )
        return
    logger.warning(
        "%s: --force-new-cluster: kept every entry, up to the recorded commit index %d "
        "(snapshot at %d) and %d more after it, now committed; removed member(s) %s%s; this "
        "member is now the only voter of cluster %x. Remove --force-new-cluster before the "
        "next restart (it would remove members added meanwhile); add members back with kvctl "
        "member add.",
        opts.name,
        forced.commit_index,
        forced.snapshot_index,
        forced.kept_uncommitted,
        ", ".join(f"{n:x}" for n in forced.removed) or "(none)",
        ", made itself a voter" if forced.added_self else "",
        cluster_id,
    )


def _published_grpc_urls(opts: ServeOptions) -> tuple[str, ...]:
    """The gRPC URLs, marked, to publish beside the native client URLs (docs/etcd-api.md)."""
    if not opts.grpc_urls:
        return ()
    from kvapp.server.etcd import publish_grpc_urls  # noqa: PLC0415 - imports grpc

    return publish_grpc_urls(opts.grpc_urls)


def _grpc_server(
    opts: ServeOptions, metrics: MemberMetrics, member: Member
) -> EtcdGrpcServer | None:
    """The etcd API server for ``--listen-grpc-urls``, or None without the flag."""
    if not opts.grpc_urls:
        return None
    from kvapp.metrics import MeteredService  # noqa: PLC0415
    from kvapp.server.etcd import EtcdGrpcServer, MemberMaintenance  # noqa: PLC0415

    host, port = parse_peer_url(opts.grpc_urls[0])
    return EtcdGrpcServer(
        MeteredService(member, metrics),
        host=host,
        port=port,
        maintenance=MemberMaintenance(member),
        max_request_bytes=opts.max_request_bytes,
        tls=opts.client_tls,
    )


def _gateway_server(
    opts: ServeOptions, metrics: MemberMetrics, member: Member
) -> GatewayHttpServer | None:
    """The JSON gateway for ``--listen-client-http-urls``, or None without the flag."""
    if not opts.client_http_urls:
        return None
    from kvapp.metrics import MeteredService, health  # noqa: PLC0415
    from kvapp.server.etcd import MemberMaintenance  # noqa: PLC0415
    from kvapp.server.etcd.gateway import EtcdGateway  # noqa: PLC0415
    from kvapp.server.etcd.gateway_http import GatewayHttpServer  # noqa: PLC0415

    host, port = parse_peer_url(opts.client_http_urls[0])
    gateway = EtcdGateway(
        MeteredService(member, metrics),
        MemberMaintenance(member),
        max_request_bytes=opts.max_request_bytes,
    )
    return GatewayHttpServer(
        gateway,
        host=host,
        port=port,
        health=lambda: health(member),
        tls=opts.client_tls.server_context() if opts.client_tls else None,
    )


def _setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("raftlib").setLevel(max(logging.WARNING, logging.getLogger().level))


async def _serve_process(opts: ServeOptions) -> int:
    """:func:`serve`, freezing what startup loaded once the member serves (see gcpolicy)."""
    ready = asyncio.Event()
    serving = asyncio.create_task(serve(opts, ready=ready))
    started = asyncio.create_task(ready.wait())
    await asyncio.wait((serving, started), return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set():
        gcpolicy.freeze_startup_state()
    started.cancel()
    return await serving


def serve_main(argv: Sequence[str]) -> int:
    """``kvapp serve``."""
    try:
        opts, level = parse_serve_args(argv)
        _setup_logging(level, opts.name)
        gcpolicy.configure()
        return asyncio.run(_serve_process(opts))
    except UsageError as e:
        print(f"kvapp serve: error: {e}", file=sys.stderr)
        return 2
    except StartupError as e:
        print(f"kvapp serve: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def cluster_main(argv: Sequence[str]) -> int:
    """``kvapp cluster``: run a local N-member cluster until Ctrl-C."""
    from kvapp.launcher import run_local_cluster  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="kvapp cluster", description="Run a local kvapp cluster.")
    p.add_argument("--size", type=int, default=3, help="number of members (1-7, default 3)")
    p.add_argument("--data-dir", help="parent directory for the members' data (default: temp)")
    p.add_argument("--base-port", type=int, default=0, help="first port (default: free ports)")
    p.add_argument("--unsafe-no-fsync", action="store_true")
    p.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every link, client certificates required, from a throwaway CA made with "
        "openssl in <data-dir>/pki (a new cluster only)",
    )
    a = p.parse_args(argv)
    if not 1 <= a.size <= 7:
        print("kvapp cluster: error: --size must be between 1 and 7", file=sys.stderr)
        return 2
    if a.base_port and not 1024 <= a.base_port <= 65535 - 5 * a.size:
        print("kvapp cluster: error: --base-port out of range", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        parent = (
            Path(a.data_dir)
            if a.data_dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kvapp-")))
        )
        try:
            return asyncio.run(
                run_local_cluster(
                    a.size, parent, base_port=a.base_port, fsync=not a.unsafe_no_fsync, tls=a.tls
                )
            )
        except KeyboardInterrupt:
            return 130


def snapshot_main(argv: Sequence[str]) -> int:
    """``kvapp snapshot``: see :mod:`kvapp.recovery`."""
    from kvapp.recovery import snapshot_main as run  # noqa: PLC0415

    return run(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``kvapp``: dispatch to a subcommand."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve": serve_main, "cluster": cluster_main, "snapshot": snapshot_main}
    if not args or args[0] not in commands:
        print(
            "usage: kvapp {serve,cluster,snapshot} [options]\n"
            "  serve     run one member (etcd's flags: --name --data-dir --initial-cluster ...)\n"
            "  cluster   run a local cluster on 127.0.0.1 (--size 3)\n"
            "  snapshot  save|restore|status: disaster recovery with snapshot files",
            file=sys.stderr,
        )
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
