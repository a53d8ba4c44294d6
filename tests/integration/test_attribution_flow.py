"""attribution end to end on the real broker and Redis, behind identity_stitch (and
rule_triggers for coupon touches).

- A scripted customer: campaign touches on a new phone before logging in, the login merges
  the phone into the account, the order afterwards is credited to those touches; its store
  pickup is not a second conversion; a touch older than the lookback is not credited; a
  walk-in sale is `direct`.
- Generated traffic: every conversion credited once, and the totals in Redis equal, to the
  cent, an independent computation from the paths published on ``attribution.credits``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from base.config import Config, dump_config
from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import make_producer
from connectors.reference_files import load_reference
from domain.attribution import MODELS
from omnistream.processes import start_flow
from state.attribution_store import RedisAttributionStore
from tests.kafka_helpers import read_json

pytestmark = pytest.mark.integration

MIN = 60_000
DAY = 86_400_000
T0 = 1_793_500_000_000


def run(config_path: Path, tmp_path: Path, *names: str) -> None:
    processes = []
    for name in names:
        with (tmp_path / f"{name}.log").open("ab") as log:
            processes.append((name, start_flow(name, config_path, until_idle=True, log=log)))
    for name, process in processes:
        code = process.wait(timeout=300)
        assert code == 0, (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]


def click(n: int, device: str, event_type: str, ts: int, **fields: Any) -> tuple[str, dict]:
    event = {"event_id": f"e{n}", "event_type": event_type, "ts": ts, "anonymous_id": device}
    return "clickstream", {**event, "channel": "app", **fields}


def sale(n: int, ts: int, total: float, **fields: Any) -> tuple[str, dict]:
    line = {"sku": "SKU-10009", "qty": 1, "unit_price": total}
    event = {"event_id": f"p{n}", "event_type": "sale", "ts": ts, "store_id": "ST-SH-01"}
    return "pos.sales", {**event, "receipt_id": f"r{n}", "lines": [line], "total": total, **fields}


def campaign(source: str) -> dict[str, str]:
    return {"source": source, "medium": "cpc", "campaign": f"{source}-nov"}


ORDER_LINES = [{"sku": "SKU-10009", "qty": 1, "unit_price": 100.0}]
PICKUP = {"type": "store_pickup", "location_id": "ST-SH-01"}
SCRIPT = [
    # The account exists since a week on an old device.
    click(1, "old-phone", "login", T0 - 7 * DAY, user_id="u-ann"),
    # A new phone, not logged in: two marketing touches.
    click(2, "new-phone", "page_view", T0 - 2 * DAY, campaign=campaign("wechat")),
    click(3, "new-phone", "ad_click", T0 - DAY, campaign=campaign("baidu")),
    # Logging in merges the new phone's customer into the account …
    click(4, "new-phone", "login", T0, user_id="u-ann"),
    # … and the order afterwards is credited to the phone's touches.
    click(
        5,
        "new-phone",
        "order_placed",
        T0 + 30 * MIN,
        user_id="u-ann",
        order_id="o-1",
        lines=ORDER_LINES,
        total=100.0,
        fulfillment=PICKUP,
    ),
    # Picked up in store a day later with the loyalty card: the same conversion.
    sale(6, T0 + DAY, 100.0, member_code="m-ann", order_id="o-1"),
    # Bob clicked an e-mail 40 days ago (beyond the 30-day lookback), then orders.
    click(7, "bob-phone", "page_view", T0 - 40 * DAY, user_id="u-bob", campaign=campaign("email")),
    click(
        8,
        "bob-phone",
        "order_placed",
        T0,
        user_id="u-bob",
        order_id="o-2",
        lines=ORDER_LINES,
        total=100.0,
        fulfillment=PICKUP,
    ),
    # A walk-in sale: nobody known, no touch.
    sale(9, T0, 42.5),
]


@pytest.fixture
def attr_config(omni_config: Config, tmp_path: Path) -> tuple[Config, Path]:
    config = omni_config.with_overrides(pii={"key": "attribution-secret"})
    path = tmp_path / "config.yaml"
    dump_config(config, path)
    return config, path


def test_touches_before_a_merge_are_credited_once_within_the_lookback(
    attr_config: tuple[Config, Path], tmp_path: Path
) -> None:
    config, config_path = attr_config
    producer = make_producer(config)
    for topic, event in SCRIPT:
        key = event.get("anonymous_id") or event["store_id"]
        producer.produce(config.topic(topic), key=key.encode(), value=orjson.dumps(event))
    assert producer.flush(30) == 0
    run(config_path, tmp_path, "identity_stitch")
    run(config_path, tmp_path, "attribution")

    published = {
        c["data"]["conversion_id"]: c["data"] for c in read_json(config, "attribution.credits")
    }
    assert set(published) == {"order:o-1", "order:o-2", "receipt:ST-SH-01:r9"}  # pickup: no 2nd
    ann = published["order:o-1"]
    assert [t["channel"] for t in ann["touches"]] == ["wechat", "baidu"]
    assert ann["revenue"] == 100.0
    assert ann["credits"]["first_touch"] == {"wechat": 100.0}
    assert ann["credits"]["last_touch"] == {"baidu": 100.0}
    assert ann["credits"]["linear"] == {"wechat": 50.0, "baidu": 50.0}
    assert sum(ann["credits"]["markov"].values()) == pytest.approx(100.0)
    assert published["order:o-2"]["touches"] == []  # the e-mail is beyond the lookback
    for model in MODELS:
        assert published["order:o-2"]["credits"][model] == {"direct": 100.0}
        assert published["receipt:ST-SH-01:r9"]["credits"][model] == {"direct": 42.5}

    store = RedisAttributionStore(redis.Redis.from_url(config.redis.url), config.redis.key_prefix)
    totals = store.read_totals(MODELS)
    store.close()
    assert totals["linear"]["wechat"] == (50.0, 0.5)
    assert totals["first_touch"]["direct"] == (142.5, 2.0)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def reference_totals(published: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The heuristic models computed independently from the published paths."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for data in published:
        revenue, touches = data["revenue"], data["touches"]
        if not touches:
            for model in ("first_touch", "last_touch", "linear", "time_decay", "position_based"):
                totals[model]["direct"] += revenue
            continue
        channels = [t["channel"] for t in touches]
        n = len(channels)
        totals["first_touch"][channels[0]] += revenue
        totals["last_touch"][channels[-1]] += revenue
        for channel in channels:
            totals["linear"][channel] += revenue / n
        at = ms(data["event_time"])
        ages = [(at - ms(t["ts"])) / (7 * DAY) for t in touches]
        weights = [2.0**-age for age in ages]
        for channel, weight in zip(channels, weights, strict=True):
            totals["time_decay"][channel] += revenue * weight / sum(weights)
        if n == 1:
            shares = [1.0]
        elif n == 2:
            shares = [0.5, 0.5]
        else:
            shares = [0.4] + [0.2 / (n - 2)] * (n - 2) + [0.4]
        for channel, share in zip(channels, shares, strict=True):
            totals["position_based"][channel] += revenue * share
    return totals


def test_generated_traffic_totals_equal_an_independent_computation(
    attr_config: tuple[Config, Path], tmp_path: Path
) -> None:
    config, config_path = attr_config
    model = TrafficModel(load_reference(config), seed=31, customers=3000)
    produce(config, model.events(20_000), progress=False)
    run(config_path, tmp_path, "identity_stitch")
    run(config_path, tmp_path, "rule_triggers")  # coupons sent are touches too
    run(config_path, tmp_path, "attribution")

    published = [c["data"] for c in read_json(config, "attribution.credits", 30)]
    ids = Counter(c["conversion_id"] for c in published)
    assert ids and max(ids.values()) == 1  # every conversion credited once
    resolved = read_json(config, "events.resolved", 30)
    conversions = {
        f"order:{e['order_id']}"
        if e.get("order_id")
        else f"receipt:{e['store_id']}:{e['receipt_id']}"
        for e in resolved
        if e["event_type"] in ("order_placed", "sale")
    }
    assert set(ids) == conversions
    touched = [c for c in published if c["touches"]]
    channels = {t["channel"] for c in touched for t in c["touches"]}
    assert len(touched) > 100 and any(ch.startswith("coupon:") for ch in channels)

    store = RedisAttributionStore(redis.Redis.from_url(config.redis.url), config.redis.key_prefix)
    totals = store.read_totals(MODELS)
    store.close()
    expected = reference_totals(published)
    worst = 0.0
    for model_name, table in expected.items():
        assert set(totals[model_name]) == set(table)
        for channel, revenue in table.items():
            worst = max(worst, abs(totals[model_name][channel][0] - revenue))
    print(f"\n{len(published)} conversions, {len(touched)} with touches; max deviation {worst:.2e}")
    assert worst < 0.005
    revenue = sum(c["revenue"] for c in published)
    assert sum(r for r, _ in totals["markov"].values()) == pytest.approx(revenue, abs=0.01)
