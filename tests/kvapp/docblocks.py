"""Running a docs page's ```python blocks as tests, each on its own as a reader would paste it."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def python_blocks(doc: pathlib.Path) -> list[str]:
    """The page's ```python blocks, in order."""
    return re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.DOTALL)


def run_block(
    doc: pathlib.Path,
    index: int,
    endpoints: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """Run block ``index`` of ``doc`` with ``KVAPP_ENDPOINTS`` naming ``endpoints``; its output."""
    monkeypatch.setenv("KVAPP_ENDPOINTS", ",".join(endpoints))
    namespace: dict[str, Any] = {"__name__": f"docs_{doc.stem}_{index}"}
    exec(compile(python_blocks(doc)[index], f"{doc}:block{index}", "exec"), namespace)
    return capsys.readouterr().out
