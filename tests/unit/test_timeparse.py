"""Event-time parsing and formatting against the plain ``datetime`` computation they replace
(both cache per second/hour for speed, so the cached paths must agree everywhere)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.timeparse import (
    MAX_TS_MS,
    MIN_TS_MS,
    TimestampError,
    format_event_time,
    parse_event_time,
)


def reference_parse(value: str) -> int:
    text = value.replace("z", "Z").replace("t", "T")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    return round(datetime.fromisoformat(text).timestamp() * 1000)


@settings(max_examples=2_000, deadline=None)
@given(
    # Naive on purpose: the wall-clock digits are written out with each offset below.
    when=st.datetimes(
        min_value=datetime(2000, 1, 2),  # noqa: DTZ001
        max_value=datetime(2099, 12, 30),  # noqa: DTZ001
    ),
    fraction=st.sampled_from(["", ".5", ".120", ".123456", ".123456789", ".000000001"]),
    offset=st.sampled_from(["Z", "z", "+08:00", "-05:30", "+00:00", "+14:00", "-12:00"]),
    separator=st.sampled_from(["T", "t", " "]),
)
def test_parse_equals_datetime(when: datetime, fraction: str, offset: str, separator: str) -> None:
    value = when.strftime(f"%Y-%m-%d{separator}%H:%M:%S") + fraction + offset
    assert parse_event_time(value) == reference_parse(value)


@pytest.mark.parametrize(
    "value",
    [
        "2026-02-30T00:00:00Z",
        "2026-11-01T25:00:00Z",
        "2026-11-01T23:60:00Z",
        "2026-11-01T23:59:60Z",  # no leap seconds, as in datetime
        "2026-11-01T10:00:00+24:00",
        "2026-11-01T10:00:00",
        "9999-12-31T00:00Z",
    ],
)
def test_impossible_or_offsetless_times_are_refused(value: str) -> None:
    with pytest.raises(TimestampError):
        parse_event_time(value)


@settings(max_examples=2_000, deadline=None)
@given(ts_ms=st.integers(MIN_TS_MS, MAX_TS_MS - 1))
def test_format_equals_strftime(ts_ms: int) -> None:
    seconds, millis = divmod(ts_ms, 1000)
    expected = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    assert format_event_time(ts_ms) == f"{expected}{millis:03d}Z"
    assert parse_event_time(format_event_time(ts_ms)) == ts_ms
