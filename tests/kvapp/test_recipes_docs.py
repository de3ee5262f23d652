"""docs/locks.md stays true: each of its Python examples runs, against in-process members.

Each ```python block runs on its own, as a reader would paste it, with ``KVAPP_ENDPOINTS``
naming the members of a :class:`~tests.kvapp.test_recipes.ThreadCluster` (a reader's would be
those ``python -m kvapp cluster`` prints).
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kvapp.test_recipes import ThreadCluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "locks.md"
TEXT = DOC.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThreadCluster]:
    with ThreadCluster() as c:
        yield c


def test_the_page_has_examples_and_is_in_the_nav() -> None:
    assert len(BLOCKS) >= 3
    assert "locks.md" in (ROOT / "mkdocs.yml").read_text()


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(
    index: int,
    cluster: ThreadCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KVAPP_ENDPOINTS", ",".join(cluster.endpoints))
    namespace: dict[str, Any] = {"__name__": f"docs_locks_{index}"}
    exec(compile(BLOCKS[index], f"{DOC}:block{index}", "exec"), namespace)
    out = capsys.readouterr().out
    if "FencedStore" in BLOCKS[index]:
        assert "the store refused a: token" in out
        assert "the cluster refused a: fenced write refused" in out
    if "AsyncElection" in BLOCKS[index]:
        assert out.splitlines() == [
            "leader: http://10.0.0.1:8080",
            "leader: http://10.0.0.1:9090",
            "leader: http://10.0.0.2:8080",
        ]
