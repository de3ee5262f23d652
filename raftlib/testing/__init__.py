"""raftlib.testing: deterministic tools for testing raftlib and what users build on it.

Importable without pytest or hypothesis (modules that need hypothesis import it themselves).
"""

from raftlib.testing.network import Network, SimNode

__all__ = ["Network", "SimNode"]
