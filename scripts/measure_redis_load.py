"""What each flow asks of Redis per event: commands and the CPU time of Redis's main thread,
the figures the capacity model (docs/capacity.md) sizes Redis primaries with.

Run from the project root: ``.venv/bin/python scripts/measure_redis_load.py [--events N]``.
It starts an embedded broker and redis-server (``omnistream.embedded``), preloads a generated
stream as ``omnistream bench`` does, and runs the four flows one after another, each until
its inputs are drained (``--until-idle``; each flow reads what the earlier ones wrote). Around
each run it reads Redis's ``INFO``: ``total_commands_processed`` and the main thread's CPU
(``used_cpu_sys_main_thread`` + ``used_cpu_user_main_thread``; Redis runs every command on
that one thread, so one second of it divided by the CPU time per event is what one primary
could take from that flow with the flow's side to spare). Commands in a pipeline count one
each; a script counts as one command plus the commands it calls.

Events are what the flow says it consumed (``omnistream_events_consumed_total``). This is a
measurement to read, not a test: nothing here fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import redis

from base.config import load_config
from base.topics import ALL_TOPICS
from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import ensure_topics
from connectors.reference_files import load_reference
from omnistream.bench import run_until_idle
from omnistream.cli_args import FLOW_ORDER
from omnistream.embedded import EmbeddedStack


def redis_figures(client: redis.Redis) -> tuple[int, float]:
    """(commands processed, main-thread CPU seconds) so far."""
    stats: dict[str, Any] = client.info("stats")
    cpu: dict[str, Any] = client.info("cpu")
    main = float(cpu["used_cpu_sys_main_thread"]) + float(cpu["used_cpu_user_main_thread"])
    return int(stats["total_commands_processed"]), main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    config = load_config(None).with_overrides(pii={"key": uuid.uuid4().hex})
    reference = load_reference(config)
    results: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="omnistream-redis-load-") as tmp,
        EmbeddedStack(Path(tmp) / "stack", partitions=4) as stack,
    ):
        workdir = Path(tmp)
        flows = stack.config(config).with_overrides(kafka={"topic_prefix": "load."})
        ensure_topics(flows, list(ALL_TOPICS))
        model = TrafficModel(reference, seed=args.seed, customers=args.customers)
        produce(flows, list(model.events(args.events)), progress=False)
        client = redis.Redis.from_url(flows.redis.url)
        for name in FLOW_ORDER:
            commands0, cpu0 = redis_figures(client)
            run = run_until_idle(name, flows, workdir)
            commands1, cpu1 = redis_figures(client)
            events = max(run.consumed, 1.0)
            cpu_us = (cpu1 - cpu0) * 1e6 / events
            results[name] = {
                "events": run.consumed,
                "flow_eps": round(run.eps, 1),
                "redis_commands_per_event": round((commands1 - commands0) / events, 2),
                "redis_cpu_us_per_event": round(cpu_us, 2),
                "events_per_s_per_primary": round(1e6 / cpu_us) if cpu_us > 0 else 0,
            }
            print(f"{name:16} {json.dumps(results[name])}", file=sys.stderr)
        client.close()
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
