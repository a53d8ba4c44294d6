"""``omnistream.processes.scrape`` against a real metrics server: with ``names``, the
process renders only the metrics asked for (what the bench's samplers use, so that
sampling a flow 20 times a second does not slow it), and the figures are the same."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from omnistream.embedded import free_port
from omnistream.processes import scrape, total


def test_a_named_scrape_returns_only_that_metric_with_the_same_figures() -> None:
    registry = CollectorRegistry()
    consumed = Counter("omnistream_events_consumed", "c", ["flow", "topic"], registry=registry)
    lag = Gauge("omnistream_consumer_lag_messages", "g", ["flow"], registry=registry)
    consumed.labels("rule_triggers", "omni.events.resolved").inc(7)
    consumed.labels("reference", "omni.pos.sales").inc(3)
    lag.labels("rule_triggers").set(12)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        whole = scrape(port)
        named = scrape(port, names=("omnistream_events_consumed_total",))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert whole is not None and named is not None
    assert "omnistream_consumer_lag_messages" in whole
    assert set(named) == {"omnistream_events_consumed_total"}
    for flow in ("rule_triggers", "reference"):
        assert total(named, "omnistream_events_consumed_total", flow=flow) == total(
            whole, "omnistream_events_consumed_total", flow=flow
        )
