"""Whole kvapp clusters under deterministic simulation, to test code that uses them.

:func:`run` starts a cluster of real :class:`~kvapp.node.Member` s in one process, on a
:class:`SimLoop` (an asyncio loop whose clock jumps to the next timer, so a minute of cluster
life takes a second or two), with a simulated peer network (:class:`SimNet`: delays, losses,
partitions) and a simulated disk per member that can lose power
(:class:`~kvapp.storage.simfs.SimFileSystem`), and hands it to your scenario.
:meth:`SimCluster.client` gives kvapp's own :class:`~kvapp.client.AsyncClient` over the
simulated network. A seed fixes the whole run, so a failure replays exactly. kvapp's own
tests run its linearizability, lease, watch and lock checks this way
(``tests/kvapp/test_cluster_sim.py``, ``test_client_sim.py``, ``test_recipes_sim.py``).

See docs/simulation.md.
"""

from kvapp.testing.sim import (
    InlineExecutor,
    SimCluster,
    SimConnector,
    SimLinks,
    SimLoop,
    SimNet,
    run,
)

__all__ = [
    "InlineExecutor",
    "SimCluster",
    "SimConnector",
    "SimLinks",
    "SimLoop",
    "SimNet",
    "run",
]
