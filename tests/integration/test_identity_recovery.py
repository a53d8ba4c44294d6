"""identity_stitch killed with SIGKILL mid-run and resumed from its recovery snapshots ends
with the same customers as an uninterrupted run: the same identifiers, grouped the same way,
under the same customer ids (every customer is named after its oldest event, whatever order
the partitions are read in).

The exact list of identity changes still depends on that order (which link or rename
announced a customer first), so two uninterrupted runs already differ by a few percent of
their change ids; a resumed run stays within that, where before events replayed after the
crash published no change at all (their links were already in Redis) and a quarter of the
changes went missing."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest
import redis

from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import ensure_topics
from connectors.topics import ALL_TOPICS
from omnistream.config import Config
from omnistream.reference import load_reference
from tests.integration.test_recovery import run
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration


def owners(config: Config) -> dict[str, str]:
    """identifier → customer id, from the public ``id:<type>:<value>`` keys."""
    client = redis.Redis.from_url(config.redis.url)
    prefix = f"{config.redis.key_prefix}id:"
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        values = client.mget(keys) if keys else []
        return {k.decode()[len(prefix) :]: v.decode() for k, v in zip(keys, values, strict=True)}
    finally:
        client.close()


def grouping(owner_of: dict[str, str]) -> set[frozenset[str]]:
    """Which identifiers belong together, whatever the customers are called."""
    groups: dict[str, set[str]] = {}
    for ident, customer in owner_of.items():
        groups.setdefault(customer, set()).add(ident)
    return {frozenset(group) for group in groups.values()}


def change_ids(config: Config) -> set[str]:
    return {json.loads(m.value())["id"] for m in read_topic(config, "identity.changes", 60)}


def resolved_ids(config: Config) -> set[str]:
    """Distinct input event ids republished on ``events.resolved`` (duplicates allowed)."""
    return {json.loads(m.value())["event_id"] for m in read_topic(config, "events.resolved", 60)}


def test_identity_sigkill_and_resume_equals_an_uninterrupted_run(
    omni_config: Config, tmp_path: Path
) -> None:
    steady = omni_config.with_overrides(pii={"key": "recovery-secret"})
    crashed = steady.with_overrides(
        kafka={"topic_prefix": steady.kafka.topic_prefix + "crash."},
        redis={"key_prefix": steady.redis.key_prefix + "crash:"},
        recovery={
            "dir": str(tmp_path / "recovery"),
            "snapshot_seconds": 0.5,
            "backup_seconds": 0.0001,
        },
    )
    ensure_topics(crashed, list(ALL_TOPICS))
    events = list(TrafficModel(load_reference(steady), seed=29, customers=5000).events(50_000))
    produce(steady, events, progress=False)
    produce(crashed, events, progress=False)

    started = time.monotonic()
    assert run(steady, tmp_path / "steady.yaml", name="identity_stitch") == 0
    steady_s = time.monotonic() - started
    kill_at = random.Random().uniform(0.4, 0.75) * steady_s
    code = run(crashed, tmp_path / "crashed.yaml", kill_after_s=kill_at, name="identity_stitch")
    assert code == -signal.SIGKILL, "the run finished before the kill"
    assert run(crashed, tmp_path / "crashed.yaml", name="identity_stitch") == 0

    first, second = owners(steady), owners(crashed)
    print(f"\nkilled after {kill_at:.1f} s of a {steady_s:.1f} s run; {len(first)} identifiers")
    assert len(first) > 5000
    assert set(first) == set(second)
    assert grouping(first) == grouping(second)
    # ... and the same customer ids: each customer is named after its oldest event, however
    # the partitions interleaved around the restart.
    different = {i: (first[i], second[i]) for i in first if first[i] != second[i]}
    assert not different, f"{len(different)} identifiers differ, e.g. {list(different.items())[:3]}"
    # Every event resolved once at least, none invented: the same distinct event ids.
    assert resolved_ids(steady) == resolved_ids(crashed)
    steady_ids, crashed_ids = change_ids(steady), change_ids(crashed)
    print(
        f"change ids: "
        f"{len(steady_ids)} steady, {len(crashed_ids)} crashed, "
        f"{len(crashed_ids - steady_ids)} new, {len(steady_ids - crashed_ids)} missing"
    )
    # Identity changes depend on the cross-partition arrival order around the restart (see
    # the module docstring): some differ (0 to 3.7 % of the ids, new plus missing, over five
    # runs), as between two uninterrupted runs; replayed events that published nothing used
    # to lose a quarter of them.
    assert len(crashed_ids ^ steady_ids) <= 0.1 * len(steady_ids)
