"""The steps a simulated cluster takes, and their text form: a replayable schedule.

Every input to a :class:`~raftlib.testing.cluster.Cluster` is an :class:`Event`. The cluster
records the events it executes, and ``format_script``/``parse_script`` turn that record into a
short text program and back, one event per line::

    # raftlib.testing schedule v1
    cluster voters=1,2,3 seed=7 pre_vote=1 check_quorum=1
    tick 1 x12
    deliver 1->2 PRE_VOTE
    sync 2
    crash 2 torn=1
    partition 1 | 2 3
    put 1 k1 v5
    get 2 k1
    retry 2
    stabilize

Messages are named by sender, receiver and type (and ``#n`` for the n-th such message in
flight, oldest first), not by position, so a schedule still reads the same, and still runs, after
events are deleted from it while shrinking. An event that names a message that is not in flight
does nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import cbor2

from raftlib.types import MessageType

__all__ = [
    "Campaign",
    "Compact",
    "Conf",
    "Crash",
    "Cut",
    "Deliver",
    "Drop",
    "Duplicate",
    "Event",
    "Heal",
    "Liveness",
    "MessageSelector",
    "Partition",
    "Read",
    "Restart",
    "Retry",
    "Run",
    "ScriptError",
    "Stabilize",
    "Sync",
    "Tick",
    "Transfer",
    "Write",
    "format_event",
    "parse_event",
]


class ScriptError(ValueError):
    """A schedule line could not be parsed."""


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class MessageSelector:
    """Names an in-flight message: the ``nth`` (1-based, oldest first) from ``frm`` to ``to``.

    ``type`` narrows it to one message type; ``None`` matches any.
    """

    frm: int
    to: int
    type: MessageType | None = None
    nth: int = 1

    def __str__(self) -> str:
        s = f"{self.frm}->{self.to}"
        if self.type is not None:
            s += f" {self.type.name}"
        if self.nth != 1:
            s += f" #{self.nth}"
        return s

    @classmethod
    def parse(cls, words: list[str]) -> MessageSelector:
        """Parse ``["1->2", "APP", "#2"]`` (type and ordinal optional)."""
        if not words or "->" not in words[0]:
            raise ScriptError(f"expected FROM->TO, got {' '.join(words)!r}")
        a, b = words[0].split("->", 1)
        t: MessageType | None = None
        nth = 1
        for w in words[1:]:
            if w.startswith("#"):
                nth = int(w[1:])
            else:
                try:
                    t = MessageType[w]
                except KeyError:
                    raise ScriptError(f"unknown message type {w!r}") from None
        return cls(int(a), int(b), t, nth)


@attrs.frozen
class Tick:
    """Tick ``node`` ``n`` times (election and heartbeat timers)."""

    node: int
    n: int = 1


@attrs.frozen
class Deliver:
    """Deliver the selected message (it is dropped if its link is cut or its receiver down)."""

    msg: MessageSelector


@attrs.frozen
class Drop:
    """Lose the selected message."""

    msg: MessageSelector


@attrs.frozen
class Duplicate:
    """Put a second copy of the selected message in flight (the copy is the newest)."""

    msg: MessageSelector


@attrs.frozen
class Sync:
    """Finish ``node``'s pending write: persist its Ready, send what waited for it, apply."""

    node: int


@attrs.frozen
class Crash:
    """Stop ``node``, losing its volatile state.

    ``torn`` is how many items of its pending write (snapshot, each entry, the hard state, in that
    order) reach the disk anyway; ``None`` loses the whole pending write.
    """

    node: int
    torn: int | None = None


@attrs.frozen
class Restart:
    """Start a crashed ``node`` again from its durable storage."""

    node: int


@attrs.frozen
class Partition:
    """Cut every link between different ``groups`` (both directions); other cuts remain."""

    groups: tuple[tuple[int, ...], ...]


@attrs.frozen
class Cut:
    """Cut the one-way link from ``frm`` to ``to``."""

    frm: int
    to: int


@attrs.frozen
class Heal:
    """Restore every link."""


@attrs.frozen
class Campaign:
    """Make ``node`` start an election now."""

    node: int


@attrs.frozen
class Write:
    """A client submits ``command`` at ``node`` (a proposal the client waits on)."""

    node: int
    command: bytes


@attrs.frozen
class Read:
    """A client asks ``node`` to answer ``query`` linearizably (through ``read_index``)."""

    node: int
    query: bytes


@attrs.frozen
class Retry:
    """A client reads at ``node`` again, reusing the request context of ``node``'s latest read.

    Applications retry a ``read_index`` with the same context after a timeout, or reuse one
    context for many reads. When every earlier request with that context was made while
    ``node`` led (so each produced at most one ``ReadState``, in order), the retry is recorded as
    a new read invoked now, and the read states for the context answer the reads first come,
    first served; otherwise it only re-sends the request of the reads already waiting.
    """

    node: int


@attrs.frozen
class Transfer:
    """Ask ``node`` to transfer leadership to ``target``."""

    node: int
    target: int


@attrs.frozen
class Conf:
    """Propose a membership change at ``node``.

    ``changes`` are ``v<id>`` (make a voter), ``l<id>`` (make a learner), ``r<id>`` (remove);
    ``transition`` is ``auto``, ``implicit`` or ``explicit`` (joint consensus modes). No changes
    means "leave the joint configuration".
    """

    node: int
    changes: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    transition: str = attrs.field(default="auto")

    @changes.validator
    def _check_changes(self, _: object, value: tuple[str, ...]) -> None:
        for c in value:
            if c[:1] not in ("v", "l", "r") or not c[1:].isdigit():
                raise ValueError(f"bad configuration change {c!r} (want v<id>, l<id>, r<id>)")

    @transition.validator
    def _check_transition(self, _: object, value: str) -> None:
        if value not in ("auto", "implicit", "explicit"):
            raise ValueError(f"bad transition {value!r} (want auto, implicit or explicit)")


@attrs.frozen
class Compact:
    """``node`` snapshots its state machine at its applied index and compacts its log."""

    node: int


@attrs.frozen
class Stabilize:
    """Deliver every message and finish every write, repeatedly, until nothing is left to do."""


@attrs.frozen
class Run:
    """``n`` rounds of: tick every running node once, then stabilize."""

    n: int = 1


@attrs.frozen
class Liveness:
    """Heal, restart every node, then require progress within ``ticks`` reliable rounds.

    Within the bound a leader must be elected and a fresh write must commit and be applied on
    every running member (see :meth:`~raftlib.testing.cluster.Cluster.check_liveness`).
    """

    ticks: int = 200


Event = (
    Tick
    | Deliver
    | Drop
    | Duplicate
    | Sync
    | Crash
    | Restart
    | Partition
    | Cut
    | Heal
    | Campaign
    | Write
    | Read
    | Retry
    | Transfer
    | Conf
    | Compact
    | Stabilize
    | Run
    | Liveness
)
"""Anything a cluster can be told to do."""


def _kv_words(data: bytes, kind: str) -> list[str] | None:
    """``put k v`` / ``get k`` for commands of the default KV state machine, else None."""
    try:
        op = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError):
        return None
    if not isinstance(op, list) or not all(isinstance(w, str) and w and " " not in w for w in op):
        return None
    if kind == "write" and len(op) == 3 and op[0] == "put":
        return list(op)
    if kind == "read" and len(op) == 2 and op[0] == "get":
        return list(op)
    return None


def format_event(e: Event) -> str:
    """The one-line text form of ``e`` (inverse of :func:`parse_event`)."""
    match e:
        case Tick(node, n):
            return f"tick {node}" + (f" x{n}" if n != 1 else "")
        case Deliver(msg):
            return f"deliver {msg}"
        case Drop(msg):
            return f"drop {msg}"
        case Duplicate(msg):
            return f"dup {msg}"
        case Sync(node):
            return f"sync {node}"
        case Crash(node, torn):
            return f"crash {node}" + (f" torn={torn}" if torn is not None else "")
        case Restart(node):
            return f"restart {node}"
        case Partition(groups):
            return "partition " + " | ".join(" ".join(map(str, g)) for g in groups)
        case Cut(frm, to):
            return f"cut {frm}->{to}"
        case Heal():
            return "heal"
        case Campaign(node):
            return f"campaign {node}"
        case Write(node, command):
            kv = _kv_words(command, "write")
            if kv is not None:
                return f"put {node} {kv[1]} {kv[2]}"
            return f"write {node} {command.hex()}"
        case Read(node, query):
            kv = _kv_words(query, "read")
            if kv is not None:
                return f"get {node} {kv[1]}"
            return f"read {node} {query.hex()}"
        case Retry(node):
            return f"retry {node}"
        case Transfer(node, target):
            return f"transfer {node} {target}"
        case Conf(node, changes, transition):
            words = [f"conf {node}"]
            if transition != "auto":
                words.append(transition)
            words.extend(changes)
            if not changes:
                words.append("leave")
            return " ".join(words)
        case Compact(node):
            return f"compact {node}"
        case Stabilize():
            return "stabilize"
        case Run(n):
            return f"run {n}"
        case Liveness(ticks):
            return f"liveness {ticks}"
    raise TypeError(f"not an event: {e!r}")


def parse_event(line: str) -> Event:
    """Parse one schedule line (see the module docstring for the forms).

    Raises:
        ScriptError: the line is not a valid event.
    """
    words = line.split()
    if not words:
        raise ScriptError("empty line")
    verb, args = words[0], words[1:]
    try:
        return _parse(verb, args)
    except ScriptError:
        raise
    except (ValueError, IndexError) as exc:
        raise ScriptError(f"bad {verb!r} line {line!r}: {exc}") from None


def _parse(verb: str, args: list[str]) -> Event:
    match verb:
        case "tick":
            n = int(args[1][1:]) if len(args) > 1 and args[1].startswith("x") else 1
            return Tick(int(args[0]), n)
        case "deliver":
            return Deliver(MessageSelector.parse(args))
        case "drop":
            return Drop(MessageSelector.parse(args))
        case "dup":
            return Duplicate(MessageSelector.parse(args))
        case "sync":
            return Sync(int(args[0]))
        case "crash":
            torn = None
            for a in args[1:]:
                if a.startswith("torn="):
                    torn = int(a[5:])
            return Crash(int(args[0]), torn)
        case "restart":
            return Restart(int(args[0]))
        case "partition":
            groups = " ".join(args).split("|")
            return Partition(tuple(tuple(int(x) for x in g.split()) for g in groups))
        case "cut":
            a, b = args[0].split("->", 1)
            return Cut(int(a), int(b))
        case "heal":
            return Heal()
        case "campaign":
            return Campaign(int(args[0]))
        case "put":
            return Write(int(args[0]), cbor2.dumps(["put", args[1], args[2]]))
        case "write":
            return Write(int(args[0]), bytes.fromhex(args[1]))
        case "get":
            return Read(int(args[0]), cbor2.dumps(["get", args[1]]))
        case "read":
            return Read(int(args[0]), bytes.fromhex(args[1]))
        case "retry":
            return Retry(int(args[0]))
        case "transfer":
            return Transfer(int(args[0]), int(args[1]))
        case "conf":
            node = int(args[0])
            rest = args[1:]
            transition = "auto"
            if rest and rest[0] in ("auto", "implicit", "explicit"):
                transition, rest = rest[0], rest[1:]
            if rest == ["leave"]:
                rest = []
            return Conf(node, tuple(rest), transition)
        case "compact":
            return Compact(int(args[0]))
        case "stabilize":
            return Stabilize()
        case "run":
            return Run(int(args[0]) if args else 1)
        case "liveness":
            return Liveness(int(args[0]) if args else 200)
        case _:
            raise ScriptError(f"unknown event {verb!r}")
