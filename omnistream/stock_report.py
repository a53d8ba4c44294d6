"""``omnistream stock <sku>``: the stock pool of one sku as a table (or JSON), from Redis."""

from __future__ import annotations

import json
import sys
from typing import Any

from base.config import Config
from domain.reference import ReferenceData
from state.interfaces import StockReader
from state.stock_store import StockStore

COLUMNS = [
    ("location", 10),
    ("type", 17),
    ("region", 6),
    ("on_hand", 8),
    ("reserved", 8),
    ("available", 9),
    ("safety", 6),
    ("to_sell", 7),
    ("transit", 7),
    ("sold_1h", 7),
    ("sold_24h", 8),
    ("cover_d", 8),
    ("updated_at", 24),
]


def _row(cells: list[str]) -> str:
    return "  ".join(
        cell.ljust(width) if i < 3 or i == len(COLUMNS) - 1 else cell.rjust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def _figures(row: dict[str, str]) -> list[str]:
    return [
        row.get("on_hand", "0"),
        row.get("reserved", "0"),
        row.get("available", "0"),
        row.get("safety_stock", "-"),
        row.get("available_to_sell", row.get("available", "0")),
        row.get("in_transit", "0"),
        row.get("sold_1h", "0"),
        row.get("sold_24h", "0"),
        row.get("days_of_cover", "-"),
        row.get("updated_at", ""),
    ]


def _number(text: str) -> int | float | str:
    """A figure of a stock hash as a JSON number (they are kept as decimal text), other
    fields (``updated_at``) as they are."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _json_figures(row: dict[str, str]) -> dict[str, Any]:
    return {key: _number(value) for key, value in sorted(row.items())}


def stock_json(
    reference: ReferenceData,
    sku: str,
    rows: list[dict[str, str]],
    total: dict[str, str],
    regions: dict[str, dict[str, str]],
) -> dict[str, Any]:
    """The shape of ``stock --json`` (README, JSON output): the sku and its product, then the
    fields of each Redis hash as stored (numbers as numbers), per location, region and for
    the network; ``total`` is null while no stock is recorded."""
    product = reference.products[sku]
    locations = []
    for row in rows:
        location = reference.locations[row["location_id"]]
        figures = {k: v for k, v in row.items() if k != "location_id"}
        locations.append(
            {
                "location_id": location.location_id,
                "type": location.type,
                "region": location.region,
                **_json_figures(figures),
            }
        )
    return {
        "sku": sku,
        "category": product.category,
        "reorder_point": product.reorder_point,
        "safety_stock": product.safety_stock,
        "locations": locations,
        "regions": {region: _json_figures(fig) for region, fig in sorted(regions.items())},
        "total": _json_figures(total) if total else None,
    }


def print_stock(
    config: Config, reference: ReferenceData, sku: str, *, as_json: bool = False
) -> int:
    if sku not in reference.products:
        print(
            f"omnistream stock: unknown sku {sku!r} (not in {config.reference.products})",
            file=sys.stderr,
        )
        return 2
    store: StockReader = StockStore.from_config(config, reference)
    try:
        rows, total, regions = store.read_sku(sku)
    finally:
        store.close()
    if as_json:
        print(json.dumps(stock_json(reference, sku, rows, total, regions), sort_keys=False))
        return 0
    product = reference.products[sku]
    print(
        f"{sku}  category={product.category}  reorder_point={product.reorder_point}  "
        f"safety_stock={product.safety_stock}"
    )
    if not rows:
        print("no stock recorded for this sku yet")
        return 0
    print(_row([name for name, _ in COLUMNS]))
    for row in rows:
        location = reference.locations[row["location_id"]]
        print(_row([location.location_id, location.type, location.region, *_figures(row)]))
    for region, figures in sorted(regions.items()):
        print(
            _row(
                [
                    f"[{region}]",
                    f"{figures.get('locations', '')} locations",
                    region,
                    *_figures(figures),
                ]
            )
        )
    if total:
        print(_row(["[total]", f"{total.get('locations', '')} locations", "", *_figures(total)]))
    return 0
