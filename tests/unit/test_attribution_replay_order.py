"""attribution's credit step in a replay: the paths give their outcomes at the end of the
input, from every worker and process in no fixed order; the step credits them in event-time
order, so the Markov weights in force at each conversion (and so every credit and total)
do not depend on how the flow was spread."""

from __future__ import annotations

import random

from domain.attribution import (
    AbandonedPath,
    AttributionParams,
    ConvertedPath,
    MarkovState,
    Touch,
)
from domain.attribution_paths import CreditedConversions, PathOutcome, in_event_time_order
from flows.attribution import CreditLogic

PARAMS = AttributionParams(markov_refresh_conversions=3)
CHANNELS = ("email", "search", "display", "social")


def outcomes(seed: int, count: int) -> list[PathOutcome]:
    rng = random.Random(seed)
    found: list[PathOutcome] = []
    for n in range(count):
        ts = 1_000 * rng.randrange(count // 2)  # ties on purpose
        path = tuple(
            Touch(rng.choice(CHANNELS), None, ts - 10 * k, f"t{n}-{k}")
            for k in range(rng.randrange(4))
        )
        if rng.random() < 0.2:
            found.append(AbandonedPath(tuple(t.channel for t in path) or ("email",), ts))
        else:
            found.append(ConvertedPath(f"order:{n}", f"c{n % 7}", 10.0 + n, ts, f"e{n}", path))
    return found


def credited(arrival: list[PathOutcome], resume: object = None) -> list[object]:
    logic = CreditLogic(PARAMS, live=False, resume=resume)  # type: ignore[arg-type]
    for item in arrival:
        assert logic.on_item(item)[0] == []  # held for the end
    out, _ = logic.on_eof()
    return [pair for batch in out for pair in batch]


def test_a_replay_credits_alike_in_any_arrival_order() -> None:
    given = outcomes(seed=3, count=60)
    expected = credited(given)
    assert len(expected) > 30
    for seed in range(5):
        shuffled = list(given)
        random.Random(seed).shuffle(shuffled)
        assert credited(shuffled) == expected


def test_the_order_is_event_time_with_a_given_up_path_first() -> None:
    late = ConvertedPath("order:b", None, 5.0, 2_000, "e2", ())
    early = ConvertedPath("order:a", None, 5.0, 1_000, "e1", ())
    given_up = AbandonedPath(("email",), 2_000)
    assert in_event_time_order([late, given_up, early]) == [early, given_up, late]


def test_live_credits_each_outcome_as_it_comes() -> None:
    logic = CreditLogic(PARAMS, live=True, resume=None)
    out, _ = logic.on_item(ConvertedPath("order:a", "c1", 5.0, 1_000, "e1", ()))
    assert [[c.conversion_id for c, _ in batch] for batch in out] == [["order:a"]]
    assert logic.on_eof()[0] == []


def test_a_snapshot_of_the_former_credit_step_resumes() -> None:
    """Before, the step was a ``stateful_map`` whose snapshot was the chain alone; then a
    pair of the chain and the held outcomes, without the conversion ids credited."""
    chain = MarkovState(paths=4)
    logic = CreditLogic(PARAMS, live=False, resume=chain)
    assert logic.snapshot() == (chain, [], CreditedConversions())
    assert logic.snapshot()[0] is not chain
    held = outcomes(seed=1, count=4)
    paired = CreditLogic(PARAMS, live=False, resume=(chain, list(held)))
    assert paired.snapshot() == (chain, held, CreditedConversions())


def test_a_conversion_id_is_credited_once_over_all_paths() -> None:
    """Two paths converting one id (an order and its pickup under another id of the
    customer, reaching the step by different routes): the first crediting only, live and
    in a replay (there the earliest), and after a resume from the snapshot."""
    order = ConvertedPath("order:o1", "a", 30.0, 1_000, "e1", ())
    pickup = ConvertedPath("order:o1", "c", 30.0, 5_000, "e2", ())
    logic = CreditLogic(PARAMS, live=True, resume=None)
    assert [c.customer_id for batch in logic.on_item(pickup)[0] for c, _ in batch] == ["c"]
    resumed = CreditLogic(PARAMS, live=True, resume=logic.snapshot())
    assert resumed.on_item(order)[0] == [[]]
    replayed = CreditLogic(PARAMS, live=False, resume=None)
    for outcome in (pickup, order):
        replayed.on_item(outcome)
    out, _ = replayed.on_eof()
    assert [(c.customer_id, c.event_id) for batch in out for c, _ in batch] == [("a", "e1")]
