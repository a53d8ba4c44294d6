"""The attribution store's contract, one suite over both backends: the in-memory one (fast
tier) and Redis on the session's embedded stack (marked ``integration``).

What the flow and ``omnistream attribution report`` rely on: a cell is set, not added to
(a replay writes the same absolute values again); cells of other models and channels stay;
figures come back exactly as written (floats with cents, not rounded); a model nothing was
written to reads as empty; a channel name such as ``coupon:win_back`` comes back as written;
the totals outlive the writer that wrote them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from domain.attribution import MODELS
from state.attribution_store import (
    AttributionStore,
    MemoryAttributionStore,
    RedisAttributionStore,
)
from tests.store_backends import BACKENDS, handles

#: Opens another handle on the same totals (a second worker, the report after the flow).
Reopen = Callable[[], AttributionStore]


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest) -> Iterator[Reopen]:
    yield from handles(
        request,
        MemoryAttributionStore,
        lambda config: RedisAttributionStore(
            redis.Redis.from_url(config.redis.url), config.redis.key_prefix
        ),
    )


def test_cells_are_set_not_added_and_others_stay(stores: Reopen) -> None:
    store = stores()
    store.write_totals({("linear", "email"): (10.25, 0.5), ("linear", "search"): (3.0, 1.0)})
    store.write_totals({("linear", "email"): (12.75, 1.5)})  # absolute: replaces 10.25
    store.write_totals({("linear", "email"): (12.75, 1.5)})  # a replay: the same again
    assert store.read_totals(("linear",)) == {
        "linear": {"email": (12.75, 1.5), "search": (3.0, 1.0)}
    }


def test_models_are_kept_apart_and_unwritten_ones_read_empty(stores: Reopen) -> None:
    store = stores()
    store.write_totals(
        {("first_touch", "direct"): (42.5, 1.0), ("markov", "coupon:win_back"): (7.0, 0.25)}
    )
    assert store.read_totals(MODELS) == {
        model: {
            "first_touch": {"direct": (42.5, 1.0)},
            "markov": {"coupon:win_back": (7.0, 0.25)},
        }.get(model, {})
        for model in MODELS
    }
    store.write_totals({})  # a batch without cells writes nothing
    assert store.read_totals(("linear",)) == {"linear": {}}


def test_figures_come_back_exactly_and_outlive_the_writer(stores: Reopen) -> None:
    writer = stores()
    revenue = sum([0.1] * 7) + 1_234_567.89  # not a round float
    conversions = 2.0 / 3.0
    writer.write_totals({("time_decay", "wechat"): (revenue, conversions)})
    writer.close()
    reader = stores()
    assert reader.read_totals(("time_decay",)) == {"time_decay": {"wechat": (revenue, conversions)}}
