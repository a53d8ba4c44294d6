"""The experiment report on ``omnistream serve``'s ``/metrics`` (``omnistream.experiment_metrics``):
every figure exported is the one ``domain.experiments.report`` computes from the same store's
tallies, the control has no uplift, the report is recomputed at most once per cache period,
and a Redis that fails costs the scrape its experiment figures only — never ``/metrics``.

The store is the in-memory one (the Redis store's tallies are the same by the store contract,
``test_experiment_store_contract.py``), except for the failure on a real closed port.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from base.config import Config
from connectors.reference_files import load_reference
from domain.experiments import ArmReport, ArmTally, report
from omnistream.embedded import free_port
from omnistream.experiment_metrics import (
    ARM_LABELS,
    FAILURES,
    FIGURES,
    SERIES,
    VERDICT,
    ExperimentMetrics,
)
from omnistream.serve import create_app
from state.experiment_store import MemoryExperimentStore, RedisExperimentStore
from state.redis_io import connect, connect_async

#: (rule, variant, customers, converted): one rule with a control and two variants (enough
#: customers for a verdict), one whose control is too small, one without a control.
ARMS = [
    ("cart-abandonment", "control", 120, 12),
    ("cart-abandonment", "amount_15", 540, 97),
    ("cart-abandonment", "free_shipping", 530, 61),
    ("browse-nearby", "control", 9, 1),
    ("browse-nearby", "ten_percent", 80, 11),
    ("lapsed", "fifteen_percent", 40, 3),
]


def fill(store: MemoryExperimentStore, arms: list[tuple[str, str, int, int]] = ARMS) -> None:
    """Each arm's customers sent a trigger; the first ``converted`` of them converted (a few
    sent a second trigger after the cooldown, which must not count them twice)."""
    sent, converted = [], []
    for rule, variant, customers, conversions in arms:
        for i in range(customers):
            customer = f"cust-{rule}-{variant}-{i}"
            sent.append((rule, variant, f"{rule}-{variant}-{i}", customer))
            if i % 7 == 0:
                sent.append((rule, variant, f"{rule}-{variant}-{i}-again", customer))
            if i < conversions:
                converted.append((rule, variant, f"{rule}-{variant}-{i}", 1_000 + i))
    store.record(sent, converted)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class CountedTallies:
    """The store's tallies, counting the reads (each one a whole-hash read on Redis)."""

    def __init__(self, store: MemoryExperimentStore) -> None:
        self.store = store
        self.reads = 0
        self.failure: Exception | None = None

    def __call__(self) -> list[ArmTally]:
        self.reads += 1
        if self.failure is not None:
            raise self.failure
        return self.store.tallies()


def registered(collector: ExperimentMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return registry


def exported(registry: CollectorRegistry) -> dict[str, dict[tuple[str, ...], float]]:
    """Sample name → labels (in the family's label order) → value, through the text format
    Prometheus reads."""
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            key = tuple(sample.labels[k] for k in sorted(sample.labels))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def test_every_figure_is_the_reports_and_the_control_has_no_uplift() -> None:
    store = MemoryExperimentStore()
    fill(store)
    registry = registered(ExperimentMetrics(store.tallies, cache_s=30))
    got = exported(registry)
    expected: dict[tuple[str, str], ArmReport] = {
        (r.tally.rule_id, r.tally.variant): r for r in report(store.tallies())
    }
    assert len(expected) == len(ARMS)
    for figure in FIGURES:
        want = {
            arm: float(value)
            for arm, r in expected.items()
            if (value := figure.value(r)) is not None
        }
        assert got.get(figure.name, {}) == pytest.approx(want), figure.name
    # the figures by hand, for one arm and against its control
    arm = ("cart-abandonment", "amount_15")
    assert got["omnistream_experiment_customers"][arm] == 540
    assert got["omnistream_experiment_converted_customers"][arm] == 97
    assert got["omnistream_experiment_conversion_rate"][arm] == pytest.approx(97 / 540)
    assert got["omnistream_experiment_uplift"][arm] == pytest.approx(97 / 540 - 12 / 120)
    low = got["omnistream_experiment_uplift_ci_low"][arm]
    high = got["omnistream_experiment_uplift_ci_high"][arm]
    assert low < got["omnistream_experiment_uplift"][arm] < high
    controls = {a for a in expected if a[1] == "control"}
    for name in ("uplift", "uplift_ci_low", "uplift_ci_high", "p_value"):
        assert not controls & set(got[f"omnistream_experiment_{name}"]), name
    # no control, no comparison
    assert ("lapsed", "fifteen_percent") not in got["omnistream_experiment_uplift"]
    verdicts = {(rule, variant): v for rule, variant, v in got[VERDICT]}
    assert verdicts == {arm: r.verdict for arm, r in expected.items()}
    assert verdicts[("browse-nearby", "ten_percent")] == "too small"
    assert verdicts[("lapsed", "fifteen_percent")] == "no control"
    assert set(got[VERDICT].values()) == {1.0}
    assert got[f"{FAILURES}_total"] == {(): 0.0}


def test_an_arm_without_customers_has_no_rate() -> None:
    """Conversions left of an arm whose triggers were erased: no customer, no rate."""
    store = MemoryExperimentStore()
    store.record([], [("cart-abandonment", "amount_15", "gone", 1_000)])
    got = exported(registered(ExperimentMetrics(store.tallies, cache_s=30)))
    assert got["omnistream_experiment_customers"] == {("cart-abandonment", "amount_15"): 0}
    assert "omnistream_experiment_conversion_rate" not in got


def test_what_is_exported_is_what_the_board_test_knows() -> None:
    store = MemoryExperimentStore()
    fill(store)
    registry = registered(ExperimentMetrics(store.tallies, cache_s=30))
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            assert sample.name in SERIES
            assert set(sample.labels) == SERIES[sample.name]
    assert set(ARM_LABELS) == {"rule", "variant"}


def test_the_report_is_recomputed_at_most_once_per_cache_period() -> None:
    store = MemoryExperimentStore()
    fill(store, ARMS[:2])
    tallies, clock = CountedTallies(store), Clock()
    collector = ExperimentMetrics(tallies, cache_s=30, clock=clock)
    registry = registered(collector)
    assert tallies.reads == 0  # registering reads nothing (describe)
    first = exported(registry)
    fill(store, ARMS[2:3])  # a new arm, not seen until the cache expires
    clock.now += 29.9
    assert exported(registry) == first
    assert tallies.reads == 1
    clock.now += 0.1
    later = exported(registry)
    assert tallies.reads == 2
    assert ("cart-abandonment", "free_shipping") in later["omnistream_experiment_uplift"]


def test_a_redis_failure_costs_the_scrape_its_experiment_figures_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryExperimentStore()
    fill(store)
    tallies, clock = CountedTallies(store), Clock()
    registry = registered(ExperimentMetrics(tallies, cache_s=30, where="Redis here", clock=clock))
    tallies.failure = redis.ConnectionError("Connection refused")
    with caplog.at_level(logging.WARNING, logger="omnistream.experiment_metrics"):
        got = exported(registry)
        clock.now += 5
        assert exported(registry) == got  # no second try within the cache period
    assert got == {f"{FAILURES}_total": {(): 1.0}}
    assert tallies.reads == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "Redis here unavailable" in lines[0], lines
    assert "Traceback" not in caplog.text
    tallies.failure = None
    clock.now += 30
    back = exported(registry)
    assert back["omnistream_experiment_customers"][("cart-abandonment", "control")] == 120
    assert back[f"{FAILURES}_total"] == {(): 1.0}


def test_an_unexpected_failure_is_contained_too(caplog: pytest.LogCaptureFixture) -> None:
    tallies = CountedTallies(MemoryExperimentStore())
    tallies.failure = ValueError("invalid literal for int() with base 10: 'x'")
    with caplog.at_level(logging.ERROR, logger="omnistream.experiment_metrics"):
        got = exported(registered(ExperimentMetrics(tallies, cache_s=30)))
    assert got == {f"{FAILURES}_total": {(): 1.0}}
    assert len(caplog.records) == 1


def test_a_redis_that_is_not_there_leaves_metrics_answering() -> None:
    """redis-py's real connection failure, through the Redis store."""
    config = Config().with_overrides(redis={"url": f"redis://127.0.0.1:{free_port()}/0"})
    store = RedisExperimentStore(
        connect(config, socket_timeout_s=1, connect_timeout_s=1), config.redis.key_prefix
    )
    try:
        got = exported(registered(ExperimentMetrics(store.tallies, cache_s=30)))
    finally:
        store.close()
    assert got == {f"{FAILURES}_total": {(): 1.0}}


@pytest.fixture
def service_with_experiments() -> Iterator[TestClient]:
    """The service's app, with the collector in the default registry as ``run`` puts it."""
    store = MemoryExperimentStore()
    fill(store)
    collector = ExperimentMetrics(store.tallies, cache_s=30)
    config = Config().with_overrides(
        redis={"url": f"redis://127.0.0.1:{free_port()}/0"}, pii={"key": "unit-secret"}
    )
    redis_client = connect_async(config, socket_timeout_s=1, connect_timeout_s=1)
    REGISTRY.register(collector)
    try:
        app = create_app(config, load_reference(config), redis_client)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        REGISTRY.unregister(collector)
        asyncio.run(redis_client.aclose())


def test_the_service_metrics_carry_the_experiment_report(
    service_with_experiments: TestClient,
) -> None:
    response = service_with_experiments.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert (
        'omnistream_experiment_conversion_rate{rule="cart-abandonment",variant="amount_15"}' in text
    )
    assert 'omnistream_experiment_verdict{rule="lapsed",variant="fifteen_percent",' in text
    assert "omnistream_http_requests_total" in text  # the rest of the registry is still there
