"""Replay a simulation schedule step by step: ``python -m raftlib.testing.replay``.

Give it a schedule file (as printed by a failing ``ClusterMachine`` or by ``Cluster.script()``;
``-`` reads standard input), or a seed to re-run a :class:`~raftlib.testing.sim.Simulation`::

    python -m raftlib.testing.replay failing.txt
    python -m raftlib.testing.replay --seed 42 --conf-every 2000 --shrink --save min.txt
    python -m raftlib.testing.replay --state-machine myapp.sm:Counter \
        --model myapp.sm:COUNTER_MODEL failing.txt

``--state-machine`` and ``--model`` name your own state machine (a class or factory) and its
linearizability model as ``module:attribute`` (the attribute may be dotted, as in
``tests.test_app:CounterMachine.model``); without a model, a custom state machine's history is
not checked. ``--quiet`` prints only the verdict.

After every event it prints each node's role, term, vote, commit, applied index and log (terms
run-length encoded, ``snap@i/tT`` for a snapshot), plus the messages in flight and the cut
links. The exit status is 0 if every check passed, 1 if one failed (the failure is printed
last), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from raftlib.testing.cluster import Cluster, ClusterConfig
from raftlib.testing.events import Event, ScriptError, format_event
from raftlib.testing.invariants import NotLinearizable
from raftlib.testing.linearizability import Model
from raftlib.testing.sim import FaultProfile, Simulation, shrink
from raftlib.testing.statemachine import KVStateMachine, StateMachine

__all__ = ["main"]


def _printer(out: TextIO, tail: int | None) -> tuple[list[str], Callable[[Cluster, Event], None]]:
    buffered: list[str] = []

    def trace(cluster: Cluster, e: Event) -> None:
        text = f"[{len(cluster.events)}] {format_event(e)}\n{cluster.describe()}\n"
        if tail is None:
            out.write(text)
        else:
            buffered.append(text)
            del buffered[:-tail]

    return buffered, trace


def _resolve(spec: str) -> Any:
    """The object ``module:attr.path`` names.

    Raises:
        ValueError: ``spec`` is malformed, or names nothing importable.
    """
    module, sep, path = spec.partition(":")
    if not sep or not module or not path:
        raise ValueError(f"expected module:attribute, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module)
        for name in path.split("."):
            obj = getattr(obj, name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {spec!r}: {exc}") from None
    return obj


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raftlib.testing.replay",
        description="Replay a raftlib simulation schedule (or a seeded run) step by step.",
    )
    p.add_argument("script", nargs="?", help="schedule file, or - for standard input")
    p.add_argument("--seed", type=int, help="re-run the seeded random simulation instead")
    p.add_argument("--duration", type=int, default=30_000, help="virtual time of a seeded run")
    p.add_argument("--voters", default="1,2,3", help="initial voters of a seeded run")
    p.add_argument("--learners", default="", help="initial learners of a seeded run")
    p.add_argument("--spares", default="", help="spare nodes of a seeded run")
    p.add_argument("--snapshot-every", type=int, default=0, help="compaction interval")
    p.add_argument("--conf-every", type=int, default=0, help="mean time between conf changes")
    p.add_argument("--transfer-every", type=int, default=0, help="mean time between transfers")
    p.add_argument("--no-pre-vote", action="store_true", help="disable PreVote")
    p.add_argument("--no-check-quorum", action="store_true", help="disable CheckQuorum")
    p.add_argument("--tail", type=int, help="print only the last N steps")
    p.add_argument("--quiet", action="store_true", help="print only the verdict")
    p.add_argument(
        "--state-machine",
        metavar="MODULE:ATTR",
        help="the state machine class (or factory) the schedule ran with",
    )
    p.add_argument(
        "--model", metavar="MODULE:ATTR", help="its linearizability Model (else none is checked)"
    )
    p.add_argument("--shrink", action="store_true", help="shrink a failing schedule first")
    p.add_argument("--save", help="write the (shrunk) schedule to this file")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the tool; returns the exit status."""
    out = out if out is not None else sys.stdout
    args = _parser().parse_args(argv)
    if (args.script is None) == (args.seed is None):
        out.write("give either a schedule file or --seed (not both)\n")
        return 2
    state_machine: Callable[[], StateMachine] = KVStateMachine
    model: Model | None = None
    try:
        if args.state_machine is not None:
            state_machine = _resolve(args.state_machine)
        loaded = _resolve(args.model) if args.model is not None else None
    except ValueError as exc:
        out.write(f"{exc}\n")
        return 2
    if loaded is not None:
        if not isinstance(loaded, Model):
            out.write(f"--model {args.model} is not a raftlib.testing.Model\n")
            return 2
        model = loaded
    if args.seed is not None and state_machine is not KVStateMachine:
        out.write("--seed runs the default KV state machine only; replay a schedule instead\n")
        return 2
    if args.seed is not None:
        config = ClusterConfig(
            voters=args.voters,
            learners=args.learners,
            spares=args.spares,
            snapshot_every=args.snapshot_every,
            pre_vote=not args.no_pre_vote,
            check_quorum=not args.no_check_quorum,
        )
        faults = FaultProfile(conf_every=args.conf_every, transfer_every=args.transfer_every)
        sim = Simulation(args.seed, config, faults)
        # A failure is reported by replaying the recorded schedule below.
        with contextlib.suppress(Exception):
            sim.run(args.duration)
        script = sim.cluster.script()
    elif args.script == "-":
        script = sys.stdin.read()
    else:
        with open(args.script, encoding="utf-8") as f:
            script = f.read()
    if args.shrink:
        try:
            script, _ = shrink(script, state_machine=state_machine, model=model)
        except ValueError:
            out.write("the schedule does not fail; nothing to shrink\n")
        except ScriptError as exc:
            out.write(f"bad schedule: {exc}\n")
            return 2
    if args.save:
        with open(args.save, "w", encoding="utf-8") as f:
            f.write(script)
    buffered, trace = _printer(out, args.tail)
    failure: BaseException | None = None
    cluster: Cluster | None = None
    try:
        cluster = Cluster.replay(
            script,
            state_machine=state_machine,
            model=model,
            trace=None if args.quiet else trace,
        )
        if cluster.model is not None:
            result = cluster.check_linearizability()
            if result.ok is False:
                raise NotLinearizable(result.explain())
    except ScriptError as exc:
        out.write(f"bad schedule: {exc}\n")
        return 2
    except Exception as exc:  # noqa: BLE001 -- report whatever the replay raised
        failure = exc
    out.writelines(buffered)
    if (args.shrink or args.seed is not None) and not args.quiet:
        out.write("\nschedule:\n" + script)
    gap = "" if args.quiet else "\n"
    if failure is not None:
        out.write(f"{gap}FAILED: {type(failure).__name__}: {failure}\n")
        return 1
    n = len(cluster.events) if cluster is not None else 0
    unchecked = ""
    if cluster is not None and cluster.model is None:
        unchecked = " (no model: history not checked)"
    out.write(f"{gap}OK: {n} events, every check passed{unchecked}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
