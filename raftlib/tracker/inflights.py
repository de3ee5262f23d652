"""The window of appends sent to a follower but not yet acknowledged. Internal."""

from __future__ import annotations

from collections import deque


class Inflights:
    """A bounded FIFO of (last index, bytes) per in-flight append message.

    Full when it holds ``capacity`` messages, or when ``max_bytes`` (if non-zero) is reached:
    the leader then stops sending entries to that follower until acknowledgements free space.
    """

    __slots__ = ("_bytes", "_queue", "capacity", "max_bytes")

    def __init__(self, capacity: int, max_bytes: int = 0) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._queue: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def clone(self) -> Inflights:
        """An independent copy."""
        c = Inflights(self.capacity, self.max_bytes)
        c._queue = self._queue.copy()
        c._bytes = self._bytes
        return c

    def add(self, index: int, size: int) -> bool:
        """Record a message whose last entry is ``index`` carrying ``size`` payload bytes.

        Returns:
            Whether the window is now :meth:`full`.
        """
        q = self._queue
        q.append((index, size))
        self._bytes += size
        return len(q) >= self.capacity or (self.max_bytes > 0 and self._bytes >= self.max_bytes)

    def free_le(self, index: int) -> None:
        """Release every message whose last index is ``<= index`` (they were acknowledged)."""
        q = self._queue
        while q and q[0][0] <= index:
            self._bytes -= q.popleft()[1]

    def full(self) -> bool:
        """Whether no more messages may be sent."""
        return len(self._queue) >= self.capacity or (
            self.max_bytes > 0 and self._bytes >= self.max_bytes
        )

    def count(self) -> int:
        """Messages in flight."""
        return len(self._queue)

    @property
    def bytes(self) -> int:
        """Payload bytes in flight."""
        return self._bytes

    def reset(self) -> None:
        """Forget every in-flight message."""
        self._queue.clear()
        self._bytes = 0
