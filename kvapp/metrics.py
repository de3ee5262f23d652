"""A member's Prometheus metrics, named as etcd names them where they mean the same.

An operator's etcd dashboards and alerts (``etcd_server_has_leader == 0``, leader-change rate,
WAL fsync latency) then work on kvapp unchanged. Everything lives in a registry of its own per
member, so several members in one process (tests) do not collide.

Two kinds of source, chosen so the hot paths pay next to nothing:

- state read at scrape time (leader, committed and applied indexes, revision, watchers), by a
  collector that asks the member;
- events counted where they happen, by wrappers *around* the member and its storage
  (:class:`MeteredService`, :class:`TimedStorage`) rather than inside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from kvapp._extras import require

require("prometheus_client")

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvapp.lease import LeaseKeepAliveResponse, LeaseTimeToLiveResponse
from kvapp.mvcc.types import RangeRequest, RangeResponse
from kvapp.requests import AlarmAction, AlarmResponse, AlarmType
from kvapp.service import MemberInfo, ResponseHeader, StatusInfo, WriteRequest, WriteResponse
from raftlib import ConfState, Entry, HardState, Ready, Snapshot, StagingStorage

if TYPE_CHECKING:
    from kvapp.node import Member
    from kvapp.storage.snapdata import FileSnapshotData
    from kvapp.watch import WatchStream
    from raftlib import NodeStorage

__all__ = ["MemberMetrics", "MeteredService", "TimedStorage"]

_FSYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512)


class MemberMetrics:
    """The registry of one member and the event counters the wrappers update.

    Args:
        member: the member whose state is read at scrape time.
        fsync: the WAL fsync histogram its storage wrapper already observes into (see
            :meth:`fsync_histogram`); a new one if None.
    """

    @staticmethod
    def fsync_histogram() -> Histogram:
        """A WAL fsync histogram, made before the member so its storage can be wrapped."""
        return Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            buckets=_FSYNC_BUCKETS,
            registry=None,
        )

    def __init__(self, member: Member, *, fsync: Histogram | None = None) -> None:
        self.member = member
        self.registry = CollectorRegistry()
        self.leader_changes = Counter(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen.",
            registry=self.registry,
        )
        self.proposals_failed = Counter(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen.",
            registry=self.registry,
        )
        self.wal_fsync = fsync if fsync is not None else self.fsync_histogram()
        self.registry.register(self.wal_fsync)
        self.pending = 0
        self.registry.register(_StateCollector(self))
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start counting leader changes (call on the member's loop, after it started)."""
        self._watcher = asyncio.create_task(self._count_leader_changes())

    async def stop(self) -> None:
        """Stop counting."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def _count_leader_changes(self) -> None:
        last = None
        async for view in self.member.node.leadership():
            if view.leader_id and view.leader_id != last:
                if last is not None:
                    self.leader_changes.inc()
                last = view.leader_id


class _StateCollector(Collector):
    def __init__(self, metrics: MemberMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics.member
        leader = m.node.leader_id if m.node.running else 0
        status = m.node.status() if m.node.running else None

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            1 if leader else 0,
        )
        yield gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            1 if leader == m.id else 0,
        )
        yield gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            status.hard_state.commit if status is not None else 0,
        )
        yield gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            m.node.applied,
        )
        yield gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            self.metrics.pending,
        )
        yield gauge(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            m.kv.store.revision,
        )
        yield gauge(
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            m.kv.watches.watcher_count,
        )
        yield gauge("etcd_server_id", "This member's id (as a number).", m.id)
        yield gauge(
            "kvapp_server_writes_proposed_total",
            "Client writes this member proposed.",
            m.writes_proposed,
        )
        yield gauge(
            "kvapp_server_write_entries_proposed_total",
            "Log entries this member's client writes were proposed in (writes that arrive "
            "together share one entry).",
            m.write_entries_proposed,
        )
        alarms = GaugeMetricFamily(
            "kvapp_server_alarms",
            "Alarms raised in the cluster, by type (one per member that raised it).",
            labels=["alarm"],
        )
        for kind in (AlarmType.NOSPACE, AlarmType.CORRUPT):
            alarms.add_metric([kind.name], len(m.applier.alarms(kind)))
        yield alarms
        yield gauge(
            "kvapp_disk_min_free_bytes",
            "Free bytes on the data directory's file system below which this member raises the "
            "NOSPACE alarm (--min-free-disk-bytes).",
            m.disk.min_free,
        )
        if m.disk.free is not None:
            yield gauge(
                "kvapp_disk_free_bytes",
                "Free bytes on the data directory's file system at the member's last check.",
                m.disk.free,
            )


class MeteredService:
    """The member as a :class:`~kvapp.service.KvService`, counting pending and failed writes."""

    def __init__(self, member: Member, metrics: MemberMetrics) -> None:
        self._m = member
        self._metrics = metrics

    def header(self) -> ResponseHeader:
        """See KvService."""
        return self._m.header()

    async def write(
        self, request: WriteRequest, *, client_id: int = 0, request_id: int = 0
    ) -> WriteResponse:
        """See KvService; counts the write as pending until answered, and failures."""
        return await self.submit_write(request, client_id=client_id, request_id=request_id)

    def submit_write(
        self, request: WriteRequest, *, client_id: int = 0, request_id: int = 0
    ) -> asyncio.Future[WriteResponse]:
        """See KvService; counts the write as pending until settled, and failures."""
        try:
            fut = self._m.submit_write(request, client_id=client_id, request_id=request_id)
        except BaseException:
            self._metrics.proposals_failed.inc()
            raise
        self._metrics.pending += 1
        fut.add_done_callback(self._write_settled)
        return fut

    def _write_settled(self, fut: asyncio.Future[WriteResponse]) -> None:
        self._metrics.pending -= 1
        if fut.cancelled() or fut.exception() is not None:
            self._metrics.proposals_failed.inc()

    async def range(self, request: RangeRequest) -> RangeResponse:
        """See KvService."""
        return await self._m.range(request)

    def read_barrier(self, request: RangeRequest) -> asyncio.Future[None] | None:
        """See KvService."""
        return self._m.read_barrier(request)

    def range_now(self, request: RangeRequest) -> RangeResponse:
        """See KvService."""
        return self._m.range_now(request)

    async def lease_keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        """See KvService."""
        return await self._m.lease_keep_alive(lease_id)

    async def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False
    ) -> LeaseTimeToLiveResponse:
        """See KvService."""
        return await self._m.lease_time_to_live(lease_id, keys=keys)

    def leases(self) -> list[int]:
        """See KvService."""
        return self._m.leases()

    def open_watch_stream(self, on_pending: Callable[[], None]) -> WatchStream:
        """See KvService."""
        return self._m.open_watch_stream(on_pending)

    def member_list(self) -> list[MemberInfo]:
        """See KvService."""
        return self._m.member_list()

    async def member_add(
        self, peer_urls: tuple[str, ...], *, is_learner: bool = False
    ) -> MemberInfo:
        """See KvService."""
        return await self._m.member_add(peer_urls, is_learner=is_learner)

    async def member_remove(self, member_id: int) -> None:
        """See KvService."""
        await self._m.member_remove(member_id)

    async def member_promote(self, member_id: int) -> None:
        """See KvService."""
        await self._m.member_promote(member_id)

    async def member_update(self, member_id: int, peer_urls: tuple[str, ...]) -> None:
        """See KvService."""
        await self._m.member_update(member_id, peer_urls)

    async def alarm(self, action: AlarmAction, member_id: int, alarm: AlarmType) -> AlarmResponse:
        """See KvService."""
        return await self._m.alarm(action, member_id, alarm)

    def status(self) -> StatusInfo:
        """See KvService."""
        return self._m.status()

    def snapshot(self, *, linearizable: bool = True) -> AsyncGenerator[bytes, None]:
        """See KvService."""
        return self._m.snapshot(linearizable=linearizable)


class TimedStorage:
    """A Raft storage that times each durable ``save_ready`` into the WAL fsync histogram.

    A Ready that must sync costs one fsync (group commit), which is what etcd's histogram
    measures; commit-only Readys, which are not synced, are not observed. Wrapping a
    :class:`raftlib.StagingStorage` (kvapp's ``RaftStore``) gives a staging one too, so
    raftlib's Node still writes snapshots off its Ready loop.
    """

    def __new__(cls, inner: NodeStorage, histogram: Histogram) -> TimedStorage:
        """A :class:`TimedStorage`, staging if ``inner`` is."""
        staging = cls is TimedStorage and isinstance(inner, StagingStorage)
        return super().__new__(_TimedStagingStorage if staging else cls)

    def __init__(self, inner: NodeStorage, histogram: Histogram) -> None:
        self._inner = inner
        self._hist = histogram

    def save_ready(self, rd: Ready) -> None:
        """Persist ``rd``, timing it if it must be durable."""
        if not rd.must_sync:
            self._inner.save_ready(rd)
            return
        t = time.perf_counter()
        self._inner.save_ready(rd)
        self._hist.observe(time.perf_counter() - t)

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See raftlib.Storage."""
        return self._inner.initial_state()

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """See raftlib.Storage."""
        return self._inner.entries(lo, hi, max_size)

    def term(self, index: int) -> int:
        """See raftlib.Storage."""
        return self._inner.term(index)

    def first_index(self) -> int:
        """See raftlib.Storage."""
        return self._inner.first_index()

    def last_index(self) -> int:
        """See raftlib.Storage."""
        return self._inner.last_index()

    def snapshot(self) -> Snapshot:
        """See raftlib.Storage."""
        return self._inner.snapshot()

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """See raftlib.NodeStorage."""
        return self._inner.create_snapshot(index, conf_state, data)

    def note_applied(self, index: int) -> None:
        """The wrapped storage's ``note_applied(index)`` (a RaftStore's), if it has one."""
        note = getattr(self._inner, "note_applied", None)
        if callable(note):
            note(index)

    @property
    def on_snapshot_kept(self) -> Callable[[object, FileSnapshotData], object] | None:
        """The wrapped storage's ``on_snapshot_kept`` hook (a RaftStore's), or None."""
        return getattr(self._inner, "on_snapshot_kept", None)

    @on_snapshot_kept.setter
    def on_snapshot_kept(self, hook: Callable[[object, FileSnapshotData], object] | None) -> None:
        if hasattr(self._inner, "on_snapshot_kept"):
            self._inner.on_snapshot_kept = hook

    @property
    def takes_snapshot_parts(self) -> bool:
        """The wrapped storage's ``takes_snapshot_parts`` (a RaftStore's), or False."""
        return bool(getattr(self._inner, "takes_snapshot_parts", False))

    def data_size(self) -> int | None:
        """The wrapped storage's ``data_size()`` (a RaftStore's), or None if it has none."""
        sized = getattr(self._inner, "data_size", None)
        return sized() if callable(sized) else None

    def compact(self, compact_index: int) -> None:
        """See raftlib.NodeStorage."""
        self._inner.compact(compact_index)


class _TimedStagingStorage(TimedStorage):
    """:class:`TimedStorage` over a :class:`raftlib.StagingStorage`."""

    _inner: StagingStorage

    def stage_snapshot(self, snapshot: Snapshot) -> None:
        """See raftlib.StagingStorage."""
        self._inner.stage_snapshot(snapshot)

    def adopt_snapshot(self, snapshot: Snapshot) -> None:
        """See raftlib.StagingStorage."""
        self._inner.adopt_snapshot(snapshot)


def render(metrics: MemberMetrics) -> bytes:
    """The metrics in Prometheus' text format."""
    from prometheus_client import generate_latest  # noqa: PLC0415

    return generate_latest(metrics.registry)


def health(member: Member) -> tuple[bool, str]:
    """Health as etcd's ``/health`` reports it: a leader is known and no alarm is raised."""
    if not member.node.running:
        return False, "member is not running"
    if not member.node.leader_id:
        return False, "no leader"
    alarms: Sequence[object] = member.applier.alarms()
    if alarms:
        return False, "alarm raised"
    return True, ""
