"""``omnistream serve`` without a Redis behind it: every bad parameter is a 400 naming it,
unknown skus and stores are 404s, the API is documented, and a Redis that is not there is a
503 in one JSON line (a closed port: redis-py's real connection failure), never a 500.

What the service answers from real data is in ``tests/integration/test_service.py`` (this
module has its own basename: two test modules of one basename break the collection of the
whole suite).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from base.config import Config, ConfigError
from connectors.reference_files import load_reference
from omnistream.embedded import free_port
from omnistream.serve import create_app, route_label
from state.redis_io import connect, connect_async

SKU = "SKU-10001"


@pytest.fixture(scope="module")
def config() -> Config:
    """Redis on a port nobody listens on."""
    return Config().with_overrides(
        redis={"url": f"redis://127.0.0.1:{free_port()}/0"}, pii={"key": "unit-secret"}
    )


@pytest.fixture(scope="module")
def client(config: Config) -> Iterator[TestClient]:
    redis_client = connect_async(config, socket_timeout_s=1, connect_timeout_s=1)
    app = create_app(config, load_reference(config), redis_client)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    asyncio.run(redis_client.aclose())


def availability(client: TestClient, **params: object) -> tuple[int, dict[str, object]]:
    query = {"sku": SKU, "qty": 1, **params}
    response = client.get("/v1/availability", params={k: v for k, v in query.items() if v != ...})
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"sku": ...}, "sku"),
        ({"sku": ""}, "sku"),
        ({"qty": ...}, "qty"),
        ({"qty": 0}, "qty"),
        ({"qty": -3}, "qty"),
        ({"qty": 1_000_001}, "qty"),
        ({"qty": "1.5"}, "qty"),
        ({"qty": "two"}, "qty"),
        ({"lat": 90.5, "lon": 121.0}, "lat"),
        ({"lat": -91, "lon": 121.0}, "lat"),
        ({"lat": "north", "lon": 121.0}, "lat"),
        ({"lat": "nan", "lon": 121.0}, "lat"),
        ({"lat": 31.0, "lon": 180.01}, "lon"),
        ({"lat": 31.0, "lon": "-inf"}, "lon"),
        ({"lat": 31.0}, "lon"),
        ({"lon": 121.0}, "lat"),
        ({"mode": "ship"}, "mode"),
        ({"mode": ""}, "mode"),
        ({"region": "XX"}, "region"),
    ],
)
def test_every_bad_availability_parameter_is_a_400_naming_it(
    client: TestClient, params: dict[str, object], parameter: str
) -> None:
    status, body = availability(client, **params)
    assert status == 400, body
    assert set(body) == {"error", "parameter"}
    assert body["parameter"] == parameter
    assert isinstance(body["error"], str) and parameter in body["error"]


def test_the_first_bad_parameter_is_the_one_named(client: TestClient) -> None:
    status, body = availability(client, qty=0, mode="ship")
    assert status == 400 and body["parameter"] == "qty"


def test_edges_of_the_ranges_are_valid_and_reach_redis(client: TestClient) -> None:
    """qty 1 and 10⁶, lat ±90, lon ±180 pass validation: the answer is the 503 of the
    missing Redis, not a 400."""
    for params in (
        {"qty": 1_000_000, "lat": 90, "lon": 180},
        {"qty": 1, "lat": -90, "lon": -180, "mode": "pickup", "region": "SH"},
    ):
        status, body = availability(client, **params)
        assert status == 503, body


def test_an_unknown_sku_is_a_404_naming_sku(client: TestClient) -> None:
    status, body = availability(client, sku="SKU-NOPE")
    assert status == 404 and body == {"error": "unknown sku 'SKU-NOPE'", "parameter": "sku"}
    response = client.get("/v1/stock/SKU-NOPE")
    assert response.status_code == 404 and response.json()["parameter"] == "sku"


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/v1/customers/passport/X123", "type"),
        ("/v1/customers/phone/not-a-number", "value"),
        ("/v1/customers/phone/000000", "value"),
        ("/v1/customers/email/nobody.example.com", "value"),
    ],
)
def test_bad_customer_look_ups_are_400s_naming_the_parameter(
    client: TestClient, path: str, parameter: str
) -> None:
    response = client.get(path)
    assert response.status_code == 400, response.text
    assert response.json()["parameter"] == parameter


def test_redis_unreachable_is_a_503_in_one_json_line(client: TestClient, config: Config) -> None:
    port = config.redis.url.rsplit(":", 1)[1].split("/")[0]
    for path in (
        f"/v1/availability?sku={SKU}&qty=2",
        f"/v1/stock/{SKU}",
        "/v1/customers/user/u-1",
        "/v1/customers/phone/13800138000",
    ):
        response = client.get(path)
        assert response.status_code == 503, (path, response.text)
        assert response.headers["content-type"] == "application/json"
        assert "\n" not in response.text and "Traceback" not in response.text
        assert "Redis" in response.json()["error"] and port in response.json()["error"]


def test_an_outage_is_logged_by_route_template_never_with_the_raw_phone(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client = connect_async(config, socket_timeout_s=1, connect_timeout_s=1)
    app = create_app(config, load_reference(config), redis_client)
    with caplog.at_level("WARNING", logger="omnistream.serve"), TestClient(app) as client:
        assert client.get("/v1/customers/phone/13800138000").status_code == 503
        assert client.get("/v1/customers/phone/13800138001").status_code == 503
    asyncio.run(redis_client.aclose())
    warnings = [r for r in caplog.records if r.name == "omnistream.serve"]
    assert len(warnings) == 1, "one line per outage, not one per request"
    assert "/v1/customers/{type}/{value}" in warnings[0].getMessage()
    assert "1380013800" not in caplog.text


def test_readyz_says_why_redis_is_not_ready_and_healthz_still_answers(
    client: TestClient,
) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable" and "Redis" in ready.json()["error"]
    assert client.get("/healthz").json() == {"status": "ok"}


def test_the_openapi_page_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/availability",
        "/v1/stock/{sku}",
        "/v1/customers/{type}/{value}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/stores/{store_id}",
        "/stores/{store_id}/events",
    ):
        assert path in paths, sorted(paths)
    parameters = {p["name"]: p for p in paths["/v1/availability"]["get"]["parameters"]}
    assert set(parameters) == {"sku", "qty", "lat", "lon", "region", "mode"}
    assert parameters["sku"]["required"] and parameters["qty"]["required"]
    assert parameters["qty"]["schema"]["minimum"] == 1
    assert parameters["qty"]["schema"]["maximum"] == 1_000_000
    customer_types = paths["/v1/customers/{type}/{value}"]["get"]["parameters"][0]["schema"]
    assert set(customer_types["enum"]) == {"user", "member", "phone", "email", "order", "anon"}
    option = spec["components"]["schemas"]["OptionOut"]["properties"]
    assert set(option) == {
        "location_id",
        "type",
        "region",
        "available_to_sell",
        "distance_km",
        "pickup",
        "ships_online",
    }
    assert "400" in paths["/v1/availability"]["get"]["responses"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    # the docs, like the console, load nothing from a CDN: every asset is served here
    assert "https://" not in docs.text and "http://" not in docs.text
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', docs.text)
    assert len(assets) >= 2
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


def test_an_unknown_store_is_a_404_page_and_its_events_a_404(client: TestClient) -> None:
    page = client.get("/stores/NOWHERE")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Unknown store" in page.text and "NOWHERE" in page.text
    assert client.get("/stores/WH-SH-01").status_code == 404  # a warehouse has no console
    events = client.get("/stores/NOWHERE/events")
    assert events.status_code == 404 and events.json()["parameter"] == "store_id"


def test_the_store_page_uses_its_own_assets_only(client: TestClient) -> None:
    page = client.get("/stores/ST-SH-01")
    assert page.status_code == 200
    assert 'data-store-id="ST-SH-01"' in page.text and "Shanghai Jing&#x27;an Temple" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for asset, kind in (("/console/console.js", "javascript"), ("/console/console.css", "css")):
        response = client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "https://" not in response.text and "@import" not in response.text
    assert client.get("/console/store.html").status_code == 404  # the template is not an asset
    assert client.get("/console/..%2Fserve.py").status_code == 404


def test_metrics_are_labelled_by_route_template(client: TestClient) -> None:
    client.get("/v1/stock/SKU-NOPE")
    client.get("/v1/stock/SKU-NOPE-2")
    client.get("/no/such/path")
    client.get("/console/console.css")
    client.get("/v1/customers/user/a/b")  # the value's :path converter is not in the label
    text = client.get("/metrics").text
    assert 'omnistream_http_requests_total{route="/v1/stock/{sku}",status="404"}' in text
    assert 'route="unmatched",status="404"' in text
    assert 'route="/console/{asset}",status="200"' in text
    assert 'route="/v1/customers/{type}/{value}",status="503"' in text
    assert "SKU-NOPE" not in text and "console.css" not in text and ":path" not in text
    assert 'omnistream_http_request_seconds_count{route="/v1/stock/{sku}"}' in text


def test_route_label_never_uses_the_raw_path() -> None:
    assert route_label({"path": "/v1/stock/SKU-1"}) == "unmatched"


def test_the_service_refuses_to_start_without_the_pii_key(config: Config) -> None:
    keyless = config.with_overrides(pii={"key": ""})
    with pytest.raises(ConfigError, match=r"pii\.key"):
        create_app(keyless, load_reference(keyless), connect_async(keyless))


def test_the_async_client_is_configured_like_the_flows_one() -> None:
    """Same URL parsing (user, password, TLS), timeouts and health checks; no own retries."""
    config = Config().with_overrides(
        redis={"url": "rediss://omni:pw@cache.internal:6380/2?ssl_cert_reqs=required"}
    )
    sync, asynchronous = connect(config), connect_async(config)
    try:
        sync_kwargs = sync.connection_pool.connection_kwargs
        async_kwargs = asynchronous.connection_pool.connection_kwargs
        for key in (
            "host",
            "port",
            "db",
            "username",
            "password",
            "ssl_cert_reqs",
            "socket_timeout",
            "socket_connect_timeout",
            "health_check_interval",
        ):
            assert async_kwargs[key] == sync_kwargs[key], key
        assert "SSL" in asynchronous.connection_pool.connection_class.__name__
        assert asynchronous.get_retry().get_retries() == 0
    finally:
        sync.close()
        asyncio.run(asynchronous.aclose())
