"""``omnistream bench`` as a smoke test: it runs end to end on a small stream and writes the
JSON the issue specifies, every figure positive. Speed itself is not asserted here (shared,
noisy machines): the benchmark prints it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
FLOWS = ("stock_pool", "identity_stitch", "rule_triggers", "attribution")


def test_bench_smoke_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "omnistream.cli", "bench", "--events", "20000"]
    command += ["--latency-seconds", "10", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "omnistream bench" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["events"] == 20000
    assert figures["reference_eps"] > 0 and figures["raw_ceiling_eps"] > 0
    assert set(figures["flows"]) == set(FLOWS)
    runs = figures["reference_runs"]  # before each flow and after the last
    assert len(runs) == len(FLOWS) + 1 and min(runs) > 0
    assert min(runs) <= figures["reference_eps"] <= max(runs)
    for name in FLOWS:
        row = figures["flows"][name]
        assert row["eps"] > 0 and row["ratio"] > 0 and row["peak_rss_mb"] > 0, (name, row)
        assert row["ratio"] == pytest.approx(row["eps"] / row["reference_eps"], abs=0.001)
    latency = figures["latency"]
    assert latency["offered_eps"] == 1000
    for key in ("trigger_p50_ms", "trigger_p99_ms", "stock_freshness_p99_ms"):
        assert latency[key] > 0, (key, latency)
