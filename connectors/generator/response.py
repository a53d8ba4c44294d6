"""How generated shoppers answer the triggers sent to them: the truth an experiment's report
must find. Pure and seeded.

A customer sent a coupon of variant ``v`` buys within the conversion window with
probability ``base_rate + uplift[v]``; a customer held out as control with ``base_rate``.
So ``uplift[v]`` is the true uplift, in the report's own terms (conversion rate of the
variant's customers − the control's), as long as nothing else makes those customers buy:
the closed-loop test feeds the rules carts and nothing else, and there the report's interval
must contain it. In the demo the customers also buy on their own, which adds to both arms
alike and leaves the difference a little under ``uplift``.

Every draw is a hash of the seed and the trigger's id, not a random stream: the same trigger
gets the same answer whatever order the triggers are read in, on any number of consumers.

A buyer who was sent a coupon redeems its code at a till with ``redeem_share``
(``via="redeemed"``, what ``redemption_review`` counts); the others buy without it (an
online order or a till sale without the code: ``via="purchase"``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from base.units import MINUTE_MS
from domain.trigger_policy import CONTROL

#: True uplift per variant of the demo's rules (omnistream/sample_data/rules.yaml): one
#: offer that works, one that does not, so the report shows both verdicts.
DEMO_UPLIFT: dict[str, float] = {
    "amount_15": 0.25,
    "free_shipping": 0.0,
    "ten_percent": 0.15,
    "fifteen_percent": 0.15,
}


#: Conversion probability of a held-out customer, unless told otherwise.
DEFAULT_BASE_RATE = 0.15


@dataclass(frozen=True)
class ResponseModel:
    #: conversion probability of a held-out (control) customer
    base_rate: float = DEFAULT_BASE_RATE
    #: variant → true uplift over ``base_rate`` (absolute); variants not named: 0
    uplift: Mapping[str, float] = field(default_factory=lambda: dict(DEMO_UPLIFT))
    #: event time from the trigger to the purchase, at least and at most
    delay_ms: tuple[int, int] = (10 * MINUTE_MS, 90 * MINUTE_MS)
    #: share of coupon buyers who redeem the code at a till
    redeem_share: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for variant, uplift in self.uplift.items():
            if not 0 <= self.base_rate + uplift <= 1:
                raise ValueError(
                    f"uplift of {variant!r}: base rate {self.base_rate} + {uplift} is not a "
                    "probability"
                )

    def rate(self, variant: str) -> float:
        return self.base_rate + (0.0 if variant == CONTROL else self.uplift.get(variant, 0.0))


@dataclass(frozen=True, slots=True)
class TriggerSeen:
    """What a shopper's phone shows of a coupon, or the nothing a held-out customer gets."""

    trigger_id: str
    rule_id: str
    variant: str
    customer_id: str
    sent_ms: int
    #: the coupon's code (None: a holdout, nothing was sent)
    code: str | None = None
    sku: str | None = None
    store_id: str | None = None


@dataclass(frozen=True, slots=True)
class Purchase:
    """The purchase a trigger led to."""

    trigger_id: str
    customer_id: str
    ts_ms: int
    #: the code scanned at the till (None: bought without it)
    redeemed_code: str | None
    sku: str | None
    store_id: str | None


def _unit(seed: int, trigger_id: str, purpose: str) -> float:
    digest = hashlib.blake2b(f"{seed}\x1f{trigger_id}\x1f{purpose}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


def respond(trigger: TriggerSeen, model: ResponseModel) -> Purchase | None:
    """The purchase this trigger leads to, or None."""
    if _unit(model.seed, trigger.trigger_id, "buy") >= model.rate(trigger.variant):
        return None
    low, high = model.delay_ms
    delay = low + int(_unit(model.seed, trigger.trigger_id, "delay") * (high - low))
    redeemed = (
        trigger.code
        if trigger.code is not None
        and _unit(model.seed, trigger.trigger_id, "redeem") < model.redeem_share
        else None
    )
    return Purchase(
        trigger.trigger_id,
        trigger.customer_id,
        trigger.sent_ms + delay,
        redeemed,
        trigger.sku,
        trigger.store_id,
    )


def parse_uplift(text: str) -> dict[str, float]:
    """``amount_15=0.25,free_shipping=0`` → {variant: uplift}; ValueError naming the part."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"expected VARIANT=UPLIFT (e.g. amount_15=0.2), got {part!r}"
            ) from None
    return out
