"""Generated documentation stays in step with the code it is generated from."""

from __future__ import annotations

import importlib.util
import pathlib

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def test_progress_diagram_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("gen_progress", DOCS / "gen_progress.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (DOCS / "progress.md").read_text() == mod.render(), (
        "docs/progress.md is stale: run PYTHONPATH=. python docs/gen_progress.py > docs/progress.md"
    )
