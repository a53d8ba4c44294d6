"""How ``run_flow`` reports what ended a dataflow: Redis given up on is one line naming the
address (without credentials) and the setting; anything after a stop request is a stop; any
other error is raised as it is."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bytewax.errors import BytewaxRuntimeError

from base import stopping
from base.config import Config
from omnistream import runner
from omnistream.preflight import Unreachable
from state.redis_io import RedisGaveUp

CONFIG = Config().with_overrides(
    pii={"key": "unit-secret"}, redis={"url": "redis://omni:s3cret@redis.internal:6380/1"}
)


@pytest.fixture(autouse=True)
def no_stop() -> Iterator[None]:
    stopping.clear()
    yield
    stopping.clear()


def wrapped(error: BaseException) -> BytewaxRuntimeError:
    """An error of a step as Bytewax hands it back: wrapped, the original as the cause."""
    try:
        try:
            raise error
        except BaseException as exc:
            raise BytewaxRuntimeError('error calling `write_batch` in step "x"') from exc
    except BytewaxRuntimeError as outer:
        return outer


def ending_with(error: BaseException) -> object:
    def run(config: Config, name: str, *, until_idle: bool) -> None:
        raise error

    return run


def test_redis_given_up_on_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    gave_up = RedisGaveUp("stock_pool: Redis failed for 300 s: Error 111 connecting")
    monkeypatch.setattr(runner, "_check_build_and_run", ending_with(wrapped(gave_up)))
    with pytest.raises(Unreachable) as raised:
        runner.run_flow(CONFIG, "stock_pool", until_idle=False)
    line = str(raised.value)
    assert "\n" not in line
    assert line.startswith("stock_pool: Redis failed for 300 s")
    assert "redis://redis.internal:6380/1 (redis.url / OMNI_REDIS_URL)" in line
    assert "s3cret" not in line


def test_whatever_ends_a_dataflow_after_a_stop_request_is_a_stop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stopping.request_stop()
    error = wrapped(stopping.StopRequested("stop requested while waiting for Redis"))
    monkeypatch.setattr(runner, "_check_build_and_run", ending_with(error))
    with caplog.at_level("INFO", logger="omnistream.runner"):
        runner.run_flow(CONFIG, "stock_pool", until_idle=False)
    assert "stock_pool stopped by signal" in caplog.text


def test_other_errors_are_raised_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    error = wrapped(ValueError("a bug"))
    monkeypatch.setattr(runner, "_check_build_and_run", ending_with(error))
    with pytest.raises(BytewaxRuntimeError) as raised:
        runner.run_flow(CONFIG, "stock_pool", until_idle=False)
    assert raised.value is error
