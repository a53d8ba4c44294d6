"""Attribution models, pure: heuristic credits and Markov removal effects against independent
references (a plain re-computation; the ChannelAttribution package), lookback and path caps,
direct conversions, conversion ids credited once, identity-aware paths through the domain's
routing and path steps (live and replayed), the Markov refresh policy and the running totals."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

import pandas as pd
import pytest
from ChannelAttribution import markov_model
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.attribution import (
    CONVERSION,
    DAY_MS,
    DIRECT,
    HEURISTIC_MODELS,
    MODELS,
    START,
    AbandonedPath,
    AttributionParams,
    ConvertedPath,
    Credits,
    MarkovState,
    PathState,
    Touch,
    add_path,
    conversion_probability,
    convert,
    heuristic_credits,
    markov_credit,
    path_for,
    removal_effects,
    shares,
)
from domain.attribution_paths import (
    Absorb,
    CustomerPath,
    CustomerTouch,
    Handover,
    PathItem,
    Purchase,
    RouterState,
    accumulate,
    credit,
    follow_path,
    latest_cells,
    route,
)

T0 = 1_795_000_000_000  # 2026-11-18, epoch ms
CHANNELS = ("search", "social", "email", "display", "affiliate", "coupon:cart-abandonment")
#: Conversion propensity per touch of a channel, and how often a channel is touched.
PROPENSITY = {
    "search": 0.09,
    "social": 0.02,
    "email": 0.06,
    "display": 0.01,
    "affiliate": 0.04,
    "coupon:cart-abandonment": 0.15,
}
POPULARITY = (5, 4, 3, 4, 2, 1)
PATHS = 25_000


def touch(channel: str, ts_ms: int, event_id: str | None = None) -> Touch:
    return Touch(channel, None, ts_ms, event_id or f"e-{channel}-{ts_ms}")


def random_paths(
    seed: int, count: int, params: AttributionParams, min_touches: int = 0
) -> list[tuple[list[Touch], int, float, bool]]:
    """``count`` journeys: touches (unsorted, within the lookback), conversion time, revenue
    with cents, converted or not (more likely the more high-propensity touches)."""
    rng = random.Random(seed)
    journeys = []
    for n in range(count):
        conversion_ms = T0 + rng.randrange(0, 60 * DAY_MS)
        channels = rng.choices(CHANNELS, weights=POPULARITY, k=rng.randint(min_touches, 8))
        touches = [
            touch(c, conversion_ms - rng.randrange(0, params.lookback_ms + 1), f"j{n}-{i}")
            for i, c in enumerate(channels)
        ]
        stays = 1.0
        for c in channels:
            stays *= 1.0 - PROPENSITY[c]
        converted = rng.random() < (1.0 - stays if channels else 0.3)
        revenue = rng.randint(1, 50_000) / 100
        journeys.append((touches, conversion_ms, revenue, converted))
    return journeys


def reference_credits(
    touches: list[Touch], conversion_ms: int, revenue: float, half_life_ms: int
) -> dict[str, dict[str, float]]:
    """The models' definitions, written out independently of the module."""
    if not touches:
        return {model: {"direct": revenue} for model in HEURISTIC_MODELS}
    ordered = sorted(touches, key=lambda t: (t.ts_ms, t.event_id))
    n = len(ordered)
    out: dict[str, dict[str, float]] = {m: defaultdict(float) for m in HEURISTIC_MODELS}
    out["first_touch"][ordered[0].channel] += revenue
    out["last_touch"][ordered[-1].channel] += revenue
    decay = [0.5 ** ((conversion_ms - t.ts_ms) / half_life_ms) for t in ordered]
    decay_total = sum(decay)
    for i, t in enumerate(ordered):
        out["linear"][t.channel] += revenue / n
        out["time_decay"][t.channel] += revenue * decay[i] / decay_total
        if n == 1:
            share = 1.0
        elif n == 2:
            share = 0.5
        elif i in (0, n - 1):
            share = 0.4
        else:
            share = 0.2 / (n - 2)
        out["position_based"][t.channel] += revenue * share
    return out


# --- heuristic models ------------------------------------------------------------------------


def test_heuristic_totals_match_an_independent_reference_to_the_cent() -> None:
    params = AttributionParams()
    got: dict[str, dict[str, float]] = {m: defaultdict(float) for m in HEURISTIC_MODELS}
    expected: dict[str, dict[str, float]] = {m: defaultdict(float) for m in HEURISTIC_MODELS}
    converting = lengths = 0
    for touches, conversion_ms, revenue, converted in random_paths(7, PATHS, params):
        if not converted:
            continue
        converting += 1
        lengths |= 1 << len(touches)
        path = path_for(touches, conversion_ms, params)
        assert len(path) == len(touches)  # all within the lookback, under the cap
        for model, credited in heuristic_credits(path, conversion_ms, revenue, params).items():
            for channel, amount in credited.items():
                got[model][channel] += amount
        reference = reference_credits(touches, conversion_ms, revenue, params.half_life_ms)
        for model, credited in reference.items():
            for channel, amount in credited.items():
                expected[model][channel] += amount
    assert converting > 5_000
    assert lengths == 0b1_1111_1111  # every length 0…8 converted at least once
    for model in HEURISTIC_MODELS:
        assert set(got[model]) == set(expected[model]) == {*CHANNELS, DIRECT}
        for channel, amount in expected[model].items():
            assert abs(got[model][channel] - amount) < 0.005, (model, channel)


def test_position_based_and_time_decay_on_small_paths() -> None:
    params = AttributionParams()
    day = DAY_MS
    one = heuristic_credits([touch("email", T0 - day)], T0, 100.0, params)
    assert one["position_based"] == {"email": 100.0}
    two = heuristic_credits([touch("email", T0 - 2 * day), touch("search", T0)], T0, 100.0, params)
    assert two["position_based"] == {"email": 50.0, "search": 50.0}
    four = heuristic_credits(
        [touch(c, T0 - (4 - i) * day) for i, c in enumerate(["a", "b", "c", "d"])],
        T0,
        100.0,
        params,
    )
    expected = {"a": 40.0, "b": 10.0, "c": 10.0, "d": 40.0}
    assert four["position_based"].keys() == expected.keys()
    assert all(abs(four["position_based"][c] - v) < 1e-9 for c, v in expected.items())
    # A touch one half-life older weighs half as much.
    decayed = heuristic_credits(
        [touch("old", T0 - params.half_life_ms), touch("new", T0)], T0, 90.0, params
    )
    assert abs(decayed["time_decay"]["old"] - 30.0) < 1e-9
    assert abs(decayed["time_decay"]["new"] - 60.0) < 1e-9


# --- Markov ----------------------------------------------------------------------------------


def test_markov_removal_effect_shares_match_channel_attribution() -> None:
    params = AttributionParams()
    state = MarkovState()
    aggregated: Counter[tuple[str, bool]] = Counter()
    for touches, _, _, converted in random_paths(11, PATHS, params, min_touches=1):
        channels = [t.channel for t in sorted(touches, key=lambda t: (t.ts_ms, t.event_id))]
        add_path(state, channels, converted)
        aggregated[(">".join(channels), converted)] += 1
    assert state.paths == PATHS
    ours = shares(removal_effects(state.transitions))

    distinct = sorted({path for path, _ in aggregated})
    frame = pd.DataFrame(
        {
            "path": distinct,
            "conv": [aggregated[(p, True)] for p in distinct],
            "null": [aggregated[(p, False)] for p in distinct],
        }
    )
    result: Any = markov_model(
        frame, "path", "conv", var_null="null", order=1, out_more=True, verbose=0
    )
    effects = result["removal_effects"]
    total = float(effects["removal_effect"].sum())
    theirs = {
        str(c): float(e) / total
        for c, e in zip(effects["channel_name"], effects["removal_effect"], strict=True)
    }

    assert set(ours) == set(theirs) == set(CHANNELS)
    assert max(ours.values()) - min(ours.values()) > 0.10  # the channels differ meaningfully
    deviation = {c: abs(ours[c] - theirs[c]) for c in CHANNELS}
    worst = max(deviation, key=deviation.__getitem__)
    print(
        f"\nMarkov shares vs ChannelAttribution: max deviation {deviation[worst] * 100:.2f} pp"
        f" ({worst}); ours { ({c: round(s * 100, 2) for c, s in ours.items()}) }"
    )
    assert deviation[worst] < 0.02


def test_markov_removal_effects_of_a_tiny_chain_are_exact() -> None:
    state = MarkovState()
    # a always converts; b converts only through a; c never converts.
    for channels, converted in [(["a"], True), (["b", "a"], True), (["b"], False), (["c"], False)]:
        add_path(state, channels, converted)
    effects = removal_effects(state.transitions)
    # P(conv) = 1/4·1 + 2/4·(1/2·1) + 1/4·0 = 1/2; without a: 0; without b: 1/4; without c: 1/2.
    assert abs(effects["a"] - 1.0) < 1e-9
    assert abs(effects["b"] - 0.5) < 1e-9
    assert abs(effects["c"]) < 1e-9
    expected = {"a": 2 / 3, "b": 1 / 3, "c": 0.0}
    assert all(abs(s - expected[c]) < 1e-9 for c, s in shares(effects).items())


def test_markov_refresh_policy_and_credits_summing_to_revenue() -> None:
    params = AttributionParams(markov_refresh_conversions=3, markov_refresh_ms=10_000)
    state = MarkovState()
    add_path(state, ["display"], False)
    add_path(state, ["search"], True)

    def conversion(ts_ms: int, channels: list[str], revenue: float) -> dict[str, float]:
        path = [touch(c, ts_ms - 1_000 * (len(channels) - i)) for i, c in enumerate(channels)]
        credited = markov_credit(state, path, ts_ms, revenue, params)
        assert set(credited) == set(channels)
        assert abs(sum(credited.values()) - revenue) < 1e-9
        return credited

    conversion(T0, ["display", "search"], 123.45)  # the first conversion refreshes
    assert (state.refreshed_at_ms, state.conversions_since_refresh) == (T0, 1)
    weights = dict(state.weights)
    assert weights["search"] > 0
    conversion(T0 + 1, ["email", "search"], 10.01)  # a new channel: no weight until refreshed
    conversion(T0 + 2, ["email"], 99.99)  # only unweighted channels: split by touches
    assert (state.refreshed_at_ms, state.conversions_since_refresh) == (T0, 3)
    assert state.weights == weights
    conversion(T0 + 3, ["email", "search"], 50.0)  # the 4th: 3 since the last refresh
    assert (state.refreshed_at_ms, state.conversions_since_refresh) == (T0 + 3, 1)
    assert state.weights["email"] > 0
    conversion(T0 + 3 + 9_999, ["search"], 1.0)
    assert (state.refreshed_at_ms, state.conversions_since_refresh) == (T0 + 3, 2)
    conversion(T0 + 3 + 10_000, ["search", "display"], 7.77)  # markov_refresh_ms later
    assert (state.refreshed_at_ms, state.conversions_since_refresh) == (T0 + 10_003, 1)


def test_markov_credit_uses_removal_effect_weights_in_force() -> None:
    params = AttributionParams()
    state = MarkovState()
    for channels, converted in [(["a"], True), (["b", "a"], True), (["b"], False), (["c"], False)]:
        add_path(state, channels, converted)
    credited = markov_credit(state, [touch("b", T0 - 2), touch("a", T0 - 1)], T0, 90.0, params)
    # After counting this path (b → a → conversion) the chain converts 3/5 of the time.
    effects = removal_effects(state.transitions)
    assert abs(credited["a"] - 90.0 * effects["a"] / (effects["a"] + effects["b"])) < 1e-9
    assert abs(credited["a"] + credited["b"] - 90.0) < 1e-9
    assert credited["a"] > credited["b"] > 0


# --- paths: lookback, caps, direct, conversion ids -------------------------------------------


def test_lookback_excludes_older_touches() -> None:
    params = AttributionParams(lookback_ms=7 * DAY_MS)
    too_old = touch("display", T0 - params.lookback_ms - 1)
    edge = touch("social", T0 - params.lookback_ms)
    recent = touch("search", T0 - 1)
    later = touch("email", T0 + 1)
    assert path_for([recent, later, too_old, edge], T0, params) == [edge, recent]
    state = PathState(touches=[too_old, edge, recent, later])
    state, converted = convert(state, "order:1", "c1", 10.0, T0, "ev-1", params)
    assert converted is not None
    assert converted.path == (edge, recent)
    assert state.touches == [later]  # the later touch waits for a later conversion


def test_path_keeps_only_the_last_max_touches() -> None:
    params = AttributionParams(max_touches=3)
    touches = [touch(c, T0 - (5 - i) * 1_000) for i, c in enumerate("abcde")]
    assert [t.channel for t in path_for(list(reversed(touches)), T0, params)] == ["c", "d", "e"]
    _, converted = convert(PathState(list(touches)), "order:1", "c1", 5.0, T0, "ev", params)
    assert converted is not None
    assert [t.channel for t in converted.path] == ["c", "d", "e"]


def test_a_conversion_without_touches_is_direct_in_every_model() -> None:
    params = AttributionParams()
    _, converted = convert(None, "receipt:s1:r1", None, 42.5, T0, "ev", params)
    assert converted is not None and converted.path == ()
    credited = heuristic_credits(converted.path, T0, 42.5, params)
    assert credited == {model: {DIRECT: 42.5} for model in HEURISTIC_MODELS}
    state = MarkovState()
    add_path(state, ["search"], True)
    assert markov_credit(state, [], T0, 42.5, params) == {DIRECT: 42.5}
    _, out = credit(None, converted, params)
    assert out[0][1] == {model: {DIRECT: 42.5} for model in MODELS}


def test_store_pickup_is_not_a_second_conversion_and_touches_are_used_once() -> None:
    params = AttributionParams()
    state = PathState([touch("email", T0 - 2_000), touch("search", T0 - 1_000)])
    state, order = convert(state, "order:o1", "c1", 80.0, T0, "ev-order", params)
    assert order is not None
    assert [t.channel for t in order.path] == ["email", "search"]
    # The pickup at the store names the same order: not credited again.
    state, pickup = convert(state, "order:o1", "c1", 80.0, T0 + DAY_MS, "ev-pickup", params)
    assert pickup is None
    state.touches.append(touch("social", T0 + 2 * DAY_MS))
    state, second = convert(state, "order:o2", "c1", 30.0, T0 + 3 * DAY_MS, "ev-o2", params)
    assert second is not None
    assert [t.channel for t in second.path] == ["social"]  # email, search were used up


# --- identity-aware paths through the domain's routing and path steps -------------------------


class Pipeline:
    """The router and path steps of the flow, keyed as the flow keys them."""

    def __init__(self, params: AttributionParams) -> None:
        self.params = params
        self.routers: dict[str, RouterState | None] = defaultdict(lambda: None)
        self.paths: dict[str, PathState | None] = defaultdict(lambda: None)
        self.routed: list[tuple[str, Any]] = []

    def feed(self, item: CustomerTouch | Purchase | Absorb) -> list[Any]:
        arrival = item.customer_id or ""
        self.routers[arrival], routed = route(self.routers[arrival], item, self.params)
        self.routed += routed
        out: list[Any] = []
        for owner, owned in routed:
            assert isinstance(owned, Touch | Handover | Purchase)  # live: no replay's items
            self.paths[owner], produced = follow_path(self.paths[owner], owned, self.params)
            out += produced
        return out


def test_touches_of_an_absorbed_customer_are_on_the_survivors_path() -> None:
    params = AttributionParams()
    flow = Pipeline(params)
    anon = [touch("display", T0 - 3_000, "t1"), touch("email", T0 - 2_000, "t2")]
    for t in anon:
        assert flow.feed(CustomerTouch("anon-1", t)) == []
    assert flow.routed == [("anon-1", anon[0]), ("anon-1", anon[1])]
    assert flow.feed(Absorb("anon-1", into="user-1")) == []
    assert flow.routed[-1] == ("user-1", Handover(tuple(anon)))
    flow.feed(CustomerTouch("user-1", touch("search", T0 - 1_000, "t3")))
    [converted] = flow.feed(Purchase("user-1", "order:o1", 59.9, T0, "ev-o1"))
    assert isinstance(converted, ConvertedPath)
    assert [t.event_id for t in converted.path] == ["t1", "t2", "t3"]
    assert converted.customer_id == "user-1"

    # Late arrivals under the absorbed id go to the survivor.
    late = touch("coupon:cart-abandonment", T0 + 1_000, "t4")
    flow.feed(CustomerTouch("anon-1", late))
    assert flow.routed[-1] == ("user-1", late)
    [again] = flow.feed(Purchase("anon-1", "order:o2", 20.0, T0 + 2_000, "ev-o2"))
    assert flow.routed[-1][0] == "user-1"
    assert isinstance(again, ConvertedPath)
    assert again.path == (late,)
    # A repeated merge, or a merge into itself, changes nothing.
    assert flow.feed(Absorb("anon-1", into="user-2")) == []
    assert flow.routed[-1][0] == "user-1"
    assert route(None, Absorb("x", into="x"), params)[1] == []


def test_a_conversion_credited_before_a_merge_is_not_credited_again() -> None:
    params = AttributionParams()
    flow = Pipeline(params)
    flow.feed(CustomerTouch("anon-1", touch("email", T0 - 1_000, "t1")))
    [order] = flow.feed(Purchase("anon-1", "order:o1", 40.0, T0, "ev-order"))
    assert isinstance(order, ConvertedPath) and order.path[0].event_id == "t1"
    flow.feed(Absorb("anon-1", into="user-1"))
    # The store pickup of the same order arrives under the survivor.
    assert flow.feed(Purchase("user-1", "order:o1", 40.0, T0 + DAY_MS, "ev-pickup")) == []


def test_touches_used_before_a_merge_are_not_credited_again_after_it() -> None:
    params = AttributionParams()
    flow = Pipeline(params)
    flow.feed(CustomerTouch("anon-1", touch("email", T0 - 1_000, "t1")))
    [first] = flow.feed(Purchase("anon-1", "order:o1", 40.0, T0, "ev-o1"))
    assert isinstance(first, ConvertedPath) and [t.event_id for t in first.path] == ["t1"]
    flow.feed(Absorb("anon-1", into="user-1"))
    flow.feed(CustomerTouch("user-1", touch("search", T0 + DAY_MS, "t2")))
    [second] = flow.feed(Purchase("user-1", "order:o2", 25.0, T0 + 2 * DAY_MS, "ev-o2"))
    assert isinstance(second, ConvertedPath)
    # t1 was used up by order o1; only t2 leads to o2.
    assert [t.event_id for t in second.path] == ["t2"]


def test_touches_that_age_out_become_a_non_converting_markov_path() -> None:
    params = AttributionParams(lookback_ms=DAY_MS)
    state, out = follow_path(None, touch("display", T0, "t1"), params)
    assert out == []
    state, out = follow_path(state, touch("search", T0 + DAY_MS + 1, "t2"), params)
    assert out == [AbandonedPath(("display",), T0 + DAY_MS + 1)]  # given up by t2
    chain, credited = credit(None, out[0], params)
    assert credited == []
    assert chain.transitions["(start)"] == {"display": 1.0}
    assert chain.transitions["display"] == {"(null)": 1.0}


def test_a_replayed_path_credits_in_event_time_order_whatever_the_arrival_order() -> None:
    """In a replay a path keeps what it is given and applies it in event-time order at the
    end: a handover read after the purchase still brings its touches in time, and a
    conversion credited under the merged id is not credited again. Live, the same items in
    that arrival order credit the purchase without the handed-over touches."""
    params = AttributionParams()
    email, search = touch("email", T0 - 2_000, "t1"), touch("search", T0 - 1_000, "t2")
    arrivals: list[PathItem] = [
        Purchase("user-1", "order:o1", 60.0, T0, "ev-o1"),
        Purchase("user-1", "order:o0", 10.0, T0 + 5, "ev-pickup"),  # credited under anon-1
        search,
        Handover((email,), (("order:o0", T0 - 5_000),)),
    ]
    replay = CustomerPath(params, live=False)
    assert [out for item in arrivals for out in replay.take(item)] == []
    state, pending, erased = replay.snapshot()
    assert pending == [arrivals[0], arrivals[1], search, email] and not erased
    assert state is not None and state.converted == {"order:o0": T0 - 5_000}
    # a pair, as snapshots were before the erased mark: it resumes as not erased
    resumed = CustomerPath(params, live=False, resume=(state, pending))
    [converted] = resumed.finish()
    assert isinstance(converted, ConvertedPath)
    assert (converted.conversion_id, [t.event_id for t in converted.path]) == (
        "order:o1",
        ["t1", "t2"],
    )
    assert resumed.finish() == []  # applied once

    live = CustomerPath(params, live=True)
    produced = [out for item in arrivals for out in live.take(item)]
    assert [(p.conversion_id, p.path) for p in produced if isinstance(p, ConvertedPath)] == [
        ("order:o1", ()),
        ("order:o0", ()),
    ]


# --- running totals ---------------------------------------------------------------------------


def test_accumulated_totals_equal_the_sum_of_credits() -> None:
    params = AttributionParams(markov_refresh_conversions=50)
    chain: MarkovState | None = None
    totals: dict[str, dict[str, list[float]]] | None = None
    expected: dict[str, dict[str, float]] = {m: defaultdict(float) for m in MODELS}
    conversions = 0
    for n, (touches, conversion_ms, revenue, converted) in enumerate(
        random_paths(3, 3_000, params)
    ):
        path = path_for(touches, conversion_ms, params)
        item: ConvertedPath | AbandonedPath
        if not converted:
            item = AbandonedPath(tuple(t.channel for t in path))
        else:
            revenue = 0.0 if n % 50 == 0 else revenue  # a free order still counts once
            item = ConvertedPath(f"order:{n}", f"c{n}", revenue, conversion_ms, "ev", tuple(path))
        chain, out = credit(chain, item, params)
        for pair in out:
            conversions += 1
            credited: Credits = pair[1]
            assert set(credited) == set(MODELS)
            for model, per_channel in credited.items():
                assert abs(sum(per_channel.values()) - pair[0].revenue) < 1e-9
                for channel, amount in per_channel.items():
                    expected[model][channel] += amount
            totals, cells = accumulate(totals, pair)
            for model, channel, revenue_total, conversion_total in cells:
                assert totals[model][channel] == [revenue_total, conversion_total]
            for (model, channel), cell in latest_cells(cells).items():
                assert list(cell) == totals[model][channel]  # the last value of each cell
    assert totals is not None and conversions > 500
    for model in MODELS:
        assert set(totals[model]) == set(expected[model])
        for channel, amount in expected[model].items():
            assert abs(totals[model][channel][0] - amount) < 0.005, (model, channel)
        counted = sum(cell[1] for cell in totals[model].values())
        assert abs(counted - conversions) < 1e-6, model


def iterated_conversion_probability(
    transitions: dict[str, dict[str, float]], removed: str | None = None
) -> float:
    """Reference: plain value iteration to convergence (what the linear solve replaced)."""
    probability = {state: 0.0 for state in transitions if state != removed}
    probability[CONVERSION] = 1.0
    for _ in range(100_000):
        delta = 0.0
        for state, outgoing in transitions.items():
            total = sum(outgoing.values())
            if state in (removed, CONVERSION) or total == 0:
                continue
            value = (
                sum(n * probability.get(t, 0.0) for t, n in outgoing.items() if t != removed)
                / total
            )
            delta = max(delta, abs(value - probability[state]))
            probability[state] = value
        if delta < 1e-14:
            break
    return probability.get(START, 0.0)


@settings(max_examples=200, deadline=None)
@given(
    paths=st.lists(
        st.tuples(
            st.lists(
                st.sampled_from(["email", "search", "social", "coupon", "ads"]),
                min_size=1,
                max_size=6,
            ),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_markov_linear_solve_equals_value_iteration(paths: list[tuple[list[str], bool]]) -> None:
    state = MarkovState()
    for channels, converted in paths:
        add_path(state, channels, converted)
    for removed in [None, *sorted({c for channels, _ in paths for c in channels})]:
        assert conversion_probability(state.transitions, removed) == pytest.approx(
            iterated_conversion_probability(state.transitions, removed), abs=1e-9
        )
