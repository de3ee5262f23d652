"""raftlib.testing's public surface: documented, and importable without hypothesis or pytest."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import raftlib.testing
import raftlib.testing.machine
import raftlib.testing.strategies

MODULES = [raftlib.testing, raftlib.testing.machine, raftlib.testing.strategies]


@pytest.mark.parametrize(
    ("module", "name"),
    [(m, n) for m in MODULES for n in m.__all__],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_every_exported_name_is_documented(module: object, name: str) -> None:
    obj = getattr(module, name)
    if isinstance(obj, tuple):
        return  # a constant (PROPERTIES), documented in the module
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if callable(member) and not attr.startswith("_"):
                assert inspect.getdoc(member), f"{name}.{attr} has no docstring"


def test_simulator_modules_need_neither_hypothesis_nor_pytest() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None; sys.modules['pytest'] = None\n"
        "import raftlib.testing, raftlib.testing.sim, raftlib.testing.replay\n"
        "r = raftlib.testing.run_simulation(1, 3000)\n"
        "print('ok' if r.ok else r.failure)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr
