"""A short, deterministic tour of a simulated 3-node cluster: ``python -m raftlib.testing.demo``.

Shows an election, replication, the leader being partitioned away, a new leader taking over, and
the old leader catching up after the partition heals. Useful as a first look at raftlib and as a
template for driving ``RawNode`` by hand.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from raftlib.testing.network import Network


def _show(net: Network, title: str) -> None:
    print(f"\n== {title}")
    for i, n in sorted(net.nodes.items()):
        st = n.raw.status()
        print(
            f"  node {i}: {st.soft_state.raft_state.name:<13} term={st.hard_state.term} "
            f"commit={st.hard_state.commit} applied={[d.decode() for d in n.data_applied()]}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tour; returns a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1, help="seed for election jitter")
    args = parser.parse_args(argv)

    net = Network([1, 2, 3], seed=args.seed, pre_vote=True, check_quorum=True)
    _show(net, "three fresh nodes, no leader yet")

    ticks = 0
    while net.leader() is None:
        net.tick()
        ticks += 1
    first = net.leader()
    if first is None:
        raise RuntimeError("no leader elected")
    _show(net, f"after {ticks} ticks node {first} won an election")

    for word in ("alpha", "beta", "gamma"):
        net.propose(first, word.encode())
    _show(net, f"three writes proposed at node {first}, committed on all")

    net.isolate(first)
    ticks = 0
    while (net.leader() in (None, first)) and ticks < 100:
        net.tick()
        ticks += 1
    second = net.leader()
    if second is None or second == first:
        raise RuntimeError("no new leader after partitioning the old one")
    net.propose(second, b"delta")
    _show(
        net,
        f"node {first} partitioned away; node {second} leads after {ticks} ticks "
        f"(node {first} may still believe it leads, but it can commit nothing)",
    )

    net.heal()
    net.tick(n=3)
    _show(net, f"partition healed: node {first} stepped down and caught up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
