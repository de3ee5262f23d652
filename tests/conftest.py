"""Shared pytest setup: hypothesis profiles.

Profiles: ``ci`` (derandomized, bounded; loaded when ``CI`` is set), ``dev`` (random, more
examples; the local default) and ``long`` (for hunts before a release). ``HYPOTHESIS_PROFILE``
overrides the choice.
"""

from __future__ import annotations

import os

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
