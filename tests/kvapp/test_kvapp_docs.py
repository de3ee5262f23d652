"""docs/kvapp.md stays true: its Python examples run against in-process members.

Each ```python block runs on its own, as a reader would paste it, with ``KVAPP_ENDPOINTS``
naming the members of a :class:`~tests.kvapp.test_recipes.ThreadCluster`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.kvapp.docblocks import DOCS, python_blocks, run_block
from tests.kvapp.test_recipes import ThreadCluster

DOC = DOCS / "kvapp.md"
BLOCKS = python_blocks(DOC)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThreadCluster]:
    async def published(c: ThreadCluster) -> bool:  # on the cluster's loop: it owns the list
        return all(m.name and m.client_urls for m in c.members[0].member_list())

    with ThreadCluster() as c:
        deadline = time.monotonic() + 10
        while not c.call(published(c)):
            assert time.monotonic() < deadline, "the members did not publish their client URLs"
            time.sleep(0.01)
        yield c


def test_the_page_has_an_example() -> None:
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(
    index: int,
    cluster: ThreadCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_block(DOC, index, cluster.endpoints, monkeypatch, capsys)
    if "sync_endpoints" in BLOCKS[index]:
        assert out.splitlines() == ["3 endpoints", "hello"], out
