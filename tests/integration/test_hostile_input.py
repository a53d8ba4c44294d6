"""Hostile messages mixed into real traffic on every input topic: each lands in deadletter
with a reason code, every valid event is still applied, and no flow stops."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import orjson
import pytest
import redis

from base.config import Config, dump_config
from connectors.generator import TrafficModel
from connectors.kafka_clients import make_producer
from connectors.reference_files import load_reference
from omnistream.processes import start_flow
from tests.integration.test_stock_pool_flow import expected_stock, redis_figures
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration

VALID_TS = "2026-11-01T10:00:00+08:00"
HOSTILE: list[tuple[bytes, str]] = [
    (b"\xff\xfe\xfa not utf-8", "malformed_json"),
    (b"not json at all", "malformed_json"),
    (b"[" * 50_000 + b"]" * 50_000, "malformed_json"),
    (b'{"event_id": "x", "qty": NaN}', "malformed_json"),
    (b'{"event_id": "x", "qty": Infinity}', "malformed_json"),
    (b'{"a": "' + b"x" * 900_000 + b'"}', "too_large"),
    (b"", "malformed_json"),
    (b"null", "malformed_json"),
    (
        orjson.dumps(
            {
                "event_id": "h1",
                "event_type": "receipt",
                "ts": VALID_TS,
                "location_id": "WH-SH-01",
                "sku": "SKU-10001",
                "qty": 10**18,
            }
        ),
        "bad_value",
    ),
    (
        orjson.dumps(
            {
                "event_id": "h2",
                "event_type": "receipt",
                "ts": VALID_TS,
                "location_id": "WH-SH-01",
                "sku": "SKU-10001",
                "qty": -3,
            }
        ),
        "bad_value",
    ),
    (
        orjson.dumps(
            {
                "event_id": "h3",
                "event_type": "receipt",
                "ts": VALID_TS,
                "location_id": "WH-SH-01",
                "sku": "SKU-10001",
                "qty": 0,
            }
        ),
        "bad_value",
    ),
    (
        orjson.dumps(
            {
                "event_id": "h4",
                "event_type": "receipt",
                "ts": VALID_TS,
                "location_id": "WH-SH-01",
                "sku": "SKU-10001",
                "qty": "7",
            }
        ),
        "bad_type",
    ),
    (
        orjson.dumps(
            {
                "event_id": "h5",
                "event_type": "receipt",
                "ts": "2026-11-01T10:00:00",
                "location_id": "WH-SH-01",
                "sku": "SKU-10001",
                "qty": 1,
            }
        ),
        "bad_timestamp",
    ),
    (
        orjson.dumps(
            {
                "event_id": "h6",
                "event_type": "receipt",
                "ts": "9999-12-31T00:00:00Z",
                "location_id": "WH-SH-01",
                "sku": "SKU-10001",
                "qty": 1,
            }
        ),
        "bad_timestamp",
    ),
    (
        orjson.dumps(
            {
                "event_id": "h7",
                "event_type": "receipt",
                "ts": VALID_TS,
                "location_id": "WH-SH-01",
                "qty": 1,
            }
        ),
        "missing_field",
    ),
    (
        orjson.dumps(
            {
                "event_id": "h8",
                "event_type": "receipt",
                "ts": VALID_TS,
                "location_id": "WH-SH-01",
                "sku": "NOPE",
                "qty": 1,
            }
        ),
        "unknown_sku",
    ),
    (
        orjson.dumps(
            {
                "event_id": "h9",
                "event_type": "receipt",
                "ts": VALID_TS,
                "location_id": "MOON-01",
                "sku": "SKU-10001",
                "qty": 1,
            }
        ),
        "unknown_location",
    ),
    (
        orjson.dumps({"event_id": "h10", "event_type": "teleport", "ts": VALID_TS}),
        "unknown_event_type",
    ),
]


def test_hostile_messages_are_dead_lettered_and_valid_ones_applied(
    omni_config: Config, tmp_path: Path
) -> None:
    config = omni_config.with_overrides(pii={"key": "test-secret"})
    events = list(TrafficModel(load_reference(config), seed=29).events(8_000))
    producer = make_producer(config, **{"message.max.bytes": "2000000"})
    rnd = random.Random(5)
    hostile_sent: collections.Counter[str] = collections.Counter()
    for index, event in enumerate(events):
        producer.produce(config.topic(event.topic), key=event.key, value=event.value)
        if index % 40 == 0:
            for topic in ("clickstream", "pos.sales", "wms.movements"):
                payload, reason = rnd.choice(HOSTILE)
                if topic != "wms.movements" and reason not in {"malformed_json", "too_large"}:
                    reason = "unknown_event_type"  # movement-shaped events on other topics
                producer.produce(config.topic(topic), key=b"hostile", value=payload)
                hostile_sent[f"{topic}:{reason}"] += 1
                producer.poll(0)
    assert producer.flush(60) == 0

    for flow in ("stock_pool", "identity_stitch"):
        path = tmp_path / f"{flow}.yaml"
        dump_config(config, path)
        with (tmp_path / f"{flow}.log").open("wb") as log:
            code = start_flow(flow, path, until_idle=True, log=log).wait(timeout=600)
        assert code == 0, (tmp_path / f"{flow}.log").read_text(errors="replace")[-3000:]

    letters = [json.loads(m.value()) for m in read_topic(config, "deadletter", timeout_s=60)]
    hostile_letters = collections.Counter(
        f"{letter['topic'].removeprefix(config.kafka.topic_prefix)}:{letter['reason']}"
        for letter in letters
        if letter["flow"] == "stock_pool"
    )
    assert hostile_letters == hostile_sent  # the generated traffic itself is all valid
    identity_letters = sum(1 for letter in letters if letter["flow"] == "identity_stitch")
    assert identity_letters == sum(
        n for key, n in hostile_sent.items() if not key.startswith("wms.movements:")
    )
    assert all(len(letter["raw"]) <= 64 * 1024 for letter in letters)

    expected = expected_stock(events)
    client = redis.Redis.from_url(config.redis.url)
    try:
        for key, figures in expected.items():
            row = client.hgetall(f"{config.redis.key_prefix}stock:{key}")
            assert redis_figures(row) == figures, key
    finally:
        client.close()
