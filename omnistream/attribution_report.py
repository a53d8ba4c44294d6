"""``omnistream attribution report``: attributed revenue and conversions per model and
channel, from the running totals the attribution flow keeps in Redis."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

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


def report_json(totals: dict[str, dict[str, tuple[float, float]]]) -> dict[str, Any]:
    """The shape of ``attribution report --json`` (README, JSON output): every model, each
    with its channels' revenue and conversions (as Redis holds them) and their sums."""
    models: dict[str, Any] = {}
    for model in MODELS:
        table = totals.get(model, {})
        models[model] = {
            "channels": {
                channel: {"revenue": revenue, "conversions": conversions}
                for channel, (revenue, conversions) in sorted(table.items())
            },
            "revenue": sum(revenue for revenue, _ in table.values()),
            "conversions": sum(conversions for _, conversions in table.values()),
        }
    return {"models": models}


def report(config: Config, out: TextIO | None = None, *, as_json: bool = False) -> int:
    store = RedisAttributionStore.from_config(config)
    try:
        totals = store.read_totals(MODELS)
    finally:
        store.close()
    text = json.dumps(report_json(totals)) if as_json else format_report(totals)
    print(text, file=out if out is not None else sys.stdout)
    return 0
