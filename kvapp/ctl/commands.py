"""kvctl's commands: each turns parsed arguments into client calls and prints the result.

A command checks its arguments before its first request (raising :class:`UsageError`), then
runs under one deadline (``--dial-timeout`` + ``--command-timeout``), except the parts of
``watch`` and ``lease keep-alive`` that run until interrupted. Failures propagate to
:func:`kvapp.ctl.app.run`, which prints ``Error: ...`` and picks the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO, Final

import attrs

from kvapp.client import AsyncClient
from kvapp.ctl.output import EndpointHealth, EndpointStatus, Output, Printer, go_duration, go_quote
from kvapp.ctl.parse import (
    GlobalOptions,
    UsageError,
    delete_request,
    put_request,
    range_request,
    read_txn,
    watch_range,
)
from kvapp.errors import EtcdError, KvappError, LeaseNotFoundError
from kvapp.lease import LeaseTimeToLiveResponse
from kvapp.service import MemberInfo, OutcomeUnknown, ResponseHeader

__all__ = ["COMMANDS", "CommandError", "Ctl"]

DEFAULT_CLUSTER_TOKEN: Final = "kvapp-cluster"  # noqa: S105 - a cluster name, not a secret
"""``kvapp serve``'s default ``--initial-cluster-token``."""

_RENEW_RETRY: Final = 0.5


class CommandError(Exception):
    """A command failed; the message is printed after ``Error: `` and the exit status is 1."""


class Ctl:
    """What a command runs with: its arguments, the client, the printer and the streams.

    Args:
        ns: the parsed command line.
        opts: the global options.
        client: the client over ``opts.endpoints``.
        printer: prints results on standard output.
        err: standard error.
        stdin: standard input (for ``put`` without a value and ``txn``).
    """

    def __init__(
        self,
        ns: argparse.Namespace,
        opts: GlobalOptions,
        client: AsyncClient,
        *,
        printer: Printer,
        err: Output,
        stdin: BinaryIO,
    ) -> None:
        self.ns = ns
        self.opts = opts
        self.client = client
        self.printer = printer
        self.out = printer.out
        self.err = err
        self.stdin = stdin

    @property
    def budget(self) -> float:
        """Seconds a short command may take: the dial timeout plus the command timeout."""
        return self.opts.dial_timeout + self.opts.command_timeout

    @contextlib.asynccontextmanager
    async def deadline(self) -> AsyncIterator[None]:
        """Bound what runs inside to :attr:`budget` (raising TimeoutError after it)."""
        async with asyncio.timeout(self.budget):
            yield

    async def header(self, revision: int | None = None) -> ResponseHeader:
        """A response header from the member the client uses (its status), at ``revision``.

        The native protocol returns only the revision with each result; the cluster id,
        member id and term come from a status request to the same member.
        """
        h = (await self.client.status()).header
        return h if revision is None else attrs.evolve(h, revision=revision)

    async def json_header(self, revision: int | None = None) -> ResponseHeader | None:
        """:meth:`header` if the output is JSON (the only format that prints it), else None."""
        return await self.header(revision) if self.printer.json else None


# -- KV ----------------------------------------------------------------------------------------


async def cmd_put(ctl: Ctl) -> int:
    """``put KEY [VALUE]``."""
    req = put_request(ctl.ns, ctl.stdin.read)
    async with ctl.deadline():
        resp = await ctl.client.put(
            req.key,
            req.value,
            lease=req.lease,
            prev_kv=req.prev_kv,
            ignore_value=req.ignore_value,
            ignore_lease=req.ignore_lease,
        )
        header = await ctl.json_header(resp.revision)
    ctl.printer.put(resp, header)
    return 0


async def cmd_get(ctl: Ctl) -> int:
    """``get KEY [RANGE_END]``."""
    req = range_request(ctl.ns)
    if ctl.ns.print_value_only and ctl.printer.fmt != "simple":
        raise UsageError("print-value-only is only for `--write-out=simple`")
    async with ctl.deadline():
        resp = await ctl.client.get(
            req.key,
            req.range_end,
            serializable=req.serializable,
            revision=req.revision,
            limit=req.limit,
            keys_only=req.keys_only,
            count_only=req.count_only,
            sort_order=req.sort_order,
            sort_target=req.sort_target,
            min_mod_revision=req.min_mod_revision,
            max_mod_revision=req.max_mod_revision,
            min_create_revision=req.min_create_revision,
            max_create_revision=req.max_create_revision,
        )
        header = await ctl.json_header(resp.revision)
    if req.count_only and not ctl.printer.json:
        ctl.printer.count(resp)
    else:
        ctl.printer.get(resp, header, value_only=ctl.ns.print_value_only)
    return 0


async def cmd_del(ctl: Ctl) -> int:
    """``del KEY [RANGE_END]``."""
    req = delete_request(ctl.ns)
    async with ctl.deadline():
        resp = await ctl.client.delete(req.key, req.range_end, prev_kv=req.prev_kv)
        header = await ctl.json_header(resp.revision)
    ctl.printer.delete(resp, header)
    return 0


async def cmd_txn(ctl: Ctl) -> int:
    """``txn``: compares, success and failure operations from standard input."""
    lines = io.TextIOWrapper(ctl.stdin, encoding="utf-8", errors="surrogateescape")

    def prompt(title: str) -> None:
        ctl.out.line(title)
        ctl.out.flush()

    try:
        compares, success, failure = read_txn(lines, prompt if ctl.ns.interactive else None)
    finally:
        lines.detach()  # leave standard input open
    async with ctl.deadline():
        resp = await ctl.client.txn(compares, success, failure)
        header = await ctl.json_header(resp.revision)
    ctl.printer.txn(resp, header)
    return 0


async def cmd_compaction(ctl: Ctl) -> int:
    """``compaction REVISION``."""
    async with ctl.deadline():
        await ctl.client.compact(ctl.ns.revision, physical=ctl.ns.physical)
    ctl.out.line(f"compacted revision {ctl.ns.revision}")
    return 0


async def cmd_watch(ctl: Ctl) -> int:
    """``watch KEY [RANGE_END]``: print events until interrupted (or the watch is cancelled)."""
    key, end = watch_range(ctl.ns)
    async with ctl.deadline():
        watch = await ctl.client.watch(key, end, start_revision=ctl.ns.rev, prev_kv=ctl.ns.prev_kv)
        try:
            header = await ctl.json_header()
        except BaseException:
            await watch.cancel()
            raise
    try:
        async for event in watch:
            ctl.printer.watch(event, header)
            ctl.out.flush()
    except EtcdError as e:
        ctl.err.line(f"watch was canceled ({e})")
    finally:
        await watch.cancel()
    raise CommandError("watch is canceled by the server")


# -- leases ------------------------------------------------------------------------------------


async def cmd_lease_grant(ctl: Ctl) -> int:
    """``lease grant TTL``."""
    async with ctl.deadline():
        try:
            resp = await ctl.client.lease_grant(ctl.ns.ttl)
        except (EtcdError, OutcomeUnknown) as e:
            raise CommandError(f"failed to grant lease ({e})") from e
        header = await ctl.json_header(resp.revision)
    ctl.printer.grant(resp, header)
    return 0


async def cmd_lease_revoke(ctl: Ctl) -> int:
    """``lease revoke ID``."""
    async with ctl.deadline():
        try:
            resp = await ctl.client.lease_revoke(ctl.ns.lease_id)
        except (EtcdError, OutcomeUnknown) as e:
            raise CommandError(f"failed to revoke lease ({e})") from e
        header = await ctl.json_header(resp.revision)
    ctl.printer.revoke(ctl.ns.lease_id, header)
    return 0


async def cmd_lease_timetolive(ctl: Ctl) -> int:
    """``lease timetolive ID [--keys]`` (a lease that is gone prints as already expired)."""
    lease_id = ctl.ns.lease_id
    async with ctl.deadline():
        try:
            resp = await ctl.client.lease_time_to_live(lease_id, keys=ctl.ns.keys)
        except LeaseNotFoundError:
            resp = LeaseTimeToLiveResponse(lease_id, -1, 0)  # what etcd answers
        header = await ctl.json_header()
    ctl.printer.time_to_live(resp, header, keys=ctl.ns.keys)
    return 0


async def cmd_lease_list(ctl: Ctl) -> int:
    """``lease list``."""
    async with ctl.deadline():
        ids = await ctl.client.leases()
        header = await ctl.json_header()
    ctl.printer.leases(ids, header)
    return 0


async def cmd_lease_keep_alive(ctl: Ctl) -> int:
    """``lease keep-alive ID [--once]``: renew every TTL/3 until interrupted or the lease is gone.

    The first renewal's failure is an error. Later ones are retried until a whole TTL has
    passed since the last successful renewal was sent; then the lease is reported lost.
    """
    lease_id = ctl.ns.lease_id
    client = ctl.client
    async with ctl.deadline():
        try:
            first = await client.keep_alive_once(lease_id)
        except LeaseNotFoundError:
            if ctl.ns.once:
                raise
            return _lease_gone(ctl, lease_id)  # etcdctl: the keep-alive channel just closes
        header = await ctl.json_header()
    if first.ttl <= 0:
        if ctl.ns.once:
            raise LeaseNotFoundError
        return _lease_gone(ctl, lease_id)
    ctl.printer.keep_alive(first, header)
    ctl.out.flush()
    if ctl.ns.once:
        return 0
    ttl, renewed_at = first.ttl, time.monotonic()
    next_at = renewed_at + ttl / 3
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        sent_at = time.monotonic()
        try:
            async with asyncio.timeout(max(0.1, renewed_at + ttl - sent_at)):
                resp = await client.keep_alive_once(lease_id)
        except LeaseNotFoundError:
            return _lease_gone(ctl, lease_id)
        except (KvappError, OSError, TimeoutError) as e:
            if time.monotonic() >= renewed_at + ttl:
                raise CommandError(
                    f"lease {lease_id:016x}: renewals failed for longer than its TTL "
                    f"({ttl}s): {str(e) or type(e).__name__}"
                ) from e
            next_at = time.monotonic() + min(ttl / 3, _RENEW_RETRY)
            continue
        if resp.ttl <= 0:
            return _lease_gone(ctl, lease_id)
        ttl, renewed_at = resp.ttl, sent_at
        next_at = sent_at + ttl / 3
        ctl.printer.keep_alive(resp, header)
        ctl.out.flush()


def _lease_gone(ctl: Ctl, lease_id: int) -> int:
    if ctl.printer.fmt == "simple":
        ctl.out.line(f"lease {lease_id:016x} expired or revoked.")
    return 0


# -- members -----------------------------------------------------------------------------------


def _member_name(ns: argparse.Namespace) -> str:
    names: list[str] = ns.name
    if len(names) > 1:
        message = "too many arguments"
        for arg in names:
            if arg.lower().startswith("http"):
                message += f", did you mean --peer-urls={arg}"
        raise UsageError(message)
    name = names[0]
    if not name or "," in name or "=" in name:
        raise UsageError(f"member name {name!r} must be non-empty, without ',' or '='")
    if not ns.peer_urls:
        raise UsageError("member peer urls not provided")
    return name


async def cmd_member_add(ctl: Ctl) -> int:
    """``member add NAME --peer-urls=URLS [--learner]``, then how to start the new member."""
    from kvapp.node import cluster_id_for  # noqa: PLC0415 - only this command needs it

    ns = ctl.ns
    name = _member_name(ns)
    urls = [u.strip() for u in ns.peer_urls.split(",") if u.strip()]
    token: str | None = ns.initial_cluster_token
    async with ctl.deadline():
        cluster_id = (await ctl.header()).cluster_id
        if token is not None and cluster_id_for(token) != cluster_id:
            raise UsageError(
                f"--initial-cluster-token {token!r} is not this cluster's token "
                f"(it gives cluster id {cluster_id_for(token):x}; the cluster's is {cluster_id:x})"
            )
        if token is None and cluster_id_for(DEFAULT_CLUSTER_TOKEN) == cluster_id:
            token = DEFAULT_CLUSTER_TOKEN
        member = await ctl.client.member_add(urls, is_learner=ns.learner)
        members = await ctl.client.member_list()
        header = await ctl.header()
    ctl.printer.member_added(member, members, header)
    if ctl.printer.fmt == "simple":
        _print_start_instructions(ctl, name, member, members, token)
    return 0


def _print_start_instructions(
    ctl: Ctl, name: str, new: MemberInfo, members: list[MemberInfo], token: str | None
) -> None:
    """Print etcdctl's ETCD_* lines, then the ``kvapp serve`` command the new member should run."""
    if not any(m.id == new.id for m in members):
        members = [*members, new]
    conf = [f"{name if m.id == new.id else m.name}={u}" for m in members for u in m.peer_urls]
    out = ctl.out
    out.line()
    out.line(f"ETCD_NAME={go_quote(name)}")
    out.line(f"ETCD_INITIAL_CLUSTER={go_quote(','.join(conf))}")
    out.line(f"ETCD_INITIAL_ADVERTISE_PEER_URLS={go_quote(ctl.ns.peer_urls)}")
    out.line('ETCD_INITIAL_CLUSTER_STATE="existing"')
    # kvapp serve refuses unnamed members in --initial-cluster (a member added but not started).
    serve_conf = [c for c in conf if not c.startswith("=")]
    client_urls = ctl.ns.listen_client_urls
    argv = [
        "kvapp",
        "serve",
        "--name",
        name,
        "--listen-peer-urls",
        ",".join(new.peer_urls),
        "--listen-client-urls",
        client_urls or "<client-url>",
        "--initial-cluster",
        ",".join(serve_conf),
        "--initial-cluster-state",
        "existing",
        "--initial-cluster-token",
        token or "<cluster-token>",
    ]
    out.line()
    out.line("Start the new member with:")
    if client_urls is None:
        out.line("  (<client-url>: where it serves clients, e.g. http://127.0.0.1:2379)")
    if token is None:
        out.line(
            "  (<cluster-token>: the --initial-cluster-token the cluster was started with; "
            "kvapp cluster keeps it in cluster.json)"
        )
    out.line(shlex.join(argv))


async def _member_change(ctl: Ctl, what: str, change: Callable[[int], Awaitable[None]]) -> int:
    member_id: int = ctl.ns.member_id
    async with ctl.deadline():
        await change(member_id)
        members = await ctl.client.member_list() if ctl.printer.json else []
        header = await ctl.header()
    ctl.printer.member_changed(what, member_id, members, header)
    return 0


async def cmd_member_remove(ctl: Ctl) -> int:
    """``member remove ID``."""
    return await _member_change(ctl, "removed from", ctl.client.member_remove)


async def cmd_member_promote(ctl: Ctl) -> int:
    """``member promote ID``."""
    return await _member_change(ctl, "promoted in", ctl.client.member_promote)


async def cmd_member_update(ctl: Ctl) -> int:
    """``member update ID --peer-urls=URLS``."""
    if not ctl.ns.peer_urls:
        raise UsageError("member peer urls not provided")
    urls = [u.strip() for u in ctl.ns.peer_urls.split(",") if u.strip()]
    return await _member_change(
        ctl, "updated in", lambda member_id: ctl.client.member_update(member_id, urls)
    )


async def cmd_member_list(ctl: Ctl) -> int:
    """``member list``."""
    async with ctl.deadline():
        members = await ctl.client.member_list()
        header = await ctl.json_header()
    ctl.printer.member_list(members, header)
    return 0


# -- alarms ------------------------------------------------------------------------------------


async def cmd_alarm_list(ctl: Ctl) -> int:
    """``alarm list``."""
    async with ctl.deadline():
        alarms = await ctl.client.alarm_list()
    ctl.printer.alarms(alarms)
    return 0


async def cmd_alarm_disarm(ctl: Ctl) -> int:
    """``alarm disarm``: clear every raised alarm (as etcdctl: list them, clear each)."""
    async with ctl.deadline():
        cleared = await ctl.client.alarm_disarm()
    ctl.printer.alarms(cleared)
    return 0


# -- endpoints ---------------------------------------------------------------------------------


async def _endpoints(ctl: Ctl) -> list[str]:
    if not ctl.ns.cluster:
        return list(ctl.opts.endpoints)
    async with ctl.deadline():
        members = await ctl.client.member_list()
    return [u for m in members for u in m.native_client_urls]


async def cmd_endpoint_status(ctl: Ctl) -> int:
    """``endpoint status``: each endpoint's own status (no failover)."""
    statuses = []
    failed = False
    for ep in await _endpoints(ctl):
        try:
            async with ctl.deadline():
                st = await ctl.client.status(ep)
        except (KvappError, TimeoutError) as e:
            why = str(e) or f"no answer within {go_duration(ctl.budget)}"
            ctl.err.line(f"Failed to get the status of endpoint {ep} ({why})")
            failed = True
            continue
        statuses.append(EndpointStatus(ep, st))
    ctl.printer.endpoint_status(statuses)
    return 1 if failed else 0


async def _health(ctl: Ctl, endpoint: str) -> EndpointHealth:
    """A linearizable read through ``endpoint`` alone, then its alarms (from its status)."""
    client = AsyncClient(
        [endpoint],
        connect_timeout=ctl.opts.dial_timeout,
        request_timeout=ctl.opts.command_timeout,
        max_attempts=1,
        tls=ctl.opts.tls,
    )
    start = time.monotonic()
    try:
        async with ctl.deadline():
            await client.get(b"health")
            took = time.monotonic() - start
            st = await client.status(endpoint)
    except (KvappError, TimeoutError) as e:
        why = str(e) or f"no answer within {go_duration(ctl.budget)}"
        return EndpointHealth(endpoint, False, time.monotonic() - start, why)
    finally:
        await client.close()
    if st.errors:
        return EndpointHealth(endpoint, False, took, f"Active Alarm(s): {' '.join(st.errors)} ")
    return EndpointHealth(endpoint, True, took)


async def cmd_endpoint_health(ctl: Ctl) -> int:
    """``endpoint health``: every endpoint checked at once."""
    endpoints = await _endpoints(ctl)
    results = await asyncio.gather(*(_health(ctl, ep) for ep in endpoints))
    ctl.printer.endpoint_health(results, ctl.err)
    if any(not h.health for h in results):
        raise CommandError("unhealthy cluster")
    return 0


# -- snapshot ----------------------------------------------------------------------------------


async def cmd_snapshot_save(ctl: Ctl) -> int:
    """``snapshot save FILE``: from the one endpoint given, into FILE (via ``FILE.part``)."""
    from kvapp.recovery import save_snapshot  # noqa: PLC0415 - only for this command

    endpoints = ctl.opts.endpoints
    if len(endpoints) != 1:
        raise UsageError(
            f"snapshot must be requested to one selected node, not multiple {list(endpoints)}"
        )
    info = await save_snapshot(
        ctl.client,
        ctl.ns.filename,
        endpoint=endpoints[0],
        linearizable=ctl.ns.consistency == "l",
        idle_timeout=ctl.budget,
    )
    ctl.out.line(f"Snapshot saved at {info.path}")
    return 0


COMMANDS: Final[dict[str, Callable[[Ctl], Awaitable[int]]]] = {
    "put": cmd_put,
    "get": cmd_get,
    "del": cmd_del,
    "txn": cmd_txn,
    "watch": cmd_watch,
    "compaction": cmd_compaction,
    "lease grant": cmd_lease_grant,
    "lease revoke": cmd_lease_revoke,
    "lease timetolive": cmd_lease_timetolive,
    "lease list": cmd_lease_list,
    "lease keep-alive": cmd_lease_keep_alive,
    "member list": cmd_member_list,
    "member add": cmd_member_add,
    "member remove": cmd_member_remove,
    "member promote": cmd_member_promote,
    "member update": cmd_member_update,
    "alarm list": cmd_alarm_list,
    "alarm disarm": cmd_alarm_disarm,
    "endpoint status": cmd_endpoint_status,
    "endpoint health": cmd_endpoint_health,
    "snapshot save": cmd_snapshot_save,
}
"""Every command, by its name as typed (``lease grant``)."""
