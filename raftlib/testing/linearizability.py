"""A linearizability checker for client histories (Wing & Gong search with Lowe's memoisation).

A history is a set of :class:`Operation` records: what a client asked (``input``), what it was
told (``output``), when it asked (``call``) and when it was told (``ret``). An operation that never
returned (the client timed out, the server crashed) has ``ret=None``: it may have taken effect at
any point after its call, or not at all. The history is linearizable if every operation can be
given a single instant between its call and its return such that the operations, run one after
another in that order against a sequential :class:`Model`, produce exactly the recorded outputs.

The search is the one Porcupine and Knossos use (Wing & Gong 1993, with Lowe's 2017 cache of
``(set of linearized operations, model state)`` pairs), run independently per partition of the
history (per key for a key-value store, which is what makes it fast). Times are any comparable
numbers: ``time.monotonic()`` from a real cluster, or a simulator's step counter.

This module depends only on the standard library and ``attrs``; kvapp's integration tests use it
on histories recorded from real processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import attrs

__all__ = [
    "History",
    "LinearizabilityResult",
    "Model",
    "Operation",
    "PartitionResult",
    "check_linearizability",
    "register_model",
]


@attrs.frozen
class Operation:
    """One client operation.

    Attributes:
        client: who issued it (only used in reports; the check needs no client identity).
        input: what was asked, in the form the :class:`Model` understands.
        output: what was answered; ``None`` when ``ret`` is ``None``.
        call: when it was issued.
        ret: when the answer arrived, or ``None`` if it never did (indeterminate).
        id: a number to name the operation in reports.
    """

    client: int
    input: Any
    output: Any
    call: float
    ret: float | None = None
    id: int = -1

    @property
    def pending(self) -> bool:
        """Whether no answer was observed (the operation may or may not have taken effect)."""
        return self.ret is None


def _single_partition(ops: Sequence[Operation]) -> list[Sequence[Operation]]:
    return [ops]


def _describe(op: Operation) -> str:
    out = "?" if op.pending else repr(op.output)
    return f"{op.input!r} -> {out}"


@attrs.frozen
class Model:
    """A sequential specification to check a history against.

    Attributes:
        init: the initial state. States must be hashable (they are memoised).
        step: ``step(state, input, output) -> (ok, new_state)``: whether ``output`` is a correct
            answer to ``input`` in ``state``, and the state afterwards. For a pending operation
            ``output`` is ``None`` and ``step`` must accept it (it is "any answer").
        partition: splits a history into independent sub-histories (e.g. per key); by default
            the whole history is one partition.
        read_only: ``read_only(input)`` says an operation cannot change the state; pending
            read-only operations are dropped before the search, since they constrain nothing.
        unobserved: ``unobserved(ops)`` returns the positions in ``ops`` of *pending*
            operations that no operation could have observed, to drop before the search (a
            pending operation may also never take effect; dropping one must not change the
            verdict). Without it each pending write is a branch of the search, and a long
            history with many of them can exhaust the budget ("unknown").
        describe: renders an operation for reports.
    """

    init: Callable[[], Hashable]
    step: Callable[[Any, Any, Any], tuple[bool, Any]]
    partition: Callable[[Sequence[Operation]], Iterable[Sequence[Operation]]] = _single_partition
    read_only: Callable[[Any], bool] | None = None
    unobserved: Callable[[Sequence[Operation]], set[int]] | None = None
    describe: Callable[[Operation], str] = _describe


def _register_step(state: Any, inp: Any, output: Any) -> tuple[bool, Any]:
    kind = inp[0]
    if kind == "put":
        return True, inp[2]
    if kind == "get":
        return output == state, state
    if kind == "cas":
        expected, new = inp[2], inp[3]
        if output is None:  # pending: it took effect if the compare held
            return True, new if state == expected else state
        succeeded, seen = output
        if succeeded:
            return state == expected, new
        return state != expected and seen == state, state
    raise ValueError(f"unknown register operation {inp!r}")


def _register_partition(ops: Sequence[Operation]) -> list[Sequence[Operation]]:
    by_key: dict[Any, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.input[1], []).append(op)
    return list(by_key.values())


def _unread_pending_puts(ops: Sequence[Operation]) -> set[int]:
    """The positions of pending puts whose value nothing read.

    Read means: a get of their key returned it, a compare-and-set of their key compared
    against it (whatever its outcome, or none yet), or a failed one saw it. Dropping such a
    put is sound: a put is a blind write, so in any linearization where it takes effect
    nothing reads its key between it and the next write of the key (that read would have
    seen its value), and taking it out leaves every other answer as it was; and a pending
    operation may also never take effect at all.
    """
    read = set()
    for op in ops:
        kind, key = op.input[0], op.input[1]
        if kind == "get" and not op.pending:
            read.add((key, op.output))
        elif kind == "cas":
            read.add((key, op.input[2]))
            if not op.pending:
                read.add((key, op.output[1]))
    return {
        i
        for i, op in enumerate(ops)
        if op.pending and op.input[0] == "put" and (op.input[1], op.input[2]) not in read
    }


def register_model(initial: Hashable = None) -> Model:
    """A map of independent read/write registers, partitioned by key.

    Inputs are ``("put", key, value)`` (output ignored), ``("get", key)`` (output: the value,
    ``initial`` for a key never written) and ``("cas", key, expected, new)``: set the key to
    ``new`` if it holds ``expected`` (output: ``(True, expected)`` if it did, else
    ``(False, value seen)``; a pending one took effect exactly if the compare held). Pending
    puts whose value nothing read are dropped before the search (see
    :attr:`Model.unobserved`).
    """
    return Model(
        init=lambda: initial,
        step=_register_step,
        partition=_register_partition,
        read_only=lambda inp: inp[0] == "get",
        unobserved=_unread_pending_puts,
    )


@attrs.frozen
class PartitionResult:
    """The verdict on one partition of a history.

    Attributes:
        ok: ``True`` if linearizable, ``False`` if not, ``None`` if the search hit its budget.
        operations: the partition's operations, ordered by call time.
        longest_prefix: when not linearizable, the longest sequence of operations the search
            managed to linearize (in linearization order): the first operation that cannot follow
            it is where the history goes wrong.
        stuck: when not linearizable, the operations that were candidates to come next after
            ``longest_prefix`` and were all rejected (or whose return forced a backtrack).
        steps: search steps spent.
    """

    ok: bool | None
    operations: tuple[Operation, ...]
    longest_prefix: tuple[Operation, ...] = ()
    stuck: tuple[Operation, ...] = ()
    steps: int = 0


@attrs.frozen
class LinearizabilityResult:
    """The verdict on a whole history.

    Attributes:
        ok: ``True`` if every partition is linearizable, ``False`` if one is not, ``None`` if
            no partition failed but one ran out of search budget.
        partitions: the result of each partition.
        model: the model checked against (used to render operations in :meth:`explain`).
    """

    ok: bool | None
    partitions: tuple[PartitionResult, ...]
    model: Model = attrs.field(repr=False)

    def __bool__(self) -> bool:
        return self.ok is True

    def failures(self) -> list[PartitionResult]:
        """The partitions that are not linearizable."""
        return [p for p in self.partitions if p.ok is False]

    def explain(self, limit: int = 40) -> str:
        """A human-readable account of the first failing partition (or "linearizable")."""
        if self.ok is True:
            return f"linearizable ({len(self.partitions)} partitions)"
        bad = self.failures()
        if not bad:
            return "unknown: the search budget ran out before a verdict"
        p = bad[0]
        desc = self.model.describe
        lines = [
            f"not linearizable: {len(bad)} of {len(self.partitions)} partitions fail; first one "
            f"({len(p.operations)} operations):"
        ]
        lines.append("  linearized so far, in order:")
        lines.extend(f"    {_fmt(op, desc)}" for op in p.longest_prefix[-limit:])
        lines.append("  then none of these can come next:")
        lines.extend(f"    {_fmt(op, desc)}" for op in p.stuck[:limit])
        return "\n".join(lines)


def _fmt(op: Operation, desc: Callable[[Operation], str]) -> str:
    ret = "..." if op.ret is None else f"{op.ret:g}"
    return f"#{op.id} client {op.client} [{op.call:g}, {ret}] {desc(op)}"


_CALL = 0
_RETURN = 1


def _check_partition(model: Model, ops: Sequence[Operation], max_steps: int) -> PartitionResult:
    """Wing & Gong search with memoisation over one partition (Porcupine's ``checkSingle``)."""
    ordered = tuple(sorted(ops, key=lambda o: (o.call, o.id)))
    n = len(ordered)
    if n == 0:
        return PartitionResult(ok=True, operations=ordered)
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ordered):
        events.append((op.call, _CALL, i))
        events.append((math.inf if op.ret is None else op.ret, _RETURN, i))
    # Calls sort before returns at equal times: touching intervals count as concurrent.
    events.sort()
    m = len(events)
    # A doubly linked list over event nodes 1..m; node 0 is the head sentinel, -1 is the end.
    nxt = [*range(1, m + 1), -1]
    nxt[m] = -1
    prv = [-1, *range(m)]
    kind = [0] * (m + 1)
    opi = [0] * (m + 1)
    match = [0] * (m + 1)
    call_node = [0] * n
    for pos, (_, k, i) in enumerate(events, start=1):
        kind[pos] = k
        opi[pos] = i
        if k == _CALL:
            call_node[i] = pos
        else:
            match[call_node[i]] = pos
    inputs = [op.input for op in ordered]
    outputs = [None if op.ret is None else op.output for op in ordered]
    step = model.step

    def lift(c: int) -> None:
        r = match[c]
        nxt[prv[c]] = nxt[c]
        if nxt[c] != -1:
            prv[nxt[c]] = prv[c]
        nxt[prv[r]] = nxt[r]
        if nxt[r] != -1:
            prv[nxt[r]] = prv[r]

    def unlift(c: int) -> None:
        r = match[c]
        nxt[prv[r]] = r
        if nxt[r] != -1:
            prv[nxt[r]] = r
        nxt[prv[c]] = c
        if nxt[c] != -1:
            prv[nxt[c]] = c

    state: Any = model.init()
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    calls: list[tuple[int, Any]] = []
    best: list[int] = []
    best_stuck: list[int] = []
    have_best = False
    steps = 0
    entry = nxt[0]
    while nxt[0] != -1:
        steps += 1
        if steps > max_steps:
            return PartitionResult(ok=None, operations=ordered, steps=steps)
        if kind[entry] == _CALL:
            i = opi[entry]
            ok, new_state = step(state, inputs[i], outputs[i])
            if ok:
                new_lin = linearized | (1 << i)
                key = (new_lin, new_state)
                if key not in cache:
                    cache.add(key)
                    calls.append((entry, state))
                    state = new_state
                    linearized = new_lin
                    lift(entry)
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
        else:
            if len(calls) > len(best) or not have_best:
                have_best = True
                best = [opi[c] for c, _ in calls]
                # Every operation still in the list up to this return is a candidate that
                # could not be placed next.
                stuck: list[int] = []
                e = nxt[0]
                while e != -1:
                    if kind[e] == _CALL:
                        stuck.append(opi[e])
                    else:
                        stuck.append(opi[e])
                        break
                    e = nxt[e]
                best_stuck = sorted(set(stuck))
            if not calls:
                return PartitionResult(
                    ok=False,
                    operations=ordered,
                    longest_prefix=tuple(ordered[i] for i in best),
                    stuck=tuple(ordered[i] for i in best_stuck),
                    steps=steps,
                )
            entry, state = calls.pop()
            linearized &= ~(1 << opi[entry])
            unlift(entry)
            entry = nxt[entry]
    return PartitionResult(ok=True, operations=ordered, steps=steps)


def check_linearizability(
    history: Iterable[Operation], model: Model, *, max_steps: int = 10_000_000
) -> LinearizabilityResult:
    """Check whether ``history`` is linearizable with respect to ``model``.

    Args:
        history: the operations; pending ones have ``ret=None``.
        model: the sequential specification (see :func:`register_model`).
        max_steps: search budget per partition; past it the verdict is ``None`` ("unknown").

    Returns:
        The verdict, with a diagnosis of the first failing partition.
    """
    ops = list(history)
    if model.read_only is not None:
        ro = model.read_only
        ops = [op for op in ops if not (op.pending and ro(op.input))]
    if model.unobserved is not None:
        dropped = model.unobserved(ops)
        ops = [op for i, op in enumerate(ops) if not (op.pending and i in dropped)]
    results = tuple(_check_partition(model, part, max_steps) for part in model.partition(ops))
    if any(r.ok is False for r in results):
        ok: bool | None = False
    elif any(r.ok is None for r in results):
        ok = None
    else:
        ok = True
    return LinearizabilityResult(ok=ok, partitions=results, model=model)


class History:
    """Records operations as they happen, for :func:`check_linearizability`.

    Call :meth:`invoke` when a client sends a request and :meth:`complete` when the answer
    arrives; :meth:`fail` when the request definitely had no effect (e.g. rejected before it
    reached the log). Operations neither completed nor failed stay pending (indeterminate).
    Times must come from one clock that all clients share (or a simulator's step counter).
    """

    def __init__(self) -> None:
        self._calls: dict[int, tuple[int, Any, float]] = {}
        self._done: dict[int, tuple[Any, float]] = {}
        self._failed: set[int] = set()
        self._next = 0

    def invoke(self, client: int, inp: Any, time: float) -> int:
        """Record a request; returns the operation's id."""
        op_id = self._next
        self._next += 1
        self._calls[op_id] = (client, inp, time)
        return op_id

    def complete(self, op_id: int, output: Any, time: float) -> None:
        """Record the answer to ``op_id`` (only the first answer counts)."""
        if op_id not in self._done and op_id not in self._failed:
            self._done[op_id] = (output, time)

    def fail(self, op_id: int) -> None:
        """Record that ``op_id`` definitely did not take effect; it is left out of the check."""
        if op_id not in self._done:
            self._failed.add(op_id)

    def is_pending(self, op_id: int) -> bool:
        """Whether ``op_id`` has neither completed nor failed."""
        return op_id not in self._done and op_id not in self._failed

    def pending(self) -> list[int]:
        """The ids of operations neither completed nor failed."""
        return [i for i in self._calls if self.is_pending(i)]

    def input(self, op_id: int) -> Any:
        """What ``op_id`` asked."""
        return self._calls[op_id][1]

    def __len__(self) -> int:
        return len(self._calls)

    def operations(self) -> list[Operation]:
        """Every operation that did not fail, pending ones with ``ret=None``."""
        out = []
        for op_id, (client, inp, call) in self._calls.items():
            if op_id in self._failed:
                continue
            done = self._done.get(op_id)
            if done is None:
                out.append(Operation(client, inp, None, call, None, op_id))
            else:
                out.append(Operation(client, inp, done[0], call, done[1], op_id))
        return out
