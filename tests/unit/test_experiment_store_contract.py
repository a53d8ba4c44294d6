"""The experiment arms' store contract, one suite over both backends: memory (fast tier)
and Redis on the session's embedded stack (marked ``integration``).

What ``experiments report`` relies on: customers are counted once per arm however many
triggers they got, a conversion counts for the customer its trigger went to, a batch
written twice (a replay after a crash) changes nothing, arms are kept apart, and an erased
customer is gone from every arm — on Redis, from every key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from domain.experiments import ArmTally
from domain.stock_arms import ShelfFigures
from state.experiment_store import ExperimentStore, MemoryExperimentStore, RedisExperimentStore
from tests.store_backends import BACKENDS, handles

Reopen = Callable[[], ExperimentStore]


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest) -> Iterator[Reopen]:
    yield from handles(
        request,
        MemoryExperimentStore,
        lambda config: RedisExperimentStore(
            redis.Redis.from_url(config.redis.url), config.redis.key_prefix
        ),
    )


SENT = [
    ("cart", "amount_15", "OS1", "cust-1"),
    ("cart", "amount_15", "OS2", "cust-1"),  # the same customer again, after the cooldown
    ("cart", "amount_15", "OS3", "cust-2"),
    ("cart", "control", "OS4", "cust-3"),
    ("lapsed", "fifteen", "OS5", "cust-1"),
]
CONVERTED = [("cart", "amount_15", "OS2", 4_250), ("cart", "control", "OS4", 1_000)]


def by_arm(store: ExperimentStore) -> dict[tuple[str, str], ArmTally]:
    return {(t.rule_id, t.variant): t for t in store.tallies()}


def test_customers_are_counted_once_and_conversions_follow_their_trigger(
    stores: Reopen,
) -> None:
    writer, reader = stores(), stores()
    writer.record(SENT, CONVERTED)
    arms = by_arm(reader)
    assert arms == {
        ("cart", "amount_15"): ArmTally("cart", "amount_15", 2, 3, 1, 1, 42.5),
        ("cart", "control"): ArmTally("cart", "control", 1, 1, 1, 1, 10.0),
        ("lapsed", "fifteen"): ArmTally("lapsed", "fifteen", 1, 1, 0, 0, 0.0),
    }


def test_a_batch_written_again_changes_nothing(stores: Reopen) -> None:
    store = stores()
    store.record(SENT, CONVERTED)
    first = by_arm(store)
    store.record(SENT, CONVERTED)
    store.record(SENT[:2], CONVERTED[:1])
    assert by_arm(store) == first


def test_a_conversion_in_a_later_batch_than_its_trigger_counts(stores: Reopen) -> None:
    store = stores()
    store.record(SENT, [])
    store.record([], [("cart", "amount_15", "OS3", 999)])
    arm = by_arm(store)["cart", "amount_15"]
    assert (arm.converted, arm.conversions, arm.revenue) == (1, 1, 9.99)


def test_an_erased_customer_is_counted_nowhere(stores: Reopen) -> None:
    store = stores()
    store.record(SENT, CONVERTED)
    store.forget(["cust-1"])
    arms = by_arm(store)
    assert arms["cart", "amount_15"] == ArmTally("cart", "amount_15", 1, 1, 0, 0, 0.0)
    assert ("lapsed", "fifteen") not in arms  # nothing left in that arm
    assert arms["cart", "control"].assigned == 1
    store.forget(["nobody"])  # unknown: nothing happens
    assert by_arm(store)["cart", "control"].assigned == 1


@pytest.mark.integration
def test_on_redis_the_erased_id_is_in_no_key(omni_config) -> None:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(omni_config.redis.url)
    store = RedisExperimentStore(client, omni_config.redis.key_prefix)
    store.record([("cart", "a", "OS9", "cust-erase-me"), ("cart", "a", "OS8", "cust-k")], [])
    store.record([], [("cart", "a", "OS9", 100)])
    store.forget(["cust-erase-me"])
    for key in client.scan_iter(f"{omni_config.redis.key_prefix}experiments:*"):
        if client.type(key) == b"hash":
            assert b"cust-erase-me" not in client.hvals(key)
            assert b"c:OS9" not in client.hkeys(key)
        assert client.pttl(key) > 0  # every key expires by itself
    store.close()


def shelf(
    sku: str, location: str, arms: tuple[tuple[str, str], ...], *figures: int | None
) -> ShelfFigures:
    """A shelf's figures: stockout ms closed, open stockout's start, sold, as of."""
    closed, since, sold, as_of = figures
    assert closed is not None and sold is not None and as_of is not None
    return ShelfFigures(sku, location, arms, closed, since, sold, as_of)


def test_stock_arms_keep_each_shelfs_latest_figures_and_each_move_once(stores: Reopen) -> None:
    writer, reader = stores(), stores()
    both = (("low", "cover_14"), ("out", "control"))
    first = [
        shelf("SKU-1", "ST-1", both, 0, 1_000, 3, 1_000),
        shelf("SKU-1", "ST-1", both, 500, None, 5, 1_500),  # later figures of the same shelf
        shelf("SKU-2", "ST-1", (("low", "control"),), 0, None, 1, 900),
    ]
    moves = [("low", "cover_14", "t1", "transfer", 12), ("low", "control", "t2", "replenish", 4)]
    writer.record_stock(first, moves)
    writer.record_stock(first[1:], moves)  # a batch replayed after a crash
    arms = {(t.rule_id, t.variant): t for t in reader.stock_tallies()}
    assert set(arms) == {("low", "cover_14"), ("low", "control"), ("out", "control")}
    assert arms[("low", "cover_14")].shelves == ((500, None, 5, 1_500),)
    assert arms[("low", "cover_14")].moves == (("transfer", 12),)
    assert arms[("out", "control")].shelves == ((500, None, 5, 1_500),)
    assert arms[("low", "control")].shelves == ((0, None, 1, 900),)
    assert arms[("low", "control")].moves == (("replenish", 4),)
    assert by_arm(reader) == {}  # customer arms are apart
