"""Tests of raftlib.testing: the simulator, the checkers and the tools built on them."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import settings

F = TypeVar("F", bound=Callable[..., object])

RUN_LONG = bool(os.environ.get("RAFTLIB_SLOW")) or settings.get_current_profile_name() == "long"


LONG_RUN_TIMEOUT = 1800
"""Seconds a long run may take: the suite's 120 s per test is for tests CI runs (one seed
sweep of 300 seeds takes about 250 s alone on a 2-core machine)."""


def long_run(fn: F) -> F:
    """Mark a long simulation run: skipped unless RAFTLIB_SLOW=1 or HYPOTHESIS_PROFILE=long."""
    skip = pytest.mark.skipif(
        not RUN_LONG, reason="long simulation: set RAFTLIB_SLOW=1 or HYPOTHESIS_PROFILE=long"
    )
    marked: F = pytest.mark.slow(pytest.mark.timeout(LONG_RUN_TIMEOUT)(skip(fn)))
    return marked
