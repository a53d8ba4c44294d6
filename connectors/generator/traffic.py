"""``TrafficModel``: the one seeded stream of generated traffic, as the tests, the demo, the
benchmark and ``omnistream generate`` see it.

It interleaves three sources, each drawing from a random stream of its own:

- the good events of the simulated chain (``simulation``), in publication order: a short
  history backdated weeks before ``start_ms`` first (lapsing members, repurchase items),
  then the day from ``start_ms`` on;
- exact duplicates of a recently published good event (same bytes, same ``event_id``), as an
  at-least-once producer redelivers them;
- with ``bad_ratio > 0``, malformed events (``malformations``), each tagged with the
  dead-letter reason code the decoder must give.

Because the interleaving has its own dice, the good events of a seed are the same whatever
``bad_ratio`` is: only their interleaving differs. Pure: no Kafka, no clock reads.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Iterator

from connectors.generator.malformations import Malformations
from connectors.generator.simulation import (
    DEFAULT_CONSENT_WITHDRAWAL_SHARE,
    DEFAULT_INACTIVE_DAYS,
    DEFAULT_LAPSING_SHARE,
    DEFAULT_UNSOURCED_SHARE,
    Customer,
    Simulation,
    customer_base,
)
from connectors.generator.wire import GeneratedEvent
from domain.reference import ReferenceData

#: 2026-11-01T09:00:00+08:00, a Sunday morning as the stores open.
DEFAULT_START_MS = 1_793_494_800_000
DEFAULT_SEED = 7
DEFAULT_CUSTOMERS = 2_000

#: Share of good events followed by an exact duplicate of a recent one.
DUPLICATE_SHARE = 0.005
#: Duplicates repeat one of the last this many good events (a redelivery, not a replay).
DUPLICATE_WINDOW = 500


class TrafficModel:
    """A reproducible stream of retail traffic over the reference data (no Kafka involved).

    ``events(count)`` starts a fresh simulation on every call, so the same model (or another
    one with the same arguments) yields the same bytes again.
    """

    def __init__(
        self,
        reference: ReferenceData,
        seed: int = DEFAULT_SEED,
        customers: int = DEFAULT_CUSTOMERS,
        start_ms: int = DEFAULT_START_MS,
        bad_ratio: float = 0.0,
        unsourced_share: float = DEFAULT_UNSOURCED_SHARE,
        consent_withdrawal_share: float = DEFAULT_CONSENT_WITHDRAWAL_SHARE,
        lapsing_share: float = DEFAULT_LAPSING_SHARE,
        inactive_days: int = DEFAULT_INACTIVE_DAYS,
    ) -> None:
        if customers < 1:
            raise ValueError(f"customers must be ≥ 1, got {customers}")
        if not 0.0 <= bad_ratio <= 1.0:
            raise ValueError(f"bad_ratio must be between 0 and 1, got {bad_ratio}")
        if not 0.0 <= unsourced_share <= 1.0:
            raise ValueError(f"unsourced_share must be between 0 and 1, got {unsourced_share}")
        for name, share in (
            ("consent_withdrawal_share", consent_withdrawal_share),
            ("lapsing_share", lapsing_share),
        ):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {share}")
        if inactive_days < 1:
            raise ValueError(f"inactive_days must be ≥ 1, got {inactive_days}")
        kinds = {location.type for location in reference.locations.values()}
        if "store" not in kinds or not kinds & {"warehouse", "forward_warehouse"}:
            raise ValueError(
                "the reference data needs at least one store and one warehouse or forward "
                "warehouse to generate traffic"
            )
        if not reference.products:
            raise ValueError("the reference data has no products to generate traffic for")
        self.reference = reference
        self.seed = seed
        self.customers = customers
        self.start_ms = start_ms
        self.bad_ratio = bad_ratio
        #: Share of delivery orders placed without a location, for Omnistream to source.
        self.unsourced_share = unsourced_share
        #: Share of signed-in sessions that turn marketing off (CONTRACT §8 ``consent``).
        self.consent_withdrawal_share = consent_withdrawal_share
        #: Share of the customers who bought once ``inactive_days`` before the stream and
        #: never come back (for a ``lapsed`` rule with that many ``inactive_days``).
        self.lapsing_share = lapsing_share
        self.inactive_days = inactive_days
        self._customer_base: list[Customer] | None = None

    def events(self, count: int | None = None) -> Iterator[GeneratedEvent]:
        """``count`` events (for ever when None): good ones, duplicates and malformed ones."""
        if count is not None and count < 0:
            raise ValueError(f"count must be ≥ 0, got {count}")
        if self._customer_base is None:  # the same for every call: built once
            self._customer_base = customer_base(self.reference, self.customers)
        simulation = Simulation(
            self.reference,
            self.seed,
            self._customer_base,
            self.start_ms,
            unsourced_share=self.unsourced_share,
            consent_withdrawal_share=self.consent_withdrawal_share,
            lapsing_share=self.lapsing_share,
            inactive_days=self.inactive_days,
        )
        return self._mix(simulation, count)

    def _mix(self, simulation: Simulation, count: int | None) -> Iterator[GeneratedEvent]:
        good = simulation.run()
        malformed = Malformations(simulation)
        dice = random.Random(f"omnistream-mix-{self.seed}")
        recent: deque[GeneratedEvent] = deque(maxlen=DUPLICATE_WINDOW)
        duplicate_share = DUPLICATE_SHARE * (1.0 - self.bad_ratio)
        emitted = 0
        while count is None or emitted < count:
            roll = dice.random()
            if roll < self.bad_ratio:
                yield malformed.make()
            elif roll < self.bad_ratio + duplicate_share and recent:
                yield dataclasses.replace(dice.choice(recent), duplicate=True)
            else:
                event = next(good)
                recent.append(event)
                yield event
            emitted += 1
