"""``omnistream serve`` on a real Redis: what it answers equals what the data says.

Stock hashes are written the way the stock flow writes them (spec: every figure as a string,
``available_to_sell = max(0, available − safety_stock)``), on reference data made for the
ranking's corners (two stores at one spot, a warehouse without coordinates, a store that
ships, a store that does neither). Every availability answer is checked against an
independent filter + haversine + sort written here. The service runs as operators run it
(``omnistream serve`` as a process) except where the test must look inside it (open console
streams): there it runs in a thread of the test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from base.config import Config
from connectors.reference_files import load_reference
from domain.identity import hash_pii
from domain.reference import Location, ReferenceData
from omnistream.embedded import EmbeddedStack, free_port, port_accepts
from omnistream.serve import create_app
from state.redis_io import connect_async
from tests.fail_fast_helpers import NOISE, Run, start
from tests.integration.test_redis_outage import start_redis

pytestmark = pytest.mark.integration

EARTH_RADIUS_KM = 6371.0088

LOCATIONS = """\
location_id,type,region,name,lat,lon,ships_online,pickup
WH-A,warehouse,SH,Jiading DC,31.3747,121.2655,,
WH-B,warehouse,HZ,Xiaoshan DC,30.1845,120.2646,,
FW-C,forward_warehouse,SH,Pudong FDC (no coordinates),,,,
ST-1,store,SH,Jing'an,31.2235,121.4456,,
ST-2,store,SH,Jing'an annex,31.2235,121.4456,,
ST-3,store,HZ,West Lake,30.2500,120.1650,true,
ST-4,store,SZ,Guanqian (no pickup),31.3106,120.6238,,false
ST-5,store,SZ,Jinji Lake,31.3201,120.6969,,
"""
PRODUCTS = """\
sku,category,price,reorder_point,lead_time_days,shelf_life_days,safety_stock
SKU-A,grocery,9.90,5,2,,2
SKU-B,grocery,4.50,5,2,,0
SKU-C,dairy,6.90,5,1,10,1
SKU-D,dairy,3.20,5,1,10,0
"""
#: Customer coordinates asked about: central Shanghai, Hangzhou, and none.
ORIGINS: list[tuple[float, float] | None] = [(31.2304, 121.4737), (30.2741, 120.1551), None]


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def expected_options(
    reference: ReferenceData,
    ats: dict[str, int],
    qty: int,
    origin: tuple[float, float] | None,
    region: str | None,
    mode: str | None,
) -> list[dict[str, Any]]:
    """CONTRACT §10/§13 written out again: the locations of the mode that cover qty; nearest
    first (0.1 km), those without coordinates last; without coordinates the region's first;
    ties by the most units to spare, then location_id."""

    def admitted(loc: Location) -> bool:
        if mode == "pickup":
            return loc.offers_pickup
        if mode == "delivery":
            return loc.ships
        return loc.offers_pickup or loc.ships

    rows = []
    for loc in reference.locations.values():
        units = ats.get(loc.location_id, 0)
        if not admitted(loc) or units < qty:
            continue
        distance = None
        if origin is not None and loc.lat is not None and loc.lon is not None:
            distance = round(haversine_km(origin[0], origin[1], loc.lat, loc.lon), 1)
        if origin is not None:
            rank: tuple[Any, ...] = (distance is None, distance or 0.0)
        else:
            rank = (loc.region != region if region else True, 0.0)
        rows.append(
            (
                (*rank, -(units - qty), loc.location_id),
                {
                    "location_id": loc.location_id,
                    "type": loc.type,
                    "region": loc.region,
                    "available_to_sell": units,
                    "distance_km": distance,
                    "pickup": loc.offers_pickup,
                    "ships_online": loc.ships,
                },
            )
        )
    return [row for _, row in sorted(rows, key=lambda r: r[0])]


# -- set-up ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    config: Config
    reference: ReferenceData
    url: str
    run: Run


def service_config(stack: EmbeddedStack, directory: Path) -> Config:
    """The session's Redis under a key prefix of its own, on the reference data above."""
    (directory / "locations.csv").write_text(LOCATIONS, encoding="utf-8")
    (directory / "products.csv").write_text(PRODUCTS, encoding="utf-8")
    tag = uuid.uuid4().hex[:10]
    return stack.config().with_overrides(
        redis={"key_prefix": f"omni{tag}:"},
        pii={"key": f"test-secret-{tag}"},
        reference={
            "locations": str(directory / "locations.csv"),
            "products": str(directory / "products.csv"),
        },
        service={"console_poll_seconds": 0.1},
    )


@contextmanager
def served(config: Config, directory: Path, name: str = "serve") -> Iterator[Service]:
    """``omnistream serve --port P`` as a process; stopped with SIGTERM, which must end it
    with exit 0 and nothing alarming in its output."""
    port = free_port()
    run = start(["serve", "--port", str(port)], config, directory, name)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not port_accepts(port):
        if run.process.poll() is not None or time.monotonic() > deadline:
            run.kill()
            pytest.fail(f"omnistream serve did not start:\n{run.output()}")
        time.sleep(0.05)
    try:
        yield Service(config, load_reference(config), url, run)
    finally:
        stopping = time.monotonic()
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
        code, _ = run.wait(20)  # None: still running after 20 s, then killed
        stopped_s = time.monotonic() - stopping
    output = run.output()
    assert code == 0, output
    # How long the stop took, not how long the service ran (a long test is no failure).
    assert stopped_s < 20, output
    assert not [noise for noise in NOISE if noise in output], output


@pytest.fixture(scope="module")
def service(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("service")
    with served(service_config(stack, directory), directory) as running:
        yield running


@pytest.fixture
def store(service: Service) -> Iterator[redis.Redis]:
    """A client on the service's Redis, to write what the flows would have written."""
    client = redis.Redis.from_url(service.config.redis.url)
    try:
        yield client
    finally:
        client.close()


class ThreadedService:
    """The app on uvicorn in a thread of the test, so the test can look inside it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.reference = load_reference(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app: Any = None
        self.server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=self._run, name="service", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        client = connect_async(self.config)
        try:
            self.app = create_app(self.config, self.reference, client, stopping=self.stopping)
            server = uvicorn.Server(
                uvicorn.Config(
                    self.app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off"
                )
            )
            self.server = server
            await server.serve()
        finally:
            await client.aclose()

    def stopping(self) -> bool:
        return self.server is not None and self.server.should_exit

    def __enter__(self) -> ThreadedService:
        self._thread.start()
        deadline = time.monotonic() + 20
        while self.server is None or not self.server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "no service"
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 15.0) -> float:
        """Stop the server; the seconds it took (console streams must not hold it up)."""
        started = time.monotonic()
        if self.server is not None:
            self.server.should_exit = True
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the service did not stop"
        return time.monotonic() - started

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()


def sse_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, decoded data) of a text/event-stream, comments and ``retry`` skipped."""
    event: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event or "message", json.loads("\n".join(data))
            event, data = None, []
        elif line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())


def task(store_id: str, order_id: str, **fields: Any) -> dict[str, Any]:
    """A ``store.tasks`` record as stock_pool stores it in ``<p>tasks:<store_id>``."""
    record: dict[str, Any] = {
        "task_id": f"pickup:{order_id}",
        "kind": "pickup_prep",
        "store_id": store_id,
        "order_id": order_id,
        "customer_id": None,
        "lines": [{"sku": "SKU-A", "qty": 2}],
        "pickup_code": "042137",
        "due_at": "2099-01-01T12:00:00.000Z",
        "alternative_location_id": None,
        "recent_views": [],
        "reason": "the store covers every line",
        "evidence": [f"ev-{order_id}"],
        "event_time": "2026-11-22T10:00:00.000Z",
        "fired_at": "2026-11-22T10:00:00.150Z",
        "status": "open",
        "done_at": None,
        "updated_at_ms": 1795400400150,
    }
    record.update(fields)
    return record


def put_task(client: redis.Redis, config: Config, record: dict[str, Any]) -> None:
    key = f"{config.redis.key_prefix}tasks:{record['store_id']}"
    client.hset(key, record["task_id"], json.dumps(record))


def write_position(
    client: redis.Redis,
    config: Config,
    sku: str,
    location: Location,
    on_hand: int,
    reserved: int,
    safety_stock: int,
    in_transit: int = 0,
    legacy: bool = False,
) -> dict[str, Any]:
    """A stock hash as the stock flow writes it; ``legacy``: as written before §9's fields."""
    available = on_hand - reserved
    fields: dict[str, Any] = {
        "on_hand": on_hand,
        "reserved": reserved,
        "available": available,
        "sold_1h": 1,
        "sold_24h": 4,
        "days_of_cover": round(available / 4, 2),
        "updated_at": "2026-11-22T02:15:30.120Z",
        "updated_at_ms": 1795400130120,
        "region": location.region,
        "location_type": location.type,
        "cause": f"ev-{sku}-{location.location_id}",
    }
    if not legacy:
        fields |= {
            "safety_stock": safety_stock,
            "in_transit": in_transit,
            "available_to_sell": max(0, available - safety_stock),
        }
    client.hset(f"{config.redis.key_prefix}stock:{sku}:{location.location_id}", mapping=fields)
    return fields


# -- availability and stock ------------------------------------------------------------------


def stock_scenario(
    client: redis.Redis, config: Config, reference: ReferenceData, sku: str, seed: int
) -> dict[str, int]:
    """Random positions of ``sku``, ST-5 never moved, WH-B in the pre-§9 layout, ST-1 and
    ST-2 (one spot) on a fixed tie; returns the ATS each location must read as."""
    rng = random.Random(seed)
    safety = reference.products[sku].safety_stock
    ats: dict[str, int] = {}
    for location_id, location in reference.locations.items():
        if location_id == "ST-5":
            ats[location_id] = 0
            continue
        on_hand, reserved = rng.randint(0, 14), rng.randint(0, 3)
        if location_id == "ST-1":
            on_hand, reserved = 7 + safety, 0
        if location_id == "ST-2":
            on_hand, reserved = (10 if sku == "SKU-A" else 7) + safety, 0
        written = write_position(
            client,
            config,
            sku,
            location,
            on_hand,
            reserved,
            safety,
            in_transit=rng.randint(0, 4),
            legacy=location_id == "WH-B",
        )
        ats[location_id] = max(0, int(written["available"]) - safety)
    return ats


def test_availability_answers_equal_an_independent_ranking(
    service: Service, store: redis.Redis
) -> None:
    reference = service.reference
    answered = 0
    shapes = set()
    with httpx.Client(base_url=service.url, timeout=10) as http:
        for sku, seed in (("SKU-A", 1), ("SKU-B", 2)):
            ats = stock_scenario(store, service.config, reference, sku, seed)
            for qty, origin, region, mode in itertools.product(
                (1, 2, 5, 7, 9, 30), ORIGINS, (None, "SH", "HZ"), (None, "pickup", "delivery")
            ):
                params: dict[str, Any] = {"sku": sku, "qty": qty}
                if origin is not None:
                    params |= {"lat": origin[0], "lon": origin[1]}
                if region is not None:
                    params["region"] = region
                if mode is not None:
                    params["mode"] = mode
                response = http.get("/v1/availability", params=params)
                assert response.status_code == 200, (params, response.text)
                expected = expected_options(reference, ats, qty, origin, region, mode)
                assert response.json() == {"sku": sku, "qty": qty, "options": expected}, params
                answered += 1
                shapes.add(min(len(expected), 3))
        # the tie at one spot: more units to spare first (SKU-A), then location_id (SKU-B)
        for sku, first in (("SKU-A", "ST-2"), ("SKU-B", "ST-1")):
            params = {"sku": sku, "qty": 1, "lat": 31.2235, "lon": 121.4456, "mode": "pickup"}
            options = http.get("/v1/availability", params=params).json()["options"]
            assert [o["location_id"] for o in options[:2]] == [
                first,
                ({"ST-1", "ST-2"} - {first}).pop(),
            ]
            assert options[0]["distance_km"] == options[1]["distance_km"] == 0.0
    assert answered == 2 * 6 * 3 * 3 * 3
    assert shapes == {0, 1, 2, 3}, "the scenario must give empty, single and longer answers"


def test_stock_lists_every_location_with_the_flow_figures(
    service: Service, store: redis.Redis
) -> None:
    reference = service.reference
    safety = reference.products["SKU-C"].safety_stock
    written = {
        loc_id: write_position(
            store,
            service.config,
            "SKU-C",
            loc,
            5 + i,
            i % 3,
            safety,
            in_transit=i,
            legacy=loc_id == "WH-B",
        )
        for i, (loc_id, loc) in enumerate(sorted(reference.locations.items()))
        if loc_id != "ST-5"
    }
    body = httpx.get(f"{service.url}/v1/stock/SKU-C", timeout=10).json()
    assert [p["location_id"] for p in body["positions"]] == sorted(reference.locations)
    for position in body["positions"]:
        loc = reference.locations[position["location_id"]]
        assert (position["type"], position["region"]) == (loc.type, loc.region)
        fields = written.get(loc.location_id)
        if fields is None:  # never moved: zeros, no time
            assert position["on_hand"] == position["available_to_sell"] == 0
            assert position["updated_at"] is None and position["days_of_cover"] is None
            assert position["safety_stock"] == safety
            continue
        available = int(fields["on_hand"]) - int(fields["reserved"])
        assert position["on_hand"] == int(fields["on_hand"])
        assert position["reserved"] == int(fields["reserved"])
        assert position["available"] == available
        assert position["safety_stock"] == safety
        assert position["available_to_sell"] == max(0, available - safety)
        assert position["in_transit"] == int(fields.get("in_transit", 0))
        assert (position["sold_1h"], position["sold_24h"]) == (1, 4)
        assert position["days_of_cover"] == pytest.approx(fields["days_of_cover"])
        assert position["updated_at"] == fields["updated_at"]
    total = body["total"]
    for figure in ("on_hand", "reserved", "available", "available_to_sell", "in_transit"):
        assert total[figure] == sum(p[figure] for p in body["positions"]), figure
    assert total["in_transit"] == sum(int(f.get("in_transit", 0)) for f in written.values())

    missing = httpx.get(f"{service.url}/v1/stock/SKU-NONE", timeout=10)
    assert missing.status_code == 404 and missing.json()["parameter"] == "sku"


# -- customers -----------------------------------------------------------------------------


def test_customers_by_raw_or_hashed_identifiers(service: Service, store: redis.Redis) -> None:
    prefix, key = service.config.redis.key_prefix, service.config.pii.key
    phone_hash = hash_pii(key, "8613800138000")  # CONTRACT §4: HMAC of the normalised value
    email_hash = hash_pii(key, "ann@example.com")
    store.set(f"{prefix}id:phone:{phone_hash}", "c-0042")
    store.set(f"{prefix}id:email:{email_hash}", "c-0042")
    store.set(f"{prefix}id:user:u-77", "c-0077")  # a customer without a profile yet
    profile = {"segment": "loyal", "purchases": "12", "top_categories": '["dairy","snacks"]'}
    store.hset(f"{prefix}profile:c-0042", mapping=profile)

    with httpx.Client(base_url=service.url, timeout=10) as http:
        for path in (
            "/v1/customers/phone/138-0013-8000",
            "/v1/customers/phone/+86 138 0013 8000",
            f"/v1/customers/phone/{phone_hash}",
            "/v1/customers/email/  Ann@Example.COM ",
        ):
            response = http.get(path)
            assert response.status_code == 200, (path, response.text)
            body = response.json()
            assert body["customer_id"] == "c-0042" and body["profile"] == profile
            assert body["identifier"] in {f"phone:{phone_hash}", f"email:{email_hash}"}
        assert http.get("/v1/customers/user/u-77").json() == {
            "customer_id": "c-0077",
            "identifier": "user:u-77",
            "profile": {},
        }
        for path in ("/v1/customers/user/u-unknown", "/v1/customers/phone/13900000001"):
            response = http.get(path)
            assert response.status_code == 404 and response.json()["parameter"] == "value"
            assert "13900000001" not in response.text  # raw PII is never echoed


# -- operations ----------------------------------------------------------------------------


def http_counts(url: str) -> tuple[dict[tuple[str, str], float], dict[str, float], set[str]]:
    """Requests by (route, status), histogram counts by route, and every metric family."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    requests: dict[tuple[str, str], float] = {}
    timings: dict[str, float] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            if sample.name == "omnistream_http_requests_total":
                requests[(sample.labels["route"], sample.labels["status"])] = sample.value
            if sample.name == "omnistream_http_request_seconds_count":
                timings[sample.labels["route"]] = sample.value
    return requests, timings, families


def test_metrics_count_requests_by_route_template(service: Service) -> None:
    before, timings_before, _ = http_counts(service.url)
    with httpx.Client(base_url=service.url, timeout=10) as http:
        for i in range(7):
            assert http.get("/v1/availability", params={"sku": "SKU-D", "qty": 1 + i}).is_success
        for sku in ("SKU-X1", "SKU-X2", "SKU-X3"):
            assert http.get(f"/v1/stock/{sku}").status_code == 404
        assert http.get("/v1/availability", params={"sku": "SKU-D", "qty": 0}).status_code == 400
        assert http.get("/not/a/route").status_code == 404
    after, timings_after, families = http_counts(service.url)

    def delta(route: str, status: str) -> float:
        return after.get((route, status), 0) - before.get((route, status), 0)

    assert delta("/v1/availability", "200") == 7
    assert delta("/v1/availability", "400") == 1
    assert delta("/v1/stock/{sku}", "404") == 3
    assert delta("unmatched", "404") == 1
    assert timings_after["/v1/availability"] - timings_before.get("/v1/availability", 0) == 8
    assert not [route for route, _ in after if "SKU-" in route or route.startswith("/not")]
    # the default registry: the process's own metrics are there too
    assert {"process_cpu_seconds", "python_info"} <= families


def test_readyz_follows_redis_and_sigterm_ends_open_console_streams(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    port = free_port()
    throwaway = start_redis(port, tmp_path)
    try:
        config = service_config(stack, tmp_path).with_overrides(
            redis={"url": f"redis://127.0.0.1:{port}/0"}
        )
        with (
            served(config, tmp_path, "serve-outage") as running,
            httpx.Client(base_url=running.url, timeout=10) as http,
        ):
            assert http.get("/readyz").json() == {"status": "ready"}
            throwaway.terminate()
            throwaway.wait(timeout=20)
            phone = http.get("/v1/customers/phone/13800138000")  # the one logged line
            assert phone.status_code == 503 and "13800138000" not in running.run.output()
            ready = http.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["status"] == "unavailable"
            assert f"127.0.0.1:{port}" in ready.json()["error"]
            for path in ("/v1/availability?sku=SKU-A&qty=1", "/v1/stock/SKU-A"):
                down = http.get(path)
                assert down.status_code == 503 and "\n" not in down.text
                assert set(down.json()) == {"error"} and "Redis" in down.json()["error"]
            assert http.get("/healthz").status_code == 200

            throwaway = start_redis(port, tmp_path)
            deadline = time.monotonic() + 10
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "readyz stayed 503 with Redis back"
                time.sleep(0.1)
            assert http.get("/v1/availability?sku=SKU-A&qty=1").status_code == 200

            # a console left open must not hold up the stop (served() checks exit 0)
            with http.stream("GET", "/stores/ST-1/events") as events:
                assert next(sse_events(events))[0] == "snapshot"
                running.run.process.send_signal(signal.SIGTERM)
                code, took = running.run.wait(15)
            assert code == 0 and took < 15, running.run.output()
    finally:
        throwaway.terminate()
        throwaway.wait(timeout=20)


def test_a_port_in_use_is_one_line_and_exit_1(service: Service, tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        run = start(["serve", "--port", str(port)], service.config, tmp_path, "serve-taken")
        code, _ = run.wait(30)
    finally:
        taken.close()
    assert code == 1, run.output()
    assert run.lines() == [
        f"omnistream serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    ], run.output()


def test_an_unexpected_error_is_a_500_line_with_the_traceback_in_the_log_once(
    stack: EmbeddedStack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = service_config(stack, tmp_path)
    client = redis.Redis.from_url(config.redis.url)
    client.hset(f"{config.redis.key_prefix}stock:SKU-A:ST-1", mapping={"on_hand": "lots"})
    try:
        with (
            caplog.at_level("ERROR", logger="omnistream.serve"),
            ThreadedService(config) as service,
        ):
            before, _, _ = http_counts(service.url)
            response = httpx.get(f"{service.url}/v1/stock/SKU-A", timeout=10)
            after, _, _ = http_counts(service.url)
    finally:
        client.close()
    assert response.status_code == 500
    assert response.json() == {"error": "internal error; the service log has the details"}
    assert "Traceback" not in response.text and "lots" not in response.text
    errors = [r for r in caplog.records if r.name == "omnistream.serve"]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].getMessage() == "GET /v1/stock/{sku} failed"
    key = ("/v1/stock/{sku}", "500")
    assert after.get(key, 0) - before.get(key, 0) == 1


# -- the console's event stream ------------------------------------------------------------


def test_console_events_send_snapshot_changes_and_removals_and_leave_nothing_open(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    config = service_config(stack, tmp_path)
    client = redis.Redis.from_url(config.redis.url)
    first = task("ST-1", "o-1", due_at="2026-11-22T12:00:00.000Z")
    other_store = task("ST-3", "o-9")
    put_task(client, config, first)
    put_task(client, config, other_store)
    try:
        with (
            ThreadedService(config) as service,
            httpx.Client(base_url=service.url, timeout=httpx.Timeout(10, read=5)) as http,
        ):
            with http.stream("GET", "/stores/ST-1/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                events = sse_events(response)
                assert next(events) == ("snapshot", {"store_id": "ST-1", "tasks": [first]})
                assert service.app.state.console_streams == 1

                second = task(
                    "ST-1", "o-2", kind="pickup_exception", alternative_location_id="ST-2"
                )
                put_task(client, config, second)
                assert next(events) == ("task", second)
                collected = first | {"status": "done", "done_at": "2026-11-22T11:02:00.000Z"}
                put_task(client, config, collected)
                assert next(events) == ("task", collected)
                client.hdel(f"{config.redis.key_prefix}tasks:ST-1", second["task_id"])
                assert next(events) == ("removed", {"task_id": second["task_id"]})
                put_task(client, config, task("ST-3", "o-10"))  # another store's: not sent
                client.hset(f"{config.redis.key_prefix}tasks:ST-1", "pickup:bad", "not json")
                put_task(client, config, task("ST-1", "o-3"))
                assert next(events) == ("task", task("ST-1", "o-3"))  # the bad one skipped

            for _ in range(3):  # pages opened and closed: every stream ends with its page
                with http.stream("GET", "/stores/ST-3/events") as response:
                    assert next(sse_events(response))[0] == "snapshot"
            deadline = time.monotonic() + 3
            while service.app.state.console_streams:
                assert time.monotonic() < deadline, service.app.state.console_streams
                time.sleep(0.05)

            with http.stream("GET", "/stores/ST-1/events") as response:
                assert next(sse_events(response))[0] == "snapshot"
                assert service.stop() < 5  # an open stream does not hold the stop up
            assert service.app.state.console_streams == 0
    finally:
        client.close()
