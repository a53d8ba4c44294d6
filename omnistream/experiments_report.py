"""``omnistream experiments report [--json]``: per rule × variant of every experiment, the
customers assigned, triggers sent or held out, conversions, conversion rate, revenue per
customer, and the uplift against the rule's control with its 95 % interval and p-value
(CONTRACT §12; the statistics are ``domain.experiments``), from what rule_triggers keeps in
Redis (``state.experiment_store``)."""

from __future__ import annotations

import sys
from typing import TextIO

import orjson

from base.config import Config
from domain.experiments import ALPHA, MIN_OUTCOMES, ArmReport, as_json, report
from domain.stock_arms import StockArmReport, stock_as_json, stock_report
from state.experiment_store import RedisExperimentStore


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2%}" if signed else f"{value:.2%}"


def format_report(reports: list[ArmReport]) -> str:
    """The table: one block per rule, the control first, a verdict per variant."""
    if not reports:
        return "no experiment has sent or held out a trigger yet"
    lines: list[str] = []
    rule: str | None = None
    header = (
        f"  {'variant':<16} {'assigned':>9} {'sent':>8} {'converted':>9} {'rate':>8} "
        f"{'rev/cust':>9} {'uplift':>8} {'95% CI':>19} {'p':>7}  verdict"
    )
    for r in reports:
        t = r.tally
        if t.rule_id != rule:
            rule = t.rule_id
            lines += ([""] if lines else []) + [rule, header]
        ci = (
            f"[{_percent(r.ci_low, True)}, {_percent(r.ci_high, True)}]"
            if r.ci_low is not None
            else "—"
        )
        p = f"{r.p_value:.4f}" if r.p_value is not None else "—"
        per_customer = (
            f"{r.revenue_per_customer:.2f}" if r.revenue_per_customer is not None else "—"
        )
        lines.append(
            f"  {t.variant:<16} {t.assigned:>9,} {t.sent:>8,} {t.converted:>9,} "
            f"{_percent(r.conversion_rate):>8} {per_customer:>9} {_percent(r.uplift, True):>8} "
            f"{ci:>19} {p:>7}  {r.verdict}"
        )
    lines += [
        "",
        f"Uplift: conversion rate − the control's. Wald test of two proportions, {1 - ALPHA:.0%} "
        f"interval; 'too small' below {MIN_OUTCOMES} converted and {MIN_OUTCOMES} not converted "
        "customers in an arm.",
    ]
    return "\n".join(lines)


def format_stock_report(reports: list[StockArmReport]) -> str:
    """The stock experiments' table: per rule × variant, what its shelves went through."""
    lines: list[str] = []
    rule: str | None = None
    header = (
        f"  {'variant':<16} {'shelves':>8} {'stockout h':>11} {'h/shelf':>8} {'sold':>8} "
        f"{'sold/shelf':>10} {'transfers':>9} {'units':>7} {'replenish':>9}"
    )
    for r in reports:
        if r.rule_id != rule:
            rule = r.rule_id
            lines += ([""] if lines else []) + [f"{rule} (stock)", header]
        lines.append(
            f"  {r.variant:<16} {r.shelves:>8,} {r.stockout_hours:>11,.1f} "
            f"{r.stockout_hours_per_shelf:>8.2f} {r.units_sold:>8,} "
            f"{r.units_sold_per_shelf:>10.2f} {r.transfers:>9,} {r.transfer_units:>7,} "
            f"{r.replenishments:>9,}"
        )
    lines += [
        "",
        "Stock arms are drawn per sku × location. Stockout hours: event time with nothing "
        "available to sell (one still open counts up to the rule's latest change); sold: "
        "units the shelves' sales and shipments took.",
    ]
    return "\n".join(lines)


def run_report(config: Config, as_json_output: bool, out: TextIO | None = None) -> int:
    store = RedisExperimentStore.from_config(config)
    try:
        reports = report(store.tallies())
        stock = stock_report(store.stock_tallies())
    finally:
        store.close()
    stream = out if out is not None else sys.stdout
    if as_json_output:
        document = {**as_json(reports), "stock_experiments": stock_as_json(stock)}
        stream.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_report(reports), file=stream)
        if stock:
            print("\n" + format_stock_report(stock), file=stream)
    return 0
