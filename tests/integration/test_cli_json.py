"""``--json`` of ``stock``, ``whois`` and ``attribution report`` against the session's Redis:
hashes and keys are written here straight into Redis (the layout the flows keep), the real
command prints them, and its JSON is parsed and compared with what Redis holds and what the
sample reference files say, read with ``csv``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from base.config import SAMPLE_DATA_DIR, Config, dump_config

pytestmark = pytest.mark.integration


def run_json(args: list[str], config: Config, tmp_path: Path) -> tuple[int, Any]:
    path = tmp_path / "omni.yaml"
    dump_config(config, path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    result = subprocess.run(
        [sys.executable, "-m", "omnistream.cli", *args, "--json", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


def decoded(client: redis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(key).items()}


def same_figures(printed: dict[str, Any], stored: dict[str, str]) -> None:
    """Every stored field printed, numbers as JSON numbers of the same value."""
    assert set(printed) == set(stored)
    for field, text in stored.items():
        if field == "updated_at":
            assert printed[field] == text
        else:
            assert isinstance(printed[field], int | float) and printed[field] == float(text)


def test_stock_json(omni_config: Config, redis_client: redis.Redis, tmp_path: Path) -> None:
    p = omni_config.redis.key_prefix
    with (SAMPLE_DATA_DIR / "locations.csv").open() as f:
        locations = {row["location_id"]: row for row in csv.DictReader(f)}
    with (SAMPLE_DATA_DIR / "products.csv").open() as f:
        product = next(row for row in csv.DictReader(f) if row["sku"] == "SKU-10001")
    stored = {
        "WH-SH-01": {"on_hand": "40", "reserved": "3", "available": "37", "sold_1h": "2",
                     "days_of_cover": "4.5", "updated_at": "2026-11-02T08:00:00.000Z"},
        "FW-HZ-01": {"on_hand": "5", "reserved": "0", "available": "5",
                     "updated_at": "2026-11-02T08:01:00.000Z"},
    }  # fmt: skip
    for location_id, fields in stored.items():
        redis_client.hset(f"{p}stock:SKU-10001:{location_id}", mapping=fields)
    redis_client.hset(f"{p}stock_total:SKU-10001", mapping={"on_hand": "45", "locations": "2"})
    redis_client.hset(f"{p}stock_region:SKU-10001:SH", mapping={"on_hand": "40"})

    code, printed = run_json(["stock", "SKU-10001"], omni_config, tmp_path)
    assert code == 0
    assert set(printed) == {
        "sku", "category", "reorder_point", "safety_stock", "locations", "regions", "total"
    }  # fmt: skip
    assert (printed["sku"], printed["category"]) == ("SKU-10001", product["category"])
    assert printed["reorder_point"] == int(product["reorder_point"])
    assert printed["safety_stock"] == int(product["safety_stock"])
    assert [row["location_id"] for row in printed["locations"]] == sorted(stored)
    for row in printed["locations"]:
        location = locations[row["location_id"]]
        assert (row["type"], row["region"]) == (location["type"], location["region"])
        figures = {k: v for k, v in row.items() if k not in {"location_id", "type", "region"}}
        same_figures(figures, decoded(redis_client, f"{p}stock:SKU-10001:{row['location_id']}"))
    assert list(printed["regions"]) == ["SH"]
    same_figures(printed["regions"]["SH"], decoded(redis_client, f"{p}stock_region:SKU-10001:SH"))
    same_figures(printed["total"], decoded(redis_client, f"{p}stock_total:SKU-10001"))

    code, printed = run_json(["stock", "SKU-10002"], omni_config, tmp_path)
    assert code == 0
    assert (printed["locations"], printed["regions"], printed["total"]) == ([], {}, None)


def test_whois_json(omni_config: Config, redis_client: redis.Redis, tmp_path: Path) -> None:
    p = omni_config.redis.key_prefix
    identifiers = ["user:u-77", "member:m-9", "anon:d-2", "anon:d-1", "order:o-5"]
    for ident in identifiers:
        redis_client.set(f"{p}id:{ident}", "c-abc")
    redis_client.hset(
        f"{p}cust:c-abc",
        mapping={"first_seen": 1_793_000_000_000, "ids": json.dumps(identifiers), "v": 3},
    )
    code, printed = run_json(["whois", "anon", "d-1"], omni_config, tmp_path)
    assert code == 0
    record = decoded(redis_client, f"{p}cust:c-abc")
    assert printed == {
        "identifier": "anon:d-1",
        "customer_id": redis_client.get(f"{p}id:anon:d-1").decode(),
        "first_seen_ms": int(record["first_seen"]),
        "first_seen": datetime.fromtimestamp(int(record["first_seen"]) / 1000, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        "identifiers": {
            "user": ["u-77"], "member": ["m-9"], "phone": [], "email": [], "order": ["o-5"],
            "anon": ["d-1", "d-2"],
        },
    }  # fmt: skip
    code, printed = run_json(["whois", "user", "nobody"], omni_config, tmp_path)
    assert code == 1
    assert printed == {"identifier": "user:nobody", "customer_id": None}


def test_attribution_report_json(
    omni_config: Config, redis_client: redis.Redis, tmp_path: Path
) -> None:
    p = omni_config.redis.key_prefix
    redis_client.hset(
        f"{p}attr:last_touch",
        mapping={"app|revenue": "120.5", "app|conversions": "2", "sms|revenue": "30",
                 "sms|conversions": "1"},
    )  # fmt: skip
    redis_client.hset(f"{p}attr:linear", mapping={"web|revenue": "10.25", "web|conversions": "0.5"})
    code, printed = run_json(["attribution", "report"], omni_config, tmp_path)
    assert code == 0
    models = printed["models"]
    assert list(models) == [
        "first_touch", "last_touch", "linear", "time_decay", "position_based", "markov"
    ]  # fmt: skip
    for model, table in models.items():
        stored = decoded(redis_client, f"{p}attr:{model}")
        expected = {}
        for field, value in stored.items():
            channel, figure = field.rsplit("|", 1)
            expected.setdefault(channel, {})[figure] = float(value)
        assert table["channels"] == expected
        assert table["revenue"] == sum(c["revenue"] for c in expected.values())
        assert table["conversions"] == sum(c["conversions"] for c in expected.values())
    assert models["last_touch"]["revenue"] == 150.5
    assert models["first_touch"] == {"channels": {}, "revenue": 0, "conversions": 0}
