"""Event-time parsing: RFC 3339 with an explicit offset, or integer epoch milliseconds.

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
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
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
        if not _RFC3339.match(value):
            raise TimestampError(f"expected RFC 3339 with offset, got {value[:64]!r}")
        text = value.replace("z", "Z").replace("t", "T")
        # fromisoformat keeps at most microseconds: trim nanosecond digits first.
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise TimestampError(f"not a valid date/time: {value[:64]!r}") from exc
        ts_ms = round(parsed.timestamp() * 1000)
    else:
        raise TimestampError("expected an RFC 3339 string with offset or epoch milliseconds")
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        raise TimestampError(f"event time out of range 2000..2099: {value!r}")
    return ts_ms


def format_event_time(ts_ms: int) -> str:
    """RFC 3339 in UTC with milliseconds, as written to outputs."""
    return _second_text(ts_ms // 1000) + f"{ts_ms % 1000:03d}Z"


@functools.lru_cache(maxsize=8192)
def _second_text(seconds: int) -> str:
    """Formatting the date and time is most of the cost, and a stream's events crowd into
    few seconds: each second is formatted once."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
