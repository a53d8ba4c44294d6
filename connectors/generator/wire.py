"""How a generated message is written: the record handed to Kafka and the forms its fields
take on the wire.

Good events (``simulation``) and malformed ones (``malformations``) are written the same way,
so that a malformed event differs from a good one only in its one deliberate fault: the
``ts`` in one of the two forms CONTRACT §1 allows, money in currency units, phone numbers and
e-mails as people type them. Pure: no Kafka, no clock reads.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import date, timedelta

from base import topics
from base.units import DAY_MS, HOUR_MS

#: Local time of the chain (China Standard Time), used for RFC 3339 times and expiry dates.
LOCAL_OFFSET_MS = 8 * HOUR_MS
LOCAL_OFFSET = "+08:00"
#: Share of events whose ``ts`` is epoch milliseconds rather than an RFC 3339 string.
EPOCH_MS_SHARE = 0.3

#: The sales channels of the contract's ``channel`` field (the list there is open).
CHANNELS: tuple[str, ...] = ("app", "mini_program", "web", "live_stream", "social")

#: The field each input topic is keyed by (CONTRACT §1), so one key's events stay in order.
KEY_FIELD = {
    topics.CLICKSTREAM: "anonymous_id",
    topics.POS_SALES: "store_id",
    topics.WMS_MOVEMENTS: "location_id",
}


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    """One Kafka message of the generated stream.

    ``topic`` is the contract name without prefix; ``value`` the exact bytes to send.
    ``event_id`` is the id inside the message (of the original, for a duplicate; None when a
    malformed message has no usable id). ``bad_reason`` is the dead-letter reason code the
    decoder must give for a deliberately malformed message, None for a good one.
    ``duplicate`` marks an exact repeat of an earlier good event.
    """

    topic: str
    key: bytes
    value: bytes
    event_id: str | None
    bad_reason: str | None
    duplicate: bool = False


def money(cents: int) -> float:
    """Prices and totals travel in currency units (yuan), counted in cents until then."""
    return cents / 100


def rfc3339_local(ts_ms: int) -> str:
    """``2026-11-01T09:00:00.123+08:00``."""
    seconds, millis = divmod(ts_ms + LOCAL_OFFSET_MS, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}{LOCAL_OFFSET}"


def event_ts(rng: random.Random, ts_ms: int) -> int | str:
    """The ``ts`` of an event in either form the contract allows: epoch milliseconds
    (``EPOCH_MS_SHARE`` of events) or a local RFC 3339 string; draws one number from ``rng``."""
    return ts_ms if rng.random() < EPOCH_MS_SHARE else rfc3339_local(ts_ms)


def local_date(ts_ms: int, plus_days: int = 0) -> str:
    """The chain's local calendar date of ``ts_ms`` (``plus_days`` later), ``YYYY-MM-DD``."""
    days = (ts_ms + LOCAL_OFFSET_MS) // DAY_MS + plus_days
    return (date(1970, 1, 1) + timedelta(days=days)).isoformat()


def format_phone(rng: random.Random, phone: str) -> str:
    """A mobile number as people type it; all forms normalise to the same number."""
    roll = rng.random()
    if roll < 0.6:
        return phone
    if roll < 0.8:
        return f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}"
    if roll < 0.9:
        return f"{phone[:3]}-{phone[3:7]}-{phone[7:]}"
    return f"0086{phone}"


def format_email(rng: random.Random, email: str) -> str:
    """An e-mail as typed: sometimes capitalised or with stray spaces (same after trimming)."""
    roll = rng.random()
    if roll < 0.7:
        return email
    if roll < 0.9:
        name, domain = email.split("@")
        return ".".join(part.capitalize() for part in name.split(".")) + "@" + domain.upper()
    return f" {email} "
