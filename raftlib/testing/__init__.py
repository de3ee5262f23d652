"""raftlib.testing: deterministic tools for testing raftlib and what users build on it.

* :class:`Network`: a simple in-memory network of nodes for scripted scenario tests.
* :class:`Cluster`: a simulated cluster in which every fault is an explicit, recorded event
  (message loss, duplication, reordering, partitions, one-way cuts, crashes that lose or tear
  the unsynced part of a Ready, restarts from disk, skewed clocks), with clients, and with Raft's
  safety properties checked after every step (:class:`SafetyChecker`).
* :class:`Simulation` / :func:`run_simulation`: seeded random fault schedules in virtual time,
  and :func:`shrink` to cut a failing schedule down.
* :func:`check_linearizability`: a linearizability checker for client histories, also usable on
  histories recorded from real clusters.
* ``raftlib.testing.strategies`` and ``raftlib.testing.machine.ClusterMachine``: hypothesis
  strategies and a rule-based state machine (these two modules need ``hypothesis``).
* ``python -m raftlib.testing.replay``: replays a schedule step by step.
* :func:`check_storage`: a conformance check for your own ``Storage`` implementation.

Importable without pytest or hypothesis. See ``docs/testing.md``.
"""

from raftlib.testing.cluster import (
    Cluster,
    ClusterConfig,
    ClusterNode,
    InFlight,
    format_script,
    parse_script,
)
from raftlib.testing.events import (
    Event,
    MessageSelector,
    ScriptError,
    format_event,
    parse_event,
)
from raftlib.testing.invariants import (
    PROPERTIES,
    InvariantViolation,
    LivenessViolation,
    NodeObservation,
    NotLinearizable,
    SafetyChecker,
    check_nodes,
)
from raftlib.testing.linearizability import (
    History,
    LinearizabilityResult,
    Model,
    Operation,
    PartitionResult,
    check_linearizability,
    register_model,
)
from raftlib.testing.network import Network, SimNode
from raftlib.testing.sim import (
    FaultProfile,
    LinkFaults,
    Simulation,
    SimulationResult,
    run_simulation,
    shrink,
)
from raftlib.testing.statemachine import KVStateMachine, StateMachine, kv_get, kv_model, kv_put
from raftlib.testing.storage_check import StorageMismatch, WritableStorage, check_storage

__all__ = [
    "PROPERTIES",
    "Cluster",
    "ClusterConfig",
    "ClusterNode",
    "Event",
    "FaultProfile",
    "History",
    "InFlight",
    "InvariantViolation",
    "KVStateMachine",
    "LinearizabilityResult",
    "LinkFaults",
    "LivenessViolation",
    "MessageSelector",
    "Model",
    "Network",
    "NodeObservation",
    "NotLinearizable",
    "Operation",
    "PartitionResult",
    "SafetyChecker",
    "ScriptError",
    "SimNode",
    "Simulation",
    "SimulationResult",
    "StateMachine",
    "StorageMismatch",
    "WritableStorage",
    "check_linearizability",
    "check_nodes",
    "check_storage",
    "format_event",
    "format_script",
    "kv_get",
    "kv_model",
    "kv_put",
    "parse_event",
    "parse_script",
    "register_model",
    "run_simulation",
    "shrink",
]
