"""The capacity model of docs/capacity.md, derived from measured figures.

Run from the project root::

    .venv/bin/omnistream bench --json bench1.json          # (several runs: the median counts)
    .venv/bin/python scripts/measure_redis_load.py --json redis-load.json
    .venv/bin/python scripts/capacity_model.py --bench bench*.json --redis-load redis-load.json

Measured (from the files): each flow's events/s on one process with one worker and the
events it consumed per generated input event (``omnistream bench``, tailing its preloaded
topics), and the Redis main-thread CPU time per consumed event
(``scripts/measure_redis_load.py``). Derived (printed): for each offered rate of input
events, the processes each flow needs at ``--utilisation`` of a core, the partitions its
input topics need, and the Redis primaries at ``--redis-utilisation`` of their one command
thread. One process runs one worker on one core (the flows' Python holds the GIL), and
Bytewax gives each worker whole partitions, so a topic needs at least as many partitions
as workers read it; the model asks for twice that, rounded up to a power of two, so the
flows can grow without repartitioning. Nothing here is measured at the printed rates.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

FLOWS = ("stock_pool", "identity_stitch", "rule_triggers", "attribution")
RATES = (10_000, 100_000, 1_000_000)


def median_figures(bench_files: list[Path]) -> dict[str, dict[str, float]]:
    """Per flow: median events/s and median events consumed per input event."""
    runs = [json.loads(p.read_text()) for p in bench_files]
    figures: dict[str, dict[str, float]] = {}
    for flow in FLOWS:
        eps = [r["flows"][flow]["eps"] for r in runs if flow in r.get("flows", {})]
        per_input = [
            r["flows"][flow]["consumed"] / r["events"] for r in runs if flow in r.get("flows", {})
        ]
        figures[flow] = {
            "eps": statistics.median(eps),
            "per_input": statistics.median(per_input),
        }
    return figures


def partitions_for(workers: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, 2 * workers))))


def model(
    figures: dict[str, dict[str, float]],
    redis_load: dict[str, dict[str, float]],
    utilisation: float,
    redis_utilisation: float,
) -> str:
    lines = [
        "| input events/s | flow | consumed events/s | processes | partitions per input "
        "topic | Redis main-thread CPU s/s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    totals = []
    for rate in RATES:
        redis_total = 0.0
        for flow in FLOWS:
            consumed = rate * figures[flow]["per_input"]
            processes = math.ceil(consumed / (figures[flow]["eps"] * utilisation))
            redis_s = consumed * redis_load[flow]["redis_cpu_us_per_event"] / 1e6
            redis_total += redis_s
            lines.append(
                f"| {rate:,} | {flow} | {consumed:,.0f} | {processes} | "
                f"{partitions_for(processes)} | {redis_s:.2f} |"
            )
        identity_s = (
            rate
            * figures["identity_stitch"]["per_input"]
            * (redis_load["identity_stitch"]["redis_cpu_us_per_event"] / 1e6)
        )
        primaries = math.ceil((redis_total - identity_s) / redis_utilisation)
        totals.append(
            f"| {rate:,} | {identity_s:.2f} | {'yes' if identity_s <= redis_utilisation else 'NO'} "
            f"| {redis_total - identity_s:.2f} | {primaries} |"
        )
    lines += [
        "",
        "| input events/s | identity's primary CPU s/s | within one primary at "
        f"{redis_utilisation:.0%} | other flows' Redis CPU s/s | Redis Cluster primaries "
        "for the other flows |",
        "|---:|---:|---|---:|---:|",
        *totals,
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, nargs="+", required=True)
    parser.add_argument("--redis-load", type=Path, required=True)
    parser.add_argument("--utilisation", type=float, default=0.7)
    parser.add_argument("--redis-utilisation", type=float, default=0.5)
    args = parser.parse_args()
    figures = median_figures(args.bench)
    redis_load = json.loads(args.redis_load.read_text())
    print("| flow | events/s per process (median) | µs per event | consumed per input event |")
    print("|---|---:|---:|---:|")
    for flow in FLOWS:
        f = figures[flow]
        print(f"| {flow} | {f['eps']:,.0f} | {1e6 / f['eps']:.1f} | {f['per_input']:.3f} |")
    print()
    print(model(figures, redis_load, args.utilisation, args.redis_utilisation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
