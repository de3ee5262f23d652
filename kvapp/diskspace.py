"""Disk space: the NOSPACE alarm a member raises, and clears, for its own data directory.

etcd raises NOSPACE when its backend database outgrows its quota; a kvapp member holds its
data in memory, and what fills up is the disk under its WAL and snapshots. So the trigger here
is the disk itself. :class:`DiskGuard` checks the free space of the data directory's file system
a few times a second, off the request path, through an injected ``disk_free`` callable (the real
one is :func:`kvapp.storage.fileutil.free_bytes`):

* below ``min_free`` bytes it proposes ``AlarmRequest(ACTIVATE, <this member>, NOSPACE)``;
* once the free space is back to ``min_free + margin`` or more (the margin keeps the alarm from
  flapping as the disk hovers around the threshold) it proposes ``DEACTIVATE`` for the same.

A storage write that still fails for lack of space (the reserve was not enough, or a snapshot
did not fit: raftlib's ``Node`` then retries or skips it, and reports it with
``on_storage_full``) raises the alarm too (:meth:`DiskGuard.note_full`); it is cleared by the
same rule, once writes succeed again. Only this member's own alarm is raised or cleared here.
The alarm is replicated: while any member's NOSPACE alarm is raised, every member refuses puts
and lease grants (:mod:`kvapp.dedup`), as etcd does.

The default reserve, :data:`DEFAULT_MIN_FREE_BYTES`, is two WAL segments plus one largest
request: room for the entries that still come while the alarm is raised (deletes, compactions,
lease revokes and checkpoints, the alarm entries themselves) even if a new segment has to be
started, and for the request in flight when the alarm was decided.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from kvapp.errors import EtcdError
from kvapp.requests import AlarmAction
from kvapp.service import OutcomeUnknown
from kvapp.storage.wal import DEFAULT_SEGMENT_SIZE

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_FREE_MARGIN",
    "DEFAULT_MIN_FREE_BYTES",
    "DiskGuard",
    "min_free_bytes_for",
]

logger = logging.getLogger(__name__)

_DEFAULT_MAX_REQUEST_BYTES = 1_572_864  # etcd's --max-request-bytes default (kvapp.node's)


def min_free_bytes_for(max_request_bytes: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The default reserve for a member: two WAL segments plus one largest request."""
    return 2 * segment_size + max_request_bytes


DEFAULT_MIN_FREE_BYTES: Final = min_free_bytes_for(_DEFAULT_MAX_REQUEST_BYTES)
"""Free bytes below which NOSPACE is raised: 2 x 64 MiB + 1.5 MiB = 135,790,592."""

DEFAULT_FREE_MARGIN: Final = DEFAULT_SEGMENT_SIZE
"""How far above the reserve free space must be for the alarm to clear: one WAL segment."""

DEFAULT_CHECK_INTERVAL: Final = 0.5
"""Seconds between two looks at the free space."""


class DiskGuard:
    """Raises and clears one member's NOSPACE alarm from its free disk space and write failures.

    Args:
        name: the member's name (for logs).
        disk_free: bytes free on the data directory's file system; called in a worker thread.
            ``None``: the member has no view of its disk, and the alarm is raised only by
            :meth:`note_full` and cleared once writes succeed again.
        min_free: raise the alarm below this many free bytes (0: only on a failed write).
        margin: clear it once at least ``min_free + margin`` bytes are free.
        interval: seconds between checks.
        raised: whether this member's NOSPACE alarm is raised in the applied state.
        storage_full: whether the member's storage writes are failing for lack of space now.
        propose: proposes ACTIVATE or DEACTIVATE of this member's NOSPACE alarm through Raft
            and returns once it is applied here (raising ``EtcdError`` or ``OutcomeUnknown`` if
            that failed).

    Raises:
        ValueError: a negative ``min_free`` or ``margin``, or a non-positive ``interval``.
    """

    def __init__(
        self,
        *,
        name: str,
        disk_free: Callable[[], int] | None,
        min_free: int,
        margin: int,
        interval: float,
        raised: Callable[[], bool],
        storage_full: Callable[[], bool],
        propose: Callable[[AlarmAction], Awaitable[object]],
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if min_free < 0 or margin < 0:
            raise ValueError("min_free and margin must not be negative")
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.name = name
        self.min_free = min_free
        self.margin = margin
        self.interval = interval
        self._disk_free = disk_free
        self._executor = executor
        self._raised = raised
        self._storage_full = storage_full
        self._propose = propose
        self._write_failed = False
        self._wake = asyncio.Event()
        self._reading_failed = False
        self._announced: AlarmAction | None = None
        self._last_failure = ""
        self.free: int | None = None
        """The last reading of the free space, or None (no reading, or it failed)."""
        self.checks = 0
        """How many checks were made (for tests and debugging)."""

    def note_full(self) -> None:
        """A storage write failed for lack of space: raise the alarm at the next check (now)."""
        self._write_failed = True
        self._wake.set()

    async def run(self) -> None:
        """Check every ``interval`` seconds (at once after :meth:`note_full`) until cancelled."""
        while True:
            await self.check()
            self._wake.clear()
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def check(self) -> None:
        """Look at the free space once; propose ACTIVATE or DEACTIVATE if it is due."""
        self.checks += 1
        self.free = await self._read()
        raised = self._raised()
        writes_failing = self._storage_full()
        low = self.free is not None and self.free < self.min_free
        high = self.free is None or self.free >= self.min_free + self.margin
        if self._write_failed and raised and high and not writes_failing:
            self._write_failed = False
        if (low or self._write_failed) and not raised:
            await self._change(AlarmAction.ACTIVATE)
        elif raised and high and not self._write_failed and not writes_failing:
            await self._change(AlarmAction.DEACTIVATE)

    async def _read(self) -> int | None:
        if self._disk_free is None:
            return None
        try:
            loop = asyncio.get_running_loop()
            free = await loop.run_in_executor(self._executor, self._disk_free)
        except OSError as exc:
            if not self._reading_failed:
                logger.warning("%s: cannot read the free disk space: %s", self.name, exc)
            self._reading_failed = True
            return None
        self._reading_failed = False
        return free

    async def _change(self, action: AlarmAction) -> None:
        if self._announced is not action:
            self._announced = action
            if action is AlarmAction.ACTIVATE:
                logger.warning(
                    "%s: %s; raising the NOSPACE alarm: the cluster refuses puts and lease "
                    "grants until it is cleared",
                    self.name,
                    self._why_full(),
                )
            else:
                logger.warning(
                    "%s: disk space is back (%s bytes free); clearing the NOSPACE alarm",
                    self.name,
                    "unknown" if self.free is None else self.free,
                )
        try:
            await self._propose(action)
        except (EtcdError, OutcomeUnknown) as exc:
            why = f"{action.name}: {exc}"
            level = logging.DEBUG if why == self._last_failure else logging.INFO
            self._last_failure = why
            logger.log(level, "%s: NOSPACE %s not done yet; retrying", self.name, why)
        else:
            self._last_failure = ""

    def _why_full(self) -> str:
        if self.free is not None and self.free < self.min_free:
            return f"{self.free} bytes free on the data directory's disk, below {self.min_free}"
        return "a write to the data directory failed for lack of space"
