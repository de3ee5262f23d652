"""Schedules: every event has a text form that parses back to the same event."""

from __future__ import annotations

import pytest
from hypothesis import given

from raftlib import MessageType
from raftlib.testing import ClusterConfig, ScriptError, format_script, parse_script
from raftlib.testing.events import (
    Conf,
    Crash,
    Deliver,
    Event,
    Liveness,
    MessageSelector,
    Partition,
    Read,
    Retry,
    Run,
    Tick,
    Write,
    format_event,
    parse_event,
)
from raftlib.testing.strategies import events

NODES = (1, 2, 3, 4)


@given(events(NODES))
def test_every_event_round_trips_through_its_text(e: Event) -> None:
    line = format_event(e)
    assert "\n" not in line
    assert parse_event(line) == e


def test_readable_forms() -> None:
    assert format_event(Tick(1, 12)) == "tick 1 x12"
    assert format_event(Deliver(MessageSelector(1, 2, MessageType.APP, 2))) == "deliver 1->2 APP #2"
    assert format_event(Crash(2, 1)) == "crash 2 torn=1"
    assert format_event(Partition(((1, 2), (3,)))) == "partition 1 2 | 3"
    assert format_event(Conf(1, ("v4", "r1"), "explicit")) == "conf 1 explicit v4 r1"
    assert format_event(Conf(1)) == "conf 1 leave"
    assert format_event(Run(3)) == "run 3"
    assert format_event(Liveness(50)) == "liveness 50"
    put = parse_event("put 1 k1 v5")
    assert isinstance(put, Write)
    assert format_event(put) == "put 1 k1 v5"
    get = parse_event("get 2 k1")
    assert isinstance(get, Read)
    assert format_event(Write(1, b"\x00\x01")) == "write 1 0001"
    assert format_event(Retry(2)) == "retry 2"
    assert parse_event("retry 2") == Retry(2)


@pytest.mark.parametrize(
    "line",
    ["", "explode 1", "tick", "tick x", "deliver 1-2", "deliver 1->2 NOPE", "conf 1 q4", "cut 12"],
)
def test_bad_lines_raise_script_error(line: str) -> None:
    with pytest.raises(ScriptError):
        parse_event(line)


def test_script_round_trip() -> None:
    cfg = ClusterConfig(voters=(1, 2, 3), spares=(4,), seed=9, pre_vote=False, snapshot_every=5)
    evs: list[Event] = [Tick(1, 3), Deliver(MessageSelector(1, 2)), Conf(1, ("l4",))]
    text = format_script(cfg, evs)
    assert text.startswith("# raftlib.testing schedule v1\ncluster voters=1,2,3 ")
    assert parse_script(text) == (cfg, evs)
    # Comments and blank lines are ignored; "#2" inside a line is an ordinal, not a comment.
    cfg2, evs2 = parse_script(text + "\n# note\n\ndeliver 2->1 APP_RESP #2\n")
    assert cfg2 == cfg
    assert evs2[-1] == Deliver(MessageSelector(2, 1, MessageType.APP_RESP, 2))


def test_script_errors_name_the_line() -> None:
    with pytest.raises(ScriptError, match="no 'cluster"):
        parse_script("tick 1\n")
    with pytest.raises(ScriptError, match="line 3"):
        parse_script("# x\ncluster voters=1\nbogus 1\n")
    with pytest.raises(ScriptError, match="unknown cluster setting"):
        parse_script("cluster voters=1 colour=blue\n")
