"""What decides whether a rule that matched may fire, and for whom: pure, event-time.

- ``draw_variant``: a deterministic experiment draw from a hash of (customer, rule, salt), so
  a customer always lands in the same arm, replays draw the same, and the control share holds
  over many customers.
- ``Ledger``: per subject (a customer, or a sku × location), when each rule last fired and how
  many coupon triggers a customer got per day, for cooldowns and the frequency cap.
- ``quiet_until``: when a coupon that falls in quiet hours may be sent.

Times are epoch milliseconds of event time; nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from base.units import DAY_MS, MINUTE_MS
from domain.resumable import resumable
from domain.rules import Experiment, QuietHours

CONTROL = "control"


def _unit_interval(*parts: str) -> float:
    """A uniform number in [0, 1) from the parts (SHA-256, stable across processes)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def draw_variant(experiment: Experiment | None, customer_id: str, rule_id: str) -> str:
    """``control`` with the configured share, else a variant by weight.

    >>> from domain.rules import Experiment
    >>> e = Experiment("salt", 0.0, {"a": 1.0})
    >>> draw_variant(e, "c1", "r1")
    'a'
    """
    if experiment is None:
        return "default"
    return _arm(experiment, _unit_interval(customer_id, rule_id, experiment.salt))


def draw_stock_variant(
    experiment: Experiment | None, sku: str, location_id: str, rule_id: str
) -> str:
    """The arm of a stock rule's experiment for one sku × location (a hash of sku,
    location, rule and salt): a shelf keeps its policy for the whole experiment, so its
    stockouts and sales can be set against the other arm's shelves.

    >>> from domain.rules import Experiment
    >>> e = Experiment("salt", 0.0, {"a": 1.0})
    >>> draw_stock_variant(e, "SKU-1", "ST-1", "low-stock")
    'a'
    """
    if experiment is None:
        return "default"
    return _arm(experiment, _unit_interval(sku, location_id, rule_id, experiment.salt))


def _arm(experiment: Experiment, point: float) -> str:
    """``control`` for the first ``control_share`` of [0, 1), else a variant by weight."""
    if point < experiment.control_share:
        return CONTROL
    # Rescale what is left to [0, 1) and pick by cumulative weight.
    rest = (point - experiment.control_share) / (1 - experiment.control_share)
    total = sum(experiment.variants.values())
    cumulative = 0.0
    names = sorted(experiment.variants)
    for name in names:
        cumulative += experiment.variants[name] / total
        if rest < cumulative:
            return name
    return names[-1]


def quiet_until(quiet: QuietHours | None, ts_ms: int) -> int | None:
    """Event time (ms) at which quiet hours end, or None when ``ts_ms`` is not inside them.

    Quiet hours may span midnight (22:00–08:00) and are read in their own UTC offset.
    """
    if quiet is None or quiet.start_minute == quiet.end_minute:
        return None
    local_ms = ts_ms + quiet.offset_minutes * MINUTE_MS
    minute = (local_ms % DAY_MS) // MINUTE_MS
    start, end = quiet.start_minute, quiet.end_minute
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if not inside:
        return None
    day_start_local = local_ms - local_ms % DAY_MS
    end_local = day_start_local + end * MINUTE_MS
    if end_local <= local_ms:
        end_local += DAY_MS
    return end_local - quiet.offset_minutes * MINUTE_MS


@resumable
@dataclass(slots=True)
class Ledger:
    """Firing history of one subject, bounded: older entries are dropped."""

    #: rule_id → event time of its last firing for this subject
    last_fired: dict[str, int] = field(default_factory=dict)
    #: day number (event time, UTC) → coupon triggers sent that day
    coupons_per_day: dict[int, int] = field(default_factory=dict)

    def in_cooldown(self, rule_id: str, cooldown_ms: int, ts_ms: int) -> bool:
        last = self.last_fired.get(rule_id)
        return last is not None and 0 <= ts_ms - last < cooldown_ms

    def capped(self, cap_per_day: int, ts_ms: int) -> bool:
        return self.coupons_per_day.get(ts_ms // DAY_MS, 0) >= cap_per_day

    def record(self, rule_id: str, ts_ms: int, coupon: bool) -> None:
        self.last_fired[rule_id] = max(ts_ms, self.last_fired.get(rule_id, ts_ms))
        if coupon:
            day = ts_ms // DAY_MS
            self.coupons_per_day[day] = self.coupons_per_day.get(day, 0) + 1
        # One entry per rule: bounded by the rules file. (Pruning every rule by the horizon
        # of the one that fired dropped a 30-day cooldown when a 1-hour rule fired after it.)
        self.coupons_per_day = {
            d: n for d, n in self.coupons_per_day.items() if d >= ts_ms // DAY_MS - 1
        }


def may_fire(
    ledger: Ledger, rule_id: str, cooldown_ms: int, ts_ms: int, coupon: bool, cap_per_day: int
) -> str | None:
    """None when the rule may fire for this subject now, else the suppression reason."""
    if ledger.in_cooldown(rule_id, cooldown_ms, ts_ms):
        return "cooldown"
    if coupon and ledger.capped(cap_per_day, ts_ms):
        return "cap"
    return None
