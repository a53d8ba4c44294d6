"""``omnistream serve``: the HTTP service of CONTRACT §13 and the store console.

Order management asks where an order can be fulfilled (``/v1/availability``), support looks
up a sku's positions (``/v1/stock/{sku}``) and a customer (``/v1/customers/{type}/{value}``),
and store associates keep ``/stores/{store_id}`` open: a page listing the store's pickups,
exceptions and visiting customers, updated live by server-sent events. Everything is read
from Redis (``state.service_reads``, one pipelined round trip per request); the service
writes nothing but logs and metrics. ``/metrics`` carries the requests by route template and
the experiment report of CONTRACT §12 per rule × variant (``omnistream.experiment_metrics``,
registered by ``run``).

Errors are JSON, one line, never a traceback: a bad parameter 400 ``{"error", "parameter"}``
(FastAPI's 422 is answered so too), an unknown sku, customer or store 404 (naming the
parameter), Redis unreachable 503, anything unexpected 500 (logged once, with its
traceback, in the log only).
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Annotated, Any, Literal, get_args

import orjson
import redis.asyncio
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from base.config import Config, ConfigError
from base.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS
from domain.fulfilment import availability_options
from domain.identity import PRIORITY, identifier, pii_identifier_value
from domain.reference import Location, ReferenceData
from omnistream.experiment_metrics import ExperimentMetrics
from state.experiment_store import RedisExperimentStore
from state.redis_io import connect, connect_async, describe
from state.service_reads import UNAVAILABLE, Position, ServiceReads

log = logging.getLogger(__name__)

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
#: Largest quantity an availability question may ask about (a typo guard, not a business rule).
MAX_QTY = 1_000_000
#: An idle console stream sends a comment this often, so proxies keep it open and a closed
#: browser is noticed even by servers that only see it when a write fails.
KEEPALIVE_S = 15.0
#: Redis timeouts of the service: a request waits at most this long before its 503.
REDIS_CONNECT_TIMEOUT_S = 1.0
REDIS_SOCKET_TIMEOUT_S = 2.0
#: While Redis is down, one warning per this many seconds (each request still gets its 503).
OUTAGE_LOG_EVERY_S = 10.0
#: Open console streams get this long to end when the service stops.
SHUTDOWN_GRACE_S = 3.0

IdentifierType = Literal["user", "member", "phone", "email", "order", "anon"]
assert set(get_args(IdentifierType)) == set(PRIORITY), "the identifier types of CONTRACT §4"
_HASHED = re.compile(r"[0-9a-f]{64}")

#: What each parameter must be, for the 400 that names it.
EXPECTED: dict[str, str] = {
    "sku": "a sku of the reference data",
    "qty": f"an integer 1..{MAX_QTY}",
    "lat": "a latitude in degrees, -90..90",
    "lon": "a longitude in degrees, -180..180",
    "region": "a region code of the reference data",
    "mode": "pickup or delivery",
    "type": "one of " + ", ".join(PRIORITY),
    "value": "an identifier value",
}


class BadParameter(Exception):
    """A parameter the caller must fix (400) or that names nothing we know (404)."""

    def __init__(self, parameter: str, error: str, status: int = 400) -> None:
        super().__init__(error)
        self.parameter = parameter
        self.error = error
        self.status = status


# -- response models (they are the OpenAPI page's documentation of the contract) ----------


class ErrorOut(BaseModel):
    error: str = Field(description="what went wrong, one sentence")
    parameter: str | None = Field(None, description="the parameter to fix, when one is at fault")


class OptionOut(BaseModel):
    location_id: str
    type: str = Field(description="warehouse, forward_warehouse or store")
    region: str
    available_to_sell: int = Field(description="max(0, available − safety_stock), CONTRACT §9")
    distance_km: float | None = Field(
        description="great-circle km from the given coordinates (0.1 km); null without them"
    )
    pickup: bool = Field(description="the location hands over store-pickup orders")
    ships_online: bool = Field(description="the location ships online orders")


class AvailabilityOut(BaseModel):
    sku: str
    qty: int
    options: list[OptionOut] = Field(
        description="locations covering qty for the mode: nearest first with coordinates, "
        "else the region's first; ties by the most units to spare, then location_id"
    )


class PositionOut(BaseModel):
    location_id: str
    type: str
    region: str
    on_hand: int
    reserved: int
    available: int
    safety_stock: int
    available_to_sell: int
    in_transit: int
    sold_1h: int
    sold_24h: int
    days_of_cover: float | None
    updated_at: str | None = Field(
        description="event time of the latest change (RFC 3339 UTC); null: never moved"
    )


class TotalOut(BaseModel):
    on_hand: int
    reserved: int
    available: int
    available_to_sell: int
    in_transit: int


class StockOut(BaseModel):
    sku: str
    positions: list[PositionOut] = Field(
        description="every location of the reference data, by location_id; a location where "
        "the sku never moved reads as zeros with updated_at null"
    )
    total: TotalOut


class CustomerOut(BaseModel):
    customer_id: str
    identifier: str = Field(description="type:value as stored (phone and e-mail hashed)")
    profile: dict[str, str] = Field(
        description="the profile hash of CONTRACT §11 as stored (values are strings; "
        "top_categories is a JSON array); {} while the customer has none"
    )


class StatusOut(BaseModel):
    status: str
    error: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "a bad parameter, named"},
    404: {"model": ErrorOut, "description": "unknown sku, customer or store"},
    503: {"model": ErrorOut, "description": "Redis unreachable"},
}


# -- the app ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """The reference data arranged for the service's questions, once at start."""

    locations: dict[str, Location]
    all_ids: list[str]
    #: Candidate locations of each availability mode (None: pickup or delivery), by id.
    by_mode: dict[str | None, list[Location]]
    regions: frozenset[str]
    stores: dict[str, Location]

    @classmethod
    def of(cls, reference: ReferenceData) -> Catalogue:
        locations = dict(sorted(reference.locations.items()))
        ordered = list(locations.values())
        return cls(
            locations=locations,
            all_ids=list(locations),
            by_mode={
                "pickup": [loc for loc in ordered if loc.offers_pickup],
                "delivery": [loc for loc in ordered if loc.ships],
                None: [loc for loc in ordered if loc.offers_pickup or loc.ships],
            },
            regions=frozenset(loc.region for loc in ordered),
            stores={
                loc.location_id: loc for loc in ordered if loc.type == "store" or loc.offers_pickup
            },
        )


def _json_error(status: int, error: str, parameter: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    if parameter is not None:
        body["parameter"] = parameter
    return JSONResponse(body, status_code=status)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 as our 400: the first failing parameter, named, with what it must be."""
    first = exc.errors()[0]
    loc = first.get("loc") or ()
    parameter = str(loc[-1]) if loc else "request"
    expected = EXPECTED.get(parameter, str(first.get("msg", "invalid")))
    if first.get("type") == "missing":
        return _json_error(400, f"{parameter}: required ({expected})", parameter)
    return _json_error(
        400, f"{parameter}: expected {expected}, got {first.get('input')!r}", parameter
    )


def create_app(
    config: Config,
    reference: ReferenceData,
    redis_client: redis.asyncio.Redis,
    *,
    stopping: Callable[[], bool] = lambda: False,
) -> FastAPI:
    """The service over ``redis_client`` (the caller's: it opens and closes it).

    ``stopping`` tells the console streams that the server is shutting down, so they end
    instead of holding the shutdown up (``run`` passes uvicorn's exit flag)."""
    if not config.pii.key:
        raise ConfigError(
            f"{config.source}: key `pii.key`: expected the secret for hashing phone numbers "
            "and e-mails (set OMNI_PII_KEY): customer look-ups by raw phone or e-mail hash "
            "them as identity_stitch does"
        )
    catalogue = Catalogue.of(reference)
    reads = ServiceReads(redis_client, config.redis.key_prefix)
    where = describe(config.redis.url)
    poll_s = config.service.console_poll_seconds
    page = Template((CONSOLE_DIR / "store.html").read_text(encoding="utf-8"))

    # FastAPIOffline: /docs serves Swagger UI's files from the installed package, not from a
    # CDN, so the docs work on a network without internet, like the console.
    app = FastAPIOffline(
        title="Omnistream service",
        version="1",
        description="Availability, stock and customers from the Omnistream serving state, "
        "and the store console. Reads Redis; writes nothing.",
    )
    #: Console streams open right now (a closed page must bring it back down).
    app.state.console_streams = 0
    app.add_middleware(RequestMetrics)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(BadParameter)
    async def bad_parameter(request: Request, exc: BadParameter) -> JSONResponse:
        return _json_error(exc.status, exc.error, exc.parameter)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _json_error(exc.status_code, str(exc.detail))

    outage_log = _Throttle(OUTAGE_LOG_EVERY_S)

    async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
        if outage_log.ready():  # at a thousand requests a second, not a line for each
            log.warning(
                "Redis at %s unavailable (%s %s): %s; answering 503",
                where,
                request.method,
                route_label(request.scope),  # not the path: it may hold a raw phone or e-mail
                exc,
            )
        return _json_error(503, f"Redis at {where} is unavailable; try again shortly")

    for error in UNAVAILABLE:
        app.add_exception_handler(error, redis_unavailable)

    def product_safety_stock(sku: str, parameter: str = "sku") -> int:
        product = reference.products.get(sku)
        if product is None:
            raise BadParameter(parameter, f"unknown sku {sku!r}", status=404)
        return product.safety_stock

    # -- API ------------------------------------------------------------------------------

    @app.get(
        "/v1/availability", response_model=AvailabilityOut, responses=_ERRORS, tags=["availability"]
    )
    async def availability(
        sku: Annotated[str, Query(min_length=1, description="the sku asked for")],
        qty: Annotated[int, Query(ge=1, le=MAX_QTY, description="units wanted")],
        lat: Annotated[
            float | None,
            Query(ge=-90, le=90, allow_inf_nan=False, description="latitude of the customer"),
        ] = None,
        lon: Annotated[
            float | None,
            Query(ge=-180, le=180, allow_inf_nan=False, description="longitude of the customer"),
        ] = None,
        region: Annotated[str | None, Query(description="the customer's region code")] = None,
        mode: Annotated[
            Literal["pickup", "delivery"] | None,
            Query(
                description="pickup: pickup locations only; delivery: "
                "locations that ship; absent: either"
            ),
        ] = None,
    ) -> AvailabilityOut:
        """The locations that can give the customer ``qty`` units of ``sku``
        (``available_to_sell`` ≥ ``qty``), nearest first when coordinates are given, else
        those of ``region`` first. An unknown sku is a 404 naming ``sku``."""
        if (lat is None) != (lon is None):
            missing = "lon" if lon is None else "lat"
            raise BadParameter(
                missing,
                f"{missing}: required with "
                f"{'lat' if missing == 'lon' else 'lon'} (give both or neither)",
            )
        if region is not None and region not in catalogue.regions:
            raise BadParameter(
                "region",
                f"region: expected {EXPECTED['region']} "
                f"({', '.join(sorted(catalogue.regions))}), got {region!r}",
            )
        safety_stock = product_safety_stock(sku)
        candidates = catalogue.by_mode[mode]
        ats = await reads.available_to_sell(
            sku, [loc.location_id for loc in candidates], safety_stock
        )
        options = availability_options(sku, qty, ats, candidates, lat, lon, region, mode)
        return AvailabilityOut(
            sku=sku,
            qty=qty,
            options=[
                OptionOut(
                    location_id=o.location_id,
                    type=o.type,
                    region=o.region,
                    available_to_sell=o.available_to_sell,
                    distance_km=o.distance_km,
                    pickup=o.pickup,
                    ships_online=o.ships_online,
                )
                for o in options
            ],
        )

    @app.get("/v1/stock/{sku}", response_model=StockOut, responses=_ERRORS, tags=["stock"])
    async def stock(sku: Annotated[str, PathParam(description="the sku")]) -> StockOut:
        """Every location's position of ``sku`` (CONTRACT §9 figures) and their sum."""
        safety_stock = product_safety_stock(sku)
        positions = await reads.positions(sku, catalogue.all_ids, safety_stock)
        return StockOut(
            sku=sku,
            positions=[_position_out(p, catalogue.locations[p.location_id]) for p in positions],
            total=TotalOut(
                on_hand=sum(p.on_hand for p in positions),
                reserved=sum(p.reserved for p in positions),
                available=sum(p.available for p in positions),
                available_to_sell=sum(p.available_to_sell for p in positions),
                in_transit=sum(p.in_transit for p in positions),
            ),
        )

    @app.get(
        "/v1/customers/{type}/{value:path}",
        response_model=CustomerOut,
        responses=_ERRORS,
        tags=["customers"],
    )
    async def customer(
        type: Annotated[IdentifierType, PathParam(description="identifier type (CONTRACT §4)")],  # noqa: A002
        value: Annotated[
            str,
            PathParam(
                description="the value; a raw phone or e-mail is "
                "normalised and hashed first, a 64-hex hash is "
                "taken as is"
            ),
        ],
    ) -> CustomerOut:
        """The customer owning an identifier and its profile; 404 when nobody owns it."""
        if not value:
            raise BadParameter("value", f"value: expected {EXPECTED['value']}")
        stored = value
        if type in {"phone", "email"} and not _HASHED.fullmatch(value):
            hashed = pii_identifier_value(
                type, value, config.pii.key, config.pii.default_country_code
            )
            if hashed is None:
                # not echoed: it may be most of somebody's phone number or e-mail address
                raise BadParameter("value", f"value: not a usable {type}")
            stored = hashed
        ident = identifier(type, stored)
        found = await reads.customer(ident)
        if found is None:
            raise BadParameter("value", f"no customer owns {ident}", status=404)
        customer_id, profile = found
        return CustomerOut(customer_id=customer_id, identifier=ident, profile=profile)

    # -- operations -----------------------------------------------------------------------

    @app.get(
        "/healthz", response_model=StatusOut, response_model_exclude_none=True, tags=["operations"]
    )
    async def healthz() -> StatusOut:
        """The process answers (says nothing about Redis: see /readyz)."""
        return StatusOut(status="ok")

    @app.get(
        "/readyz",
        response_model=StatusOut,
        tags=["operations"],
        responses={503: {"model": StatusOut, "description": "Redis unreachable"}},
    )
    async def readyz() -> Response:
        """Ready when Redis answers PING (within REDIS_SOCKET_TIMEOUT_S); else 503 and why."""
        try:
            await asyncio.wait_for(reads.ping(), timeout=REDIS_SOCKET_TIMEOUT_S)
        except (redis.RedisError, TimeoutError, OSError) as exc:
            reason = f"Redis at {where} unreachable: {exc or type(exc).__name__}"
            return JSONResponse({"status": "unavailable", "error": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format: the default registry (requests by route template, and
        under ``run`` the experiment report, ``omnistream.experiment_metrics``). Rendered in
        a worker thread: the experiment collector may read Redis, which would block the
        event loop and every request with it."""
        body = await asyncio.to_thread(generate_latest, REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # -- the store console ------------------------------------------------------------------

    assets = console_assets()

    @app.get("/console/{asset}", include_in_schema=False)
    async def console_asset(asset: str) -> Response:
        """The console's own script, style sheet and icon (read once at start)."""
        found = assets.get(asset)
        if found is None:
            raise BadParameter("asset", f"no console asset {asset!r}", status=404)
        body, media_type = found
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/stores/{store_id}", response_class=HTMLResponse, tags=["store console"])
    async def store_console(store_id: str) -> HTMLResponse:
        """The store console: the store's tasks, updated live (``/stores/{id}/events``)."""
        store = catalogue.stores.get(store_id)
        if store is None:
            return HTMLResponse(_not_found_page(store_id), status_code=404, headers=_PAGE_HEADERS)
        body = page.substitute(
            store_id=html.escape(store_id),
            store_name=html.escape(store.name or store_id),
            region=html.escape(store.region),
        )
        return HTMLResponse(body, headers=_PAGE_HEADERS)

    @app.get(
        "/stores/{store_id}/events",
        tags=["store console"],
        response_class=Response,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "server-sent events: snapshot, task, removed, unavailable",
            },
            404: {"model": ErrorOut},
        },
    )
    async def store_events(store_id: str, request: Request) -> Response:
        """Server-sent events of the store's tasks: ``snapshot`` (every task) first, then
        ``task`` (a changed task, whole) and ``removed`` (``{task_id}``) as the flow writes
        them, ``unavailable`` while Redis is down (a new ``snapshot`` when it is back)."""
        if store_id not in catalogue.stores:
            raise BadParameter("store_id", f"unknown store {store_id!r}", status=404)

        async def counted() -> AsyncIterator[bytes]:
            app.state.console_streams += 1
            try:
                async for chunk in task_events(
                    reads, store_id, poll_s, request.is_disconnected, stopping
                ):
                    yield chunk
            finally:
                app.state.console_streams -= 1

        return StreamingResponse(
            counted(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


#: The console's files served as they are (the page itself is a template: not among them).
ASSET_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def console_assets() -> dict[str, tuple[bytes, str]]:
    """Name → (content, media type) of the files under ``omnistream/console/``."""
    return {
        path.name: (path.read_bytes(), ASSET_TYPES[path.suffix])
        for path in sorted(CONSOLE_DIR.iterdir())
        if path.suffix in ASSET_TYPES
    }


_PAGE_HEADERS = {
    # Nothing but the service's own assets: no CDN, no external fonts, no inline script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "Cache-Control": "no-store",
}


class _Throttle:
    """True at most once per ``every_s`` (wall clock, monotonic)."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.last: float | None = None

    def ready(self) -> bool:
        now = self.clock()
        if self.last is not None and now - self.last < self.every_s:
            return False
        self.last = now
        return True


def _not_found_page(store_id: str) -> str:
    name = html.escape(store_id)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>Unknown store {name}</title>"
        '<link rel="icon" href="/console/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/console/console.css"></head>'
        f'<body><main class="missing"><h1>Unknown store</h1><p>No store <code>{name}'
        "</code> in the reference data (locations that hand over pickups).</p></main></body>"
        "</html>"
    )


def _position_out(p: Position, location: Location) -> PositionOut:
    return PositionOut(
        location_id=p.location_id,
        type=location.type,
        region=location.region,
        on_hand=p.on_hand,
        reserved=p.reserved,
        available=p.available,
        safety_stock=p.safety_stock,
        available_to_sell=p.available_to_sell,
        in_transit=p.in_transit,
        sold_1h=p.sold_1h,
        sold_24h=p.sold_24h,
        days_of_cover=p.days_of_cover,
        updated_at=p.updated_at,
    )


# -- console events -------------------------------------------------------------------------


def sse(event: str, data: Any) -> bytes:
    """One server-sent event (``data`` as one line of JSON)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _decode_task(task_id: str, text: str) -> dict[str, Any] | None:
    try:
        task = orjson.loads(text)
    except orjson.JSONDecodeError:
        task = None
    if not isinstance(task, dict):
        log.warning("task %s: stored value is not a JSON object; not shown", task_id)
        return None
    task.setdefault("task_id", task_id)
    return task


def _decoded(stored: dict[str, str], ids: Sequence[str]) -> list[dict[str, Any]]:
    tasks = (_decode_task(task_id, stored[task_id]) for task_id in ids)
    return [task for task in tasks if task is not None]


async def task_events(
    reads: ServiceReads,
    store_id: str,
    poll_s: float,
    disconnected: Callable[[], Awaitable[bool]],
    stopping: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[bytes]:
    """The console's event stream: poll the store's task hash every ``poll_s`` and send what
    changed (a task's stored JSON differs, or its field is gone).

    Ends when the browser goes (``disconnected``) or the server stops; a server that notices
    the browser's departure itself cancels the generator at its ``sleep``, which ends it just
    as well (nothing is left running per closed page)."""
    yield b"retry: 1000\n\n"  # the browser reconnects after a second (and gets a snapshot)
    seen: dict[str, str] | None = None  # None: the browser needs a snapshot
    outage = False
    beat = clock()
    while True:
        try:
            current = await reads.store_tasks(store_id)
        except UNAVAILABLE as exc:
            if not outage:
                log.warning("console %s: Redis unavailable: %s", store_id, exc)
                yield sse("unavailable", {"error": "Redis is unavailable; retrying"})
                outage, seen = True, None
        else:
            outage = False
            if seen is None:
                yield sse(
                    "snapshot", {"store_id": store_id, "tasks": _decoded(current, sorted(current))}
                )
            else:
                changed = sorted(k for k, v in current.items() if seen.get(k) != v)
                for task in _decoded(current, changed):
                    yield sse("task", task)
                for task_id in sorted(seen.keys() - current.keys()):
                    yield sse("removed", {"task_id": task_id})
            seen = current
        if clock() - beat >= KEEPALIVE_S:
            beat = clock()
            yield b": keepalive\n\n"
        await asyncio.sleep(poll_s)
        if stopping() or await disconnected():
            return


# -- metrics and last-resort errors ---------------------------------------------------------


def route_label(scope: Scope) -> str:
    """The matched route's template (``/v1/stock/{sku}``), never the raw path (a label per
    sku would grow without bound), as the OpenAPI page writes it (no ``:path`` converter; the
    console's assets are ``/console/{asset}``); ``unmatched`` for paths no route knows."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) and template else "unmatched"


class RequestMetrics:
    """ASGI middleware: counts every answer by route template and status, times it until its
    headers go out (for a console stream: until it opens), and answers an unexpected error
    with a 500 JSON line (the traceback goes to the log, once, not to the caller)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        response_started = False

        async def timed_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start" and not response_started:
                response_started = True
                route = route_label(scope)
                HTTP_REQUESTS.labels(route, str(message["status"])).inc()
                HTTP_REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            if response_started:  # a stream broke midway: nothing more can be said to it
                log.exception(
                    "%s %s failed while answering", scope.get("method"), route_label(scope)
                )
                return
            # the route template, not the path: a path may hold a raw phone or e-mail
            log.exception("%s %s failed", scope.get("method"), route_label(scope))
            response = _json_error(500, "internal error; the service log has the details")
            await response(scope, receive, timed_send)


# -- running --------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket first, so a port in use is one clear line, not a log
    record from inside the server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run(config: Config, reference: ReferenceData, host: str, port: int) -> None:
    """Serve until SIGTERM or Ctrl-C, then return (open console streams end within
    ``SHUTDOWN_GRACE_S``). Access logs are off: ``/metrics`` counts every request."""
    sock = listen(host, port)
    client = connect_async(
        config, socket_timeout_s=REDIS_SOCKET_TIMEOUT_S, connect_timeout_s=REDIS_CONNECT_TIMEOUT_S
    )
    app = create_app(config, reference, client, stopping=lambda: server.should_exit)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=math.ceil(SHUTDOWN_GRACE_S),
        )
    )

    # The experiment report on /metrics reads the arms with the store the report command
    # uses (synchronous: /metrics renders in a worker thread), with the service's timeouts.
    arms = RedisExperimentStore(
        connect(
            config,
            socket_timeout_s=REDIS_SOCKET_TIMEOUT_S,
            connect_timeout_s=REDIS_CONNECT_TIMEOUT_S,
        ),
        config.redis.key_prefix,
    )
    experiments = ExperimentMetrics(
        arms.tallies,
        config.service.experiments_cache_seconds,
        where=f"Redis at {describe(config.redis.url)}",
    )
    REGISTRY.register(experiments)

    async def serve() -> None:
        try:
            log.info(
                "omnistream serve: listening on http://%s:%d, Redis %s",
                host,
                port,
                describe(config.redis.url),
            )
            await server.serve(sockets=[sock])
        finally:
            await client.aclose()

    try:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(serve())
    except KeyboardInterrupt:
        pass  # the signal that stopped uvicorn, raised again once it has shut down
    finally:
        sock.close()
        REGISTRY.unregister(experiments)
        arms.close()
    log.info("omnistream serve stopped")
