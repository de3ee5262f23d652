"""kvapp reaches for the clock, the file system and the network only through its seams.

A member takes its clock, peer network and file layer as injected dependencies so whole
clusters can later run under a simulated event loop (DESIGN.md). This test keeps the modules
that may touch ``time``, ``os``, ``socket`` or ``threading`` directly to a known list, each
with its reason; anything new must be added here on purpose. Global ``random`` functions are
refused everywhere: randomness comes from an injected ``random.Random``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

_PKG = pathlib.Path(__file__).resolve().parents[2] / "kvapp"

ALLOWED: dict[str, dict[str, str]] = {
    "time": {
        "node.py": "the default of Member's injected clock",
        "metrics.py": "perf_counter for the fsync histogram (observability only)",
        "kvstate.py": "time.sleep(0) yields the GIL from a snapshot worker thread",
        "recovery.py": "offline disaster-recovery tool, run before any member starts",
        "ctl/commands.py": "kvctl, a command-line client",
    },
    "os": {
        "storage/fileutil.py": "the file layer",
        "storage/raftstore.py": "the file layer",
        "storage/snapdata.py": "the file layer",
        "storage/snapparts.py": "the file layer",
        "storage/wal.py": "the file layer",
        "transport/spool.py": "snapshot spool files, part of the file layer",
        "cli.py": "the process entry point",
        "ctl/app.py": "kvctl, a command-line client",
        "ctl/lock.py": "kvctl, a command-line client",
    },
    "socket": {
        "transport/tcp.py": "the peer network",
        "launcher.py": "kvapp cluster picks free ports before starting members",
    },
    "threading": {
        "client/sync.py": "the blocking client runs its event loop in a thread",
        "recipes/sync.py": "the blocking recipes, on the blocking client",
    },
}
GLOBAL_RANDOM = {"random", "uniform", "randint", "randrange", "choice", "shuffle", "sample"}


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in _PKG.rglob("*.py") if "etcdpb" not in p.parts)


def _uses(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
            if node.module == "random" and {a.name for a in node.names} & GLOBAL_RANDOM:
                found.add("global random")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr in GLOBAL_RANDOM
        ):
            found.add("global random")
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(_PKG)))
def test_modules_touch_the_clock_files_and_network_only_where_allowed(
    path: pathlib.Path,
) -> None:
    name = path.relative_to(_PKG).as_posix()
    used = _uses(path)
    assert "global random" not in used, f"{name}: draws from the global random generator"
    for module, allowed in ALLOWED.items():
        if module in used:
            assert name in allowed, f"{name} imports {module}: not a seam (see this test)"


def test_every_allowed_module_still_uses_what_it_is_allowed() -> None:
    for module, allowed in ALLOWED.items():
        for name in allowed:
            assert module in _uses(_PKG / name), f"{name} no longer needs {module}: drop it"
