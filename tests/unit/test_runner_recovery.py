"""Recovery partitions are created so that a process killed while creating them cannot stop
every later start (a SIGKILL before the first snapshot must end like no crash at all)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, TestingSource, run_main

from omnistream.runner import prepare_recovery


def resumes(config: RecoveryConfig) -> list[int]:
    """Bytewax can run a small dataflow on these partitions."""
    out: list[int] = []
    flow = Dataflow("recovery_check")
    op.output("out", op.input("in", flow, TestingSource([1, 2, 3])), TestingSink(out))
    run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=config)
    return out


def test_first_start_creates_every_partition_and_leaves_no_scratch(tmp_path: Path) -> None:
    config = prepare_recovery(str(tmp_path / "rec"), 2, timedelta(seconds=1))
    assert config is not None
    names = sorted(p.name for p in (tmp_path / "rec").iterdir())
    assert names == ["part-0.sqlite3", "part-1.sqlite3"]
    assert resumes(config) == [1, 2, 3]
    # A later start keeps them (the resume state is in there).
    before = (tmp_path / "rec" / "part-0.sqlite3").stat().st_mtime_ns
    prepare_recovery(str(tmp_path / "rec"), 2, timedelta(seconds=1))
    assert (tmp_path / "rec" / "part-0.sqlite3").stat().st_mtime_ns == before


def test_a_start_killed_while_creating_partitions_is_started_over(tmp_path: Path) -> None:
    """What a kill mid-creation leaves: a scratch directory with a half-made part-0 and
    part-1 already moved in. Before, a half-made part-0 in the directory itself made every
    later start fail with "No recovery partitions found on any worker"."""
    rec = tmp_path / "rec"
    (rec / ".init-killed").mkdir(parents=True)
    (rec / ".init-killed" / "part-0.sqlite3").write_bytes(b"")
    (rec / "part-1.sqlite3").write_bytes(b"")
    config = prepare_recovery(str(rec), 2, timedelta(seconds=1))
    assert config is not None
    assert sorted(p.name for p in rec.iterdir()) == ["part-0.sqlite3", "part-1.sqlite3"]
    assert resumes(config) == [1, 2, 3]


def test_no_directory_no_recovery() -> None:
    assert prepare_recovery("", 1, timedelta(seconds=1)) is None
