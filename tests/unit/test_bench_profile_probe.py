"""The bench's profile freshness probe, without a broker or Redis: which events it samples
and by which identifiers, how it reads a profile's ``last_seen``, how a poll matches
sampled events to their customers' profiles (also after a merge moved one), and the
percentiles it reports. Times are written out by hand (``datetime`` for RFC 3339)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis

from base.config import Config
from connectors.generator import GeneratedEvent
from omnistream import bench
from omnistream.bench import (
    PROFILE_GIVE_UP_MS,
    ProfileBook,
    ProfileProbe,
    ProfileSample,
    profile_identifiers,
    profile_line,
    profile_time_ms,
)

T = 1_795_313_730_120  # 2026-11-22T02:15:30.120Z


def rfc3339(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


def test_click_and_till_events_are_found_by_their_strongest_identifiers_first() -> None:
    click = {"anonymous_id": "dev-1", "user_id": "u-ann", "order_id": "o-1", "phone": "1380"}
    assert profile_identifiers("clickstream", click) == ("user:u-ann", "order:o-1", "anon:dev-1")
    assert profile_identifiers("clickstream", {"anonymous_id": "dev-2"}) == ("anon:dev-2",)
    till = {"member_code": "m-7", "receipt_id": "r-1", "email": "a@b.c"}
    assert profile_identifiers("pos.sales", till) == ("member:m-7",)
    # A walk-in without card nor order: no customer to look for.
    assert profile_identifiers("pos.sales", {"receipt_id": "r-2"}) == ()
    assert profile_identifiers("clickstream", {"anonymous_id": "", "user_id": None}) == ()


def test_last_seen_reads_as_epoch_ms() -> None:
    assert profile_time_ms(rfc3339(T).encode()) == T
    assert profile_time_ms("2026-11-22T10:15:30.120+08:00") == T
    assert profile_time_ms(str(T).encode()) == T
    assert profile_time_ms(None) is None
    assert profile_time_ms(b"soon") is None


def sample(produced_ms: float, ts_ms: int = T) -> ProfileSample:
    return ProfileSample(produced_ms, ts_ms, ("anon:dev-1",))


def test_an_event_counts_once_its_profile_reaches_its_time() -> None:
    book = ProfileBook()
    book.add("e1", sample(10_000.0))
    book.observe("e1", None, 10_030.0)  # no customer or profile yet
    book.observe("e1", T - 1, 10_060.0)  # the profile shows an earlier event only
    assert [event_id for event_id, _ in book.awaited()] == ["e1"]
    book.observe("e1", T, 10_345.0)
    assert book.freshness_ms == [345.0]
    assert book.awaited() == []
    book.observe("e1", T + 5, 10_400.0)  # measured already: a later poll changes nothing
    assert book.freshness_ms == [345.0]


def test_a_profile_already_past_the_event_at_the_first_look_proves_nothing() -> None:
    book = ProfileBook()
    book.add("late", sample(10_000.0))
    book.observe("late", T + 60_000, 10_020.0)
    assert book.freshness_ms == [] and book.skipped == 1 and book.awaited() == []


def test_an_event_whose_profile_never_shows_it_is_given_up() -> None:
    book = ProfileBook()
    book.add("e1", sample(10_000.0))
    book.observe("e1", None, 10_000.0 + PROFILE_GIVE_UP_MS)
    assert book.given_up == 0
    book.add("e2", sample(10_000.0))
    assert book.figures()["profiles_unanswered"] == 2
    book.observe("e1", T - 1, 10_001.0 + PROFILE_GIVE_UP_MS)
    assert book.given_up == 1 and book.freshness_ms == []
    assert [event_id for event_id, _ in book.awaited()] == ["e2"]
    assert book.figures()["profiles_unanswered"] == 1


def test_the_figures_are_nearest_rank_percentiles() -> None:
    book = ProfileBook()
    for n in range(1, 201):  # 1, 2, …, 200 ms, in scrambled order
        event_id = f"e{(n * 37) % 200}"
        book.add(event_id, sample(0.0))
        book.observe(event_id, None, 0.0)
        book.observe(event_id, T, float((n * 37) % 200 + 1))
    figures = book.figures()
    assert figures["profiles_measured"] == 200
    assert figures["profile_freshness_p50_ms"] == 100.0  # the 100th of 200
    assert figures["profile_freshness_p99_ms"] == 198.0  # the 198th of 200
    empty = ProfileBook().figures()
    assert empty["profiles_measured"] == 0
    assert empty["profile_freshness_p99_ms"] != empty["profile_freshness_p99_ms"]  # NaN


def event(topic: str, event_id: str, body: dict[str, Any], **flags: Any) -> GeneratedEvent:
    value = orjson.dumps({"event_id": event_id, **body})
    return GeneratedEvent(topic, b"k", value, event_id, flags.get("bad"), flags.get("dup", False))


def test_every_nth_good_click_or_till_event_is_sampled() -> None:
    probe = ProfileProbe(Config(), every=2)
    stream = [
        event("clickstream", "c1", {"ts": T, "anonymous_id": "d1"}),
        event("clickstream", "c2", {"ts": T + 1, "anonymous_id": "d2"}),
        event("wms.movements", "w1", {"ts": T + 2, "sku": "S"}),  # not a customer's
        event("clickstream", "c1", {"ts": T, "anonymous_id": "d1"}, dup=True),
        event("pos.sales", "p1", {"ts": T + 3, "member_code": "m1"}, bad="bad_value"),
        event("pos.sales", "p2", {"ts": T + 4, "member_code": "m2"}),
        event("pos.sales", "p3", {"ts": rfc3339(T + 5), "member_code": "m3"}),
        event("pos.sales", "p4", {"ts": T + 6}),  # a walk-in: nobody to follow
    ]
    assert list(probe.stamp(stream)) == stream  # passed through untouched
    awaited = dict(probe.book.awaited())
    assert sorted(awaited) == ["c2", "p3"]
    assert awaited["c2"].identifiers == ("anon:d2",) and awaited["c2"].ts_ms == T + 1
    assert awaited["p3"].identifiers == ("member:m3",) and awaited["p3"].ts_ms == T + 5


class FakeRedis:
    """``MGET`` and a pipeline of ``HGET`` over two dicts, counting round trips."""

    def __init__(self) -> None:
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.round_trips = 0

    def mget(self, keys: list[str]) -> list[bytes | None]:
        self.round_trips += 1
        return [self.strings.get(k) for k in keys]

    def pipeline(self, transaction: bool = False) -> FakeRedis.Pipe:
        return FakeRedis.Pipe(self)

    class Pipe:
        def __init__(self, owner: FakeRedis) -> None:
            self.owner, self.calls = owner, []  # type: ignore[var-annotated]

        def hget(self, key: str, name: str) -> None:
            self.calls.append((key, name))

        def execute(self) -> list[bytes | None]:
            self.owner.round_trips += 1
            return [self.owner.hashes.get(k, {}).get(n) for k, n in self.calls]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The wall clock the probe reads, in seconds, set by the test."""
    now = [T / 1000]
    monkeypatch.setattr(bench.time, "time", lambda: now[0])
    return now


def test_a_poll_matches_events_to_their_customers_profiles(clock: list[float]) -> None:
    config = Config()
    prefix = config.redis.key_prefix
    probe = ProfileProbe(config, every=1)
    stream = [
        event("clickstream", "c1", {"ts": T, "anonymous_id": "d1", "user_id": "u-ann"}),
        event("clickstream", "c2", {"ts": T + 1000, "anonymous_id": "d2"}),
        event("pos.sales", "p1", {"ts": T + 2000, "member_code": "m-bob"}),
    ]
    list(probe.stamp(stream))
    fake = FakeRedis()
    # Ann is known by her device only; d2 is nobody yet; Bob's profile lags his sale.
    fake.strings[f"{prefix}id:anon:d1"] = b"c-ann"
    fake.strings[f"{prefix}id:member:m-bob"] = b"c-bob"
    fake.hashes[f"{prefix}profile:c-ann"] = {"last_seen": rfc3339(T - 5000).encode()}
    fake.hashes[f"{prefix}profile:c-bob"] = {"last_seen": rfc3339(T).encode()}
    probe.poll(fake)  # type: ignore[arg-type]
    assert fake.round_trips == 2  # one MGET of owners, one pipeline of profiles
    assert probe.book.freshness_ms == [] and len(probe.book.awaited()) == 3

    clock[0] += 0.25
    fake.hashes[f"{prefix}profile:c-ann"]["last_seen"] = rfc3339(T).encode()
    # d2 was merged into Bob, whose profile now shows both of his events.
    fake.strings[f"{prefix}id:anon:d2"] = b"c-bob"
    fake.hashes[f"{prefix}profile:c-bob"]["last_seen"] = rfc3339(T + 2000).encode()
    probe.poll(fake)  # type: ignore[arg-type]
    assert probe.book.freshness_ms == [250.0, 250.0, 250.0]
    assert probe.book.awaited() == [] and probe.book.skipped == 0
    rounds = fake.round_trips
    probe.poll(fake)  # type: ignore[arg-type]
    assert fake.round_trips == rounds  # nothing awaited: no round trip


def test_the_table_says_when_no_profile_was_measured() -> None:
    nothing = {**ProfileBook().figures(), "profiles_given_up": 40, "profiles_unanswered": 2}
    line = profile_line(nothing)
    assert "not measured (0 profiles" in line and "42 unanswered" in line and "p99" not in line
    fast = {"profile_freshness_p50_ms": 120.0, "profile_freshness_p99_ms": 640.0,
            "profiles_measured": 3000, "profiles_skipped": 12, "profiles_given_up": 0}  # fmt: skip
    assert "p99 640 ms (3,000 profiles" in profile_line(fast) and "met" in profile_line(fast)
    slow = {**fast, "profile_freshness_p99_ms": 1_400.0}
    assert profile_line(slow).endswith("MISSED")


@pytest.mark.integration
def test_the_probe_follows_a_profile_on_a_real_redis(omni_config: Config) -> None:
    """The same poll on Redis itself (the session's): keys as CONTRACT §5 and §11 name them,
    replies as bytes, the follower thread stopping when told."""
    prefix = omni_config.redis.key_prefix
    probe = ProfileProbe(omni_config, every=1, interval_s=0.01)
    list(probe.stamp([event("pos.sales", "p1", {"ts": T, "member_code": "m-cat"})]))
    client = redis.Redis.from_url(omni_config.redis.url)
    follower = threading.Thread(target=probe.follow, daemon=True)
    try:
        follower.start()
        deadline = time.monotonic() + 5
        while probe.book.awaited()[0][1].polls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the first look finds nobody: what follows is a measurement
        client.set(f"{prefix}id:member:m-cat", "c-cat")
        client.hset(f"{prefix}profile:c-cat", mapping={"last_seen": rfc3339(T), "segment": "new"})
        probe.stop()
        follower.join(timeout=10)
        assert not follower.is_alive()
        assert probe.book.figures()["profiles_measured"] == 1
    finally:
        client.close()
