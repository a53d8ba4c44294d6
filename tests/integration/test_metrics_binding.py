"""The metrics endpoint of a flow listens on loopback unless configured otherwise."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from base.config import Config, dump_config
from omnistream.embedded import free_port
from omnistream.processes import scrape, start_flow, stop_process, wait_for_metrics

pytestmark = pytest.mark.integration


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.add(address)
    return found


def test_metrics_listen_on_loopback_by_default(omni_config: Config, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    dump_config(omni_config.with_overrides(metrics={"port": port}), path)
    with (tmp_path / "flow.log").open("wb") as log:
        flow = start_flow("stock_pool", path, log=log)
    try:
        wait_for_metrics(port, flow)
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
        samples = scrape(port)
        assert samples is not None and "omnistream_events_consumed_total" in samples
        assert "process_resident_memory_bytes" in samples
    finally:
        assert stop_process(flow) == 0


def test_metrics_on_all_interfaces_when_configured(omni_config: Config, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    dump_config(omni_config.with_overrides(metrics={"port": port, "host": "0.0.0.0"}), path)
    with (tmp_path / "flow.log").open("wb") as log:
        flow = start_flow("stock_pool", path, log=log)
    try:
        wait_for_metrics(port, flow)
        assert "00000000" in listening_addresses(port)  # 0.0.0.0: Bytewax's API server
        # Bytewax registers its own metrics once the dataflow runs, which can come a moment
        # after the endpoint answers: wait for them (a single scrape failed once in CI).
        deadline = time.monotonic() + 30
        samples = scrape(port)
        while not any(name.startswith("bytewax_") for name in samples or ()):
            assert time.monotonic() < deadline, f"no bytewax_ metrics: {sorted(samples or ())}"
            time.sleep(0.2)
            samples = scrape(port)
    finally:
        assert stop_process(flow) == 0
