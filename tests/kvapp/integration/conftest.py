"""Fixtures for process-cluster tests: ``make_cluster``, and member logs on failing reports."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kvapp.integration.harness import ProcCluster

_CLUSTERS = pytest.StashKey[list[ProcCluster]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach every member's log tail to the report of a failed setup or test."""
    report = yield
    if report.failed:
        clusters: list[ProcCluster] = item.stash.get(_CLUSTERS, [])
        for i, cluster in enumerate(clusters):
            report.sections.append((f"kvapp member logs (cluster {i + 1})", cluster.logs()))
    return report


@pytest.fixture
def make_cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., ProcCluster]]:
    """A factory of :class:`ProcCluster` under ``tmp_path``; every member is killed afterwards.

    ``make_cluster(size, **options)`` plans a cluster (see ProcCluster's arguments), starts its
    members and waits for a leader; ``start=False`` only plans it.
    """
    clusters: list[ProcCluster] = []
    request.node.stash[_CLUSTERS] = clusters

    def make(size: int = 3, *, start: bool = True, **options: Any) -> ProcCluster:
        root = tmp_path / f"cluster{len(clusters) + 1}"
        root.mkdir()
        cluster = ProcCluster(root, size, **options)
        clusters.append(cluster)
        if start:
            cluster.start()
            cluster.wait_leader()
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()
