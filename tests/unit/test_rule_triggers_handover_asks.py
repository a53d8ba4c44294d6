"""rule_triggers' survivors waiting for merged customers' states ask the handover store
together: one survivor's ask due also asks for every other waiting key of the worker due
within ``HANDOVER_POLL_S``, in one round trip, and each takes its state at its next look
without asking again."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import flows.rule_triggers as rule_triggers
from base.config import Config
from connectors.reference_files import load_reference
from domain.customer_key import ABSORBED
from flows.rule_triggers import CustomerLogic, _Context
from state.coupon_store import MemoryCouponStore
from state.handover_store import MemoryHandoverStore
from state.memory_stock import MemoryStockStore
from tests.unit.test_customer_key import handed_over, merge, sale

T0 = 1_795_000_000_000


class CountingHandovers(MemoryHandoverStore):
    def __init__(self) -> None:
        super().__init__()
        self.asks: list[list[tuple[str, str]]] = []

    def take_many(self, pairs: Sequence[tuple[str, str]]) -> list[bytes | None]:
        self.asks.append(list(pairs))
        return super().take_many(pairs)


def test_waiting_survivors_ask_the_store_in_one_round_trip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(rule_triggers.time, "monotonic", lambda: clock[0])
    config = Config()
    reference = load_reference(config)
    store = CountingHandovers()
    ctx = _Context(
        config,
        reference,
        until_idle=True,
        stock_store=lambda: MemoryStockStore(reference),
        coupon_store=MemoryCouponStore,
        handover_store=lambda: store,
    )
    survivors = {}
    for n, (merged, survivor) in enumerate([("A1", "B1"), ("A2", "B2"), ("A3", "B3")]):
        away, absorbed = merge(merged, survivor, T0 + n)
        assert absorbed.kind == ABSORBED
        logic = CustomerLogic(ctx, None)
        logic.on_item(absorbed)
        assert logic.key.waiting == (merged,)
        survivors[survivor] = logic
        # The merged customer's key ran on another process: its state is in the store only.
        state = handed_over([sale(merged, f"s-{merged}", T0 - 1000), away])
        store.put(survivor, merged, state.payload)
    # B3 began to wait later than the others: not due within the poll interval yet.
    survivors["B3"]._asked_at = clock[0] + 10 * rule_triggers.HANDOVER_POLL_S
    clock[0] += rule_triggers.HANDOVER_POLL_S
    survivors["B1"].on_notify()
    assert store.asks == [[("B1", "A1"), ("B2", "A2")]]
    assert not survivors["B1"].key.waiting
    survivors["B2"].on_notify()  # takes what B1's ask found: no round trip of its own
    assert not survivors["B2"].key.waiting
    assert len(store.asks) == 1
    assert survivors["B3"].key.waiting == ("A3",)
    clock[0] += 20 * rule_triggers.HANDOVER_POLL_S
    survivors["B3"].on_notify()
    assert store.asks[1:] == [[("B3", "A3")]] and not survivors["B3"].key.waiting
