"""What each arm of a stock rule's experiment did to its shelves, pure (CONTRACT §12, issue's
"experiments of stock rules"): stockout hours, units sold and the moves it suggested.

A ``low_stock`` or ``stockout`` experiment draws its arm per sku × location
(``draw_stock_variant``): a shelf keeps its policy for the whole test, so the question is
whether the shelves of one arm were out of stock less and sold more than the control's.
Each shelf keeps a ``ShelfTally`` in rule_triggers' state for its location:

- **stockout time**: event time from a change that left nothing available to sell to the
  next one that left some. A stockout still open is reported with its start, and the report
  counts it up to the latest event time any shelf of the rule has reported (the shelves
  report independently; a shelf that went quiet does not stop the clock of the others);
- **units sold**: the ``sold`` of each stock change (units the change's own movement sold:
  a till sale, or an order shipment; stock_pool's sales velocity counts the same units).

The figures a shelf publishes are absolute (totals since the experiment started for it), so
writing the latest figures of a shelf twice changes nothing; a stock.changes message read
twice after a restart without its snapshot would add its ``sold`` twice, as it would
re-run the rules at it.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.resumable import resumable
from domain.rules import RuleSet
from domain.stock_rules import StockChange
from domain.trigger_policy import draw_stock_variant

#: The stock rule kinds an experiment can run on.
STOCK_KINDS = ("low_stock", "stockout")


@resumable
@dataclass(slots=True)
class ShelfTally:
    #: closed stockouts, summed
    stockout_ms: int = 0
    #: start of the stockout in progress (None: something is available to sell)
    out_since_ms: int | None = None
    sold: int = 0
    #: event time of the latest change noted
    as_of_ms: int = 0


@dataclass(frozen=True, slots=True)
class ShelfFigures:
    """A shelf's figures for every stock experiment in force: (rule id, variant) arms."""

    sku: str
    location_id: str
    arms: tuple[tuple[str, str], ...]
    stockout_ms: int
    out_since_ms: int | None
    sold: int
    as_of_ms: int


def arms_of(rules: RuleSet, sku: str, location_id: str) -> tuple[tuple[str, str], ...]:
    """The arm this shelf runs in each stock experiment in force."""
    return tuple(
        (rule.rule_id, draw_stock_variant(rule.experiment, sku, location_id, rule.rule_id))
        for kind in STOCK_KINDS
        for rule in rules.of_kind(kind)
        if rule.experiment is not None
    )


def note_shelf(tally: ShelfTally, change: StockChange) -> None:
    """Fold one stock change (in the location's order) into the shelf's tally."""
    if change.available <= 0:
        if tally.out_since_ms is None:
            tally.out_since_ms = change.ts_ms
    elif tally.out_since_ms is not None:
        tally.stockout_ms += max(0, change.ts_ms - tally.out_since_ms)
        tally.out_since_ms = None
    tally.sold += change.sold
    tally.as_of_ms = max(tally.as_of_ms, change.ts_ms)


def figures(
    tally: ShelfTally, change: StockChange, arms: tuple[tuple[str, str], ...]
) -> ShelfFigures:
    return ShelfFigures(
        change.sku,
        change.location_id,
        arms,
        tally.stockout_ms,
        tally.out_since_ms,
        tally.sold,
        tally.as_of_ms,
    )


@dataclass(frozen=True, slots=True)
class StockArmTally:
    """What the store keeps of one arm: each shelf's latest figures and each move."""

    rule_id: str
    variant: str
    #: (stockout ms closed, open stockout's start or None, units sold, as of) per shelf
    shelves: tuple[tuple[int, int | None, int, int], ...]
    #: (kind, suggested quantity) of each replenishment trigger the arm sent
    moves: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class StockArmReport:
    rule_id: str
    variant: str
    shelves: int
    stockout_hours: float
    units_sold: int
    transfers: int
    transfer_units: int
    replenishments: int

    @property
    def stockout_hours_per_shelf(self) -> float:
        return self.stockout_hours / self.shelves if self.shelves else 0.0

    @property
    def units_sold_per_shelf(self) -> float:
        return self.units_sold / self.shelves if self.shelves else 0.0


def stock_report(tallies: list[StockArmTally]) -> list[StockArmReport]:
    """Per rule × variant, sorted. An open stockout counts up to the latest event time any
    shelf of the rule reported (module doc)."""
    now: dict[str, int] = {}
    for tally in tallies:
        for *_, as_of in tally.shelves:
            now[tally.rule_id] = max(now.get(tally.rule_id, 0), as_of)
    out = []
    for t in sorted(tallies, key=lambda t: (t.rule_id, t.variant)):
        out_ms = sum(
            closed + (max(0, now[t.rule_id] - since) if since is not None else 0)
            for closed, since, _, _ in t.shelves
        )
        out.append(
            StockArmReport(
                t.rule_id,
                t.variant,
                shelves=len(t.shelves),
                stockout_hours=out_ms / 3_600_000,
                units_sold=sum(sold for _, _, sold, _ in t.shelves),
                transfers=sum(1 for kind, _ in t.moves if kind == "transfer"),
                transfer_units=sum(qty for kind, qty in t.moves if kind == "transfer"),
                replenishments=sum(1 for kind, _ in t.moves if kind == "replenish"),
            )
        )
    return out


def stock_as_json(reports: list[StockArmReport]) -> list[dict[str, object]]:
    return [
        {
            "rule_id": r.rule_id,
            "variant": r.variant,
            "shelves": r.shelves,
            "stockout_hours": round(r.stockout_hours, 3),
            "stockout_hours_per_shelf": round(r.stockout_hours_per_shelf, 3),
            "units_sold": r.units_sold,
            "units_sold_per_shelf": round(r.units_sold_per_shelf, 3),
            "transfers": r.transfers,
            "transfer_units": r.transfer_units,
            "replenishments": r.replenishments,
        }
        for r in reports
    ]
