"""A key's batch writes one profile (``CustomerKey.settle``): the same fields the profile
fold gives for the key's history as of its last change, whatever the batch boundaries;
nothing for a key merged away or erased (its profile goes)."""

from __future__ import annotations

from typing import Any

from domain.customer_key import (
    ERASED,
    MERGED,
    CustomerKey,
    IdentityNotice,
    ProfilePending,
    ProfileRetired,
    ProfileWrite,
)
from domain.customer_rules import CustomerEvent
from domain.profile import ProfileSettings, observe, profile_fields
from domain.rules import parse_rules
from domain.stock_view import RecordedStock

T0 = 1_795_000_000_000
MIN = 60_000
RULES = parse_rules(
    "test",
    {
        "rules": [
            {
                "id": "win-back",
                "kind": "win_back",
                "cooldown": "30d",
                "params": {"inactive_days": 60},
                "coupon": {"type": "percent_off", "value": 15},
            }
        ]
    },
)
STOCK = RecordedStock().at_end()
SETTINGS = ProfileSettings()


def history(customer: str) -> list[CustomerEvent]:
    return [
        CustomerEvent("e1", "product_view", T0, customer, "SH", skus=("HAT",)),
        CustomerEvent("e2", "add_to_cart", T0 + MIN, customer, "SH", skus=("HAT",)),
        CustomerEvent(
            "e3", "sale", T0 + 2 * MIN, customer, "SH", skus=("HAT",), is_purchase=True,
            revenue=25.0,
        ),
        CustomerEvent("e4", "product_view", T0 + 3 * MIN, customer, "SH", skus=("SCARF",)),
    ]  # fmt: skip


def reference_fields(events: list[CustomerEvent]) -> dict[str, str]:
    """The profile fold on its own, as of the last event."""
    profile = None
    for e in events:
        profile = observe(profile, e, SETTINGS)
    assert profile is not None
    return profile_fields(profile, events[-1].ts_ms, SETTINGS)


def run(batches: list[list[Any]]) -> list[Any]:
    key, sent = CustomerKey(), []
    for batch in batches:
        out: list[Any] = []
        for item in batch:
            out += key.take(item, RULES, STOCK, SETTINGS, replay=False)
        sent += key.settle(out, SETTINGS)
    return sent


def test_each_batch_writes_the_profile_once_as_the_fold_gives_it() -> None:
    events = history("C1")
    for cut in range(1, len(events) + 1):
        sent = run([events[:cut], events[cut:]] if cut < len(events) else [events])
        writes = [o for o in sent if isinstance(o, ProfileWrite)]
        assert len(writes) == (2 if cut < len(events) else 1)
        assert not [o for o in sent if isinstance(o, ProfilePending)]
        assert writes[-1].fields == reference_fields(events)
        assert writes[-1].as_of_ms == events[-1].ts_ms
        assert writes[0].fields == reference_fields(events[:cut])


def test_a_key_merged_away_or_erased_in_the_batch_writes_no_profile() -> None:
    events = history("C1")
    merged = IdentityNotice(MERGED, "C1", "C9", T0 + 4 * MIN, "m1")
    sent = run([[*events, merged]])
    assert not [o for o in sent if isinstance(o, ProfileWrite | ProfilePending)]
    assert [o for o in sent if isinstance(o, ProfileRetired)] == [ProfileRetired("C1")]
    erased = IdentityNotice(ERASED, "C1", None, T0 + 4 * MIN, "x1")
    sent = run([[*events, erased]])
    assert not [o for o in sent if isinstance(o, ProfileWrite | ProfilePending)]
