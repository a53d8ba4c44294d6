"""A snapshot pickled before a state class gained fields resumes with those fields at
their defaults (``domain.resumable``), and a current snapshot round-trips unchanged.

An old snapshot is made the way pickle reads one: the instance's pickled state without
the fields an issue-16 ``CustomerState`` (no consent, lifecycle timers) or an early
``CustomerKey`` (rule engine and profile only) did not have."""

from __future__ import annotations

import copy
import pickle
from typing import Any

from domain.customer_key import CustomerKey
from domain.customer_rules import CustomerEvent, CustomerState, on_time
from domain.profile import ProfileSettings
from domain.rules import parse_rules
from domain.stock_view import RecordedStock
from domain.trigger_engine import CustomerTriggers

T0 = 1_795_000_000_000
RULES = parse_rules(
    "test",
    {
        "rules": [
            {
                "id": "lapsed",
                "kind": "lapsed",
                "cooldown": "30d",
                "params": {"inactive_days": 30},
                "coupon": {"type": "percent_off", "value": 10},
            }
        ]
    },
)


def resumed_without(instance: Any, *missing: str) -> Any:
    """``instance`` as pickle rebuilds it from a snapshot that lacks ``missing``."""
    rebuild, args, state, *_ = instance.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    dict_part, slots = state
    old = (dict_part, {k: v for k, v in slots.items() if k not in missing})
    fresh = rebuild(*args)
    fresh.__setstate__(old)
    return fresh


def test_an_old_customer_state_resumes_with_the_new_fields_at_their_defaults() -> None:
    state = CustomerState(last_purchase_ms=T0)
    old = resumed_without(state, "consent_ms", "marketing", "lapses", "repurchases")
    assert (old.consent_ms, old.marketing, old.lapses, old.repurchases) == (None, True, {}, {})
    assert old.last_purchase_ms == T0
    # and the rules that read the new fields run on it
    assert on_time(old, "C1", T0 + 40 * 86_400_000, RULES) == []


def test_an_old_customer_key_resumes_and_takes_events() -> None:
    key = CustomerKey(CustomerTriggers("C1", CustomerState()))
    old = resumed_without(key, "profile", "waiting", "held", "gone", "written_ms")
    assert (old.profile, old.waiting, old.held, old.gone, old.written_ms) == (
        None, (), (), False, None,
    )  # fmt: skip
    view = CustomerEvent("e1", "product_view", T0, "C1", "SH", skus=("HAT",))
    old.take(view, RULES, RecordedStock().at_end(), ProfileSettings(), replay=False)
    assert old.profile is not None and old.profile.last_seen_ms == T0


def test_a_current_snapshot_round_trips_unchanged() -> None:
    state = CustomerState(last_purchase_ms=T0, consent_ms=T0, marketing=False)
    state.carts["HAT"] = (T0 + 1, "e1")
    back = pickle.loads(pickle.dumps(state))
    assert back == state
    assert copy.deepcopy(state) == state
