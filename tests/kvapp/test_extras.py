"""Without kvapp's extra installed, raftlib works and kvapp says how to get what it needs."""

from __future__ import annotations

import subprocess
import sys

HIDE = (
    "import sys\n"
    "class Hide:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in {'sortedcontainers', 'prometheus_client'}:\n"
    "            raise ImportError(f'No module named {name!r}')\n"
    "sys.meta_path.insert(0, Hide())\n"
)


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HIDE + code], capture_output=True, text=True, timeout=60, check=False
    )


def test_raftlib_and_bare_kvapp_import_without_the_extra() -> None:
    r = run("import raftlib, kvapp; print(raftlib.Node.__name__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Node"


def test_kvapp_modules_name_the_extra_to_install() -> None:
    for module in ("kvapp.node", "kvapp.metrics"):
        r = run(f"import {module}")
        assert r.returncode == 1
        assert "pip install 'raftlib[kvapp]'" in r.stderr, r.stderr


def test_raftlib_prints_nothing_by_default() -> None:
    code = (
        "import random, raftlib\n"
        "s = raftlib.MemoryStorage(raftlib.ConfState(voters=(1,)))\n"
        "n = raftlib.RawNode(raftlib.Config(id=1, storage=s, rng=random.Random(1)))\n"
        "n.campaign()\n"
        "import logging; logging.getLogger('raftlib').warning('a warning')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
