"""Every Lua script and multi-key command of the stores on a real Redis Cluster (three
redis-server primaries started here, ``redis-cli --cluster create``), through the real store
classes opened by ``from_config`` with ``redis.cluster: true``, gives what it gives on a
plain redis-server; identity_stitch, which needs one primary, refuses the cluster at start.

A script whose keys leave its slot fails here with CROSSSLOT (or "non local key"), which a
single redis-server never says: that is what this tier adds to ``test_redis_slots``. Each
exercise also checks that its keys are spread over more than one slot where they should be
(coupons, handovers, profiles), so a pass is not a cluster that happens to hold all in one.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from base.config import Config, ConfigError, RedisConfig
from domain.identity import EventIdentifiers
from domain.profile import PROFILE_FIELDS, SEGMENTS
from domain.reference import Location, Product, ReferenceData
from domain.stock import StockPosition
from domain.stock_arms import ShelfFigures
from omnistream.embedded import free_port, redis_server_binary
from state.attribution_store import RedisAttributionStore
from state.coupon_store import RedisCouponStore
from state.experiment_store import RedisExperimentStore
from state.handover_store import RedisHandoverStore
from state.identity_store import IdentityStore
from state.interfaces import TaskWrite
from state.profile_store import RedisProfileStore
from state.read_marks import RedisReadMarkStore, read_marks_key
from state.redis_io import connect, connect_async, is_cluster
from state.service_reads import ServiceReads, profile_key
from state.stock_store import StockStore

pytestmark = pytest.mark.integration

CLUSTER_NODES = 3
READY_TIMEOUT_S = 10.0
BUS_OFFSET = 10_000


@dataclass(frozen=True)
class Servers:
    plain_url: str
    cluster_url: str


def _start(binary: Path, port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", *extra]
    argv += ["--appendonly", "no", "--dir", str(workdir)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.ConnectionError, redis.ResponseError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {READY_TIMEOUT_S} s")


def cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000, which redis-server opens too,
    or it exits) is free as well: a plain free port is often above 55535."""
    while True:
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port


def cluster_ok(client: redis.Redis) -> bool:
    """``CLUSTER INFO`` says ``cluster_state:ok`` (redis-py parses the reply to a dict)."""
    info: dict[str, Any] = client.cluster("info")  # type: ignore[attr-defined]
    return str(info.get("cluster_state")) == "ok"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """A plain redis-server and a three-primary cluster, for this module; stopped after it."""
    binary = redis_server_binary()
    root = tmp_path_factory.mktemp("redis-cluster")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        plain = free_port()
        processes.append(_start(binary, plain, root / "plain"))
        ports: list[int] = []
        while len(ports) < CLUSTER_NODES:
            port = cluster_port()
            if port not in ports:
                ports.append(port)
        for port in ports:
            node = root / f"node-{port}"
            processes.append(
                _start(
                    binary,
                    port,
                    node,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node / "nodes.conf"),
                )
            )
        clients = [redis.Redis(port=p) for p in [plain, *ports]]
        try:
            for client in clients:
                _wait(lambda c=client: bool(c.ping()), "redis-server")  # type: ignore[misc]
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            for client in clients[1:]:
                _wait(lambda c=client: cluster_ok(c), "cluster")  # type: ignore[misc]
        finally:
            for client in clients:
                client.close()
        yield Servers(f"redis://127.0.0.1:{plain}/0", f"redis://127.0.0.1:{ports[0]}/0")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def configs(servers: Servers) -> tuple[Config, Config]:
    """(plain, cluster) configurations with one fresh key prefix each."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    return (
        Config(redis=RedisConfig(url=servers.plain_url, key_prefix=prefix)),
        Config(redis=RedisConfig(url=servers.cluster_url, key_prefix=prefix, cluster=True)),
    )


def on_both(servers: Servers, exercise: Callable[[Config], Any]) -> Any:
    """``exercise`` on the plain server and on the cluster; their results must be equal."""
    plain, cluster = configs(servers)
    expected = exercise(plain)
    assert exercise(cluster) == expected
    return expected


def slots(keys: list[str]) -> int:
    return len({key_slot(k.encode()) for k in keys})


def profile(segment: str, purchases: int) -> dict[str, str]:
    values = dict.fromkeys(PROFILE_FIELDS, "")
    values.update(segment=segment, purchases=str(purchases), top_categories="[]")
    return values


def test_profile_scripts_run_on_a_cluster(servers: Servers) -> None:
    """The profile-replacing script (one key each), the segment scripts (the ``{segments}``
    sets), erasure, and a reload after SCRIPT FLUSH (NOSCRIPT in a pipeline)."""
    customers = [f"c-{i}" for i in range(40)]

    def exercise(config: Config) -> Any:
        store = RedisProfileStore.from_config(config)
        try:
            assert is_cluster(store.client) == config.redis.cluster
            batch = {c: profile(SEGMENTS[i % len(SEGMENTS)], i) for i, c in enumerate(customers)}
            first = store.write(batch)
            again = store.write(batch)  # a replay changes nothing
            moved = store.write({"c-0": profile(SEGMENTS[-1], 99)})
            store.client.script_flush()
            reloaded = store.write({"c-1": profile(SEGMENTS[-1], 7)})
            store.erase(["c-2", "c-3", "nobody"])
            return (
                first,
                again,
                moved,
                reloaded,
                store.segment_counts(),
                store.profile("c-0"),
                store.profile("c-2"),
            )
        finally:
            store.close()

    result = on_both(servers, exercise)
    assert sum(result[0].values()) == len(customers)
    assert slots([profile_key("omni:", c) for c in customers]) > 1


def test_experiment_scripts_run_on_a_cluster(servers: Servers) -> None:
    """Recording arms, stock arms and the erasure script over the ``{experiments}`` keys."""

    def exercise(config: Config) -> Any:
        store = RedisExperimentStore.from_config(config)
        try:
            sent = [(f"rule-{i % 3}", "AB"[i % 2], f"code-{i}", f"c-{i % 7}") for i in range(30)]
            converted = [(r, v, code, 1250) for r, v, code, _ in sent[::4]]
            store.record(sent, converted)
            store.record(sent, converted)
            shelf = ShelfFigures("sku-1", "store-1", (("stock-rule", "A"),), 60_000, None, 3, 99)
            store.record_stock([shelf], [("stock-rule", "A", "t-1", "transfer", 4)])
            before = store.tallies()
            store.forget(["c-1", "c-2", "nobody"])
            return before, store.tallies(), store.stock_tallies()
        finally:
            store.close()

    before, after, _ = on_both(servers, exercise)
    assert before != after


def test_coupon_reads_and_deletes_span_slots_on_a_cluster(servers: Servers) -> None:
    """The MGET of owners and the DEL of forget, over codes in many slots."""
    codes = [f"CODE{i:03d}" for i in range(50)]

    def exercise(config: Config) -> Any:
        store = RedisCouponStore.from_config(config)
        try:
            store.remember([(code, f"c-{i}", 3600) for i, code in enumerate(codes)])
            owners = store.owners([*codes, "UNKNOWN"])
            store.forget(codes[::2])
            return owners, store.owners(codes)
        finally:
            store.close()

    owners, left = on_both(servers, exercise)
    assert len(owners) == len(codes) and len(left) == len(codes) // 2
    assert slots([RedisCouponStore(redis.Redis(), "omni:").key(c) for c in codes]) > 1


def test_handover_erasure_spans_slots_on_a_cluster(servers: Servers) -> None:
    """Hand-overs pipelined across slots; erasure scans every node and deletes keys of
    several slots (a survivor's entries share its ``{survivor}`` tag; those where the
    customer was merged away do not)."""

    def exercise(config: Config) -> Any:
        store = RedisHandoverStore.from_config(config)
        try:
            for i in range(12):
                store.put(f"s-{i}", "gone", b"state-%d" % i)
            # The flow's sink writes a batch's hand-overs in one pipeline of many slots.
            store.put_many([("gone", f"m-{i}", b"kept-%d" % i) for i in range(12)])
            store.put_many([(f"s-{i}", f"m-{i}", b"other-%d" % i) for i in range(12)])
            store.erase("gone")
            one_by_one = [
                (
                    store.take(f"s-{i}", "gone"),
                    store.take("gone", f"m-{i}"),
                    store.take(f"s-{i}", f"m-{i}"),
                )
                for i in range(12)
            ]
            # Waiting survivors ask in one round trip, their keys in many slots.
            pairs = [
                (s, m) for i in range(12) for s, m in ((f"s-{i}", "gone"), (f"s-{i}", f"m-{i}"))
            ]
            return one_by_one, list(zip(pairs, store.take_many(pairs), strict=True))
        finally:
            store.close()

    taken, asked = on_both(servers, exercise)
    assert all(a is None and b is None and c is not None for a, b, c in taken)
    # the erased customer's entry is gone, the other is what was put
    expected = [
        pair
        for i in range(12)
        for pair in (((f"s-{i}", "gone"), None), ((f"s-{i}", f"m-{i}"), b"other-%d" % i))
    ]
    assert asked == expected


def test_read_marks_and_attribution_totals_on_a_cluster(servers: Servers) -> None:
    """The read marks' MULTI/EXEC (one key) and the attribution totals' pipelines."""

    def exercise(config: Config) -> Any:
        marks = RedisReadMarkStore.from_config(config, "rule_triggers")
        totals = RedisAttributionStore.from_config(config)
        try:
            marks.put({"clicks": 10, "orders": 20})
            marks.put({"orders": 25})
            cells = {(m, ch): (100.5, 2.0) for m in ("last", "linear") for ch in ("email", "sms")}
            totals.write_totals(cells)
            return marks.get(), totals.read_totals(("last", "linear", "none"))
        finally:
            marks.close()
            totals.close()

    read, _ = on_both(servers, exercise)
    assert read == {"clicks": 10, "orders": 25}
    assert read_marks_key("omni:", "") != ""


def test_service_reads_on_a_cluster(servers: Servers) -> None:
    """The service's customer lookup (a script on one Redis, two reads on a cluster: the
    owner key and the profile are public keys in different slots) and its stock pipelines."""

    def exercise(config: Config) -> Any:
        prefix = config.redis.key_prefix
        writer = connect(config)
        try:
            writer.set(f"{prefix}id:phone:abc", "cust-1")
            writer.hset(profile_key(prefix, "cust-1"), mapping={"segment": "new"})
            writer.set(f"{prefix}id:email:def", "cust-2")
            for location in ("L1", "L2", "L3"):
                writer.hset(f"{prefix}stock:sku-1:{location}", mapping={"available": 5})
        finally:
            writer.close()

        async def read() -> Any:
            client = connect_async(config)
            try:
                reads = ServiceReads(client, prefix)
                return (
                    await reads.customer("phone:abc"),
                    await reads.customer("email:def"),
                    await reads.customer("phone:none"),
                    await reads.available_to_sell("sku-1", ["L1", "L2", "L3", "L4"], 2),
                )
            finally:
                await client.aclose()

        return asyncio.run(read())

    found, bare, missing, ats = on_both(servers, exercise)
    assert found == ("cust-1", {"segment": "new"})
    assert bare == ("cust-2", {}) and missing is None
    assert ats == {"L1": 3, "L2": 3, "L3": 3, "L4": 0}


T0 = 1_793_500_000_000
REFERENCE = ReferenceData(
    locations={
        loc.location_id: loc
        for loc in (
            Location("WH-N", "warehouse", "N"),
            Location("ST-N1", "store", "N"),
            Location("ST-N2", "store", "N"),
            Location("ST-S1", "store", "S"),
        )
    },
    products={
        p.sku: p
        for p in (
            Product("SKU-A", "grocery", 2.5, 5, 2, None),
            Product("SKU-B", "grocery", 4.0, 3, 2, None),
        )
    },
)


def test_stock_pipelines_on_a_cluster(servers: Servers) -> None:
    """The stock store's pipelines (no MULTI, no script) write and read hashes of many
    slots in one call; on a cluster the client sends each primary its share."""

    def exercise(config: Config) -> Any:
        store = StockStore.from_config(config, REFERENCE)
        try:
            shelves = [(loc, sku) for loc in REFERENCE.locations for sku in ("SKU-A", "SKU-B")]
            written = [
                StockPosition(sku, loc, 10 + i, i, 10, 0, 1, 10.0, T0 + i, f"e{i}", f"e{i}#0")
                for i, (loc, sku) in enumerate(shelves)
            ]
            count = store.write(written)
            return (
                count,
                store.read_sku("SKU-A"),
                store.available_at("SKU-B", list(REFERENCE.locations), "test"),
                store.stores_with_stock("N", "SKU-A", 1, "test"),
            )
        finally:
            store.close()

    count, _, available, stocked = on_both(servers, exercise)
    assert count == 8 and available > 0 and stocked
    keys = StockStore(redis.Redis(), "omni:", REFERENCE).keys
    assert slots([keys.position("SKU-A", loc) for loc in REFERENCE.locations]) > 1


def test_the_visit_prune_script_runs_on_a_cluster(servers: Servers) -> None:
    """Visits of many stores (task hashes of many slots), each store's pruned by the
    script over its task hash and visit index, which share a slot; a reload after SCRIPT
    FLUSH."""
    stores = [f"ST-{n}" for n in range(12)]

    def exercise(config: Config) -> Any:
        store = StockStore.from_config(config, REFERENCE)
        try:
            visits = [
                TaskWrite(s, f"visit-{s}-{n}", b"{}", T0 + n) for s in stores for n in range(5)
            ]
            store.write([], tasks=visits)
            first = [store.prune_visits(s, T0 + 2) for s in stores[:6]]
            store.client.script_flush()
            again = [store.prune_visits(s, T0 + 4) for s in stores]
            return first, again, [sorted(store.tasks(s)) for s in stores]
        finally:
            store.close()

    first, again, _ = on_both(servers, exercise)
    assert first == [2] * 6 and again == [2] * 6 + [4] * 6
    keys = StockStore(redis.Redis(), "omni:", REFERENCE).keys
    assert slots([keys.tasks(s) for s in stores]) > 1


def test_identity_refuses_a_cluster_and_its_script_would_fail_there(servers: Servers) -> None:
    """identity_stitch needs one primary (docs/redis-cluster.md): ``from_config`` says so at
    start, and the compare-and-set script, run anyway, is refused by the cluster."""
    plain, cluster = configs(servers)
    events = [
        EventIdentifiers(f"e-{i}", 1_000 + i, (f"phone:p{i}", f"user:u{i}")) for i in range(5)
    ]
    store = IdentityStore.from_config(plain)
    try:
        assert len(store.resolve_batch(events)) == len(events)
    finally:
        store.close()
    with pytest.raises(ConfigError, match=r"redis\.cluster"):
        IdentityStore.from_config(cluster)
    direct = IdentityStore(connect(cluster), cluster.redis.key_prefix, store.policy, 3600)
    try:
        # Its read of the batch is one MGET over many slots, refused by the client ...
        with pytest.raises(redis.exceptions.RedisClusterException, match="slot"):
            direct.resolve_batch(events)
        # ... and the script itself, checking an owner key next to the global count, by
        # the server, when the two are on different primaries (a node runs a script over
        # its own slots, which is why a single server never tells).
        keys = direct.keys
        nodes = cast("RedisCluster", direct.client)
        count_node = nodes.get_node_from_key(keys.customer_count())
        owner = next(
            keys.owner(f"phone:p{i}")
            for i in range(200)
            if nodes.get_node_from_key(keys.owner(f"phone:p{i}")) != count_node
        )
        doc: dict[str, list[str]] = {
            name: [] for name in ("versions", "owner_writes", "delete", "delete_customers")
        }
        doc.update(owner_keys=[owner], owner_values=[""], customers=[], sightings=[], results=[])
        with pytest.raises(redis.ResponseError, match="key"):
            direct._apply(keys=[keys.customer_count()], args=[orjson.dumps(doc), 3600, 60])
    finally:
        direct.close()
