"""The availability service under load, for ``omnistream bench``: ``omnistream serve`` answers
``GET /v1/availability`` from the stock pool in Redis while a client offers requests at fixed
rates.

Open loop: request *i* of a rate *r* is due at ``start + i / r`` and is sent then whether or
not earlier ones were answered, and its latency runs from that due time to its reply. A
client that waited for each reply before sending the next (closed loop) would send less
exactly when the service slows down, and the requests that should have queued up behind a
stall would never be measured (coordinated omission). How late the client itself sent is
reported apart (``send_lag_p99_ms``) and counts in the latency too. Each rate first runs
for ``WARM_UP_S`` unmeasured, so its figures are of the rate held, not of the step up to it.
After the rates, a closed-loop run (``IN_FLIGHT`` requests always outstanding) gives the
service's capacity on this machine at that moment (``capacity_rps``): how close to it the
highest rate came explains its queueing.

The client is raw asyncio streams speaking HTTP/1.1 over a pool of keep-alive connections,
not a general HTTP client: on this 2-core machine httpx's ``AsyncClient`` spent 0.7 ms of CPU
per request at best (1,400 requests/s with one connection, falling to 500/s with 20 in flight,
against a canned reply that cost the server nothing), so at 1,000 requests/s it would have used
most of a core the service needs and measured itself. This one's ceiling is measured in every
run against a canned reply served by another process (``client_ceiling_rps``) and is two
orders of magnitude above the rates offered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import random
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from base.config import Config, dump_config
from domain.reference import ReferenceData
from omnistream.embedded import die_with_parent, free_port, port_accepts
from omnistream.processes import answers_ok, stop_process
from omnistream.trigger_watch import percentile

#: Offered request rates (requests/s), in this order: the lower one also settles the service.
SERVICE_RATES = (200.0, 1_000.0)
#: The target the bench prints beside the highest rate.
TARGET_P99_MS = 10.0
#: A request not answered within this long counts as an error (``timeout``).
REQUEST_TIMEOUT_S = 5.0
#: Connections the client may hold open; a request finding all busy waits for one (and that
#: wait counts in its latency, as it would for any client with a pool).
MAX_CONNECTIONS = 64
#: A pooled connection idle for longer is closed rather than used: the service (uvicorn)
#: closes keep-alive connections idle for 5 s.
IDLE_LIMIT_S = 2.0
#: Each rate is offered this long before it is measured, unreported: a step up in rate
#: first grows the client's connections and the service's Redis connections (from 200/s to
#: 1,000/s here: from 1 to 64 and from 1 to 29 within 50 ms), a transient that put the
#: first measured second's p99 at 72 ms against 2.5-3 ms in the seconds after it.
WARM_UP_S = 1.0
#: Closed-loop figures (the client's ceiling, the service's capacity) keep this many
#: requests in flight, over this many requests.
IN_FLIGHT = 8
CEILING_REQUESTS = 20_000
CAPACITY_REQUESTS = 2_000
#: What the canned reply carries: an availability answer of typical size (eight options).
CANNED_BODY = orjson.dumps(
    {
        "sku": "SKU-10001",
        "qty": 1,
        "options": [
            {
                "location_id": f"ST-SH-{n:03d}",
                "type": "store",
                "region": "SH",
                "available_to_sell": 12,
                "distance_km": 3.4 + n,
                "pickup": True,
                "ships_online": False,
            }
            for n in range(8)
        ],
    }
)


class ReplyError(Exception):
    """A reply this client cannot read as HTTP/1.1 with a Content-Length."""


# -- the requests ---------------------------------------------------------------------------


def availability_questions(reference: ReferenceData, seed: int, count: int) -> list[str]:
    """``count`` request paths for ``/v1/availability``, drawn from the reference data the
    way order management and store apps ask: any sku, mostly one or two units, either mode
    or none, mostly from a customer's coordinates (near one of the chain's locations), else
    from a region only or with neither."""
    dice = random.Random(f"omnistream-bench-service-{seed}")
    skus = sorted(reference.products)
    locations = [reference.locations[key] for key in sorted(reference.locations)]
    placed = [loc for loc in locations if loc.has_coordinates]
    regions = sorted({loc.region for loc in locations})
    modes: tuple[str | None, ...] = ("pickup", "delivery", None)
    paths = []
    for _ in range(count):
        params: dict[str, str | int | float] = {
            "sku": dice.choice(skus),
            "qty": dice.choices((1, 2, 3, 5), weights=(60, 25, 10, 5))[0],
        }
        where = dice.random()
        if where < 0.7 and placed:
            near = dice.choice(placed)
            assert near.lat is not None and near.lon is not None  # has_coordinates
            params["lat"] = round(max(-90.0, min(90.0, near.lat + dice.uniform(-0.1, 0.1))), 5)
            params["lon"] = round(max(-180.0, min(180.0, near.lon + dice.uniform(-0.1, 0.1))), 5)
        elif where < 0.9:
            params["region"] = dice.choice(regions)
        mode = dice.choice(modes)
        if mode is not None:
            params["mode"] = mode
        paths.append("/v1/availability?" + urlencode(params))
    return paths


# -- the client -----------------------------------------------------------------------------


class _Connection:
    """One keep-alive HTTP/1.1 connection: one request at a time."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: bytes
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        #: Whether it carried a request already (the server may have closed it since).
        self.used = False
        #: Event-loop time it was last put back in the pool.
        self.idle_since = 0.0

    async def get(self, path: str) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection may carry another request)."""
        self.used = True
        self.writer.write(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + self.host + b"\r\n\r\n"
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 ") or len(head) < 12 or not head[9:12].isdigit():
            raise ReplyError(f"not an HTTP/1.1 reply: {head[:40]!r}")
        headers = head.lower()
        length = _header(headers, b"content-length")
        if length is None or not length.isdigit():
            raise ReplyError("reply without a Content-Length")
        body = await self.reader.readexactly(int(length))
        return int(head[9:12]), body, _header(headers, b"connection") != b"close"

    def close(self) -> None:
        self.writer.close()


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` in a lower-cased reply head, or None."""
    start = head.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    return head[start : head.find(b"\r\n", start)].strip()


class HttpPool:
    """Up to ``max_connections`` keep-alive connections to one server, opened as needed; a
    request that finds every one busy waits for the first to come free."""

    def __init__(self, host: str, port: int, max_connections: int = MAX_CONNECTIONS) -> None:
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self._idle: list[_Connection] = []
        self._open = 0
        #: Waiting requests; each is handed a free connection, or None: open your own.
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body). A connection that carried requests before and fails before the
        first byte of the reply was closed by the server while idle (a keep-alive timeout):
        the request goes again, once, on a new connection, as HTTP clients do for
        idempotent requests."""
        for attempt in range(2):
            connection = await self._acquire()
            if attempt > 0 and connection.used:
                # Any kept-alive connection may be as stale as the one that just failed
                # (a server dropping idle ones drops them all): the retry gets a new one.
                connection = await self._reopen(connection)
            reused = connection.used
            reusable = False
            try:
                status, body, reusable = await connection.get(path)
                return status, body
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                unanswered = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                if attempt > 0 or not reused or not unanswered:
                    raise
            finally:
                self._release(connection, reusable)
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _acquire(self) -> _Connection:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since <= IDLE_LIMIT_S:
                return connection
            self._release(connection, False)  # the server may be closing it right now
        if self._open >= self.max_connections:
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                # Timed out while waiting: a connection handed over just now goes back.
                handed = waiter.result() if waiter.done() and not waiter.cancelled() else None
                if handed is not None:
                    self._release(handed, True)
                raise
            if handed is not None:
                return handed
        self._open += 1
        return await self._connect()

    async def _reopen(self, connection: _Connection) -> _Connection:
        """A new connection in the place (and pool slot) of ``connection``."""
        connection.close()
        return await self._connect()

    async def _connect(self) -> _Connection:
        """Open a connection for a slot already counted in ``_open``; on failure the slot
        is given up (to the next waiter)."""
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except BaseException:
            self._open -= 1
            self._hand_on(None)
            raise
        return _Connection(reader, writer, f"{self.host}:{self.port}".encode())

    def _release(self, connection: _Connection, reusable: bool) -> None:
        if reusable:
            if not self._hand_on(connection):
                connection.idle_since = asyncio.get_running_loop().time()
                self._idle.append(connection)
            return
        connection.close()
        self._open -= 1
        self._hand_on(None)

    def _hand_on(self, connection: _Connection | None) -> bool:
        """Give ``connection`` (None: the right to open one) to the first live waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        for connection in idle:
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()


# -- the load -------------------------------------------------------------------------------


@dataclass
class OfferedLoad:
    """What one fixed rate got: every latency from its request's due time to its reply."""

    offered_rps: float
    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    send_lags_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: Answers (200) naming at least one location: the questions met a loaded pool.
    with_options: int = 0
    #: From the first request's due time to the last reply.
    elapsed_s: float = 0.0
    #: When the slowest request was due (s from the first one's due time): a stall's place.
    slowest_due_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        replies = len(self.latencies_ms)
        return {
            "offered_rps": self.offered_rps,
            "achieved_rps": round(replies / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0,
            "requests": self.requests,
            "p50_ms": round(percentile(self.latencies_ms, 0.5), 2),
            "p99_ms": round(percentile(self.latencies_ms, 0.99), 2),
            "max_ms": round(max(self.latencies_ms, default=float("nan")), 2),
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "send_lag_p99_ms": round(percentile(self.send_lags_ms, 0.99), 2),
            "slowest_due_s": round(self.slowest_due_s, 3),
            "answered_with_options": self.with_options,
        }


async def ask(pool: HttpPool, path: str) -> tuple[int, bytes] | str:
    """(status, body), or what went wrong instead: ``timeout`` or the error's class name."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            return await pool.get(path)
    except TimeoutError:
        return "timeout"
    except (OSError, EOFError, ReplyError, asyncio.LimitOverrunError) as exc:
        return type(exc).__name__


async def offer(pool: HttpPool, paths: Sequence[str], rate: float, count: int) -> OfferedLoad:
    """Send ``count`` requests (cycling through ``paths``) at ``rate`` per second, open loop:
    each at its due time, none waiting for another's reply."""
    loop = asyncio.get_running_loop()
    load = OfferedLoad(rate, requests=count)
    replied_at: list[float] = []
    slowest_ms = -1.0

    async def one(path: str, due: float) -> None:
        nonlocal slowest_ms
        load.send_lags_ms.append((loop.time() - due) * 1000)
        reply = await ask(pool, path)
        if isinstance(reply, str):
            load.errors[reply] += 1
            return
        status, body = reply
        now = loop.time()
        replied_at.append(now)
        latency_ms = (now - due) * 1000
        if latency_ms > slowest_ms:
            slowest_ms = latency_ms
            load.slowest_due_s = due - start
        load.latencies_ms.append(latency_ms)
        if status != 200:
            load.errors[f"status {status}"] += 1
        elif b'"location_id"' in body:
            load.with_options += 1

    # Waiting for the requests in flight costs nothing per request at the end: gathering
    # thousands of tasks there would hold up the last ones' sending by milliseconds.
    in_flight: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []
    all_sent = False
    all_done = asyncio.Event()

    def done(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            failures.append(error)
        if all_sent and not in_flight:
            all_done.set()

    start = loop.time() + 0.01
    for i in range(count):
        due = start + i / rate
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        task = asyncio.create_task(one(paths[i % len(paths)], due))
        in_flight.add(task)
        task.add_done_callback(done)
    all_sent = True
    if in_flight:
        await all_done.wait()
    if failures:
        raise failures[0]
    load.elapsed_s = (max(replied_at) - start) if replied_at else 0.0
    return load


async def closed_loop_rps(
    pool: HttpPool, paths: Sequence[str], count: int, in_flight: int
) -> tuple[float, int]:
    """Requests/s with ``in_flight`` requests always outstanding (each lane sends its next
    request as its previous one is answered), cycling through ``paths``: the most the
    server and this client get through together; and how many of them failed or were
    answered otherwise than 200."""
    failed = 0

    async def lane(first: int, requests: int) -> None:
        nonlocal failed
        for i in range(first, first + requests):
            reply = await ask(pool, paths[i % len(paths)])
            if isinstance(reply, str) or reply[0] != 200:
                failed += 1

    per_lane = count // in_flight
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(lane(n * per_lane, per_lane) for n in range(in_flight)))
    return per_lane * in_flight / (loop.time() - started), failed


# -- the processes --------------------------------------------------------------------------


def client_ceiling(workdir: Path) -> tuple[float, int]:
    """The client's own ceiling (requests/s) against a canned reply from another process,
    which does no work per request beyond reading it (so the figure is the client's, give or
    take that process's share of the two cores)."""
    port = free_port()
    with (workdir / "canned-reply.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "omnistream.bench_service", "--canned-reply-port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + 30
        while not port_accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = Path(log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the canned reply did not come up:\n{tail}")
            time.sleep(0.05)

        async def measure() -> tuple[float, int]:
            pool = HttpPool("127.0.0.1", port)
            try:
                path = ["/v1/availability?sku=SKU-10001&qty=1"]
                await closed_loop_rps(pool, path, 1_000, IN_FLIGHT)
                return await closed_loop_rps(pool, path, CEILING_REQUESTS, IN_FLIGHT)
            finally:
                await pool.close()

        return asyncio.run(measure())
    finally:
        stop_process(process)


def service_run(
    config: Config, workdir: Path, reference: ReferenceData, seconds: float, seed: int
) -> dict[str, Any]:
    """Start ``omnistream serve`` on ``config``'s Redis, wait until it is ready (Redis
    answers), offer each of ``SERVICE_RATES`` for ``seconds``, stop it; the figures."""
    ceiling, ceiling_failed = client_ceiling(workdir)
    port = free_port()
    path = workdir / "serve.yaml"
    dump_config(config, path)
    log_path = workdir / "serve.log"
    command = [sys.executable, "-m", "omnistream.cli", "serve", "--config", str(path)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + 60
        while not answers_ok(f"http://127.0.0.1:{port}/readyz"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"omnistream serve did not become ready:\n{tail}")
            time.sleep(0.2)
        counts = [(int(rate * WARM_UP_S), int(rate * seconds)) for rate in SERVICE_RATES]
        paths = availability_questions(reference, seed, sum(w + c for w, c in counts))

        async def measure() -> tuple[list[OfferedLoad], tuple[float, int]]:
            pool = HttpPool("127.0.0.1", port)
            try:
                loads = []
                used = 0
                for rate, (warm_up, count) in zip(SERVICE_RATES, counts, strict=True):
                    await offer(pool, paths[used : used + warm_up], rate, warm_up)
                    used += warm_up
                    loads.append(await offer(pool, paths[used : used + count], rate, count))
                    used += count
                    await asyncio.sleep(0.5)  # the last replies' aftermath settles
                return loads, await closed_loop_rps(pool, paths, CAPACITY_REQUESTS, IN_FLIGHT)
            finally:
                await pool.close()

        # The bench process holds the generated streams (millions of objects): a full
        # collection walking them would stall the client for a tenth of a second or more
        # and be counted against the service.
        gc.collect()
        gc.freeze()
        try:
            loads, capacity = asyncio.run(measure())
        finally:
            gc.unfreeze()
    finally:
        stop_process(process)
    return {
        "seconds": seconds,
        "client": f"asyncio streams, HTTP/1.1 keep-alive, up to {MAX_CONNECTIONS} connections",
        "client_ceiling_rps": round(ceiling, 1),
        "client_ceiling_errors": ceiling_failed,
        "capacity_rps": round(capacity[0], 1),
        "capacity_errors": capacity[1],
        "availability": [load.summary() for load in loads],
    }


def print_service(service: dict[str, Any]) -> None:
    if "error" in service:
        print(f"\navailability service: not measured: {service['error']}")
        return
    print(
        f"\navailability service (omnistream serve; open loop, {service['seconds']:g} s per rate, "
        "latency from each request's due time)"
    )
    print(
        f"{'offered/s':>10} {'achieved/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'errors':>7} {'requests':>9}"
    )
    top = max(row["offered_rps"] for row in service["availability"])
    for row in service["availability"]:
        target = ""
        if row["offered_rps"] == top:
            met = "met" if row["p99_ms"] <= TARGET_P99_MS and row["errors"] == 0 else "MISSED"
            target = f"  target p99 ≤ {TARGET_P99_MS:g} ms: {met}"
        print(
            f"{row['offered_rps']:>10,.0f} {row['achieved_rps']:>11,.0f} {row['p50_ms']:>8.1f} "
            f"{row['p99_ms']:>8.1f} {row['max_ms']:>8.1f} {row['errors']:>7,} "
            f"{row['requests']:>9,}{target}"
        )
    print(
        f"closed loop ({IN_FLIGHT} in flight): the service answers {service['capacity_rps']:,.0f} "
        f"requests/s ({service['capacity_errors']:,} errors); the client alone, against a "
        f"canned reply, {service['client_ceiling_rps']:,.0f} ({service['client']})"
    )


# -- the canned reply -----------------------------------------------------------------------


async def _serve_canned(port: int) -> None:
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    reply %= (len(CANNED_BODY), CANNED_BODY)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="the bench's canned HTTP reply (internal)")
    parser.add_argument("--canned-reply-port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_canned(args.canned_reply_port))


if __name__ == "__main__":
    main()
