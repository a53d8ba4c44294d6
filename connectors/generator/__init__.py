"""Synthetic, reproducible retail traffic for the three input topics (CONTRACT §1).

One module per job, importing one way (wire ← simulation ← malformations ← traffic; producing
on top; the ``omnistream generate`` command itself is ``omnistream.generate_cli``):

- ``wire`` — the ``GeneratedEvent`` record and how fields are written (timestamps in both
  contract forms, money, phone numbers and e-mails as people type them);
- ``simulation`` — the retail chain: shoppers, online sessions and orders, till sales and
  returns, warehouse receipts, shipments, transfers, adjustments and counts, as good events;
- ``malformations`` — deliberately bad messages, each tagged with the dead-letter reason the
  decoder must give;
- ``traffic`` — ``TrafficModel``: the seeded stream that interleaves good events, duplicates
  and malformations;
- ``producing`` — ``produce``: send a stream to Kafka, paced or flat out, with progress.

The first four are pure (no Kafka, no clock reads: the same arguments give the same bytes).
The names below are the public API; ``from connectors.generator import …`` is how callers
use it. The Kafka side (``produce``, ``GenerateStats``) is imported on first use, so
importing the model does not load the Kafka client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from connectors.generator.malformations import BAD_REASONS
from connectors.generator.traffic import (
    DEFAULT_CUSTOMERS,
    DEFAULT_SEED,
    DEFAULT_START_MS,
    TrafficModel,
)
from connectors.generator.wire import CHANNELS, GeneratedEvent

if TYPE_CHECKING:
    from connectors.generator.producing import GenerateStats, produce

__all__ = [
    "BAD_REASONS",
    "CHANNELS",
    "DEFAULT_CUSTOMERS",
    "DEFAULT_SEED",
    "DEFAULT_START_MS",
    "GenerateStats",
    "GeneratedEvent",
    "TrafficModel",
    "produce",
]

#: Public names of the Kafka side → the module that holds them (loaded on first use).
_KAFKA_SIDE = {
    "GenerateStats": "producing",
    "produce": "producing",
}


def __getattr__(name: str) -> Any:
    module = _KAFKA_SIDE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
