"""The pre-ciso8601 event-time parser (``domain/timeparse.py`` as it was), kept only as the
reference of the differential tests (``tests/unit/test_decode_differential.py``): the
production parser must accept the same strings, give the same epoch milliseconds and refuse
with the same message. Not imported by the application.

Its original description: event-time parsing: RFC 3339 with an explicit offset, or integer
epoch milliseconds.

A timestamp without an offset is refused rather than guessed: a store in Shanghai and a
warehouse in UTC would otherwise disagree by eight hours on when a sale happened.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime

#: Accepted event times; anything outside is a clock or encoding fault, not retail traffic.
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


class TimestampError(ValueError):
    """The value is not an event time this system accepts."""


def parse_event_time(value: object) -> int:
    """Epoch milliseconds of an RFC 3339 string with offset or of an epoch-ms integer.

    >>> parse_event_time("2026-11-22T10:15:30.120+08:00")
    1795313730120
    >>> parse_event_time(1795313730120)
    1795313730120
    """
    if isinstance(value, bool):
        raise TimestampError("expected an RFC 3339 string with offset or epoch milliseconds")
    if isinstance(value, int):
        ts_ms = value
    elif isinstance(value, str):
        match = _RFC3339.match(value)
        if match is None:
            raise TimestampError(f"expected RFC 3339 with offset, got {value[:64]!r}")
        date, clock, fraction, offset = match.groups()
        seconds = _epoch_seconds(date, clock, offset.upper())
        if seconds is None:
            raise TimestampError(f"not a valid date/time: {value[:64]!r}")
        # Microseconds, as datetime keeps them (nanosecond digits are cut, not rounded).
        micros = int(fraction[:6].ljust(6, "0")) if fraction else 0
        ts_ms = round((seconds * 1_000_000 + micros) / 1_000_000 * 1000)
    else:
        raise TimestampError("expected an RFC 3339 string with offset or epoch milliseconds")
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        raise TimestampError(f"event time out of range 2000..2099: {value!r}")
    return ts_ms


@functools.lru_cache(maxsize=8192)
def _epoch_seconds(date: str, clock: str, offset: str) -> int | None:
    """Whole epoch seconds of a date, time and offset; None if there is no such date/time.

    Parsing the calendar is most of the cost, and a stream's events crowd into few seconds:
    each (second, offset) is parsed once.
    """
    try:
        return int(datetime.fromisoformat(f"{date}T{clock}{offset}").timestamp())
    except (ValueError, OverflowError):
        return None


def format_event_time(ts_ms: int) -> str:
    """RFC 3339 in UTC with milliseconds, as written to outputs."""
    hour, within = divmod(ts_ms, 3_600_000)
    seconds, millis = divmod(within, 1000)
    minute, second = divmod(seconds, 60)
    return f"{_hour_text(hour)}{minute:02d}:{second:02d}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _hour_text(hour: int) -> str:
    """Formatting the date is most of the cost, and a stream's events spread over few hours
    (but many seconds): each hour's date and hour are formatted once."""
    return datetime.fromtimestamp(hour * 3600, tz=UTC).strftime("%Y-%m-%dT%H:")
