"""The hypothesis state machine over simulated clusters, with explicit budgets per profile.

Under the ``ci`` profile (derandomized) the machines below take about a minute in all; ``dev``
explores fresh schedules with a bigger budget, and ``long`` uses the profile's own numbers,
scaled per machine as the others are, with the long-run time limit.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, settings

from raftlib.testing import ClusterConfig, Model
from raftlib.testing.machine import ClusterMachine
from tests.raftlib.testing import LONG_RUN_TIMEOUT, RUN_LONG

_BUDGETS = {"ci": (600, 100), "dev": (1000, 100)}

# dev explores more than ci; give it room beyond the suite-wide 120 s ceiling. A long hunt gets
# the long-run limit: cut short by a timeout, hypothesis reports a confusing flaky-strategy error.
pytestmark = pytest.mark.timeout(LONG_RUN_TIMEOUT if RUN_LONG else 900)


def budget(scale: float = 1.0) -> settings:
    profile = settings.get_current_profile_name()
    if profile in _BUDGETS:
        examples, steps = _BUDGETS[profile]
        return settings(
            max_examples=max(1, int(examples * scale)),
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
    examples = settings.get_profile(profile).max_examples  # the loaded profile's (long: 5000)
    return settings(
        max_examples=max(1, int(examples * scale)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


class ThreeVoters(ClusterMachine):
    """Three voters and a spare; faults, clients, transfers, membership changes."""


TestThreeVoters = ThreeVoters.TestCase
TestThreeVoters.settings = budget()


class FiveVotersCompacting(ClusterMachine):
    """Five voters that snapshot and compact every few entries: snapshot transfer under faults."""

    config = ClusterConfig(voters=(1, 2, 3, 4, 5), spares=(6,), snapshot_every=4)


TestFiveVotersCompacting = FiveVotersCompacting.TestCase
TestFiveVotersCompacting.settings = budget(0.5)


class SmallWindows(ClusterMachine):
    """One entry per append and an inflight window of one: flow control and probing."""

    config = ClusterConfig(
        voters=(1, 2, 3), learners=(4,), max_size_per_msg=0, max_inflight_msgs=1, snapshot_every=6
    )


TestSmallWindows = SmallWindows.TestCase
TestSmallWindows.settings = budget(0.5)


class ShrinkingToOneVoter(ClusterMachine):
    """Membership changes down to a single voter, leaders removing and demoting themselves."""

    config = ClusterConfig(voters=(1, 2), spares=(3,), snapshot_every=6)
    min_voters = 1


TestShrinkingToOneVoter = ShrinkingToOneVoter.TestCase
TestShrinkingToOneVoter.settings = budget(0.3)


class Counter:
    """A user's own state machine: a counter that commands add to."""

    def __init__(self) -> None:
        self.total = 0

    def apply(self, command: bytes) -> bytes:
        self.total += int(command)
        return str(self.total).encode()

    def query(self, query: bytes) -> bytes:
        return str(self.total).encode()

    def snapshot(self) -> bytes:
        return str(self.total).encode()

    def restore(self, data: bytes) -> None:
        self.total = int(data)


def _counter_step(state: int, inp: tuple[str, bytes], out: bytes | None) -> tuple[bool, int]:
    kind, payload = inp
    if kind == "write":
        total = state + int(payload)
        return out is None or out == str(total).encode(), total
    return out == str(state).encode(), state


COUNTER_MODEL = Model(init=lambda: 0, step=_counter_step, read_only=lambda inp: inp[0] == "read")


class CounterMachine(ClusterMachine):
    """What ``docs/testing.md`` shows: a user's state machine under the same faults."""

    config = attrs.evolve(ClusterMachine.config, snapshot_every=5)
    state_machine = Counter
    model = COUNTER_MODEL

    def make_write(self, key: int, n: int) -> bytes:
        return str(key + 1).encode()

    def make_read(self, key: int) -> bytes:
        return b"total"


TestCounterMachine = CounterMachine.TestCase
TestCounterMachine.settings = budget(0.3)
