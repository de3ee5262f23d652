"""Shared pytest setup: hypothesis profiles, and a collector that leaves earlier tests alone.

Profiles: ``ci`` (derandomized, bounded; loaded when ``CI`` is set), ``dev`` (random, more
examples; the local default) and ``long`` (for hunts before a release). ``HYPOTHESIS_PROFILE``
overrides the choice.
"""

from __future__ import annotations

import gc
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    settings.get_profile("ci"),
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.register_profile("long", max_examples=5000, stateful_step_count=200, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture(autouse=True)
def _collect_then_freeze() -> None:
    """Collect what earlier tests left, then keep every survivor out of this test's collections.

    Why: many tests run clusters on one event loop with 5-10 ms ticks, and they share one
    collector with the whole session. A full collection over everything earlier tests left
    alive (hundreds of thousands of objects) paused the loop for 100-400 ms in CI, longer than
    an election timeout: leaders stepped down mid-test and writes timed out
    (test_a_flood_of_watch_creates_on_one_stream, then
    test_the_leader_replicates_while_its_own_write_is_still_running). Frozen objects are never
    scanned, so a test's pauses scale with what the test itself allocates.
    """
    gc.collect()
    gc.freeze()
