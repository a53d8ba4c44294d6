"""Pruning the rows Bytewax keeps for discarded keys (``state.recovery_prune``), on
partitions written by real Bytewax runs: a resume from the pruned partitions loads what a
resume from the same partitions unpruned loads, and the discarded keys' names are gone."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from state.recovery_prune import prune_partition, prune_recovery_dir

KEYS = [f"cust-{n:02d}" for n in range(16)]
#: Before the abort: every key counted; even keys discarded, every fourth counted again
#: after its discard (its tombstone is then not its newest row), the last one discarded
#: twice.
BEFORE = (
    [(k, "add") for k in KEYS]
    + [(k, "drop") for k in KEYS[::2]]
    + [(k, "add") for k in KEYS[::4]]
    + [(KEYS[-2], "drop")]
)
#: After the resume: each key says what it holds.
AFTER = [(k, "show") for k in KEYS]


def count(state: int | None, value: str) -> tuple[int | None, tuple[str, int | None]]:
    """A count per key; ``drop`` discards the key (Bytewax writes its tombstone)."""
    if value == "drop":
        return None, ("dropped", None)
    if value == "show":
        return state, ("holds", state)
    return (state or 0) + 1, ("added", (state or 0) + 1)


def run(directory: Path, out: list[Any]) -> None:
    """The counting flow on the partitions in ``directory``: the first run ends after
    ``BEFORE``, a resume reads ``AFTER``."""
    items: list[Any] = [*BEFORE, TestingSource.EOF(), *AFTER]
    flow = Dataflow("prune_check")
    counted = op.stateful_map("count", op.input("in", flow, TestingSource(items)), count)
    op.output("out", counted, TestingSink(out))
    run_main(
        flow,
        epoch_interval=timedelta(0),
        recovery_config=RecoveryConfig(str(directory), backup_interval=timedelta(0)),
    )


def rows(directory: Path) -> dict[str, list[tuple[str, str, int, bool]]]:
    """Each partition's snaps rows: step, key, epoch, and whether it is a tombstone."""
    found = {}
    for part in sorted(directory.glob("part-*.sqlite3")):
        with closing(sqlite3.connect(part)) as db:
            found[part.name] = sorted(
                db.execute(
                    "SELECT step_id, state_key, snap_epoch, ser_change IS NULL FROM snaps"
                ).fetchall()
            )
    return found


def lone_tombstones(directory: Path) -> set[tuple[str, str]]:
    found = set()
    for part_rows in rows(directory).values():
        per_key: dict[tuple[str, str], list[bool]] = {}
        for step, key, _, tombstone in part_rows:
            per_key.setdefault((step, key), []).append(bool(tombstone))
        found |= {key for key, kinds in per_key.items() if kinds == [True]}
    return found


@pytest.fixture
def first_run(tmp_path: Path) -> Path:
    """Two partitions after the first run of the flow, ended after ``BEFORE``."""
    directory = tmp_path / "recovery"
    directory.mkdir()
    init_db_dir(directory, 2)
    out: list[Any] = []
    run(directory, out)
    assert len(out) == len(BEFORE)
    return directory


def test_a_resume_from_pruned_partitions_loads_what_an_unpruned_one_loads(
    first_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unpruned = tmp_path / "unpruned"
    shutil.copytree(first_run, unpruned)
    before = rows(first_run)
    # Every key's rows are in one partition (what makes "alone in its file" enough).
    files_of: dict[tuple[str, str], set[str]] = {}
    for name, part_rows in before.items():
        for step, key, _, _ in part_rows:
            files_of.setdefault((step, key), set()).add(name)
    assert all(len(names) == 1 for names in files_of.values())
    assert {len(r) > 0 for r in before.values()} == {True}  # both partitions hold keys
    lone = lone_tombstones(first_run)
    # The keys discarded and not counted again; those counted again keep no tombstone.
    assert {key for _, key in lone} == set(KEYS[::2]) - set(KEYS[::4])
    assert len({step for step, _ in lone}) == 1

    with caplog.at_level(logging.INFO, logger="state.recovery_prune"):
        result = prune_recovery_dir(first_run)
    assert result.pruned == len(lone) and result.skipped == []
    assert [r.getMessage() for r in caplog.records] == [
        f"recovery: pruned {len(lone)} row(s) of discarded keys from {first_run}"
    ]
    after = rows(first_run)
    for name, part_rows in before.items():
        gone = {(step, key) for step, key, _, _ in part_rows} - {
            (step, key) for step, key, _, _ in after[name]
        }
        assert gone <= lone
        assert [r for r in part_rows if (r[0], r[1]) not in lone] == after[name]
    assert lone_tombstones(first_run) == set()
    # Nor are their bytes left in the files' free space (nor those of the rows Bytewax's
    # own garbage collection deleted before: the discarded keys' earlier states).
    for part in first_run.glob("part-*.sqlite3*"):
        data = part.read_bytes()
        for _, key in lone:
            assert key.encode() not in data, (part.name, key)

    pruned_out: list[Any] = []
    unpruned_out: list[Any] = []
    run(first_run, pruned_out)
    run(unpruned, unpruned_out)
    assert sorted(pruned_out) == sorted(unpruned_out)
    discarded = set(KEYS[::2]) - set(KEYS[::4])
    shown = dict(item for item in pruned_out if item[1][0] == "holds")
    assert shown == {key: ("holds", None if key in discarded else 1) for key in KEYS}


def test_a_tombstone_a_resume_could_replay_past_or_with_older_rows_is_kept(
    first_run: Path,
) -> None:
    """Above the commit epoch (a resume may replay that epoch), or with an older row of
    its key still there, a tombstone is Bytewax's to keep."""
    prune_recovery_dir(first_run)  # the flow's own lone tombstones
    [part, *_] = sorted(first_run.glob("part-*.sqlite3"))
    with closing(sqlite3.connect(part)) as db, db:
        (commit,) = db.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()
        db.executemany(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES ('s', ?, ?, ?)",
            [
                ("late", commit + 1, None),
                ("shadowing", commit - 1, b"state"),
                ("shadowing", commit, None),
                ("alone", commit, None),
            ],
        )
    assert prune_partition(part) == 1
    with closing(sqlite3.connect(part)) as db:
        kept = db.execute("SELECT state_key, snap_epoch FROM snaps WHERE step_id = 's'").fetchall()
    assert sorted(kept) == [("late", commit + 1), ("shadowing", commit - 1), ("shadowing", commit)]


def test_partitions_that_cannot_be_pruned_are_one_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "recovery"
    directory.mkdir()
    init_db_dir(directory, 3)
    (directory / "part-1.sqlite3").write_bytes(b"not a database" * 100)
    locker = sqlite3.connect(directory / "part-2.sqlite3", timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with caplog.at_level(logging.INFO, logger="state.recovery_prune"):
            result = prune_recovery_dir(directory, lock_wait_s=0.1)
            missing = prune_recovery_dir(tmp_path / "nowhere")
    finally:
        locker.rollback()
        locker.close()
    assert result.pruned == 0
    assert [name for name, _ in result.skipped] == ["part-1.sqlite3", "part-2.sqlite3"]
    assert missing.skipped == [(str(tmp_path / "nowhere"), "no such directory")]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and not any(r.exc_info for r in caplog.records)
    assert "part-1.sqlite3 not pruned: file is not a database" in lines[0]
    assert "part-2.sqlite3 not pruned: database is locked" in lines[1]
    assert lines[2] == f"recovery: pruned 0 row(s) of discarded keys from {directory}"
    assert lines[3].endswith("nowhere not pruned: no such directory")
