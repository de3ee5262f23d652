"""The examples in docs/testing.md run, and do what the text says."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "testing.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_guide_has_examples() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_testing_{index}"}
    exec(compile(BLOCKS[index], f"{DOC}:block{index}", "exec"), namespace)
    test_case = namespace.get("TestCounter")
    if test_case is not None:
        test_case().runTest()  # the user's machine runs (with the budget the guide sets)
    assert "Traceback" not in capsys.readouterr().out
