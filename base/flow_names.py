"""The four flows' names: Bytewax dataflow ids, the ``flow`` label of every metric, the
``flow`` of dead letters, the ``source`` of output CloudEvents and ``omnistream run FLOW``."""

from __future__ import annotations

STOCK_POOL = "stock_pool"
IDENTITY_STITCH = "identity_stitch"
RULE_TRIGGERS = "rule_triggers"
ATTRIBUTION = "attribution"

FLOWS = (STOCK_POOL, IDENTITY_STITCH, RULE_TRIGGERS, ATTRIBUTION)
