"""The customer count in Redis (``<p>customers:count``): equal to the customer records there
are (counted here with ``KEYS`` on the test's own prefix, not the store's ``SCAN``), also
with two writers at once; seeded once on a deployment that predates it; untouched by a
refused write; the same as the in-memory twin's batch by batch."""

from __future__ import annotations

import random
import threading

import pytest
import redis

from base.config import Config
from domain.identity import EventIdentifiers, resolve_events
from state.identity_store import IdentityStore
from state.memory_identity import MemoryIdentityStore

pytestmark = pytest.mark.integration
T0 = 1_793_500_000_000


def records(client: redis.Redis, config: Config) -> int:
    return len(client.keys(f"{config.redis.key_prefix}cust:*"))


def stored_count(client: redis.Redis, config: Config) -> int | None:
    raw = client.get(f"{config.redis.key_prefix}customers:count")
    return None if raw is None else int(raw)  # type: ignore[arg-type]


def traffic(seed: int, count: int) -> list[EventIdentifiers]:
    """Users, devices and cards drawn so that shared devices and merges happen."""
    rnd = random.Random(seed)
    pool = [f"user:u{n}" for n in range(30)] + [f"anon:d{n}" for n in range(60)]
    pool += [f"member:m{n}" for n in range(20)] + [f"order:o{n}" for n in range(40)]
    return [
        EventIdentifiers(f"e{n}", T0 + n, tuple(rnd.sample(pool, rnd.choice((1, 2, 2, 3)))))
        for n in range(count)
    ]


def test_a_fresh_handle_knows_no_count_until_it_writes(omni_config: Config) -> None:
    store = IdentityStore.from_config(omni_config)
    try:
        assert store.customer_count() is None
        store.resolve_batch([EventIdentifiers("e1", T0, ("anon:a",))])
        assert store.customer_count() == 1
    finally:
        store.close()


def test_the_count_equals_the_records_after_two_writers_at_once(
    omni_config: Config, redis_client: redis.Redis
) -> None:
    events = traffic(3, 2000)
    errors: list[BaseException] = []

    def write(part: list[EventIdentifiers]) -> None:
        store = IdentityStore.from_config(omni_config)
        try:
            for start in range(0, len(part), 40):
                store.resolve_batch(part[start : start + 40])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=write, args=(events[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert records(redis_client, omni_config) > 10
    assert stored_count(redis_client, omni_config) == records(redis_client, omni_config)


def test_an_old_deployment_is_seeded_once_from_its_records(
    omni_config: Config, redis_client: redis.Redis
) -> None:
    store = IdentityStore.from_config(omni_config)
    try:
        store.resolve_batch(traffic(5, 300))
    finally:
        store.close()
    expected = records(redis_client, omni_config)
    # Before the count existed: the records are there, the key is not.
    redis_client.delete(f"{omni_config.redis.key_prefix}customers:count")
    seeded = IdentityStore.from_config(omni_config)
    try:
        assert stored_count(redis_client, omni_config) == expected
        assert seeded.seed_customer_count() is False  # there now: left alone
        seeded.resolve_batch([EventIdentifiers("new", T0 + 10**6, ("anon:brand-new",))])
        assert seeded.customer_count() == expected + 1 == records(redis_client, omni_config)
    finally:
        seeded.close()


def test_a_refused_write_leaves_the_count(omni_config: Config, redis_client: redis.Redis) -> None:
    first, second = IdentityStore.from_config(omni_config), IdentityStore.from_config(omni_config)
    try:
        first.resolve_batch([EventIdentifiers("e1", T0, ("anon:a",))])
        # first resolves an event of anon:b (a new customer) on what it read ...
        part, _ = first._read(["anon:b"], ["e3"])
        _, results, touched = resolve_events(
            part.graph, [EventIdentifiers("e3", T0 + 2, ("anon:b",))], [None], first.policy,
            first.junk,
        )  # fmt: skip
        assert touched
        # ... but second creates anon:b's customer in between: first's write is refused.
        second.resolve_batch([EventIdentifiers("e2", T0 + 1, ("anon:b",))])
        assert first._write(part, touched, results) is False
        assert stored_count(redis_client, omni_config) == 2 == records(redis_client, omni_config)
    finally:
        first.close()
        second.close()


def test_recount_corrects_records_that_expired(
    omni_config: Config, redis_client: redis.Redis
) -> None:
    store = IdentityStore.from_config(omni_config)
    try:
        store.resolve_batch([EventIdentifiers(f"e{n}", T0, (f"anon:d{n}",)) for n in range(5)])
        # Two records expire by TTL: Redis drops them and nobody counts them off.
        prefix = omni_config.redis.key_prefix
        redis_client.delete(*redis_client.keys(f"{prefix}cust:*")[:2])
        assert stored_count(redis_client, omni_config) == 5
        assert store.recount_customers() == 3 == stored_count(redis_client, omni_config)
        assert store.customer_count() == 3
    finally:
        store.close()


def test_redis_and_memory_count_alike_batch_by_batch(omni_config: Config) -> None:
    events = traffic(9, 1200)
    on_redis = IdentityStore.from_config(omni_config)
    in_memory = MemoryIdentityStore.from_config(omni_config)
    rnd = random.Random(4)
    try:
        for start in range(0, len(events), 30):
            batch = events[start : start + 30]
            assert on_redis.resolve_batch(batch) == in_memory.resolve_batch(batch)
            if rnd.random() < 0.2:
                ident = rnd.choice(batch[0].identifiers)
                assert on_redis.forget(ident) == in_memory.forget(ident)
            assert on_redis.customer_count() == in_memory.customer_count(), start
        # A replay of everything changes neither.
        count = in_memory.customer_count()
        for start in range(0, len(events), 30):
            on_redis.resolve_batch(events[start : start + 30])
            in_memory.resolve_batch(events[start : start + 30])
        assert on_redis.customer_count() == in_memory.customer_count() == count
    finally:
        on_redis.close()
