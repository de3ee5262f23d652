"""The garbage-collector settings of a ``kvapp serve`` process.

Why: a member holds its whole MVCC history as millions of small, long-lived, GC-tracked objects
(key-values, index entries), and makes many short-lived containers per request. With CPython's
default thresholds ``(700, 10, 10)`` the collector runs a full collection, which visits every
tracked object, whenever the heap has grown by a quarter since the last one; for a store that
only grows (the change log until a compaction) that is frequent, and its cost grows with the
store. On a 1-member ``kvapp serve`` under 64 puts in flight, profiled with ``perf``, the
collector (``gc_collect_main``, ``visit_decref``, ``visit_reachable``) took 16% of the member's
CPU; with :data:`THRESHOLDS` about 1%, and CPU per put fell by about a fifth.

Only reference cycles need the collector; the store's records hold none, so collecting less
often frees the same memory, later. :func:`freeze_startup_state` moves what the member loaded
at startup (a restored snapshot can be millions of objects) out of the collector's sight for
good: a cycle among those objects that later becomes garbage would not be freed, which is a
bounded, one-time cost.

These are process-wide settings, so only the ``kvapp serve`` entry point applies them, never
the library (an application embedding kvapp's client keeps its own).
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "configure", "freeze_startup_state"]

THRESHOLDS = (10_000, 10, 100)
"""Generation 0: young objects allocated between collections (default 700); generation 1 and 2:
collections of the younger generation between collections of this one (defaults 10, 10)."""


def configure() -> None:
    """Set :data:`THRESHOLDS` for this process."""
    gc.set_threshold(*THRESHOLDS)


def freeze_startup_state() -> None:
    """Exclude every object alive now from future collections.

    No collection first: over a restored store of a million keys it would take about a second
    of the restart, to free little.
    """
    gc.freeze()
