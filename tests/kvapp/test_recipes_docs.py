"""docs/locks.md stays true: each of its Python examples runs, against in-process members.

Each ```python block runs on its own, as a reader would paste it, with ``KVAPP_ENDPOINTS``
naming the members of a :class:`~tests.kvapp.test_recipes.ThreadCluster` (a reader's would be
those ``python -m kvapp cluster`` prints).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kvapp.docblocks import DOCS, python_blocks, run_block
from tests.kvapp.test_recipes import ThreadCluster

DOC = DOCS / "locks.md"
BLOCKS = python_blocks(DOC)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThreadCluster]:
    with ThreadCluster() as c:
        yield c


def test_the_page_has_examples_and_is_in_the_nav() -> None:
    assert len(BLOCKS) >= 3
    assert "locks.md" in (DOCS.parent / "mkdocs.yml").read_text()


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(
    index: int,
    cluster: ThreadCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_block(DOC, index, cluster.endpoints, monkeypatch, capsys)
    if "FencedStore" in BLOCKS[index]:
        assert "the store refused a: token" in out
        assert "the cluster refused a: fenced write refused" in out
    if "AsyncElection" in BLOCKS[index]:
        assert out.splitlines() == [
            "leader: http://10.0.0.1:8080",
            "leader: http://10.0.0.1:9090",
            "leader: http://10.0.0.2:8080",
        ]
