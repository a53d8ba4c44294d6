"""``RedisProfileStore`` on a real redis-server (the session's, ``tests/conftest.py``): the
public hash holds exactly the CONTRACT §11 fields under ``profile_key``, a batch is one
round trip, replays and cut-short batches leave the segment counts right, erasure is
idempotent, and a profile that expires by TTL leaves the counts with it."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from base.config import Config
from base.units import DAY_MS
from domain.customer_rules import CustomerEvent
from domain.profile import PROFILE_FIELDS, SEGMENTS, ProfileSettings, observe, profile_fields
from state.profile_store import RedisProfileStore
from state.service_reads import profile_key

pytestmark = pytest.mark.integration
T0 = 1_790_000_000_000


def fields(segment: str, purchases: int = 1) -> dict[str, str]:
    values = dict.fromkeys(PROFILE_FIELDS, "")
    values.update(segment=segment, purchases=str(purchases), top_categories="[]")
    return values


def zero(**counts: int) -> dict[str, int]:
    return {**dict.fromkeys(SEGMENTS, 0), **counts}


def test_the_public_hash_is_the_contract_profile_under_its_key(
    omni_config: Config, redis_client: redis.Redis
) -> None:
    settings = ProfileSettings.from_config(omni_config.profile)
    sale = CustomerEvent(
        "e1", "sale", T0, "c1", store_id="S1", channel="store", is_purchase=True, revenue=12.5,
        categories=("dairy",),
    )  # fmt: skip
    profile = observe(None, sale, settings)
    store = RedisProfileStore.from_config(omni_config)
    try:
        assert store.write({"c1": profile_fields(profile, T0, settings)}) == zero(new=1)
        key = profile_key(omni_config.redis.key_prefix, "c1")
        stored = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
        assert stored == profile_fields(profile, T0, settings)
        assert stored["revenue"] == "12.50" and stored["preferred_store"] == "S1"
        ttl_days = redis_client.pttl(key) / DAY_MS
        assert omni_config.profile.ttl_days - 0.01 < ttl_days <= omni_config.profile.ttl_days
    finally:
        store.close()


def test_field_values_come_back_byte_for_byte(
    omni_config: Config, redis_client: redis.Redis
) -> None:
    """The fields travel to the script as one JSON array: text that JSON escapes (quotes,
    backslashes, control characters), text outside ASCII and text that looks like JSON or
    a number must come back exactly as written."""
    values = fields("active")
    values.update(
        preferred_store='Zürich "Bahnhof" \\ Süd\t\n',
        preferred_channel="店舗",
        top_categories='["café","crème brûlée"]',
        revenue="1e3",
        pickup_share="0.500",
        first_seen="",
    )
    store = RedisProfileStore.from_config(omni_config)
    try:
        store.write({"c-ü": values})
        raw = redis_client.hgetall(profile_key(omni_config.redis.key_prefix, "c-ü"))
        assert {k.decode(): v.decode() for k, v in raw.items()} == values
    finally:
        store.close()


def test_segment_counts_follow_the_latest_write_and_replays_change_nothing(
    omni_config: Config,
) -> None:
    writer, reader = (
        RedisProfileStore.from_config(omni_config),
        RedisProfileStore.from_config(omni_config),
    )
    try:
        writer.write({"c1": fields("new"), "c2": fields("new"), "c3": fields("at_risk")})
        writer.write({"c1": fields("active", 2)})
        for _ in range(3):  # a replayed batch
            writer.write({"c1": fields("active", 2), "c3": fields("at_risk")})
        assert reader.segment_counts() == zero(new=1, active=1, at_risk=1)
        assert reader.profile("c1") == fields("active", 2)
        writer.erase(["c1", "c1", "nobody"])
        writer.erase(["c1"])
        assert reader.profile("c1") is None
        assert reader.segment_counts() == zero(new=1, at_risk=1)
    finally:
        writer.close()
        reader.close()


def test_a_batch_cut_short_is_made_whole_by_its_replay(omni_config: Config) -> None:
    store = RedisProfileStore.from_config(omni_config)
    try:
        store.write({"c1": fields("new"), "c2": fields("new")})
        # The crash hit after the segment sets moved c1 to loyal but before its hash …
        pipe = store.client.pipeline(transaction=False)
        store._place_customers(pipe, int(time.time() * 1000), [("c1", 3, 2**50)])
        pipe.execute()
        assert store.profile("c1") == fields("new")
        # … the replay writes the same batch again.
        store.write({"c1": fields("loyal", 3)})
        assert store.profile("c1") == fields("loyal", 3)
        assert store.segment_counts() == zero(new=1, loyal=1)
    finally:
        store.close()


def test_a_batch_is_one_round_trip(omni_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisProfileStore.from_config(omni_config)
    sends: list[int] = []
    real_send = redis.connection.AbstractConnection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> Any:
        sends.append(1)
        return real_send(self, command, check_health)

    try:
        store.client.script_flush()  # the first batch finds the scripts unknown: it loads them
        store.write({"first": fields("new")})
        assert store.profile("first") == fields("new")
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
        store.write({f"c{n}": fields(SEGMENTS[n % 5]) for n in range(1200)})
        after_write = len(sends)
        store.erase([f"c{n}" for n in range(600)])
        monkeypatch.undo()
        assert (after_write, len(sends)) == (1, 2)  # the write, then the erasure
        assert store.segment_counts() == zero(
            new=121, active=120, loyal=120, at_risk=120, lapsed=120
        )
    finally:
        monkeypatch.undo()
        store.close()


def test_an_expired_profile_leaves_the_counts(omni_config: Config) -> None:
    short = RedisProfileStore(
        redis.Redis.from_url(omni_config.redis.url), omni_config.redis.key_prefix, 0.4 / 86400
    )
    store = RedisProfileStore.from_config(omni_config)
    try:
        short.write({"brief": fields("lapsed")})
        store.write({"kept": fields("lapsed")})
        assert store.segment_counts() == zero(lapsed=2)
        time.sleep(0.6)
        assert store.profile("brief") is None
        assert store.segment_counts() == zero(lapsed=1)
        store.write({"other": fields("new")})  # a later write also clears the expired member
        assert store.client.zscore(store.segment_key("lapsed"), "brief") is None
    finally:
        short.close()
        store.close()


def test_the_segment_sets_share_one_cluster_slot(omni_config: Config) -> None:
    store = RedisProfileStore.from_config(omni_config)
    try:
        assert len({key_slot(store.segment_key(s).encode()) for s in SEGMENTS}) == 1
    finally:
        store.close()


@pytest.mark.parametrize("seed", range(3))
def test_counts_follow_a_random_history_of_writes_replays_and_erasures(
    omni_config: Config, seed: int
) -> None:
    rnd = random.Random(seed)
    store = RedisProfileStore.from_config(omni_config)
    model: dict[str, str] = {}
    try:
        for _ in range(80):
            if rnd.random() < 0.15:
                gone = rnd.sample([f"c{n}" for n in range(30)], 3)
                store.erase(gone)
                for customer in gone:
                    model.pop(customer, None)
            else:
                batch = {f"c{rnd.randrange(30)}": fields(rnd.choice(SEGMENTS)) for _ in range(5)}
                store.write(batch)
                if rnd.random() < 0.3:
                    store.write(batch)
                model.update({c: f["segment"] for c, f in batch.items()})
            assert store.segment_counts() == {s: Counter(model.values())[s] for s in SEGMENTS}
        for customer, segment in model.items():
            assert (store.profile(customer) or {}).get("segment") == segment
    finally:
        store.close()
