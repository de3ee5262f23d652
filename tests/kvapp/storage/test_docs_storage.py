"""docs/storage.md stays true: its Python examples run, and it covers every storage error.

Each ```python block runs on its own, as a reader would paste it. (tests/raftlib/test_docs.py
only checks generated pages; the guides' examples are run by a test next to their subject, as
tests/raftlib/testing/test_docs_testing.py does for docs/testing.md.)
"""

from __future__ import annotations

import pathlib
import re
import tempfile
from typing import Any

import pytest

from kvapp.storage import errors

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "storage.md"
TEXT = DOC.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The examples make their data directories with tempfile.mkdtemp(), as a reader would;
    # here those go under tmp_path, which pytest removes (each holds a 64 MiB WAL).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    namespace: dict[str, Any] = {"__name__": f"docs_storage_{index}"}
    exec(compile(BLOCKS[index], f"{DOC}:block{index}", "exec"), namespace)
    assert tempfile.gettempdir() == str(tmp_path)


@pytest.mark.parametrize("name", [n for n in errors.__all__ if n != "DiskStorageError"])
def test_every_error_is_in_the_table(name: str) -> None:
    assert re.search(rf"^\| `{name}` \|", TEXT, flags=re.MULTILINE), f"{name} is not documented"


def test_the_repair_command_is_the_one_the_errors_print(tmp_path: pathlib.Path) -> None:
    from kvapp.storage.raftstore import repair_hint

    assert "python -m kvapp.storage.repair DIR --cut" in TEXT
    assert f"python -m kvapp.storage.repair {tmp_path} --cut" in repair_hint(tmp_path)
