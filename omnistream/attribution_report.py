"""``omnistream attribution report``: attributed revenue and conversions per model and
channel, from the running totals the attribution flow keeps in Redis."""

from __future__ import annotations

import sys
from typing import TextIO

from base.config import Config
from domain.attribution import MODELS
from state.attribution_store import RedisAttributionStore


def format_report(totals: dict[str, dict[str, tuple[float, float]]]) -> str:
    lines: list[str] = []
    for model in MODELS:
        table = totals.get(model, {})
        lines.append(f"{model}")
        if not table:
            lines.append("  (no conversions yet)")
            continue
        revenue_total = sum(revenue for revenue, _ in table.values())
        lines.append(f"  {'channel':<24} {'revenue':>14} {'share':>7} {'conversions':>12}")
        for channel, (revenue, conversions) in sorted(
            table.items(), key=lambda item: (-item[1][0], item[0])
        ):
            share = revenue / revenue_total if revenue_total else 0.0
            lines.append(f"  {channel:<24} {revenue:>14,.2f} {share:>7.1%} {conversions:>12,.2f}")
        conversions_total = sum(conversions for _, conversions in table.values())
        lines.append(f"  {'total':<24} {revenue_total:>14,.2f} {'':>7} {conversions_total:>12,.2f}")
    return "\n".join(lines)


def report(config: Config, out: TextIO | None = None) -> int:
    store = RedisAttributionStore.from_config(config)
    try:
        totals = store.read_totals(MODELS)
    finally:
        store.close()
    print(format_report(totals), file=out if out is not None else sys.stdout)
    return 0
