"""Every Lua script of the stores keeps to one Redis Cluster hash slot for representative
arguments — the keys it declares and the keys it builds inside (which a cluster node must
also own) — or is listed as needing one primary, with the reason (docs/redis-cluster.md).

The scripts are found by scanning the state modules for Lua sources, so a new script that
is in neither list fails ``test_every_script_is_classified`` until someone says which it
is. ``tests/integration/test_redis_cluster.py`` runs them on a real cluster.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import pytest
import redis
from redis.crc import key_slot

import state
from state import experiment_store, identity_store, profile_store, service_reads, stock_store
from state.experiment_store import RedisExperimentStore
from state.identity_store import IdentityKeys
from state.profile_store import RedisProfileStore
from state.read_marks import read_marks_key
from state.stock_store import StockKeys

PREFIXES = ("omni:", "tenant-7:", "")


def slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


def _client() -> redis.Redis:
    """A client that never connects (the stores only register scripts when built)."""
    return redis.Redis(host="127.0.0.1", port=1)


def profile_replace_keys(prefix: str) -> list[str]:
    store = RedisProfileStore(_client(), prefix, 400.0)
    return [store.key("cust-1")]


def segment_keys(prefix: str) -> list[str]:
    return RedisProfileStore(_client(), prefix, 400.0)._segment_keys()


def experiment_forget_keys(prefix: str) -> list[str]:
    """The index set it declares and the arm hashes it reads from the set's members."""
    store = RedisExperimentStore(_client(), prefix)
    arms = [store.key(rule, variant) for rule in ("r1", "win-back", "x:y") for variant in "AB"]
    return [store.index, *arms, store.stock_index]


def visit_prune_keys(prefix: str) -> list[str]:
    """The store's public task hash (CONTRACT §10, its name unchanged) and its visit index."""
    keys = StockKeys(prefix)
    return [keys.tasks("ST-SH-01"), keys.visit_index("ST-SH-01")]


#: script name → (its source, the keys it touches for a prefix); each in one slot.
SLOT_LOCAL: dict[str, tuple[str, Callable[[str], list[str]]]] = {
    "profile_store._REPLACE_PROFILE": (profile_store._REPLACE_PROFILE, profile_replace_keys),
    "profile_store._PLACE_CUSTOMERS": (profile_store._PLACE_CUSTOMERS, segment_keys),
    "profile_store._COUNT_SEGMENTS": (profile_store._COUNT_SEGMENTS, segment_keys),
    "experiment_store._FORGET": (experiment_store._FORGET, experiment_forget_keys),
    "stock_store._PRUNE_VISITS": (stock_store._PRUNE_VISITS, visit_prune_keys),
}


@pytest.mark.parametrize(
    ("prefix", "store_id"),
    [("omni{t1}:", "ST-1"), ("omni:", "ST{7}"), ("{a}{b}:", "ST{7}"), ("omni:", "ST-{")],
)
def test_a_visit_index_shares_its_task_hash_slot_whatever_tags_the_names_hold(
    prefix: str, store_id: str
) -> None:
    """A test run's prefix holds a hash tag (``tests/conftest.py``), a store id might."""
    keys = StockKeys(prefix)
    assert len(slots([keys.tasks(store_id), keys.visit_index(store_id)])) == 1


def identity_apply_keys(prefix: str) -> list[str]:
    keys = IdentityKeys(prefix)
    return [
        keys.customer_count(),
        keys.owner("phone:abc"),
        keys.owner("user:u-1"),
        keys.customer("cust-1"),
        keys.sightings("phone:abc"),
        keys.result("e-1"),
    ]


def customer_lookup_keys(prefix: str) -> list[str]:
    return [IdentityKeys(prefix).owner("phone:abc"), service_reads.profile_key(prefix, "cust-1")]


#: script name → (source, keys for a prefix, why it is not slot-local and what runs instead).
SINGLE_PRIMARY: dict[str, tuple[str, Callable[[str], list[str]], str]] = {
    "identity_store._APPLY": (
        identity_store._APPLY,
        identity_apply_keys,
        "public owner keys (CONTRACT §5) of unrelated identifiers; identity refuses a cluster",
    ),
    "service_reads._CUSTOMER": (
        service_reads._CUSTOMER,
        customer_lookup_keys,
        "public owner and profile keys; on a cluster the service reads them one by one",
    ),
}


def lua_sources() -> dict[str, str]:
    """Every module-level string of ``state`` that calls ``redis.call``: name → source."""
    found: dict[str, str] = {}
    for info in pkgutil.iter_modules(state.__path__):
        module = importlib.import_module(f"state.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, str) and "redis.call(" in value:
                found[f"{info.name}.{name}"] = value
    return found


def test_every_script_is_classified() -> None:
    sources = lua_sources()
    assert len(sources) >= len(SLOT_LOCAL) + len(SINGLE_PRIMARY)
    known = {source for source, *_ in [*SLOT_LOCAL.values(), *SINGLE_PRIMARY.values()]}
    unclassified = [name for name, source in sources.items() if source not in known]
    assert not unclassified, f"say whether these keep to one slot: {unclassified}"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("name", list(SLOT_LOCAL))
def test_slot_local_scripts_touch_one_slot(name: str, prefix: str) -> None:
    _source, keys_of = SLOT_LOCAL[name]
    keys = keys_of(prefix)
    assert len(slots(keys)) == 1, keys


@pytest.mark.parametrize("prefix", PREFIXES)
def test_single_primary_scripts_do_span_slots(prefix: str) -> None:
    """Were they ever made slot-local, move them to SLOT_LOCAL (and lift identity's refusal)."""
    for name, (_source, keys_of, _why) in SINGLE_PRIMARY.items():
        assert len(slots(keys_of(prefix))) > 1, name


def test_the_read_marks_transaction_is_one_key() -> None:
    """``RedisReadMarkStore.put`` is MULTI/EXEC over its one hash: one slot by construction;
    a second key there would need the same hash tag."""
    assert read_marks_key("omni:", "shop-") == "omni:replay_read:shop-"
