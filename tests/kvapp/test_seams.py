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
        "storage/fs.py": "the file layer's real implementation (storage/fs.py: FileSystem)",
        "storage/simfs.py": "the simulated file layer: os's flags, error texts, normpath only",
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
_OS_TYPES = {"PathLike"}
"""Names from ``os`` that are only types, and so touch nothing."""
GLOBAL_RANDOM = {"random", "uniform", "randint", "randrange", "choice", "shuffle", "sample"}


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in _PKG.rglob("*.py") if "etcdpb" not in p.parts)


def _uses(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "os" and {a.name for a in node.names} <= _OS_TYPES:
                continue
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


# Modules whose every file access goes through a FileSystem (kvapp/storage/fs.py), so a
# simulated disk sees all of it: they may not use pathlib's I/O methods or the builtin open.
FILE_LAYER_USERS = sorted(
    [*(_PKG / "storage").glob("*.py"), _PKG / "transport" / "spool.py"],
)
_PATH_IO = {
    "read_bytes", "write_bytes", "read_text", "write_text", "unlink", "mkdir", "rmdir",
    "iterdir", "exists", "is_dir", "is_file", "stat", "lstat", "rename", "touch", "glob",
    "rglob", "resolve", "samefile", "chmod",
}  # fmt: skip


def _direct_file_access(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            found.append(f"line {node.lineno}: open()")
        elif isinstance(func, ast.Attribute) and func.attr in _PATH_IO:
            receiver = ast.unparse(func.value)
            # fs.unlink(p) and self._fs.mkdir(d) are the seam; Wal.exists(d) is a class's
            if not receiver.endswith("fs") and not receiver[:1].isupper():
                found.append(f"line {node.lineno}: {receiver}.{func.attr}()")
    return found


@pytest.mark.parametrize(
    "path", [p for p in FILE_LAYER_USERS if p.name != "fs.py"], ids=lambda p: p.name
)
def test_storage_reaches_files_only_through_its_file_system(path: pathlib.Path) -> None:
    assert _direct_file_access(path) == []


def test_the_file_access_check_can_fail(tmp_path: pathlib.Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f(p, fs):\n    fs.unlink(p)\n    p.unlink()\n    open(p)\n")
    assert _direct_file_access(sample) == ["line 3: p.unlink()", "line 4: open()"]
