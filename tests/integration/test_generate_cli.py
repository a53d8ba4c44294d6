"""``omnistream generate`` produces the requested, reproducible traffic into a real broker."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import pytest

from base.config import Config, dump_config
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration


def test_generate_writes_the_counted_events_to_the_input_topics(
    omni_config: Config, tmp_path: Path
) -> None:
    config_path = tmp_path / "omni.yaml"
    dump_config(omni_config, config_path)
    reply = subprocess.run(
        [
            sys.executable,
            "-m",
            "omnistream.cli",
            "generate",
            "--config",
            str(config_path),
            "--count",
            "3000",
            "--bad-ratio",
            "0.05",
            "--no-progress",
            "--seed",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reply.returncode == 0, reply.stderr[-2000:]
    counts = collections.Counter()
    for topic in ("clickstream", "pos.sales", "wms.movements"):
        counts[topic] = len(read_topic(omni_config, topic, timeout_s=30))
    assert sum(counts.values()) == 3000
    assert all(counts[topic] > 0 for topic in counts)
