"""The public surface: every exported name exists and is documented, internals stay internal,
and the library core never touches I/O, clocks, threads or global randomness."""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest

import raftlib
import raftlib.codec
import raftlib.testing

_PKG = pathlib.Path(raftlib.__file__).parent
_BANNED = {"socket", "threading", "asyncio", "time", "os", "kvapp", "subprocess", "selectors"}
_BANNED_RANDOM = {"random", "randint", "randrange", "choice", "shuffle", "seed", "uniform"}


@pytest.mark.parametrize("name", raftlib.__all__)
def test_every_public_name_exists_and_is_documented(name: str) -> None:
    obj = getattr(raftlib, name)
    if name == "__version__":
        assert isinstance(obj, str)
        return
    assert inspect.getdoc(obj), f"raftlib.{name} has no docstring"


def test_issue_names_are_importable_from_raftlib() -> None:
    required = [
        "Config",
        "RawNode",
        "Ready",
        "Storage",
        "MemoryStorage",
        "Entry",
        "EntryType",
        "HardState",
        "SoftState",
        "ConfState",
        "ConfChange",
        "ConfChangeV2",
        "ConfChangeSingle",
        "ConfChangeType",
        "Snapshot",
        "SnapshotMetadata",
        "Message",
        "MessageType",
        "StateType",
        "ProposalDropped",
        "CompactedError",
        "UnavailableError",
    ]
    missing = [n for n in required if n not in raftlib.__all__]
    assert missing == []


def test_rawnode_methods_match_etcds_driving_surface() -> None:
    for method in [
        "tick",
        "campaign",
        "propose",
        "propose_conf_change",
        "step",
        "has_ready",
        "ready",
        "advance",
        "apply_conf_change",
        "report_unreachable",
        "report_snapshot",
        "status",
        "bootstrap",
        "read_index",
        "transfer_leader",
    ]:
        assert callable(getattr(raftlib.RawNode, method)), method


def _core_modules() -> list[pathlib.Path]:
    return [p for p in _PKG.rglob("*.py") if "testing" not in p.parts]


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(_PKG)))
def test_core_modules_import_nothing_impure(path: pathlib.Path) -> None:
    # node.py is the optional asyncio driver (DESIGN.md): asyncio is its one exception.
    banned = _BANNED - {"asyncio"} if path.name == "node.py" else _BANNED
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in banned, f"{path}: imports {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            assert root not in banned, f"{path}: imports from {node.module}"
            if root == "random":
                names = {a.name for a in node.names}
                assert not names & _BANNED_RANDOM, f"{path}: imports global random functions"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
        ):
            assert node.attr not in _BANNED_RANDOM, f"{path}: calls random.{node.attr}"


def test_importing_raftlib_testing_does_not_need_hypothesis() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['hypothesis'] = None; import raftlib, raftlib.testing; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr


def test_codec_names_are_documented() -> None:
    for name in raftlib.codec.__all__:
        obj = getattr(raftlib.codec, name)
        if callable(obj):
            assert inspect.getdoc(obj), name
