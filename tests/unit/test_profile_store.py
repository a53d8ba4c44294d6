"""``MemoryProfileStore``: whole-profile replacement, segment counts that follow each
customer's latest segment however often a batch is written again, erasure, and expiry.
The same behaviour on a real Redis is ``tests/integration/test_profile_store_redis.py``."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from base.units import DAY_MS
from domain.profile import PROFILE_FIELDS, SEGMENTS
from state.profile_store import MemoryProfileStore

T0 = 1_790_000_000_000


def fields(segment: str, purchases: int = 1) -> dict[str, str]:
    values = dict.fromkeys(PROFILE_FIELDS, "")
    values.update(segment=segment, purchases=str(purchases), top_categories="[]")
    return values


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def test_a_profile_is_replaced_and_counted_in_its_latest_segment() -> None:
    store = MemoryProfileStore(ttl_days=400, now_ms=Clock())
    counts = store.write({"c1": fields("new"), "c2": fields("new")})
    assert counts == {**dict.fromkeys(SEGMENTS, 0), "new": 2}
    store.write({"c1": fields("active", purchases=2)})
    assert store.profile("c1") == fields("active", purchases=2)
    assert store.segment_counts() == {**dict.fromkeys(SEGMENTS, 0), "new": 1, "active": 1}
    # Writing a batch again (a replay) changes nothing.
    for _ in range(3):
        store.write({"c1": fields("active", purchases=2), "c2": fields("new")})
    assert store.segment_counts() == {**dict.fromkeys(SEGMENTS, 0), "new": 1, "active": 1}


def test_erasure_removes_the_profile_and_its_count_once() -> None:
    store = MemoryProfileStore(now_ms=Clock())
    store.write({"c1": fields("loyal"), "c2": fields("loyal")})
    store.erase(["c1", "c1", "unknown"])
    store.erase(["c1"])
    assert store.profile("c1") is None
    assert store.segment_counts()["loyal"] == 1


def test_an_expired_profile_leaves_the_counts() -> None:
    clock = Clock()
    store = MemoryProfileStore(ttl_days=10, now_ms=clock)
    store.write({"c1": fields("lapsed")})
    clock.now += 9 * DAY_MS
    store.write({"c2": fields("lapsed")})
    clock.now += 2 * DAY_MS  # c1 written 11 days ago, c2 2 days ago
    assert store.profile("c1") is None and store.profile("c2") is not None
    assert store.segment_counts()["lapsed"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        {k: v for k, v in fields("new").items() if k != "revenue"},
        {**fields("new"), "email": "x"},
        fields("vip"),
    ],
)
def test_a_profile_that_is_not_the_contract_hash_is_refused(bad: dict[str, str]) -> None:
    store = MemoryProfileStore(now_ms=Clock())
    with pytest.raises(ValueError):
        store.write({"c1": bad})
    assert store.profile("c1") is None and sum(store.segment_counts().values()) == 0


@pytest.mark.parametrize("seed", range(5))
def test_counts_follow_a_random_history_of_writes_replays_and_erasures(seed: int) -> None:
    rnd = random.Random(seed)
    store = MemoryProfileStore(now_ms=Clock())
    model: dict[str, str] = {}
    for _ in range(200):
        if rnd.random() < 0.15:
            gone = rnd.sample([f"c{n}" for n in range(30)], 3)
            store.erase(gone)
            for customer in gone:
                model.pop(customer, None)
        else:
            batch = {f"c{rnd.randrange(30)}": fields(rnd.choice(SEGMENTS)) for _ in range(5)}
            store.write(batch)
            if rnd.random() < 0.3:
                store.write(batch)  # replayed
            model.update({c: f["segment"] for c, f in batch.items()})
        assert store.segment_counts() == {s: Counter(model.values())[s] for s in SEGMENTS}
