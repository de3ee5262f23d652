"""What the Maintenance service needs beyond :class:`~kvapp.service.KvService`.

:class:`~kvapp.service.KvService` has no hashes or leader transfer, so the etcd API takes them
from a :class:`MaintenanceBackend`; :class:`MemberMaintenance` implements it on a
:class:`kvapp.node.Member` through the member's public parts (its applier, state and Raft
node). Without a backend the Maintenance service answers HashKV, Hash and MoveLeader with
UNIMPLEMENTED. (Alarms are the service's own: :meth:`kvapp.service.KvService.alarm`.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from kvapp.errors import EtcdError, GrpcCode, NotLeaderError
from kvapp.mvcc.types import HashKVResponse

if TYPE_CHECKING:
    from kvapp.node import Member

__all__ = [
    "BadLeaderTransfereeError",
    "LeaderTransferTimeoutError",
    "MaintenanceBackend",
    "MemberMaintenance",
]


class BadLeaderTransfereeError(EtcdError):
    """MoveLeader named a member that is not a voter of the cluster."""

    message = "etcdserver: bad leader transferee"
    code = GrpcCode.FAILED_PRECONDITION


class LeaderTransferTimeoutError(EtcdError):
    """The transferee did not become leader in time (etcd 3.4 sends it with code Unknown)."""

    message = "etcdserver: request timed out, leader transfer took too long"
    code = GrpcCode.UNKNOWN


class MaintenanceBackend(Protocol):
    """Hashes and leader transfer of one member."""

    def hash_kv(self, revision: int) -> HashKVResponse:
        """The key-value history's hash up to ``revision`` (0: the current revision).

        Raises:
            EtcdError: ``CompactedError`` or ``FutureRevisionError``.
        """
        ...

    def hash(self) -> int:
        """A hash of the whole replicated state."""
        ...

    async def move_leader(self, target_id: int) -> None:
        """Hand leadership to ``target_id``; this member must be the leader.

        Raises:
            EtcdError: ``NotLeaderError``, ``BadLeaderTransfereeError``,
                ``LeaderTransferTimeoutError``.
        """
        ...


class MemberMaintenance:
    """:class:`MaintenanceBackend` on a :class:`kvapp.node.Member`.

    Args:
        member: the member.
        transfer_timeout: seconds MoveLeader waits for the transferee to take over.
    """

    def __init__(self, member: Member, *, transfer_timeout: float = 5.0) -> None:
        self._member = member
        self._transfer_timeout = transfer_timeout

    def hash_kv(self, revision: int) -> HashKVResponse:
        """See MaintenanceBackend."""
        return self._member.kv.store.hash_kv(revision)

    def hash(self) -> int:
        """See MaintenanceBackend."""
        return self._member.applier.hash()

    async def move_leader(self, target_id: int) -> None:
        """See MaintenanceBackend."""
        from raftlib import NodeStopped, NodeTimeout  # noqa: PLC0415

        node = self._member.node
        if not node.is_leader:
            raise NotLeaderError
        voters = {m.id for m in self._member.member_list() if not m.is_learner}
        if target_id not in voters:
            raise BadLeaderTransfereeError(f"{target_id:x} is not a voting member")
        if target_id == self._member.id:
            return
        try:
            await node.transfer_leader(target_id, timeout=self._transfer_timeout)
        except (NodeTimeout, NodeStopped) as e:
            raise LeaderTransferTimeoutError(str(e)) from None
