"""Tests of raftlib.testing: the simulator, the checkers and the tools built on them."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import settings

F = TypeVar("F", bound=Callable[..., object])

RUN_LONG = bool(os.environ.get("RAFTLIB_SLOW")) or settings.get_current_profile_name() == "long"


def long_run(fn: F) -> F:
    """Mark a long simulation run: skipped unless RAFTLIB_SLOW=1 or HYPOTHESIS_PROFILE=long."""
    skip = pytest.mark.skipif(
        not RUN_LONG, reason="long simulation: set RAFTLIB_SLOW=1 or HYPOTHESIS_PROFILE=long"
    )
    marked: F = pytest.mark.slow(skip(fn))
    return marked
