"""identity_stitch killed with SIGKILL and resumed from its recovery snapshots ends with the
same customers as an uninterrupted run: the same identifiers, grouped the same way, under the
same customer ids (every customer is named after its oldest event, whatever order the
partitions are read in) — killed at its first read, before any snapshot, or at a random point.

Its outputs after the resume: ``events.resolved`` carries the same distinct event ids,
``deadletter`` the same refused messages, and ``identity.changes`` converges (CONTRACT §4):
a subscriber keeping identifier → customer from every ``linked`` and ``merged`` change, with
each ``merged_from`` id an alias of the customer, ends with exactly the ``omni:id:*`` mapping,
whatever order it reads them in. The change ids themselves depend on that order (which link
or rename announced a customer first), so they may differ between any two runs, killed or
not; a run whose replayed events published nothing (their links were already in Redis) once
lost a quarter of them and could not converge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from base.config import Config
from base.topics import ALL_TOPICS
from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import ensure_topics
from connectors.reference_files import load_reference
from flows.identity_stitch import INPUTS
from tests.crash_helpers import (
    crash_and_resume,
    crash_points,
    deadletters,
    recovering,
    run_flow,
)
from tests.identity_fold import fold_changes
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

EVENTS = 50_000


def owners(config: Config) -> dict[str, str]:
    """identifier → customer id, from the public ``id:<type>:<value>`` keys."""
    client = redis.Redis.from_url(config.redis.url)
    prefix = f"{config.redis.key_prefix}id:"
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        values = client.mget(keys) if keys else []
        return {
            k.decode()[len(prefix) :]: v.decode() if isinstance(v, bytes) else str(v)
            for k, v in zip(keys, values, strict=True)
        }
    finally:
        client.close()


def grouping(owner_of: dict[str, str]) -> set[frozenset[str]]:
    """Which identifiers belong together, whatever the customers are called."""
    groups: dict[str, set[str]] = {}
    for ident, customer in owner_of.items():
        groups.setdefault(customer, set()).add(ident)
    return {frozenset(group) for group in groups.values()}


def changes(config: Config) -> list[dict[str, Any]]:
    return [json.loads(m.value() or b"{}") for m in read_topic(config, "identity.changes", 60)]


def folded(published: list[dict[str, Any]]) -> dict[str, str]:
    """The reference fold over the published CloudEvents."""
    return fold_changes(
        (d["kind"], d["customer_id"], d["identifiers"], d["merged_from"])
        for d in (change["data"] for change in published)
    )


def resolved_ids(config: Config) -> set[str]:
    """Distinct input event ids republished on ``events.resolved`` (duplicates allowed)."""
    records = [json.loads(m.value() or b"{}") for m in read_topic(config, "events.resolved", 60)]
    # The merges' notices name the merge, which may differ between runs like the changes.
    return {r["event_id"] for r in records if r.get("source_topic") != "identity"}


def test_identity_sigkill_and_resume_equals_an_uninterrupted_run(
    omni_config: Config, tmp_path: Path
) -> None:
    steady = omni_config.with_overrides(pii={"key": "recovery-secret"})
    events = list(TrafficModel(load_reference(steady), seed=29, customers=5000).events(EVENTS))
    produce(steady, events, progress=False)
    first = run_flow("identity_stitch", steady, tmp_path / "steady.yaml")
    assert first.code == 0
    expected = owners(steady)
    print(f"\nsteady: {len(expected)} identifiers in {first.seconds:.1f} s")
    assert len(expected) > 5000
    assert folded(changes(steady)) == expected  # the contract holds without a crash
    expected_resolved, expected_refused = resolved_ids(steady), deadletters(steady)
    steady_changes = {c["id"] for c in changes(steady)}
    # What it reads (not wms.movements): a kill point past that is never reached.
    messages = sum(1 for e in events if e.topic in INPUTS)

    for tag, kill, snapshot_s in crash_points(messages, 0.5):
        crashed = recovering(steady, tag, tmp_path / tag, snapshot_s)
        ensure_topics(crashed, list(ALL_TOPICS))
        produce(crashed, events, progress=False)
        killed, _ = crash_and_resume(
            "identity_stitch", crashed, tmp_path / f"{tag}.yaml", tag, kill
        )

        second = owners(crashed)
        published = changes(crashed)
        crashed_changes = {c["id"] for c in published}
        print(
            f"{tag}: killed {kill.label} ({killed.consumed:.0f} of {messages} read, "
            f"{killed.seconds:.1f} s); change ids {len(steady_changes)} steady, "
            f"{len(crashed_changes)} resumed, {len(crashed_changes - steady_changes)} new, "
            f"{len(steady_changes - crashed_changes)} missing"
        )
        assert set(second) == set(expected)
        assert grouping(second) == grouping(expected)
        # ... and the same customer ids: each customer is named after its oldest event,
        # however the partitions interleaved around the restart.
        different = {i: (expected[i], second[i]) for i in expected if expected[i] != second[i]}
        assert not different, f"{len(different)} identifiers differ: {list(different.items())[:3]}"
        assert folded(published) == second  # identity.changes converges
        # Every event resolved at least once, none invented; the same refusals.
        assert resolved_ids(crashed) == expected_resolved
        assert deadletters(crashed) == expected_refused
