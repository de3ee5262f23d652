"""Per-attempt timeouts for many concurrent requests, on one loop timer.

``asyncio.timeout`` arms a loop timer and cancels it again for every use: about 4 µs per
request here, some 15% of a pipelining client's CPU. Every attempt a client makes has the same
timeout, so deadlines expire in the order they were set: one FIFO queue and one timer, armed
for the oldest unfinished attempt, do the same work for almost nothing per request.

The semantics are ``asyncio.timeout``'s: at the deadline the attempt's task is cancelled, and
the CancelledError becomes a TimeoutError where the attempt ends, unless the task was also
cancelled from outside (then the CancelledError propagates).
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Attempt", "Deadlines"]

_PENDING, _FIRED, _ENDED = 0, 1, 2


class Attempt:
    """One timed attempt: its deadline, its task, and where it stands."""

    __slots__ = ("cancelling", "deadline", "state", "task")

    def __init__(self, deadline: float, task: asyncio.Task[object]) -> None:
        self.deadline = deadline
        self.task = task
        self.cancelling = task.cancelling()
        self.state = _PENDING


class Deadlines:
    """Times attempts that all have the same ``timeout``, in seconds (0 or more).

    Use from inside a task::

        attempt = deadlines.start()
        try:
            return await call()
        except asyncio.CancelledError:
            if deadlines.end(attempt):
                raise TimeoutError from None
            raise
        finally:
            deadlines.end(attempt)
    """

    __slots__ = ("_loop", "_queue", "_timer", "timeout")

    def __init__(self, timeout: float) -> None:
        if not timeout >= 0:  # 0: every attempt times out at once, as asyncio.timeout(0) does
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self.timeout = timeout
        self._queue: deque[Attempt] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> Attempt:
        """Start timing the current task's attempt.

        Raises:
            RuntimeError: not called from inside a task.
        """
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.start() must be called from inside a task")
        loop = task.get_loop()
        if loop is not self._loop:  # first use, or a new loop: the old one's timer is gone
            self._loop, self._queue, self._timer = loop, deque(), None
        attempt = Attempt(loop.time() + self.timeout, task)
        self._queue.append(attempt)
        if self._timer is None:
            self._timer = loop.call_at(attempt.deadline, self._expire, loop)
        return attempt

    def end(self, attempt: Attempt) -> bool:
        """The attempt is over (idempotent); whether it ended because its deadline passed.

        True only once, and only if the task's cancellation was this deadline's alone: the
        caller then raises TimeoutError in place of the CancelledError.
        """
        if attempt.state == _FIRED:
            attempt.state = _ENDED
            return attempt.task.uncancel() <= attempt.cancelling
        if attempt.state == _PENDING:
            attempt.state = _ENDED
            queue = self._queue
            while queue and queue[0].state != _PENDING:
                queue.popleft()
        return False

    def __len__(self) -> int:
        """Attempts still queued (unfinished ones, and finished ones behind an unfinished one)."""
        return len(self._queue)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return  # a timer of a loop this no longer runs on
        self._timer = None
        queue = self._queue
        now = loop.time()
        while queue:
            attempt = queue[0]
            if attempt.state == _PENDING:
                if attempt.deadline > now:
                    self._timer = loop.call_at(attempt.deadline, self._expire, loop)
                    return
                attempt.state = _FIRED
                attempt.task.cancel()
            queue.popleft()
