"""``redemption_review`` rules, pure: is each coupon rule × variant's offer being used?

A coupon nobody redeems is a message that did not land: the wrong offer, the wrong audience
or the wrong moment. Marketing asks to hear about it when fewer than, say, 30 % of a
variant's coupons are redeemed, so the content can be reworked (CONTRACT §12).

How the share is measured, per rule × variant (one ``RedemptionReviews`` each):

- Coupons form a **cohort per event-time day** (UTC) of sending. A cohort is judged once
  every one of its coupons has had the review's ``window`` to be redeemed: when the event
  time seen for that rule × variant has passed the day's end + ``window`` + ``GRACE_MS``.
  Judging the whole day at once, instead of a rolling share, gives each insight a fixed
  population (the same figures on a replay) and one insight per day at most.
- A coupon counts as redeemed when its code was scanned at a till (``CouponRedeemed``, from
  the customer rules) within ``window`` of its sending. Holdouts are not coupons: the
  control is never reviewed.
- Days with fewer than ``min_sent`` coupons are not judged (the share of 5 coupons says
  nothing); the others publish a ``RedemptionInsight`` when the share is under
  ``threshold``.

``GRACE_MS`` is there because the event time is the latest one this rule × variant has
seen, which live runs a little ahead of the slowest input partition: a redemption rung up
on a lagging partition still lands in its day before the day is judged. A replay holds its
items to the end (``hold``/``finish``) and folds them in event-time order, so it judges on
the same complete cohorts.

A review that stops receiving items (the rule stopped sending coupons) judges nothing more
until its rule × variant sends again; the cohorts wait in the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from base.units import DAY_MS, HOUR_MS
from domain.customer_rules import CouponDecision, CouponRedeemed
from domain.resumable import resumable
from domain.rules import Rule, RuleSet

#: How far past a cohort's deadline the event time must be before it is judged (module doc).
GRACE_MS = HOUR_MS


@dataclass(frozen=True, slots=True)
class RedemptionInsight:
    """A day's coupons of one rule × variant redeemed below a review's threshold."""

    review_id: str
    rule_id: str
    variant: str
    #: start (UTC midnight, ms) of the event-time day the coupons were sent
    cohort_day_ms: int
    sent: int
    redeemed: int
    threshold: float
    window_s: float
    #: when the share became known: the day's end + the window
    event_time_ms: int

    @property
    def rate(self) -> float:
        return self.redeemed / self.sent


@resumable
@dataclass(slots=True)
class Cohort:
    #: code → sent time of the coupons sent that day
    sent: dict[str, int] = field(default_factory=dict)
    #: code → ms from sending to its first redemption
    redeemed: dict[str, int] = field(default_factory=dict)
    #: ids of the review rules that have judged this day
    judged: set[str] = field(default_factory=set)


#: what a review folds: a coupon sent (not a holdout) or a redemption
ReviewItem = CouponDecision | CouponRedeemed


def review_key(item: ReviewItem) -> str:
    """The rule × variant an item belongs to (ids and variant names hold no ``:``)."""
    return f"{item.rule_id}:{item.variant}"


def reviewed(item: object) -> bool:
    """Is this an outcome the reviews fold (coupons sent and redemptions)?"""
    return isinstance(item, CouponRedeemed) or (
        isinstance(item, CouponDecision) and not item.holdout
    )


def _time(item: ReviewItem) -> int:
    return item.sent_at_ms if isinstance(item, CouponDecision) else item.ts_ms


def _order(item: ReviewItem) -> tuple[int, int, str]:
    # At one instant a coupon sorts before its redemption.
    return (_time(item), isinstance(item, CouponRedeemed), item.code)


@resumable
@dataclass(slots=True)
class RedemptionReviews:
    """One coupon rule × variant's cohorts, judged by every ``redemption_review`` rule."""

    rule_id: str = ""
    variant: str = ""
    cohorts: dict[int, Cohort] = field(default_factory=dict)
    latest_ms: int = 0
    #: items a replay folds at the end, in event-time order
    held: list[ReviewItem] = field(default_factory=list)

    def __deepcopy__(self, memo: dict[int, object]) -> RedemptionReviews:
        cohorts = {
            day: Cohort(dict(c.sent), dict(c.redeemed), set(c.judged))
            for day, c in self.cohorts.items()
        }
        # Items are frozen: shared.
        return RedemptionReviews(
            self.rule_id, self.variant, cohorts, self.latest_ms, list(self.held)
        )

    def add(self, item: ReviewItem, rules: RuleSet) -> list[RedemptionInsight]:
        """Fold one item in and judge every day it made due."""
        self.rule_id, self.variant = item.rule_id, item.variant
        if isinstance(item, CouponDecision):
            day = item.sent_at_ms - item.sent_at_ms % DAY_MS
            self.cohorts.setdefault(day, Cohort()).sent[item.code] = item.sent_at_ms
        else:
            day = item.sent_ms - item.sent_ms % DAY_MS
            cohort = self.cohorts.setdefault(day, Cohort())
            cohort.redeemed.setdefault(item.code, max(0, item.ts_ms - item.sent_ms))
        self.latest_ms = max(self.latest_ms, _time(item))
        return self._judge(rules)

    def hold(self, item: ReviewItem) -> None:
        self.held.append(item)

    def finish(self, rules: RuleSet) -> list[RedemptionInsight]:
        """The end of a replay: the held items folded in event-time order."""
        out: list[RedemptionInsight] = []
        held, self.held = sorted(self.held, key=_order), []
        for item in held:
            out += self.add(item, rules)
        return out

    def _judge(self, rules: RuleSet) -> list[RedemptionInsight]:
        reviews = rules.of_kind("redemption_review")
        out = []
        for day in sorted(self.cohorts):
            cohort = self.cohorts[day]
            for review in reviews:
                if review.rule_id in cohort.judged:
                    continue
                known_ms = day + DAY_MS + int(review.params["window"] * 1000)
                if self.latest_ms < known_ms + GRACE_MS:
                    continue
                cohort.judged.add(review.rule_id)
                insight = self._verdict(review, cohort, day, known_ms)
                if insight is not None:
                    out.append(insight)
        self._drop_judged(reviews, rules)
        return out

    def _verdict(
        self, review: Rule, cohort: Cohort, day: int, known_ms: int
    ) -> RedemptionInsight | None:
        window_ms = int(review.params["window"] * 1000)
        sent = len(cohort.sent)
        if sent < review.params["min_sent"]:
            return None
        redeemed = sum(
            1
            for code, delay in cohort.redeemed.items()
            if code in cohort.sent and delay <= window_ms
        )
        if redeemed / sent >= review.params["threshold"]:
            return None
        return RedemptionInsight(
            review.rule_id,
            self.rule_id,
            self.variant,
            day,
            sent,
            redeemed,
            review.params["threshold"],
            review.params["window"],
            known_ms,
        )

    def _drop_judged(self, reviews: list[Rule], rules: RuleSet) -> None:
        """Forget days every review in force has judged, and days no review could still
        judge (older than the conversion window: redemptions are no longer seen)."""
        ids = {r.rule_id for r in reviews}
        horizon = self.latest_ms - DAY_MS - int(rules.conversion_window_s * 1000) - GRACE_MS
        for day in [d for d, c in self.cohorts.items() if ids <= c.judged or d < horizon]:
            del self.cohorts[day]
