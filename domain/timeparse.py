"""Event-time parsing: RFC 3339 with an explicit offset, or integer epoch milliseconds.

A timestamp without an offset is refused rather than guessed: a store in Shanghai and a
warehouse in UTC would otherwise disagree by eight hours on when a sale happened.

Strings are read by ciso8601 (C, ~30 ns a parse) and the epoch computed from the parsed
fields; the regular expression below is the rule itself and decides only what ciso8601 does
not accept (and the wording of every refusal), so the accepted forms, their values and the
messages stay those of the rule whichever parser answered.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, tzinfo

from ciso8601 import parse_datetime_as_naive, parse_rfc3339

#: Accepted event times; anything outside is a clock or encoding fault, not retail traffic.
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)
#: Longest accepted text before its offset: date, separator, clock, "." and nine digits.
_MAX_CHARS_BEFORE_OFFSET = 29
_EPOCH = datetime(1970, 1, 1)  # noqa: DTZ001 (naive on purpose: the offset is taken apart)
_MICROSECOND = timedelta(microseconds=1)
#: Offset of each of ciso8601's tzinfo objects in µs. Its ``utcoffset`` costs more than the
#: parse itself; ciso8601 hands out one object per offset, so this holds a handful.
_OFFSET_US: dict[tzinfo | None, int] = {}
_MAX_OFFSETS = 4096  # there are 2,879 valid offsets: a bound, should objects ever churn


class TimestampError(ValueError):
    """The value is not an event time this system accepts."""


def parse_event_time(value: object) -> int:
    """Epoch milliseconds of an RFC 3339 string with offset or of an epoch-ms integer.

    >>> parse_event_time("2026-11-22T10:15:30.120+08:00")
    1795313730120
    >>> parse_event_time(1795313730120)
    1795313730120
    """
    if type(value) is str:
        ts_ms = _fast_ms(value)
        if ts_ms is not None:
            return ts_ms
        return _parse_text(value)
    if isinstance(value, bool):
        raise TimestampError("expected an RFC 3339 string with offset or epoch milliseconds")
    if isinstance(value, int):
        if not MIN_TS_MS <= value < MAX_TS_MS:
            raise TimestampError(f"event time out of range 2000..2099: {value!r}")
        return value
    if isinstance(value, str):  # a str subclass: the rule's own path
        return _parse_text(value)
    raise TimestampError("expected an RFC 3339 string with offset or epoch milliseconds")


def _fast_ms(value: str) -> int | None:
    """Epoch ms of an accepted time as ciso8601 reads it, or None to let the rule decide.

    ciso8601's RFC 3339 forms are the rule's except that it takes any number of fraction
    digits (the rule: at most nine), hence the length check. Everything it refuses, and every
    time out of range, goes to ``_parse_text``, which accepts a few odd forms ciso8601 does
    not (a minute offset of 60, non-ASCII digits in the fraction) and words each refusal.
    The arithmetic is the rule's: whole UTC microseconds (the fraction cut, not rounded, past
    six digits), to seconds as a float, to milliseconds rounded.
    """
    try:
        moment = parse_rfc3339(value)
        offset_chars = 1 if value[-1] in "Zz" else 6
        if len(value) - offset_chars > _MAX_CHARS_BEFORE_OFFSET:
            return None
        offset_us = _OFFSET_US.get(moment.tzinfo)
        if offset_us is None:
            offset_us = _offset_us(moment)
        micros = (parse_datetime_as_naive(value) - _EPOCH) // _MICROSECOND - offset_us
    except (ValueError, OverflowError):
        return None
    ts_ms = round(micros / 1_000_000 * 1000)
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        return None
    return ts_ms


def _offset_us(moment: datetime) -> int:
    offset = moment.utcoffset()
    assert offset is not None  # parse_rfc3339 refuses a time without an offset
    if len(_OFFSET_US) >= _MAX_OFFSETS:
        _OFFSET_US.clear()
    _OFFSET_US[moment.tzinfo] = offset_us = offset // _MICROSECOND
    return offset_us


def _parse_text(value: str) -> int:
    """The rule for a string, with the message of each refusal (the pattern, then the
    calendar, then the range)."""
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
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        raise TimestampError(f"event time out of range 2000..2099: {value!r}")
    return ts_ms


def _epoch_seconds(date: str, clock: str, offset: str) -> int | None:
    """Whole epoch seconds of a date, time and offset; None if there is no such date/time."""
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
