"""Wire encoding of rule_triggers' outputs (CONTRACT §3) and their metrics.

Ids are derived from the rule, the subject and the causing events only, so a replay after a
crash republishes the same id and subscribers drop it. Everything in a payload except
``fired_at`` (the wall clock at sending) is a function of the input, so two replays of the
same input give the same payloads.
"""

from __future__ import annotations

from typing import Any

from base.flow_names import RULE_TRIGGERS
from base.metrics import TRIGGER_INSIGHTS, TRIGGER_LATENCY, TRIGGERS_FIRED, TRIGGERS_SUPPRESSED
from connectors.envelopes import OutMessage, cloud_event, cloud_event_id
from domain.customer_rules import CouponDecision
from domain.redemption_review import RedemptionInsight
from domain.rules import RuleSet, duration_text
from domain.stock_rules import StockDecision
from domain.timeparse import format_event_time


def coupon_id(decision: CouponDecision) -> str:
    return cloud_event_id(
        "coupon", decision.rule_id, decision.customer_id, decision.sku or "", *decision.evidence
    )


def replenishment_id(decision: StockDecision) -> str:
    return cloud_event_id(
        "replenishment",
        decision.rule_id,
        decision.kind,
        decision.sku,
        decision.location_id,
        *decision.evidence,
    )


def coupon_data(decision: CouponDecision, rules: RuleSet, fired_at_ms: int) -> dict[str, Any]:
    rule = rules.by_id.get(decision.rule_id)
    coupon: dict[str, Any] = {"code": decision.code}
    offer = rule.coupon_of(decision.variant) if rule is not None else None
    if offer is not None:
        expires = decision.sent_at_ms + int(offer.expires_in_s * 1000)
        coupon.update(kind=offer.type, value=offer.value, expires_at=format_event_time(expires))
    if decision.sku is not None:
        coupon["sku"] = decision.sku
    if decision.store_id is not None:
        coupon["store_id"] = decision.store_id
    data: dict[str, Any] = {
        "rule_id": decision.rule_id,
        "rule_kind": rule.kind if rule is not None else None,
        "customer_id": decision.customer_id,
        "variant": decision.variant,
        "coupon": coupon,
        "reason": decision.reason,
        "evidence": list(decision.evidence),
        "event_time": format_event_time(decision.event_time_ms),
        "fired_at": format_event_time(fired_at_ms),
    }
    if decision.held_until_ms is not None:
        data["held_until"] = format_event_time(decision.held_until_ms)
    return data


def coupon_message(decision: CouponDecision, rules: RuleSet, fired_at_ms: int) -> OutMessage:
    """A coupon for triggers.coupon, or for triggers.holdout when the customer drew control."""
    kind = "holdout" if decision.holdout else "coupon"
    value = cloud_event(
        event_type=f"omnistream.trigger.{kind}",
        source=RULE_TRIGGERS,
        subject=decision.customer_id,
        event_id=coupon_id(decision),
        time_ms=decision.sent_at_ms,
        data=coupon_data(decision, rules, fired_at_ms),
    )
    rule = rules.by_id.get(decision.rule_id)
    if decision.holdout:
        TRIGGERS_SUPPRESSED.labels(decision.rule_id, decision.variant, "control").inc()
    else:
        TRIGGERS_FIRED.labels(
            decision.rule_id, rule.kind if rule else "unknown", decision.variant
        ).inc()
        TRIGGER_LATENCY.labels(decision.rule_id).observe(
            max(0.0, (fired_at_ms - decision.sent_at_ms) / 1000)
        )
    return OutMessage(key=decision.customer_id.encode(), value=value)


def replenishment_data(decision: StockDecision, fired_at_ms: int) -> dict[str, Any]:
    """The replenishment record; ``variant`` (optional, CONTRACT §12) only when the rule
    runs an experiment, so records of other rules are as they were."""
    data = {
        "rule_id": decision.rule_id,
        "kind": decision.kind,
        "sku": decision.sku,
        "location_id": decision.location_id,
        "region": decision.region,
        "available": decision.available,
        "reorder_point": decision.reorder_point,
        "suggested_qty": decision.suggested_qty,
        "source_location_id": decision.source_location_id,
        "reason": decision.reason,
        "evidence": list(decision.evidence),
        "event_time": format_event_time(decision.event_time_ms),
        "fired_at": format_event_time(fired_at_ms),
    }
    if decision.variant != "default":
        data["variant"] = decision.variant
    return data


def replenishment_message(decision: StockDecision, fired_at_ms: int) -> OutMessage:
    key = f"{decision.sku}:{decision.location_id}"
    value = cloud_event(
        event_type="omnistream.trigger.replenishment",
        source=RULE_TRIGGERS,
        subject=key,
        event_id=replenishment_id(decision),
        time_ms=decision.event_time_ms,
        data=replenishment_data(decision, fired_at_ms),
    )
    TRIGGERS_FIRED.labels(decision.rule_id, decision.kind, "default").inc()
    TRIGGER_LATENCY.labels(decision.rule_id).observe(
        max(0.0, (fired_at_ms - decision.event_time_ms) / 1000)
    )
    return OutMessage(key=key.encode(), value=value)


#: ``kind`` of the insight a redemption_review publishes (CONTRACT §12)
LOW_REDEMPTION = "low_redemption"


def insight_id(insight: RedemptionInsight) -> str:
    """One id per review × rule × variant × day: a replay publishes the same."""
    return cloud_event_id(
        "insight",
        insight.review_id,
        insight.rule_id,
        insight.variant,
        str(insight.cohort_day_ms),
    )


def insight_data(insight: RedemptionInsight, fired_at_ms: int) -> dict[str, Any]:
    """The record of CONTRACT §12; ``review_rule_id`` (the redemption_review rule) and
    ``sent_on`` (the UTC day of the coupons judged) are optional additions."""
    return {
        "rule_id": insight.rule_id,
        "variant": insight.variant,
        "kind": LOW_REDEMPTION,
        "sent": insight.sent,
        "redeemed": insight.redeemed,
        "rate": round(insight.rate, 4),
        "threshold": insight.threshold,
        "window": duration_text(insight.window_s),
        "event_time": format_event_time(insight.event_time_ms),
        "fired_at": format_event_time(fired_at_ms),
        "review_rule_id": insight.review_id,
        "sent_on": format_event_time(insight.cohort_day_ms)[:10],
    }


def insight_message(insight: RedemptionInsight, fired_at_ms: int) -> OutMessage:
    value = cloud_event(
        event_type="omnistream.trigger.insight",
        source=RULE_TRIGGERS,
        subject=insight.rule_id,
        event_id=insight_id(insight),
        time_ms=insight.event_time_ms,
        data=insight_data(insight, fired_at_ms),
    )
    TRIGGER_INSIGHTS.labels(insight.rule_id, insight.variant, LOW_REDEMPTION).inc()
    return OutMessage(key=insight.rule_id.encode(), value=value)
