"""The one Redis retry policy (``state.redis_io.with_retries``): redis-py's own retry is off,
every failed attempt is counted and every retry logged once, waits grow exponentially with
jitter up to a bound, the policy gives up after ``GIVE_UP_S``, and a stop request ends a wait
at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import redis.connection

from base import stopping
from base.config import Config
from base.metrics import REDIS_ERRORS
from omnistream.embedded import free_port
from state import redis_io
from state.redis_io import RedisGaveUp, connect, describe, with_retries


@pytest.fixture(autouse=True)
def no_stop() -> Iterator[None]:
    stopping.clear()
    yield
    stopping.clear()


def errors(flow: str) -> float:
    return REDIS_ERRORS.labels(flow)._value.get()


class FakeTime:
    """A clock that the injected sleep moves on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.sleeps.append(seconds)
        self.now += seconds
        return False


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0",
        # redis-py reads retry_on_timeout from the URL too; it must not bring a retry back.
        "redis://127.0.0.1:{port}/0?retry_on_timeout=true",
    ],
)
def test_redis_py_makes_one_attempt_per_call(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call is one connection attempt, so ``with_retries`` sees (and counts) each."""
    attempts = 0
    original = redis.connection.Connection._connect

    def counted(self: redis.connection.Connection) -> object:
        nonlocal attempts
        attempts += 1
        return original(self)

    monkeypatch.setattr(redis.connection.Connection, "_connect", counted)
    config = Config().with_overrides(redis={"url": url.format(port=free_port())})
    client = connect(config, connect_timeout_s=1)
    try:
        for call in (client.ping, lambda: client.pipeline(transaction=False).set("k", 1).execute()):
            attempts = 0
            with pytest.raises(redis.ConnectionError):
                call()
            assert attempts == 1
    finally:
        client.close()


def test_every_failed_attempt_is_counted_and_every_retry_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeTime()
    outcomes = iter([redis.ConnectionError("refused")] * 4 + [redis.TimeoutError("slow")] + [None])

    def action() -> str:
        error = next(outcomes)
        if error is not None:
            raise error
        return "written"

    before = errors("retry-count")
    with caplog.at_level(logging.WARNING, logger="state.redis_io"):
        result = with_retries("retry-count", action, fake.sleep, fake.clock, lambda: 0.5)
    assert result == "written"
    assert errors("retry-count") - before == 5
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 5 == len(fake.sleeps)
    assert all(r.levelno == logging.WARNING for r in retries)


def test_waits_grow_exponentially_with_jitter_up_to_the_bound() -> None:
    fake = FakeTime()
    draws = iter([0.0, 1.0] * 20)
    failures = 14

    def action() -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise redis.ConnectionError("refused")

    with_retries("retry-backoff", action, fake.sleep, fake.clock, lambda: next(draws))
    ceilings = [min(redis_io.FIRST_BACKOFF_S * 2**i, redis_io.MAX_BACKOFF_S) for i in range(14)]
    # jitter 0 → half the ceiling, jitter 1 → all of it
    expected = [c * (0.5 if i % 2 == 0 else 1.0) for i, c in enumerate(ceilings)]
    assert fake.sleeps == pytest.approx(expected)
    assert max(fake.sleeps) == redis_io.MAX_BACKOFF_S


def test_jitter_spreads_the_waits_of_clients_that_failed_together() -> None:
    waits = set()
    for _ in range(20):
        fake = FakeTime()
        failed = False

        def action() -> None:
            nonlocal failed
            if not failed:
                failed = True
                raise redis.ConnectionError("refused")

        with_retries("retry-jitter", action, fake.sleep, fake.clock)
        (wait,) = fake.sleeps
        assert redis_io.FIRST_BACKOFF_S / 2 <= wait <= redis_io.FIRST_BACKOFF_S
        waits.add(round(wait, 6))
    assert len(waits) > 10


def test_gives_up_after_the_bound_with_one_line() -> None:
    fake = FakeTime()
    attempts = 0

    def action() -> None:
        nonlocal attempts
        attempts += 1
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    before = errors("retry-give-up")
    with pytest.raises(RedisGaveUp) as raised:
        with_retries("retry-give-up", action, fake.sleep, fake.clock)
    assert fake.now >= redis_io.GIVE_UP_S
    assert fake.now < redis_io.GIVE_UP_S + redis_io.MAX_BACKOFF_S + 0.01
    assert errors("retry-give-up") - before == attempts
    assert "\n" not in str(raised.value) and "Connection refused" in str(raised.value)


def test_a_stop_request_ends_the_wait_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default sleep waits on the process's stop flag: a stop requested from another
    thread (the runner's signal watcher) ends a 5 s back-off in well under a second."""
    calls = 0

    def action() -> None:
        nonlocal calls
        calls += 1
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(redis_io, "FIRST_BACKOFF_S", 5.0)
    threading.Timer(0.2, stopping.request_stop).start()
    started = time.monotonic()
    with pytest.raises(stopping.StopRequested):
        with_retries("retry-stop", action)
    assert time.monotonic() - started < 2.0
    assert calls == 1  # no attempt after the stop


def test_wrong_credentials_are_counted_and_not_retried() -> None:
    fake = FakeTime()
    before = errors("retry-auth")

    def action() -> None:
        raise redis.AuthenticationError("invalid username-password pair")

    with pytest.raises(redis.AuthenticationError):
        with_retries("retry-auth", action, fake.sleep, fake.clock)
    assert fake.sleeps == []
    assert errors("retry-auth") - before == 1


def test_the_printed_address_has_no_credentials() -> None:
    assert describe("redis://omni:s3cret@redis.internal:6380/2?ssl_cert_reqs=none") == (
        "redis://redis.internal:6380/2"
    )
    assert describe("rediss://:pw@10.0.0.5") == "rediss://10.0.0.5:6379/0"
    assert describe("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock"
