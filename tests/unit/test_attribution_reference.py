"""Attribution models against independent computations over 20,000+ generated paths: the
heuristic models to the cent against a plain reference written here, the Markov removal-effect
shares within 2 percentage points of the ChannelAttribution package (test-only dependency)."""

from __future__ import annotations

import random
from collections import defaultdict

import pandas as pd
from ChannelAttribution import markov_model

from flows.logic.attribution import (
    DIRECT,
    AttributionParams,
    MarkovState,
    Touch,
    add_path,
    add_touches,
    convert,
    heuristic_credits,
    markov_credit,
    removal_effects,
    shares,
)

DAY = 86_400_000
T0 = 1_793_500_000_000
CHANNELS = ("search", "social", "email", "display", "affiliate", "coupon:cart-abandonment")
#: How much each channel raises the chance to convert: the shares must come out different.
PULL = {"search": 0.10, "social": 0.03, "email": 0.14, "display": 0.02, "affiliate": 0.06}
PULL["coupon:cart-abandonment"] = 0.2


def generate(n: int, seed: int = 3) -> list[tuple[list[Touch], bool, float]]:
    rng = random.Random(seed)
    paths = []
    for p in range(n):
        count = rng.choice((0, 1, 1, 2, 2, 3, 4, 5, 6, 8))
        ages = sorted((rng.uniform(0, 29 * DAY) for _ in range(count)), reverse=True)
        touches = [
            Touch(rng.choice(CHANNELS), None, int(T0 - age), f"p{p}-t{i}")
            for i, age in enumerate(ages)
        ]
        chance = min(0.9, 0.02 + sum(PULL[c] for c in {t.channel for t in touches}))
        converted = rng.random() < chance
        revenue = round(rng.uniform(5, 500), 2)
        paths.append((touches, converted, revenue))
    return paths


def reference(paths: list[tuple[list[Touch], bool, float]]) -> dict[str, dict[str, float]]:
    """The heuristic models written out directly."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for touches, converted, revenue in paths:
        if not converted:
            continue
        if not touches:
            for model in ("first_touch", "last_touch", "linear", "time_decay", "position_based"):
                totals[model]["direct"] += revenue
            continue
        names = [t.channel for t in touches]
        n = len(names)
        totals["first_touch"][names[0]] += revenue
        totals["last_touch"][names[-1]] += revenue
        for name in names:
            totals["linear"][name] += revenue / n
        weights = [2 ** (-(T0 - t.ts_ms) / (7 * DAY)) for t in touches]
        for name, weight in zip(names, weights, strict=True):
            totals["time_decay"][name] += revenue * weight / sum(weights)
        positions = (
            [1.0] if n == 1 else [0.5, 0.5] if n == 2 else [0.4, *[0.2 / (n - 2)] * (n - 2), 0.4]
        )
        for name, share in zip(names, positions, strict=True):
            totals["position_based"][name] += revenue * share
    return totals


def test_heuristic_models_equal_a_plain_reference_to_the_cent() -> None:
    paths = generate(20_000)
    params = AttributionParams()
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for touches, converted, revenue in paths:
        if converted:
            for model, credit in heuristic_credits(touches, T0, revenue, params).items():
                for channel, value in credit.items():
                    totals[model][channel] += value
    expected = reference(paths)
    assert sum(converted for _, converted, _ in paths) > 4_000
    assert set(totals) == set(expected)
    for model, table in expected.items():
        assert set(totals[model]) == set(table)
        for channel, value in table.items():
            assert abs(totals[model][channel] - value) < 0.005, (model, channel)


def test_markov_shares_agree_with_channel_attribution_within_two_points() -> None:
    paths = [(touches, converted) for touches, converted, _ in generate(20_000) if touches]
    state = MarkovState()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for touches, converted in paths:
        names = [t.channel for t in touches]
        add_path(state, names, converted)
        counts[">".join(names)][0 if converted else 1] += 1
    ours = shares(removal_effects(state.transitions))
    frame = pd.DataFrame([{"path": path, "conv": c, "null": n} for path, (c, n) in counts.items()])
    result = markov_model(frame, "path", "conv", var_null="null", order=1, out_more=True, verbose=0)
    effects = result["removal_effects"]
    total = float(effects["removal_effect"].sum())
    theirs = {row.channel_name: row.removal_effect / total for row in effects.itertuples()}
    assert set(ours) == set(theirs) == set(CHANNELS)
    worst = max(abs(ours[c] - theirs[c]) for c in CHANNELS)
    print(f"\nmax Markov share deviation from ChannelAttribution: {worst * 100:.2f} pp")
    assert worst < 0.02
    assert max(ours.values()) - min(ours.values()) > 0.02  # the shares really differ


def test_lookback_path_cap_direct_and_one_conversion_per_id() -> None:
    params = AttributionParams(lookback_ms=30 * DAY, max_touches=3)
    touches = [Touch(f"c{i}", None, T0 - (40 - i * 5) * DAY, f"t{i}") for i in range(8)]
    state, _ = add_touches(None, touches, params)
    state, converted = convert(state, "order:1", "cust", 100.0, T0, "e1", params)
    assert converted is not None
    # t0 and t1 are 40 and 35 days old (beyond the lookback); of the rest the last 3 count.
    assert [t.event_id for t in converted.path] == ["t5", "t6", "t7"]
    state, again = convert(state, "order:1", "cust", 100.0, T0 + DAY, "e2", params)
    assert again is None  # the store pickup of the same order is not a second conversion
    state, next_one = convert(state, "order:2", "cust", 50.0, T0 + DAY, "e3", params)
    assert next_one is not None and next_one.path == ()  # touches were used up
    by_model = heuristic_credits(next_one.path, T0 + DAY, 50.0, params)
    assert all(credit == {DIRECT: 50.0} for credit in by_model.values())
    assert markov_credit(MarkovState(), (), T0, 50.0, params) == {DIRECT: 50.0}
