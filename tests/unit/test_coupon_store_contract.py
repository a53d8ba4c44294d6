"""The coupon codes' store contract, one suite over both backends: the in-memory one (fast
tier) and Redis on the session's embedded stack (marked ``integration``).

What rule_triggers relies on: a code sent is found by another worker's handle (the sink of
one worker writes, the claims of another read); unknown codes are left out, not answered
empty; a code sent again takes its new owner; an empty batch costs nothing; the codes
outlive the writer that wrote them. Expiry follows the seconds to keep (Redis's TTL): the
memory store is checked on a clock it is given; Redis on the real one, with a key's TTL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from base.config import Config
from state.coupon_store import CouponStore, MemoryCouponStore, RedisCouponStore
from tests.store_backends import BACKENDS, handles

#: Opens another handle on the same codes (another worker, a flow started again).
Reopen = Callable[[], CouponStore]
DAY_S = 86_400


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest) -> Iterator[Reopen]:
    yield from handles(
        request,
        MemoryCouponStore,
        lambda config: RedisCouponStore(
            redis.Redis.from_url(config.redis.url), config.redis.key_prefix
        ),
    )


def test_a_code_sent_is_found_by_another_handle(stores: Reopen) -> None:
    writer, reader = stores(), stores()
    writer.remember([("OSAAA", "cust-1", DAY_S), ("OSBBB", "cust-2", DAY_S)])
    assert reader.owners(["OSBBB", "OSAAA"]) == {"OSAAA": "cust-1", "OSBBB": "cust-2"}


def test_unknown_codes_are_left_out(stores: Reopen) -> None:
    store = stores()
    store.remember([("OSAAA", "cust-1", DAY_S)])
    assert store.owners(["C-WELCOME-SAVE10", "OSAAA", "OSZZZ"]) == {"OSAAA": "cust-1"}
    assert store.owners([]) == {}


def test_a_code_sent_again_takes_the_new_owner(stores: Reopen) -> None:
    store = stores()
    store.remember([("OSAAA", "cust-1", DAY_S)])
    store.remember([("OSAAA", "cust-9", DAY_S)])
    assert store.owners(["OSAAA"]) == {"OSAAA": "cust-9"}


def test_nothing_to_remember_is_nothing_written(stores: Reopen) -> None:
    store = stores()
    store.remember([])
    assert store.owners(["OSAAA"]) == {}


def test_codes_outlive_the_writer(stores: Reopen) -> None:
    writer = stores()
    writer.remember([("OSAAA", "cust-1", DAY_S)])
    writer.close()
    assert stores().owners(["OSAAA"]) == {"OSAAA": "cust-1"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_the_memory_store_forgets_a_code_once_its_keep_has_passed() -> None:
    clock = FakeClock()
    store = MemoryCouponStore(now=clock)
    store.remember([("OSAAA", "cust-1", 60), ("OSBBB", "cust-2", 0)])  # 0: kept one second
    clock.now += 0.5
    assert store.owners(["OSAAA", "OSBBB"]) == {"OSAAA": "cust-1", "OSBBB": "cust-2"}
    clock.now += 1
    assert store.owners(["OSAAA", "OSBBB"]) == {"OSAAA": "cust-1"}
    clock.now += 59
    assert store.owners(["OSAAA"]) == {}


@pytest.mark.integration
def test_redis_keeps_a_code_for_its_seconds(omni_config: Config) -> None:
    """The same keep in Redis: the key's TTL, at least a second."""
    client = redis.Redis.from_url(omni_config.redis.url)
    store = RedisCouponStore(client, omni_config.redis.key_prefix)
    try:
        store.remember([("OSAAA", "cust-1", 3600), ("OSBBB", "cust-2", 0)])
        assert 3590 <= client.ttl(store.key("OSAAA")) <= 3600
        assert client.ttl(store.key("OSBBB")) == 1
    finally:
        store.close()


def test_forgotten_codes_have_no_owner_and_others_stay(stores: Reopen) -> None:
    """An erased customer's codes are dropped; another customer's code is untouched."""
    writer = stores()
    writer.remember([("OSAAA", "c1", 3600), ("OSBBB", "c1", 3600), ("OSCCC", "c2", 3600)])
    writer.forget(["OSAAA", "OSBBB", "OSNONE"])
    assert stores().owners(["OSAAA", "OSBBB", "OSCCC"]) == {"OSCCC": "c2"}
