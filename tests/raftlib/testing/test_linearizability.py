"""The linearizability checker on known-good and known-bad histories, and at scale."""

from __future__ import annotations

import random
import time

import attrs
import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftlib.testing import (
    History,
    Model,
    Operation,
    check_linearizability,
    kv_get,
    kv_model,
    kv_put,
    register_model,
)

M = register_model()


def put(client: int, key: str, value: str, call: float, ret: float | None) -> Operation:
    return Operation(client, ("put", key, value), None, call, ret)


def get(client: int, key: str, value: str | None, call: float, ret: float | None) -> Operation:
    return Operation(client, ("get", key), value, call, ret)


def cas(
    client: int,
    key: str,
    expected: str | None,
    new: str,
    output: tuple[bool, str | None] | None,
    call: float,
    ret: float | None,
) -> Operation:
    return Operation(client, ("cas", key, expected, new), output, call, ret)


def _number(ops: list[Operation]) -> list[Operation]:
    return [Operation(o.client, o.input, o.output, o.call, o.ret, i) for i, o in enumerate(ops)]


def check(*ops: Operation) -> bool | None:
    return check_linearizability(_number(list(ops)), M).ok


def test_empty_history_is_linearizable() -> None:
    assert check() is True


def test_sequential_write_then_read() -> None:
    assert check(put(1, "x", "a", 0, 1), get(2, "x", "a", 2, 3)) is True


def test_read_of_never_written_key_returns_initial_value() -> None:
    assert check(get(1, "x", None, 0, 1)) is True
    assert check(get(1, "x", "a", 0, 1)) is False


def test_stale_read_after_completed_write_is_not_linearizable() -> None:
    """The classic stale read: the write finished before the read began, yet the read is old."""
    history = [
        put(1, "x", "a", 0, 1),
        put(1, "x", "b", 2, 3),
        get(2, "x", "a", 4, 5),
    ]
    assert check(*history) is False


def test_lost_write_is_not_linearizable() -> None:
    """An acknowledged write that later reads never see (lost write)."""
    history = [
        put(1, "x", "a", 0, 1),
        get(2, "x", None, 2, 3),
    ]
    assert check(*history) is False


def test_read_may_see_a_concurrent_write_or_not() -> None:
    for seen in ("a", "b"):
        assert check(put(1, "x", "a", 0, 1), put(2, "x", "b", 2, 6), get(3, "x", seen, 3, 5))


def test_reads_cannot_go_back_in_time() -> None:
    """Two sequential reads during a concurrent write: new then old is impossible."""
    history = [
        put(1, "x", "a", 0, 1),
        put(2, "x", "b", 2, 10),
        get(3, "x", "b", 3, 4),
        get(3, "x", "a", 5, 6),
    ]
    assert check(*history) is False
    ok = [*history[:2], get(3, "x", "a", 3, 4), get(3, "x", "b", 5, 6)]
    assert check(*ok) is True


def test_pending_write_may_take_effect_late() -> None:
    """A write that never returned may have taken effect at any point after its call..."""
    history = [put(1, "x", "a", 0, None), get(2, "x", None, 1, 2), get(2, "x", "a", 3, 4)]
    assert check(*history) is True


def test_pending_write_may_never_take_effect() -> None:
    """...or not at all."""
    assert check(put(1, "x", "a", 0, None), get(2, "x", None, 5, 6)) is True


def test_pending_write_cannot_take_effect_before_its_call() -> None:
    assert check(get(2, "x", "a", 0, 1), put(1, "x", "a", 2, None)) is False


def test_pending_reads_are_ignored() -> None:
    assert check(put(1, "x", "a", 0, 1), get(2, "x", "zzz", 2, None)) is True


def test_touching_intervals_are_concurrent() -> None:
    assert check(put(1, "x", "a", 0, 5), get(2, "x", None, 5, 6)) is True


def test_keys_are_independent_partitions() -> None:
    res = check_linearizability(
        _number([put(1, "x", "a", 0, 1), put(1, "y", "b", 0, 1), get(2, "y", "b", 2, 3)]), M
    )
    assert res.ok is True
    assert len(res.partitions) == 2


def test_explain_names_the_offending_operation() -> None:
    history = _number([put(1, "x", "a", 0, 1), put(1, "x", "b", 2, 3), get(2, "x", "a", 4, 5)])
    res = check_linearizability(history, M)
    assert res.ok is False
    assert not res
    [failure] = res.failures()
    assert history[2] in failure.stuck
    text = res.explain()
    assert "not linearizable" in text
    assert "('get', 'x') -> 'a'" in text


def test_search_budget_gives_unknown() -> None:
    history = _number([put(c, "x", f"v{c}", 0, 10) for c in range(12)])
    history.append(Operation(99, ("get", "x"), "nope", 11, 12, 99))
    res = check_linearizability(history, M, max_steps=5)
    assert res.ok is None
    assert "unknown" in res.explain()


def test_custom_model_counter() -> None:
    """A user's own model: a counter with increments and reads."""

    def step(state: int, inp: str, out: int | None) -> tuple[bool, int]:
        if inp == "incr":
            return True, state + 1
        return out == state, state

    counter = Model(init=lambda: 0, step=step, read_only=lambda inp: inp == "read")
    ok = [
        Operation(1, "incr", None, 0, 2, 0),
        Operation(2, "incr", None, 1, 3, 1),
        Operation(3, "read", 2, 4, 5, 2),
    ]
    assert check_linearizability(ok, counter).ok is True
    bad = [*ok[:2], Operation(3, "read", 1, 4, 5, 2)]
    assert check_linearizability(bad, counter).ok is False


def test_kv_model_reads_the_simulator_encoding() -> None:
    model = kv_model()
    ops = [
        Operation(1, ("write", kv_put("k", "v1")), b"", 0, 1, 0),
        Operation(2, ("read", kv_get("k")), cbor2.dumps("v1"), 2, 3, 1),
    ]
    assert check_linearizability(ops, model).ok is True
    stale = [*ops[:1], Operation(2, ("read", kv_get("k")), cbor2.dumps(None), 2, 3, 1)]
    res = check_linearizability(stale, model)
    assert res.ok is False
    assert "get k -> None" in res.explain()


def test_history_recorder() -> None:
    h = History()
    a = h.invoke(1, ("put", "x", "a"), 0)
    b = h.invoke(2, ("get", "x"), 1)
    c = h.invoke(3, ("put", "x", "c"), 2)
    h.complete(a, None, 3)
    h.complete(b, "a", 4)
    h.complete(b, "ignored", 5)
    h.fail(c)
    assert h.pending() == []
    ops = {o.id: o for o in h.operations()}
    assert set(ops) == {a, b}
    assert ops[b].output == "a"
    assert ops[b].ret == 4
    d = h.invoke(4, ("put", "x", "d"), 6)
    assert h.is_pending(d)
    assert h.pending() == [d]
    assert len(h) == 4
    assert h.input(d) == ("put", "x", "d")
    assert check_linearizability(h.operations(), M).ok is True


def _random_register_history(
    n_ops: int, clients: int, keys: int, seed: int, pending: float = 0.02
) -> list[Operation]:
    """A linearizable history by construction: each op takes effect at a point in its interval."""
    rng = random.Random(seed)
    planned = []
    for c in range(clients):
        t = rng.random()
        for j in range(n_ops // clients):
            call = t
            point = call + rng.random() * 5
            ret = point + rng.random() * 5
            key = f"k{rng.randrange(keys)}"
            inp: tuple[str, ...] = ("put", key, f"v{c}-{j}") if rng.random() < 0.5 else ("get", key)
            planned.append((point, c, inp, call, ret))
            t = ret + rng.random()
    planned.sort()
    state: dict[str, str] = {}
    ops = []
    for i, (_point, c, inp, call, ret) in enumerate(planned):
        if inp[0] == "put":
            state[inp[1]] = inp[2]
            out = None
        else:
            out = state.get(inp[1])
        ret_or_none = None if rng.random() < pending else ret
        ops.append(Operation(c, inp, out, call, ret_or_none, i))
    return ops


@pytest.mark.parametrize("keys", [10, 1])
def test_checks_2000_operations_of_10_clients_in_seconds(keys: int) -> None:
    history = _random_register_history(2000, 10, keys, seed=keys)
    assert len(history) == 2000
    start = time.perf_counter()
    assert check_linearizability(history, M).ok is True
    assert time.perf_counter() - start < 5.0
    # Corrupt one completed read in the middle: the checker must notice, also in seconds.
    bad = list(history)
    for i in range(1000, len(bad)):
        o = bad[i]
        if o.input[0] == "get" and o.ret is not None:
            bad[i] = Operation(o.client, o.input, "corrupt", o.call, o.ret, o.id)
            break
    start = time.perf_counter()
    res = check_linearizability(bad, M)
    assert res.ok is False
    assert time.perf_counter() - start < 10.0


@given(seed=st.integers(0, 10_000), keys=st.integers(1, 3))
def test_constructed_histories_are_linearizable(seed: int, keys: int) -> None:
    assert check_linearizability(_random_register_history(60, 4, keys, seed), M).ok is True


@given(seed=st.integers(0, 10_000))
def test_swapping_two_sequential_reads_of_different_values_breaks_it(seed: int) -> None:
    """Reads of two different values, in real-time order, then reversed: never both fine."""
    rng = random.Random(seed)
    a, b = rng.sample(["p", "q", "r", "s"], 2)
    base = [put(1, "x", a, 0, 1), put(2, "x", b, 2, 3)]
    assert check(*base, get(3, "x", b, 4, 5)) is True
    assert check(*base, get(3, "x", a, 4, 5)) is False


def test_pending_puts_nobody_read_are_left_out_of_the_search() -> None:
    """Forty puts that never returned and whose values nobody read: the search skips them."""
    history = [put(c, "x", f"lost{c}", 0, None) for c in range(40)]
    for i in range(5):
        history += [put(100 + i, "x", f"v{i}", 1 + 4 * i, 4 + 4 * i)]
        history += [get(200 + i, "x", f"v{i}", 3 + 4 * i, 6 + 4 * i)]
    numbered = _number(history)
    pruned = check_linearizability(numbered, M)
    unpruned = check_linearizability(numbered, attrs.evolve(M, unobserved=None))
    assert pruned.ok is True
    assert unpruned.ok is True
    assert len(pruned.partitions[0].operations) == 10
    assert pruned.partitions[0].steps < unpruned.partitions[0].steps


def test_a_pending_put_that_was_read_is_kept() -> None:
    """Its value was seen, so it took effect: a read seeing an older value later is wrong."""
    history = [
        put(1, "x", "old", 0, 1),
        put(2, "x", "new", 2, None),
        get(3, "x", "new", 3, 4),
        get(3, "x", "old", 5, 6),
    ]
    assert check(*history) is False


def test_compare_and_set_succeeds_only_on_the_value_it_expects() -> None:
    assert check(put(1, "x", "a", 0, 1), cas(2, "x", "a", "b", (True, "a"), 2, 3)) is True
    assert check(put(1, "x", "a", 0, 1), cas(2, "x", "z", "b", (True, "z"), 2, 3)) is False
    assert check(cas(1, "x", None, "a", (True, None), 0, 1), get(2, "x", "a", 2, 3)) is True


def test_a_failed_compare_and_set_saw_the_value_and_changed_nothing() -> None:
    base = [put(1, "x", "a", 0, 1)]
    assert check(*base, cas(2, "x", "z", "b", (False, "a"), 2, 3), get(3, "x", "a", 4, 5))
    assert check(*base, cas(2, "x", "z", "b", (False, "q"), 2, 3)) is False  # saw a ghost
    assert check(*base, cas(2, "x", "a", "b", (False, "a"), 2, 3)) is False  # should have won
    assert check(*base, cas(2, "x", "z", "b", (False, "a"), 2, 3), get(3, "x", "b", 4, 5)) is False


def test_a_pending_compare_and_set_took_effect_only_if_its_compare_held() -> None:
    base = [put(1, "x", "a", 0, 1)]
    assert check(*base, cas(2, "x", "a", "b", None, 2, None), get(3, "x", "b", 3, 4)) is True
    assert check(*base, cas(2, "x", "z", "b", None, 2, None), get(3, "x", "b", 3, 4)) is False


def test_a_pending_put_a_compare_and_set_relied_on_is_kept() -> None:
    """Nobody got "b", but a compare-and-set won against it: the put took effect."""
    history = [
        put(1, "x", "a", 0, 1),
        put(2, "x", "b", 2, None),
        cas(3, "x", "b", "c", (True, "b"), 3, 4),
        get(3, "x", "c", 5, 6),
    ]
    assert check(*history) is True
    assert check(*history[:2], cas(3, "x", "z", "c", (False, "b"), 3, 4)) is True
    pending = cas(3, "x", "b", "c", None, 3, None)  # "c" was read: it won, against "b"
    assert check(*history[:2], pending, get(4, "x", "c", 5, 6)) is True


@given(st.data())
def test_dropping_unread_pending_puts_never_changes_a_verdict(data: st.DataObject) -> None:
    """Against the same search without the pruning, on small random histories."""
    values = ["a", "b", "c", None]
    ops = []
    for i in range(data.draw(st.integers(1, 7), label="n")):
        call = data.draw(st.integers(0, 8), label="call")
        ret = data.draw(st.none() | st.integers(call, 10), label="ret")
        kind = data.draw(st.sampled_from(["put", "get", "cas"]), label="kind")
        seen = data.draw(st.sampled_from([*values, *(f"v{j}" for j in range(i))]), label="seen")
        if kind == "put":
            ops.append(put(i, "x", f"v{i}", call, ret))
        elif kind == "get":
            ops.append(get(i, "x", seen, call, ret if ret is not None else call + 1))
        else:
            won = data.draw(st.booleans(), label="won")
            expected = seen if won else data.draw(st.sampled_from(values), label="expected")
            output = None if ret is None else (won, seen)
            ops.append(cas(i, "x", expected, f"v{i}", output, call, ret))
    numbered = _number(ops)
    pruned = check_linearizability(numbered, M).ok
    unpruned = check_linearizability(numbered, attrs.evolve(M, unobserved=None)).ok
    assert pruned == unpruned
