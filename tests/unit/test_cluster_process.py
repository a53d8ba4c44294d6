"""One process of a cluster (``omnistream.cluster``): its recovery partitions and metrics
port, the checks before it starts, the one line for a lost peer, and the watch that ends a
process the cluster cannot go on with (fake thread lists stand for Bytewax's threads)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from base import stopping
from base.config import Config, ConfigError
from omnistream.cluster import (
    ClusterShape,
    ClusterWatch,
    check_own_address,
    check_recovery_layout,
    lost_peer,
)
from omnistream.preflight import Unreachable
from omnistream.runner import prepare_recovery
from tests.unit.test_runner_recovery import resumes

TWO = ("127.0.0.1:7001", "127.0.0.1:7002")


@pytest.fixture(autouse=True)
def no_stop() -> Iterator[None]:
    stopping.clear()
    yield
    stopping.clear()


def test_each_process_keeps_its_share_of_the_recovery_partitions(tmp_path: Path) -> None:
    shapes = [ClusterShape(TWO, n, workers=2) for n in (0, 1)]
    assert [s.recovery_parts() for s in shapes] == [(4, range(0, 2)), (4, range(2, 4))]
    for shape in shapes:
        total, keep = shape.recovery_parts()
        directory = shape.recovery_dir(str(tmp_path / "rec"))
        config = prepare_recovery(directory, total, timedelta(seconds=1), keep=keep, processes=2)
        assert config is not None
    assert sorted(p.name for p in (tmp_path / "rec" / "process-0").iterdir()) == [
        "part-0.sqlite3",
        "part-1.sqlite3",
    ]
    assert sorted(p.name for p in (tmp_path / "rec" / "process-1").iterdir()) == [
        "part-2.sqlite3",
        "part-3.sqlite3",
    ]


def test_one_process_keeps_the_layout_it_always_had(tmp_path: Path) -> None:
    shape = ClusterShape((), 0, workers=2)
    assert shape.recovery_dir(str(tmp_path)) == str(tmp_path)
    assert shape.recovery_parts() == (2, range(0, 2))
    # One address alone is one process too.
    assert not ClusterShape(("h:1",), 0, 1).several
    config = prepare_recovery(str(tmp_path / "rec"), 2, timedelta(seconds=1))
    assert config is not None and resumes(config) == [1, 2, 3]


def test_a_share_killed_while_being_created_is_created_again(tmp_path: Path) -> None:
    rec = tmp_path / "process-1"
    (rec / ".init-killed").mkdir(parents=True)
    (rec / ".init-killed" / "part-2.sqlite3").write_bytes(b"")  # not moved in yet
    (rec / "part-3.sqlite3").write_bytes(b"")  # moved in before the kill
    config = prepare_recovery(str(rec), 4, timedelta(seconds=1), keep=range(2, 4), processes=2)
    assert config is not None
    assert sorted(p.name for p in rec.iterdir()) == ["part-2.sqlite3", "part-3.sqlite3"]


def test_more_workers_later_resume_from_the_partitions_there(tmp_path: Path) -> None:
    """The count is fixed when the partitions are made; Bytewax resumes them on any number
    of workers, but only from one count across the cluster."""
    rec = tmp_path / "process-1"
    prepare_recovery(str(rec), 4, timedelta(seconds=1), keep=range(2, 4), processes=2)
    again = ClusterShape(TWO, 1, workers=3)
    total, keep = again.recovery_parts()
    config = prepare_recovery(str(rec), total, timedelta(seconds=1), keep=keep, processes=2)
    assert config is not None
    assert sorted(p.name for p in rec.iterdir()) == ["part-2.sqlite3", "part-3.sqlite3"]


def test_a_share_of_another_number_of_processes_is_refused(tmp_path: Path) -> None:
    """Bytewax would refuse it too, but in a cluster its reason is lost: every process
    reports only a lost connection."""
    rec = tmp_path / "process-1"
    prepare_recovery(str(rec), 2, timedelta(seconds=1), keep=range(1, 2), processes=2)
    with pytest.raises(ConfigError) as refused:
        prepare_recovery(str(rec), 3, timedelta(seconds=1), keep=range(1, 2), processes=3)
    text = str(refused.value)
    assert f"{rec}: key `recovery.dir`" in text
    assert "a flow of 3 process(es), found 1 of 2 (made for 2 processes)" in text
    # One process started on one process's share of a cluster (recovery.dir = process-1).
    with pytest.raises(ConfigError, match=r"found 1 of 2 \(made for 2 processes\)"):
        prepare_recovery(str(rec), 1, timedelta(seconds=1))


def test_metrics_ports_differ_on_one_host_only() -> None:
    assert [ClusterShape(TWO, n, 1).metrics_port(3030) for n in (0, 1)] == [3030, 3031]
    pods = ("flow-0.flow:2101", "flow-1.flow:2101")
    assert [ClusterShape(pods, n, 1).metrics_port(3030) for n in (0, 1)] == [3030, 3030]
    assert ClusterShape((), 0, 1).metrics_port(3030) == 3030


def test_a_cluster_refuses_a_single_process_recovery_directory(tmp_path: Path) -> None:
    prepare_recovery(str(tmp_path), 1, timedelta(seconds=1))
    config = Config().with_overrides(recovery={"dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"key `recovery\.dir`.*found the snapshots of the flow"):
        check_recovery_layout(config, ClusterShape(TWO, 0, 1))
    check_recovery_layout(config, ClusterShape((), 0, 1))  # one process resumes from them


def test_one_process_refuses_a_cluster_recovery_directory(tmp_path: Path) -> None:
    shape = ClusterShape(TWO, 1, 1)
    total, keep = shape.recovery_parts()
    directory = shape.recovery_dir(str(tmp_path))
    prepare_recovery(directory, total, timedelta(seconds=1), keep=keep, processes=2)
    config = Config().with_overrides(recovery={"dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"found a cluster's \(process-1\)"):
        check_recovery_layout(config, ClusterShape((), 0, 1))
    check_recovery_layout(config, shape)


def test_an_address_this_process_cannot_listen_on_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        shape = ClusterShape(("127.0.0.1:1", f"127.0.0.1:{port}"), 1, 1)
        with pytest.raises(Unreachable) as raised:
            check_own_address(shape)
    line = str(raised.value)
    assert "\n" not in line
    assert f"process 1 cannot listen on 127.0.0.1:{port}, its address in flow.addresses" in line
    assert "another process may already run as process 1" in line
    check_own_address(ClusterShape(("127.0.0.1:1", f"127.0.0.1:{port}"), 1, 1))  # free again


def test_a_lost_connection_is_one_line_and_other_errors_are_not_touched() -> None:
    class PanicException(BaseException):  # pyo3's, as Bytewax raises it
        pass

    shape = ClusterShape(TWO, 0, 1)
    try:
        try:
            raise PanicException("Send thread panic: Any { .. }")
        except PanicException as panic:
            raise RuntimeError("error during execution") from panic
    except RuntimeError as wrapped:
        lost = lost_peer(wrapped, shape)
    assert lost is not None
    assert str(lost).startswith("process 0 of 2 (127.0.0.1:7001,127.0.0.1:7002) lost its")
    assert lost_peer(RuntimeError("a step failed"), shape) is None


class FakeThreads:
    """What ``/proc/self/task`` would list, set by the test."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __call__(self) -> list[str]:
        return list(self.names)


def watch(
    threads: FakeThreads, wait_s: float = 5.0, grace_s: float = 0.3
) -> tuple[ClusterWatch, list[int]]:
    exits: list[int] = []
    watcher = ClusterWatch(
        "stock_pool",
        ClusterShape(TWO, 0, 1),
        wait_s,
        grace_s,
        threads=threads,
        exit_process=exits.append,
        filter_stdout=False,
        poll_s=0.01,
    )
    return watcher, exits


def until(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def test_a_cluster_that_does_not_form_ends_the_process(caplog: pytest.LogCaptureFixture) -> None:
    watcher, exits = watch(FakeThreads([]), wait_s=0.1)
    with watcher:
        until(lambda: exits)
    assert exits == [1]
    assert "the cluster did not form within 0.1 s (flow.cluster_wait_seconds)" in caplog.text
    assert "not every one of processes 1 connected to 127.0.0.1:7001" in caplog.text


def test_a_peer_gone_while_this_process_works_ends_it(caplog: pytest.LogCaptureFixture) -> None:
    threads = FakeThreads(["timely:work-0", "timely:recv-1", "timely:send-1"])
    watcher, exits = watch(threads)
    with watcher:
        time.sleep(0.2)
        assert exits == []
        threads.names = ["timely:work-0", "timely:send-1"]  # process 1's connection ended
        until(lambda: exits)
    assert exits == [1]
    assert "lost process 1 (127.0.0.1:7002) of the cluster" in caplog.text


def test_the_end_of_the_dataflow_is_not_a_lost_peer() -> None:
    threads = FakeThreads(["timely:work-0", "timely:recv-1"])
    watcher, exits = watch(threads, grace_s=0.3)
    with watcher:
        time.sleep(0.1)
        threads.names = ["timely:work-0"]  # the peer finished first …
        time.sleep(0.1)
        threads.names = []  # … and this process's worker within the grace
        time.sleep(0.5)
    assert exits == []


def test_a_stopped_process_ends_once_its_workers_are_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bytewax would wait for the other processes to end; the stop is done by then."""
    caplog.set_level(logging.INFO)
    threads = FakeThreads(["timely:work-0", "timely:recv-1"])
    watcher, exits = watch(threads)
    cleaned = threading.Event()
    watcher.cleanup = cleaned.set
    with watcher:
        time.sleep(0.1)
        stopping.request_stop()
        threads.names = ["timely:recv-1"]
        until(lambda: exits)
    assert exits == [0] and cleaned.is_set()
    assert "stock_pool stopped by signal (process 0 of 2" in caplog.text
