"""docs/simulation.md stays true: its examples run, and what it says of them holds."""

from __future__ import annotations

import re

import pytest

from tests.kvapp.docblocks import DOCS, python_blocks

DOC = DOCS / "simulation.md"
FIRST, BANK = python_blocks(DOC)
COMPARES = '        [txn.mod(src, "==", a.mod_revision), txn.mod(dst, "==", b.mod_revision)],\n'


def run(source: str, capsys: pytest.CaptureFixture[str], name: str) -> str:
    exec(compile(source, f"{DOC}:{name}", "exec"), {"__name__": f"docs_simulation_{name}"})
    return capsys.readouterr().out


def test_the_page_is_in_the_nav() -> None:
    text = (DOCS.parent / "mkdocs.yml").read_text()
    assert "simulation.md" in text
    assert "reference/kvapp-testing.md" in text


def test_the_first_scenario_survives_a_cut_off_leader_and_a_power_loss(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run(FIRST, capsys, "first")
    assert re.fullmatch(r"hello again after \d+\.\d virtual seconds\n", out), out
    assert out == run(FIRST, capsys, "again"), "the same seed, the same run"


def test_the_transfers_keep_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(BANK, capsys, "bank")
    assert out.splitlines() == [f"seed {s}: total 200" for s in range(3)]


def test_without_the_compares_the_simulation_finds_lost_updates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the page says: take the two compares out, and every seed ends wrong."""
    assert COMPARES in BANK
    with pytest.raises(AssertionError, match="seed 0 replays the run that lost money"):
        run(BANK.replace(COMPARES, "        [],\n"), capsys, "buggy")
