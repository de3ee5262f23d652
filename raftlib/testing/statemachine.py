"""The application side of a simulated cluster: a pluggable replicated state machine.

A :class:`StateMachine` turns committed commands into state, answers read-only queries, and
snapshots/restores itself. The simulator applies each committed entry on every node, serves
``read_index`` reads from the local state once applied far enough, and builds Raft snapshots from
:meth:`StateMachine.snapshot`. :class:`KVStateMachine` is the default: a string-to-string map.

To property-test your own state machine, implement the protocol (four methods, bytes in and out)
and hand a factory to :class:`~raftlib.testing.cluster.Cluster` or
:class:`~raftlib.testing.machine.ClusterMachine`; give a :class:`~raftlib.testing.linearizability.
Model` of it to have client histories checked for linearizability too.
"""

from __future__ import annotations

from typing import Any, Protocol

import cbor2

from raftlib.testing.linearizability import Model, register_model

__all__ = [
    "KVStateMachine",
    "StateMachine",
    "kv_get",
    "kv_model",
    "kv_put",
]


class StateMachine(Protocol):
    """What the simulator needs of an application state machine.

    The simulator guarantees what Raft guarantees: on each node, :meth:`apply` sees the committed
    commands in log order, each once per incarnation of the node (a restarted node starts from
    its latest snapshot and re-applies what follows). Deduplication of commands that a client or
    the network submitted twice is done by the simulator (per operation id, like the client
    sessions of thesis §6.3), so ``apply`` need not do it.
    """

    def apply(self, command: bytes) -> bytes:
        """Apply one committed command; returns the answer for the client."""
        ...

    def query(self, query: bytes) -> bytes:
        """Answer a read-only query from the current state (must not change it)."""
        ...

    def snapshot(self) -> bytes:
        """The whole state, for a Raft snapshot."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with one produced by :meth:`snapshot`."""
        ...


def kv_put(key: str, value: str) -> bytes:
    """The :class:`KVStateMachine` command that sets ``key`` to ``value``."""
    return cbor2.dumps(["put", key, value])


def kv_get(key: str) -> bytes:
    """The :class:`KVStateMachine` query that reads ``key``."""
    return cbor2.dumps(["get", key])


class KVStateMachine:
    """A string-to-string map: commands from :func:`kv_put`, queries from :func:`kv_get`.

    A query's answer is the CBOR encoding of the value, or of ``None`` for a missing key.
    """

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, command: bytes) -> bytes:
        """Apply a ``put``; returns ``b""``."""
        op = cbor2.loads(command)
        if not isinstance(op, list) or len(op) != 3 or op[0] != "put":
            raise ValueError(f"not a KV command: {op!r}")
        self.data[op[1]] = op[2]
        return b""

    def query(self, query: bytes) -> bytes:
        """Answer a ``get``."""
        op = cbor2.loads(query)
        if not isinstance(op, list) or len(op) != 2 or op[0] != "get":
            raise ValueError(f"not a KV query: {op!r}")
        return cbor2.dumps(self.data.get(op[1]))

    def snapshot(self) -> bytes:
        """The map, CBOR-encoded."""
        return cbor2.dumps(self.data)

    def restore(self, data: bytes) -> None:
        """Replace the map."""
        restored = cbor2.loads(data)
        if not isinstance(restored, dict):
            raise ValueError("not a KV snapshot")
        self.data = dict(restored)


def _kv_input(inp: Any) -> tuple[Any, ...]:
    kind, payload = inp
    op = cbor2.loads(payload)
    if kind == "write":
        return ("put", op[1], op[2])
    return ("get", op[1])


def _kv_step(state: Any, inp: Any, output: Any) -> tuple[bool, Any]:
    op = _kv_input(inp)
    if op[0] == "put":
        return True, op[2]
    return (output is not None and cbor2.loads(output) == state), state


def _kv_partition(ops: Any) -> list[Any]:
    by_key: dict[str, list[Any]] = {}
    for op in ops:
        by_key.setdefault(_kv_input(op.input)[1], []).append(op)
    return list(by_key.values())


def kv_model() -> Model:
    """The linearizability :class:`Model` of :class:`KVStateMachine` as the simulator records it.

    The simulator records a write as ``("write", command)`` and a read as ``("read", query)``
    (outputs are the state machine's answers, as bytes).
    """
    base = register_model()
    return Model(
        init=base.init,
        step=_kv_step,
        partition=_kv_partition,
        read_only=lambda inp: inp[0] == "read",
        describe=_kv_describe,
    )


def _kv_describe(op: Any) -> str:
    parsed = _kv_input(op.input)
    if parsed[0] == "put":
        return f"put {parsed[1]}={parsed[2]}"
    if op.pending:
        return f"get {parsed[1]} -> ?"
    return f"get {parsed[1]} -> {cbor2.loads(op.output)!r}"
