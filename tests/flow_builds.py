"""Building a flow in a unit test, without a broker.

stock_pool reads its inputs' partition counts from the broker when it is built (its shards
wait for every partition); unit tests that only look at the built dataflow give them here.
"""

from __future__ import annotations

import importlib
from typing import Any

from bytewax.dataflow import Dataflow

from base.config import Config

#: Extra ``build`` arguments per flow module.
BUILD_ARGS: dict[str, dict[str, Any]] = {
    "flows.stock_pool": {"partitions": {"clickstream": 4, "pos.sales": 4, "wms.movements": 4}}
}


def build_flow(module: str, config: Config) -> Dataflow:
    """``module.build(config)`` (e.g. ``flows.stock_pool``) with what it needs offline."""
    return importlib.import_module(module).build(config, **BUILD_ARGS.get(module, {}))
