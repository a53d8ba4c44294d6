"""Durations in milliseconds: event times are epoch milliseconds everywhere (CONTRACT §1)."""

from __future__ import annotations

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
