"""The programs in examples/ run and do what they say, and docs/embedding.md quotes them exactly.

Each example runs as its own process with a bounded timeout; the TCP one binds only 127.0.0.1
(ports from port 0) and stops its member processes itself.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(*args: str, limit: float = 60) -> str:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit,
        check=False,
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_three_nodes_every_member_applies_every_write_in_the_same_order() -> None:
    out = run_example("examples/three_nodes.py")
    lines = [line for line in out.splitlines() if " applied [" in line]
    assert len(lines) == 3
    expected = "[b'hello from 1', b'hello from 2', b'hello from 3']"
    assert all(line.endswith(expected) for line in lines), out


def test_three_nodes_user_code_stays_short() -> None:
    source = (EXAMPLES / "three_nodes.py").read_text()
    body = source[source.index("async def main") : source.index('if __name__ == "__main__"')]
    code = [
        line
        for line in body.splitlines()
        if line.strip() and not line.strip().startswith(('"""', "#"))
    ]
    assert len(code) <= 30, f"{len(code)} lines of user code"


def test_replicated_dict_restarts_a_member_from_its_snapshot_and_converges() -> None:
    out = run_example("examples/replicated_dict.py")
    assert "member 3 reads k1 = v1" in out
    assert "member 3 reads k150 = w150" in out
    restored = re.search(r"member 3 restarted with (\d+) keys from its snapshot", out)
    assert restored is not None, out
    assert int(restored.group(1)) > 0, "the restart did not restore a snapshot"
    assert "199 keys on every member; all copies equal: True" in out


def test_disk_node_continues_after_a_restart(tmp_path: pathlib.Path) -> None:
    first = run_example("examples/disk_node.py", str(tmp_path / "data"))
    assert "recovered 0 values" in first
    assert "now 25 values; last: 'value 24'" in first
    second = run_example("examples/disk_node.py", str(tmp_path / "data"))
    assert "recovered 25 values" in second
    assert "now 50 values; last: 'value 49'" in second


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_tcp_cluster_three_processes_agree() -> None:
    out = run_example("examples/tcp_cluster.py", "--keys", "20", "--timeout", "90", limit=150)
    results = re.findall(r"RESULT (\d) (\d+) (\w+)", out)
    assert sorted(r[0] for r in results) == ["1", "2", "3"], out
    assert {(n, d) for _, n, d in results} == {("60", results[0][2])}, out
    assert "all 3 members agree" in out


DOC = ROOT / "docs" / "embedding.md"


def test_embedding_guide_quotes_only_code_that_runs_in_examples() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 4
    sources = [_stripped(p.read_text()) for p in sorted(EXAMPLES.glob("*.py"))]
    for block in blocks:
        runs = _runs(_stripped(block))
        found = any(all(_contains(src, run) for run in runs) for src in sources)
        assert found, f"docs/embedding.md quotes code that is not in examples/:\n{block}"


def _stripped(text: str) -> list[str]:
    """Lines without indentation (a quote may come from inside a function), blanks dropped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _runs(lines: list[str]) -> list[list[str]]:
    """Split a quoted block at its ``...`` elisions into runs that must each appear verbatim."""
    runs: list[list[str]] = [[]]
    for line in lines:
        if line == "...":
            runs.append([])
        else:
            runs[-1].append(line)
    return [r for r in runs if r]


def _contains(source: list[str], run: list[str]) -> bool:
    return any(source[i : i + len(run)] == run for i in range(len(source) - len(run) + 1))
