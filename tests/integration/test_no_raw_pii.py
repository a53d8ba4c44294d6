"""A full scenario through all four flows leaves no raw phone number or e-mail anywhere: not in
Redis, not on any topic (the dead-letter topic included), not in the flows' logs."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
import redis

from base.config import Config, dump_config
from base.topics import ALL_TOPICS
from connectors.generator import TrafficModel, produce
from connectors.reference_files import load_reference
from omnistream.processes import start_flow
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
PHONE_FIELDS = ("phone", "email")


def raw_pii(values: list[bytes]) -> set[bytes]:
    """Every phone number (as written and as bare digits) and e-mail in the input."""
    found: set[bytes] = set()
    for value in values:
        found |= {m.group(0).lower() for m in EMAIL.finditer(value)}
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        for field in PHONE_FIELDS:
            text = event.get(field)
            if isinstance(text, str) and text.strip():
                found.add(text.strip().lower().encode())
                digits = re.sub(r"\D", "", text)
                if len(digits) >= 9:
                    found.add(digits[-11:].encode())  # the national number, bare
    return found


def redis_dump(config: Config) -> bytes:
    client = redis.Redis.from_url(config.redis.url)
    parts = []
    try:
        for key in client.scan_iter(match=f"{config.redis.key_prefix}*", count=1000):
            parts.append(key)
            kind = client.type(key)
            if kind == b"hash":
                parts += [b"%s=%s" % kv for kv in client.hgetall(key).items()]
            elif kind == b"string":
                parts.append(client.get(key) or b"")
            elif kind == b"set":
                parts += list(client.smembers(key))
            elif kind == b"list":
                parts += client.lrange(key, 0, -1)
            elif kind == b"zset":
                parts += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    finally:
        client.close()
    return b"\n".join(parts).lower()


def test_no_raw_pii_anywhere_after_all_four_flows(omni_config: Config, tmp_path: Path) -> None:
    config = omni_config.with_overrides(pii={"key": "pii-scan-secret"})
    events = list(TrafficModel(load_reference(config), seed=41, bad_ratio=0.03).events(15_000))
    needles = raw_pii([e.value for e in events])
    assert len(needles) > 100  # the stream does carry phone numbers and e-mails
    produce(config, events, progress=False)
    path = tmp_path / "config.yaml"
    dump_config(config, path)
    for group in (("stock_pool", "identity_stitch"), ("rule_triggers",), ("attribution",)):
        processes = []
        for name in group:
            with (tmp_path / f"{name}.log").open("wb") as log:
                processes.append(start_flow(name, path, until_idle=True, log=log))
        assert [p.wait(timeout=300) for p in processes] == [0] * len(group)

    # The scan finds them where they are: in the raw input.
    clickstream = b"\n".join(m.value() or b"" for m in read_topic(config, "clickstream", 60))
    assert sum(needle in clickstream.lower() for needle in needles) > 50

    haystacks = {"redis": redis_dump(config)}
    for name in ALL_TOPICS:
        if name in ("clickstream", "pos.sales", "wms.movements"):
            continue  # the inputs themselves carry raw PII by design
        messages = read_topic(config, name, timeout_s=60)
        haystacks[name] = b"\n".join(
            (m.key() or b"") + b" " + (m.value() or b"") for m in messages
        ).lower()
    for log in tmp_path.glob("*.log"):
        haystacks[log.name] = log.read_bytes().lower()
    assert len(haystacks["deadletter"]) > 0 and len(haystacks["events.resolved"]) > 0
    leaks = {
        (where, needle.decode(errors="replace"))
        for where, text in haystacks.items()
        for needle in needles
        if needle in text
    }
    assert not leaks, sorted(leaks)[:20]
