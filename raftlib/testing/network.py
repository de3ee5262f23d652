"""A deterministic in-memory cluster of ``RawNode``s over ``MemoryStorage``.

Messages are queued, never delivered implicitly: a test decides when to deliver, drop, or cut
links. Nodes process their Readys exactly as a careful application would (persist, then send,
then apply, then advance). Everything random (message loss, election jitter) flows from one seed.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable
from typing import Any

from raftlib.codec import decode_conf_change
from raftlib.config import Config
from raftlib.errors import ProposalDropped, StepPeerNotFoundError
from raftlib.rawnode import RawNode, Ready
from raftlib.storage import MemoryStorage
from raftlib.types import ConfChangeV2, ConfState, Entry, EntryType, Message, ReadState, StateType

__all__ = ["Network", "SimNode"]


class SimNode:
    """One simulated node: its storage, its ``RawNode`` and what it has applied."""

    def __init__(self, config: Config, storage: MemoryStorage) -> None:
        self.id = config.id
        self.config = config
        self.storage = storage
        self.raw = RawNode(config)
        self.applied: list[Entry] = []
        self.read_states: list[ReadState] = []
        self.conf_states: list[ConfState] = []
        self.apply_hook: Callable[[Entry], None] | None = None

    def handle_ready(self) -> list[Message]:
        """Process one Ready if there is one; returns the messages it produced."""
        if not self.raw.has_ready():
            return []
        rd = self.raw.ready()
        self.persist(rd)
        self.apply(rd)
        self.raw.advance(rd)
        return list(rd.messages) + list(rd.persisted_messages)

    def persist(self, rd: Ready) -> None:
        """Make ``rd``'s snapshot, entries and hard state durable in storage."""
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
        self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)

    def apply(self, rd: Ready) -> None:
        """Apply ``rd``'s committed entries (configuration changes included)."""
        if rd.snapshot is not None:
            self.conf_states.append(rd.snapshot.metadata.conf_state)
        for e in rd.committed_entries:
            if e.type != EntryType.NORMAL:
                cc = decode_conf_change(e.type, e.data) if e.data else None
                if cc is not None:
                    self.conf_states.append(self.raw.apply_conf_change(cc))
                else:
                    self.conf_states.append(self.raw.apply_conf_change(ConfChangeV2()))
            self.applied.append(e)
            if self.apply_hook is not None:
                self.apply_hook(e)
        self.read_states.extend(rd.read_states)

    @property
    def state(self) -> StateType:
        """The node's role."""
        return self.raw.status().soft_state.raft_state

    @property
    def term(self) -> int:
        """The node's current term."""
        return self.raw.status().hard_state.term

    @property
    def commit(self) -> int:
        """The node's commit index."""
        return self.raw.status().hard_state.commit

    def data_applied(self) -> list[bytes]:
        """Payloads of the normal, non-empty entries applied, in order."""
        return [e.data for e in self.applied if e.type == EntryType.NORMAL and e.data]


class Network:
    """A cluster of :class:`SimNode` plus a message queue with controllable links.

    Args:
        ids: the voters.
        seed: seeds every node's election jitter and the network's loss decisions.
        config: extra :class:`~raftlib.Config` fields for every node (e.g. ``pre_vote=True``).
    """

    def __init__(self, ids: Iterable[int], *, seed: int = 0, **config: Any) -> None:
        self.rng = random.Random(seed)
        self._seed = seed
        self._config = config
        self.nodes: dict[int, SimNode] = {}
        self.queue: list[Message] = []
        self.cut_links: set[tuple[int, int]] = set()
        self.drop_rates: dict[tuple[int, int], float] = {}
        self.ignored_types: set[Any] = set()
        self.delivered: list[Message] = []
        voters = tuple(sorted(ids))
        for i in voters:
            self.add_node(i, MemoryStorage(ConfState(voters=voters)))

    def add_node(self, node_id: int, storage: MemoryStorage, **overrides: Any) -> SimNode:
        """Start (or restart) ``node_id`` over ``storage``."""
        fields: dict[str, Any] = {
            "election_tick": 10,
            "heartbeat_tick": 1,
            "max_size_per_msg": 1 << 20,
            "max_inflight_msgs": 256,
        }
        fields.update(self._config)
        fields.update(overrides)
        cfg = Config(
            id=node_id,
            storage=storage,
            rng=random.Random(f"{self._seed}/{node_id}/{len(self.delivered)}"),
            **fields,
        )
        node = SimNode(cfg, storage)
        self.nodes[node_id] = node
        return node

    # -- links --

    def cut(self, a: int, b: int) -> None:
        """Drop every message between ``a`` and ``b`` (both directions)."""
        self.cut_links |= {(a, b), (b, a)}

    def isolate(self, node_id: int) -> None:
        """Cut ``node_id`` off from every other node."""
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between different groups."""
        sets = [set(g) for g in groups]
        for i, g in enumerate(sets):
            for h in sets[i + 1 :]:
                for a in g:
                    for b in h:
                        self.cut(a, b)

    def drop(self, frm: int, to: int, rate: float) -> None:
        """Drop each message from ``frm`` to ``to`` with probability ``rate``."""
        self.drop_rates[(frm, to)] = rate

    def ignore(self, t: Any) -> None:
        """Drop every message of type ``t``."""
        self.ignored_types.add(t)

    def heal(self) -> None:
        """Restore every link and stop dropping."""
        self.cut_links.clear()
        self.drop_rates.clear()
        self.ignored_types.clear()

    # -- driving --

    def send(self, msgs: Iterable[Message]) -> None:
        """Queue ``msgs``, applying the current link rules."""
        for m in msgs:
            if (m.from_, m.to) in self.cut_links or m.type in self.ignored_types:
                continue
            rate = self.drop_rates.get((m.from_, m.to), 0.0)
            if rate and self.rng.random() < rate:
                continue
            self.queue.append(m)

    def process_readys(self) -> bool:
        """Let every node handle its Ready once; returns whether any had one."""
        any_ready = False
        for node in list(self.nodes.values()):
            if node.raw.has_ready():
                any_ready = True
                self.send(node.handle_ready())
        return any_ready

    def deliver(self) -> int:
        """Deliver every queued message (in order); returns how many were delivered."""
        msgs, self.queue = self.queue, []
        n = 0
        for m in msgs:
            node = self.nodes.get(m.to)
            if node is None:
                continue
            n += 1
            self.delivered.append(m)
            with contextlib.suppress(StepPeerNotFoundError, ProposalDropped):
                node.raw.step(m)
        return n

    def stabilize(self, max_rounds: int = 10_000) -> None:
        """Process Readys and deliver messages until nothing is left to do."""
        for _ in range(max_rounds):
            progressed = self.process_readys()
            if self.queue:
                self.deliver()
                progressed = True
            if not progressed:
                return
        raise RuntimeError(f"network did not stabilize within {max_rounds} rounds")

    def tick(self, node_ids: Iterable[int] | None = None, n: int = 1) -> None:
        """Tick ``node_ids`` (default: all) ``n`` times, stabilizing after each tick."""
        ids = list(self.nodes) if node_ids is None else list(node_ids)
        for _ in range(n):
            for i in ids:
                self.nodes[i].raw.tick()
            self.stabilize()

    def campaign(self, node_id: int) -> None:
        """Make ``node_id`` campaign and run the election to quiescence."""
        self.nodes[node_id].raw.campaign()
        self.stabilize()

    def propose(self, node_id: int, data: bytes) -> None:
        """Propose ``data`` at ``node_id`` and replicate to quiescence."""
        self.nodes[node_id].raw.propose(data)
        self.stabilize()

    # -- observation --

    def leaders(self) -> list[int]:
        """Ids of nodes that believe they lead."""
        return [i for i, n in self.nodes.items() if n.state == StateType.LEADER]

    def leader(self) -> int | None:
        """The leader of the highest term, if any node leads."""
        best: tuple[int, int] | None = None
        for i, n in self.nodes.items():
            if n.state == StateType.LEADER and (best is None or n.term > best[0]):
                best = (n.term, i)
        return None if best is None else best[1]
