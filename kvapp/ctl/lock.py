"""kvctl's ``lock`` and ``elect``: etcdctl's commands, on :mod:`kvapp.recipes`.

- ``lock NAME [--] [COMMAND ARG...]`` (``--ttl``, default 10 s): waits for the lock, then runs
  COMMAND holding it, with the lock in its environment (etcdctl's ``ETCD_LOCK_KEY`` and
  ``ETCD_LOCK_REV``, and kvapp's ``KVAPP_LOCK_TOKEN`` and ``KVAPP_LOCK_LEASE``), releases it and
  exits with the command's status. Without COMMAND it prints the key and its value, as
  etcdctl does, and holds the lock until interrupted (SIGINT or SIGTERM; then it releases it
  and exits 0).
- ``elect NAME VALUE`` campaigns, prints the leader key and its value once elected, and leads
  until interrupted (then it resigns and exits 0); ``elect -l NAME`` prints the leader's key
  and value now and after each change, until interrupted.

Each command keeps its lease alive in the background (a :class:`~kvapp.recipes.AsyncSession`)
and revokes it when it ends; if the lease is lost meanwhile, ``lock`` and ``elect`` end with
etcdctl's ``Error: session expired`` / ``Error: elect: session expired`` (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

from kvapp.ctl.commands import CommandError, Ctl
from kvapp.ctl.parse import UsageError, b, s
from kvapp.mvcc.types import KeyValue, RangeResponse
from kvapp.recipes import DEFAULT_TTL, AsyncElection, AsyncLock, AsyncSession, LeaderObserver
from kvapp.service import ResponseHeader

__all__ = [
    "DEFAULT_LOCK_TTL",
    "LOCK_COMMANDS",
    "add_lock_parsers",
    "cmd_elect",
    "cmd_lock",
    "lock_environment",
]

_T = TypeVar("_T")

DEFAULT_LOCK_TTL: Final = 10
"""Seconds: ``kvctl lock``'s session TTL (etcdctl lock's ``--ttl`` default)."""

_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def add_lock_parsers(
    cmds: argparse._SubParsersAction[Any],
    leaf: Callable[..., argparse.ArgumentParser],
) -> None:
    """Add ``lock`` and ``elect`` to kvctl's subcommands (``leaf`` makes one with the globals)."""
    p = leaf(cmds, "lock", "hold a named lock (while a command runs, or until interrupted)")
    p.add_argument(
        "--ttl",
        type=_positive_ttl,
        default=DEFAULT_LOCK_TTL,
        help=f"the session's TTL in seconds (default: {DEFAULT_LOCK_TTL})",
    )
    p.add_argument("lockname", nargs="?", metavar="NAME")
    p.add_argument(
        "exec_command",
        nargs=argparse.REMAINDER,
        metavar="COMMAND",
        help="a command to run holding the lock (after NAME, or after --)",
    )
    p = leaf(cmds, "elect", "campaign in an election until interrupted, or observe it (-l)")
    p.add_argument("-l", "--listen", action="store_true", help="observe the election's leader")
    p.add_argument(
        "election", nargs="*", metavar="ARG", help="NAME VALUE to campaign; NAME with -l"
    )


def _positive_ttl(text: str) -> int:
    try:
        ttl = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid TTL {text!r}") from None
    if ttl < 1:
        raise argparse.ArgumentTypeError(f"invalid TTL {text!r}: must be at least 1")
    return ttl


def lock_environment(lock: AsyncLock) -> dict[str, str]:
    """The variables a command run under ``lock`` gets (added to kvctl's environment).

    ``ETCD_LOCK_KEY``: the lock's key; ``ETCD_LOCK_REV``: the revision at which the lock was
    found held (both as etcdctl sets them); ``KVAPP_LOCK_TOKEN``: the fencing token, the key's
    create revision (a write guarded by ``create_revision(ETCD_LOCK_KEY) ==
    KVAPP_LOCK_TOKEN`` goes through only while the lock is held); ``KVAPP_LOCK_LEASE``: the
    session's lease id in hex.
    """
    key = lock.key
    assert key is not None
    return {
        "ETCD_LOCK_KEY": s(key),
        "ETCD_LOCK_REV": str(lock.acquired_revision),
        "KVAPP_LOCK_TOKEN": str(lock.token),
        "KVAPP_LOCK_LEASE": f"{lock.session.lease_id:x}",
    }


class _Interrupts:
    """SIGINT and SIGTERM set :attr:`event` while installed (instead of stopping kvctl)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._installed: list[signal.Signals] = []

    def __enter__(self) -> _Interrupts:
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            try:
                loop.add_signal_handler(sig, self.event.set)
            except (ValueError, RuntimeError, NotImplementedError):
                continue  # not the main thread (an embedded run): no signal handling
            self._installed.append(sig)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)


async def _until(work: Awaitable[_T], stop: asyncio.Event) -> tuple[bool, _T | None]:
    """Run ``work`` until it ends or ``stop`` is set (then it is cancelled): (done, result)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False, None
    return True, task.result()


@contextlib.asynccontextmanager
async def _session(ctl: Ctl, ttl: int) -> AsyncIterator[AsyncSession]:
    async with ctl.deadline():
        session = await AsyncSession(ctl.client, ttl).open()
    try:
        yield session
    finally:
        with contextlib.suppress(Exception):
            async with ctl.deadline():
                await session.close()


async def _print_key(ctl: Ctl, key: bytes, lost: str) -> None:
    """Print ``key`` and its value as ``get`` does (etcdctl: ``display.Get``)."""
    async with ctl.deadline():
        resp = await ctl.client.get(key)
        if not resp.kvs:
            raise CommandError(lost)
        header = await ctl.json_header(resp.revision)
    ctl.printer.get(resp, header)
    ctl.out.flush()


async def cmd_lock(ctl: Ctl) -> int:
    """``lock NAME [--] [COMMAND...]``."""
    name: str | None = ctl.ns.lockname
    command: list[str] = list(ctl.ns.exec_command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not name:
        raise UsageError("lock takes a lock name argument and an optional command to execute")
    with _Interrupts() as interrupts:
        async with _session(ctl, ctl.ns.ttl) as session:
            lock = AsyncLock(ctl.client, b(name), session)
            acquired, _ = await _until(lock.acquire(), interrupts.event)
            if not acquired:
                raise CommandError("context canceled")  # etcdctl's, interrupted while waiting
            try:
                if command:
                    return await _run_holding(ctl, lock, command)
                await _print_key(ctl, _key(lock), "lock lost on init")
                await _until(session.wait_lost(), interrupts.event)
                if not session.alive:
                    raise CommandError("session expired")
                return 0
            finally:
                with contextlib.suppress(Exception):
                    async with ctl.deadline():
                        await lock.release()


def _key(holder: AsyncLock | AsyncElection) -> bytes:
    key = holder.key
    assert key is not None
    return key


async def _run_holding(ctl: Ctl, lock: AsyncLock, command: list[str]) -> int:
    """Run ``command`` holding ``lock``; its exit status (128 + N if killed by signal N)."""
    ctl.out.flush()
    env = {**os.environ, **lock_environment(lock)}
    try:
        proc = await asyncio.create_subprocess_exec(*command, env=env)
    except FileNotFoundError:
        raise CommandError(f'exec: "{command[0]}": executable file not found in $PATH') from None
    except OSError as e:
        raise CommandError(f'exec: "{command[0]}": {e.strerror or e}') from None
    session = lock.session
    lost = asyncio.ensure_future(session.wait_lost())
    try:
        exited = asyncio.ensure_future(proc.wait())
        await asyncio.wait((exited, lost), return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            ctl.err.line(
                f"kvctl: the lock {s(_key(lock))!r} was lost while the command ran "
                f"(session {session.lease_id:x}: {session.loss.value if session.loss else ''}); "
                "it goes on, unfenced"
            )
        code = await exited
    finally:
        lost.cancel()
    return code if code >= 0 else 128 - code


async def cmd_elect(ctl: Ctl) -> int:
    """``elect NAME VALUE`` or ``elect -l NAME``."""
    args: list[str] = ctl.ns.election
    if len(args) not in (1, 2):
        raise UsageError("elect takes one election name argument and an optional proposal argument")
    if len(args) == 1 and not ctl.ns.listen:
        raise UsageError("no proposal argument but -l not set")
    if len(args) == 2 and ctl.ns.listen:
        raise UsageError("proposal given but -l is set")
    with _Interrupts() as interrupts:
        if ctl.ns.listen:
            return await _observe(ctl, b(args[0]), interrupts.event)
        return await _campaign(ctl, b(args[0]), b(args[1]), interrupts.event)


async def _campaign(ctl: Ctl, name: bytes, value: bytes, stop: asyncio.Event) -> int:
    async with _session(ctl, DEFAULT_TTL) as session:
        election = AsyncElection(ctl.client, name, session)
        elected, _ = await _until(election.campaign(value), stop)
        if not elected:
            raise CommandError("context canceled")  # etcdctl's, interrupted while waiting
        try:
            await _print_key(ctl, _key(election), "elect: session expired")
            await _until(session.wait_lost(), stop)
            if not session.alive:
                raise CommandError("elect: session expired")
            return 0
        finally:
            with contextlib.suppress(Exception):
                async with ctl.deadline():
                    await election.resign()


async def _observe(ctl: Ctl, name: bytes, stop: asyncio.Event) -> int:
    observer = LeaderObserver(ctl.client, name + b"/")
    try:
        ended, _ = await _until(_print_leaders(ctl, observer), stop)
    finally:
        await observer.close()
    if ended:
        raise CommandError("elect: observer lost")
    return 0


async def _print_leaders(ctl: Ctl, leaders: LeaderObserver) -> None:
    async for kv in leaders:
        _print_kvs(ctl, [kv], await ctl.json_header(leaders.revision), leaders.revision)


def _print_kvs(
    ctl: Ctl, kvs: Iterable[KeyValue], header: ResponseHeader | None, revision: int
) -> None:
    ctl.printer.get(RangeResponse(revision, tuple(kvs)), header)
    ctl.out.flush()


LOCK_COMMANDS: Final[dict[str, Callable[[Ctl], Awaitable[int]]]] = {
    "lock": cmd_lock,
    "elect": cmd_elect,
}
"""The commands of this module, by name (``kvapp.ctl.app`` dispatches to them)."""
