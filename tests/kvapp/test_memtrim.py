"""kvapp.memtrim: large blocks get pages of their own, so freeing them lowers the RSS."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = r"""
import os, sys
from kvapp.memtrim import release_large_blocks
if sys.argv[1] == "on":
    assert release_large_blocks()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
blocks = [os.urandom(60_000) for _ in range(3000)]  # 180 MB of 60 KB blocks
small = [bytes(600) for _ in range(30_000)]  # small allocations among them
before = rss()
del blocks
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_freed_large_blocks_leave_the_rss_only_with_the_setting() -> None:
    def freed(setting: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, setting], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    assert freed("on") > 150_000_000
    assert freed("off") < 100_000_000  # the test shows something: glibc keeps them otherwise
