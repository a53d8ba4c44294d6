"""The states a rule_triggers process keeps at hand for its own survivors
(``state.handover_store.LocalHandovers``): taken once, bounded, dropped on erasure."""

from __future__ import annotations

from state.handover_store import LocalHandovers, MemoryHandoverStore


def test_a_state_is_taken_once_and_then_only_the_store_has_it() -> None:
    local = LocalHandovers()
    local.keep("B", "A", b"state of A")
    assert local.take("B", "A") == b"state of A"
    assert local.take("B", "A") is None
    assert len(local) == 0


def test_past_the_limit_the_oldest_states_go_first() -> None:
    local = LocalHandovers(limit=3)
    for n in range(5):
        local.keep(f"S{n}", f"M{n}", str(n).encode())
    assert len(local) == 3
    assert local.take("S0", "M0") is None and local.take("S1", "M1") is None
    assert [local.take(f"S{n}", f"M{n}") for n in (2, 3, 4)] == [b"2", b"3", b"4"]


def test_an_erasure_drops_the_states_the_id_survived_and_was_merged_from() -> None:
    local = LocalHandovers()
    local.keep("B", "A", b"a")
    local.keep("C", "B", b"b")
    local.keep("D", "E", b"e")
    local.drop("B")
    assert local.take("B", "A") is None and local.take("C", "B") is None
    assert local.take("D", "E") == b"e"


def test_put_many_keeps_each_state_as_put_does() -> None:
    store = MemoryHandoverStore()
    store.put_many([("B", "A", b"a"), ("C", "B", b"b")])
    assert store.take("B", "A") == b"a" and store.take("C", "B") == b"b"
