"""``kvctl`` (also ``python -m kvapp.ctl``): etcdctl's commands for a kvapp cluster.

Commands: ``put``, ``get``, ``del``, ``txn``, ``watch``, ``compaction``, ``lease grant|revoke|
timetolive|list|keep-alive``, ``member list|add|remove|promote``, ``endpoint status|health``,
``snapshot save``, ``lock`` and ``elect``, with etcdctl's flags and output (``-w
simple|json|table``), over the native client (:class:`kvapp.client.AsyncClient`). See
``docs/kvctl.md`` for a reference with examples.

Modules: :mod:`kvapp.ctl.parse` (arguments and txn input), :mod:`kvapp.ctl.output` (the
formats), :mod:`kvapp.ctl.commands` (the commands), :mod:`kvapp.ctl.lock` (``lock`` and
``elect``, on :mod:`kvapp.recipes`) and :mod:`kvapp.ctl.app` (the entry point).
"""

from kvapp.ctl.app import main, run

__all__ = ["main", "run"]
