"""Running one flow in this process: Bytewax execution, metrics endpoint, recovery.

This is what ``omnistream run <flow>`` does; the demo, the tests and the benchmark start it
as a subprocess so every flow runs exactly as operators run it. With ``flow.addresses`` the
process is one of a Bytewax cluster (``omnistream.cluster``: its recovery partitions, its
metrics port, the watch over the other processes).
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import logging
import os
import select
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from prometheus_client import start_http_server

from base.config import Config, ConfigError
from base.stopping import StopRequested, request_stop, stop_requested
from domain.reference import ReferenceDataError
from domain.rules import RulesError
from omnistream import preflight
from omnistream.cli_args import FLOW_ORDER
from omnistream.cluster import (
    ClusterShape,
    ClusterWatch,
    check_own_address,
    check_recovery_layout,
    lost_peer,
)
from omnistream.preflight import REDIS_SETTING, Unreachable
from state.recovery_prune import prune_recovery_dir
from state.redis_io import RedisGaveUp, describe

log = logging.getLogger(__name__)
E = TypeVar("E", bound=BaseException)
T = TypeVar("T")

#: Flows that exist today, by the name used on the command line, and their modules.
FLOWS: dict[str, str] = {name: f"flows.{name}" for name in FLOW_ORDER}


#: Addresses meaning "every interface": only when configured so (compose, inside a container).
ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})  # noqa: S104


def serve_metrics(config: Config, port: int | None = None) -> str:
    """Start the flow's one /metrics endpoint (on ``port``, by default ``metrics.port``);
    returns a scratch directory to remove after.

    On all interfaces, Bytewax's dataflow API server serves it (its per-step metrics plus
    prometheus_client's default registry; it always listens on 0.0.0.0, and the variables
    are read when the flow starts). On one address — loopback by default — prometheus_client
    serves the default registry (Omnistream's and the process metrics) there instead.
    """
    port = config.metrics.port if port is None else port
    cache_dir = tempfile.mkdtemp(prefix="omnistream-flow-")
    if config.metrics.host in ALL_INTERFACES:
        os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] = "true"
        os.environ["BYTEWAX_DATAFLOW_API_PORT"] = str(port)
        # The API server also caches the dataflow's JSON picture; keep it out of the cwd.
        os.environ.setdefault("BYTEWAX_DATAFLOW_API_CACHE_PATH", cache_dir)
    else:
        os.environ.pop("BYTEWAX_DATAFLOW_API_ENABLED", None)
        try:
            start_http_server(port, addr=config.metrics.host)
        except OSError as exc:
            # Like Bytewax's own server: a taken port costs the metrics (Prometheus then
            # reports the flow down), not the flow.
            log.error(
                "metrics not served: cannot listen on %s:%d (%s)",
                config.metrics.host,
                port,
                exc.strerror,
            )
    return cache_dir


def prepare_recovery(
    directory: str,
    partitions: int,
    backup: timedelta,
    *,
    keep: range | None = None,
    processes: int = 1,
) -> RecoveryConfig | None:
    """Create the recovery partitions on first use; later starts resume from them.

    ``partitions`` is how many the whole flow has; this process keeps those of ``keep``
    (all by default; one process's share of a cluster of ``processes``,
    ``omnistream.cluster``). Bytewax makes every partition at once, each knowing its index
    and the count, so the others are dropped. A directory that has its partitions keeps
    them whatever ``partitions`` says now: their count is fixed when they are made (Bytewax
    resumes on other workers, but only from one count), so a flow given more workers later
    still resumes.

    They are made in a scratch directory inside ``directory``, and the ones kept are moved in
    only then: a process killed on the way leaves some of them in the scratch directory, and
    the next start makes them all again (they hold nothing yet). Before, a half-made
    partition in the directory itself stopped every later start ("No recovery partitions
    found"). What is there is checked to be a whole share (``check_recovery_parts``).

    Before Bytewax opens them, the rows it keeps for discarded keys are pruned where no
    resume can tell them from no row (``state.recovery_prune``): an erased customer's id
    leaves them.
    """
    if not directory:
        return None
    keep = range(partitions) if keep is None else keep
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    leftovers = list(path.glob(".init-*"))
    unmoved = any(any(d.glob("part-*.sqlite3")) for d in leftovers)
    present = list(path.glob("part-*.sqlite3"))
    if unmoved or not present:
        for part in present:  # moved in by a start killed before it had moved them all
            part.unlink()
        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".init-", dir=path))
        init_db_dir(staging, partitions)
        kept = {f"part-{index}.sqlite3" for index in keep}
        for part in staging.glob("part-*.sqlite3"):
            if part.name not in kept:
                part.unlink()
        for part in sorted(staging.glob("part-*.sqlite3")):
            os.replace(part, path / part.name)
        shutil.rmtree(staging)
    check_recovery_parts(path, processes)
    prune_recovery_dir(path)
    return RecoveryConfig(str(path), backup_interval=backup)


def check_recovery_parts(path: Path, processes: int) -> None:
    """The partitions in ``path`` are one process's whole share: one count for all, and
    ``count / processes`` of them. Bytewax checks the same across the cluster, but a process
    of a cluster that fails it ends with a panic of its connections that hides the reason
    (it and every other process report only a lost connection), so what one process can
    see for itself is reported here, naming the directory, before anything starts."""
    found: dict[int, int] = {}
    for part in sorted(path.glob("part-*.sqlite3")):
        try:
            # immutable: nothing is written next to a partition another start may open
            with closing(sqlite3.connect(f"file:{part}?mode=ro&immutable=1", uri=True)) as db:
                rows = db.execute("SELECT part_index, part_count FROM parts").fetchall()
        except sqlite3.Error as exc:
            raise ConfigError(
                f"{path}: key `recovery.dir`: expected Bytewax recovery partitions, "
                f"{part.name} cannot be read ({exc})"
            ) from None
        for index, count in rows:
            found[int(index)] = int(count)
    counts = set(found.values())
    if len(counts) != 1:
        raise ConfigError(
            f"{path}: key `recovery.dir`: expected recovery partitions made together, found "
            f"partitions of {len(counts)} different counts ({sorted(counts)})"
        )
    (count,) = counts
    if count % processes or len(found) != count // processes:
        made_for = f"{count // len(found)} processes" if count % len(found) == 0 else "another"
        raise ConfigError(
            f"{path}: key `recovery.dir`: expected this process's share of the recovery "
            f"partitions of a flow of {processes} process(es), found {len(found)} of {count} "
            f"(made for {made_for}); start the flow with the processes its snapshots were "
            "made with, or empty every process's recovery directory to start over"
        )


#: Allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Collect cycles less often: a flow allocates a few objects per event and keeps many of
    them in its state, so with CPython's defaults the collector kept re-walking live state
    (a third of stock_pool's time per movement in a profile). Flow state holds no reference
    cycles worth reclaiming early; what was built at start-up is frozen out of collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


#: After a stop request (SIGTERM, Ctrl-C) a flow has this long to stop cleanly; a flow still
#: running then (a Kafka or Redis call that does not return) is ended with one line and exit 1,
#: so a stop never takes more than about this long.
STOP_GRACE_S = 7.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_flow(config: Config, name: str, *, until_idle: bool) -> None:
    """Check the broker and Redis, build and run a flow until stopped (or until its inputs
    drain with ``until_idle``).

    An unreachable broker or Redis at start, or Redis lost for ``GIVE_UP_S`` while running,
    ends in ``Unreachable`` (one line, exit 1). A stop by signal returns normally, within
    ``STOP_GRACE_S`` whatever the flow was doing (``StopSignals``).
    """
    if not config.pii.key:
        # Only identity_stitch hashes PII, but every flow decodes inputs that may carry it;
        # a deployment without the secret is a misconfigured one, so nothing starts.
        raise ConfigError(
            f"{config.source}: key `pii.key`: expected the secret for hashing phone numbers "
            "and e-mails (set OMNI_PII_KEY); flows refuse to start without it (the demo and "
            "the benchmark make a development key)"
        )
    with StopSignals(name):
        try:
            _check_build_and_run(config, name, until_idle=until_idle)
        except (KeyboardInterrupt, StopRequested):
            log.info("%s stopped by signal", name)
        except Unreachable:
            raise
        except BaseException as exc:
            if stop_requested():
                # A worker that was waiting (for Redis) when the stop came ends with
                # StopRequested, which Bytewax hands back wrapped (or as a worker panic).
                log.info("%s stopped by signal", name)
                log.debug("%s: the stop ended the dataflow with %r", name, exc)
                return
            gave_up = _cause(exc, RedisGaveUp)
            if gave_up is None:
                lost = lost_peer(exc, ClusterShape.of(config))
                if lost is not None:
                    raise lost from None
                raise
            raise Unreachable(
                f"{gave_up}; Redis at {describe(config.redis.url)} ({REDIS_SETTING}); "
                "a restart resumes from the last recovery snapshot"
            ) from None


def _check_build_and_run(config: Config, name: str, *, until_idle: bool) -> None:
    shape = ClusterShape.of(config)
    check_recovery_layout(config, shape)
    if shape.several:
        check_own_address(shape)
    # Reachability is checked while the dataflow is built: a bad rules or reference file is
    # reported at once (exit 2), and a build that failed for want of the broker (stock_pool
    # lists its partitions) is reported as the one line of the check that explains it.
    reachable = preflight.start(config, kafka=True, redis=True)
    # Imported off the main thread too: a stop signal's KeyboardInterrupt raised while the
    # main thread imports can land in importlib's module-lock callback, which ignores it.
    module = _off_the_main_thread(lambda: importlib.import_module(FLOWS[name]))
    _stop_if_requested()
    try:
        # Without recovery, no step asks its keys for snapshots nobody keeps
        # (``connectors.operators.keyed_state``).
        snapshots = bool(config.recovery.dir)
        flow = _off_the_main_thread(
            lambda: module.build(config, until_idle=until_idle, snapshots=snapshots)
        )
    except (ConfigError, ReferenceDataError, RulesError):
        raise
    except Exception:
        reachable.result()
        raise
    reachable.result()
    _stop_if_requested()
    quiet_worker_panics()  # before serve_metrics enables the dataflow API
    metrics_port = shape.metrics_port(config.metrics.port)
    cache_dir = serve_metrics(config, metrics_port)
    partitions, keep = shape.recovery_parts()
    recovery_dir = shape.recovery_dir(config.recovery.dir)
    recovery = prepare_recovery(
        recovery_dir,
        partitions,
        timedelta(seconds=config.recovery.backup_seconds),
        keep=keep,
        processes=shape.processes,
    )
    epoch_s = config.recovery.snapshot_seconds if recovery else config.flow.epoch_seconds
    log.info(
        "running %s as %s (workers=%d, recovery=%s, metrics on %s:%d/metrics)",
        name,
        shape.describe(),
        shape.workers,
        recovery_dir or "off",
        config.metrics.host or "*",
        metrics_port,
    )
    tune_garbage_collector()
    _stop_if_requested()

    def remove_scratch() -> None:
        shutil.rmtree(cache_dir, ignore_errors=True)

    try:
        if not shape.several:
            run_dataflow(
                flow,
                workers=shape.workers,
                epoch_interval=timedelta(seconds=epoch_s),
                recovery=recovery,
            )
            return
        wait_s = config.flow.cluster_wait_seconds
        with ClusterWatch(name, shape, wait_s, STOP_GRACE_S, cleanup=remove_scratch):
            run_dataflow(
                flow,
                workers=shape.workers,
                epoch_interval=timedelta(seconds=epoch_s),
                recovery=recovery,
                cluster=shape,
            )
    finally:
        remove_scratch()


def _stop_if_requested() -> None:
    """Raise ``StopRequested`` if the stop signal's handler ran and its KeyboardInterrupt
    was lost (raised inside a callback that ignores exceptions, such as importlib's
    module-lock one: seen once, a SIGINT left the flow starting until the watchdog ended it
    with exit 1). The handler's own flag, not ``stop_requested()``: the watcher thread sets
    that one as soon as the signal arrives, before the handler has run, and raising then
    would leave the handler to raise KeyboardInterrupt again outside the runner."""
    if StopSignals.handled:
        raise StopRequested


def _off_the_main_thread(build: Callable[[], T]) -> T:
    """``build()`` on a daemon thread while the main thread waits in short steps.

    A build may wait on the broker (stock_pool lists its partitions, up to 10 s in one
    librdkafka call); on the main thread no signal handler could run meanwhile, and a stop
    would take until the watchdog. Building a dataflow only creates Python objects, so the
    thread it happens on does not matter.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(build())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name="build-dataflow", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if error:
        raise error[0]
    return result[0]


def run_dataflow(
    flow: Dataflow,
    *,
    workers: int,
    epoch_interval: timedelta,
    recovery: RecoveryConfig | None,
    cluster: ClusterShape | None = None,
) -> None:
    """Bytewax's ``cli_main``, with the errors that end a dataflow (a stop's
    ``KeyboardInterrupt`` among them) raised here once, as Python errors, and nothing of
    them printed by Rust.

    With one worker Bytewax runs the dataflow on this (main) thread, so a signal's
    ``KeyboardInterrupt`` is raised inside whichever step is running, and Bytewax turns any
    error of a step into a Rust panic. Its single-worker runner leaves those to Rust's default
    panic hook, which prints a backtrace (60 lines with ``RUST_BACKTRACE=1``) before the error
    comes back; its cluster runner installs a hook that hands the error back instead.
    ``quiet_worker_panics`` installs that hook once; it prints through ``sys.excepthook``,
    silenced here while the error is on its way back to this function. (Running one worker the
    cluster way instead would avoid the panic, but its main thread takes the GIL every
    millisecond to look for signals: 25-40 % more CPU in a Python-heavy dataflow. A process
    of a ``cluster`` of several runs that way whatever its workers.)
    """
    quiet_worker_panics()
    previous = sys.excepthook
    sys.excepthook = _reported_by_cli_main
    several = cluster is not None and cluster.several
    try:
        cli_main(
            flow,
            workers_per_process=workers,
            process_id=cluster.process_id if several and cluster else None,
            addresses=list(cluster.addresses) if several and cluster else None,
            epoch_interval=epoch_interval,
            recovery_config=recovery,
        )
    finally:
        sys.excepthook = previous


def _reported_by_cli_main(kind: type[BaseException], error: BaseException, tb: object) -> None:
    """While a dataflow runs, the panic hook's print of a step's error: ``cli_main`` raises
    that same error right after, so it is reported (or not, for a stop) there."""


class _NoInput(DynamicSource[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NoInputPart:
        return _NoInputPart()


class _NoInputPart(StatelessSourcePartition[Any]):
    def next_batch(self) -> list[Any]:
        raise StopIteration


class _Discard(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DiscardPart:
        return _DiscardPart()


class _DiscardPart(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


_quiet = threading.Event()


def quiet_worker_panics() -> None:
    """Install Bytewax's own panic hook (see ``run_dataflow``) by running an empty dataflow
    once the way Bytewax runs a cluster: a Rust panic hook is global to the process, and this
    one prints a step's error through ``sys.excepthook`` instead of a Rust backtrace. Costs a
    few milliseconds, once. Must run before the dataflow API is enabled (it would start its
    server for the empty dataflow too)."""
    if _quiet.is_set():
        return
    empty = Dataflow("omnistream_panic_hook")
    op.output("discard", op.input("nothing", empty, _NoInput()), _Discard())
    cli_main(empty, workers_per_process=1, process_id=0, addresses=[])
    _quiet.set()


class StopSignals:
    """SIGTERM (docker stop, systemd) and Ctrl-C stop a flow within ``STOP_GRACE_S``,
    whatever it is doing.

    Three parts, because no single one reaches every state:

    - the Python handlers raise ``KeyboardInterrupt`` on the main thread: it ends the
      start-up checks or the build, or the dataflow (with one worker, the step it lands in;
      with several, Bytewax stops them after their current step);
    - the stop flag (``base.stopping``) ends waits inside a step on a worker thread,
      such as a Redis write retrying through an outage;
    - a watcher thread sees each signal through ``signal.set_wakeup_fd`` even while the
      main thread is stuck in C (a librdkafka call without a timeout, where no Python
      handler can run): it sets the flag, and ends the process with one line and exit 1
      when the flow has not stopped ``grace_s`` after the first signal, or at a second
      signal. ``faulthandler`` backs it up for a process stuck while holding the GIL.
    """

    def __init__(self, name: str, grace_s: float = STOP_GRACE_S) -> None:
        self.name = name
        self.grace_s = grace_s
        self._previous: dict[int, Any] = {}
        self._old_wakeup_fd = -1
        self._read_fd = self._write_fd = -1
        self._watcher: threading.Thread | None = None
        self._backstop: IO[str] | None = None

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.set_wakeup_fd(self._old_wakeup_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if stop_requested():
            # Keep the watcher's deadline for the rest of the way out (closing clients,
            # interpreter shutdown): the process is about to end anyway.
            return
        os.close(self._write_fd)  # the watcher reads end-of-file and returns
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        os.close(self._read_fd)

    #: the Python-level handler has run (``_stop_if_requested``)
    handled = False

    @staticmethod
    def _on_signal(signum: int, frame: object) -> None:
        request_stop()
        StopSignals.handled = True
        raise KeyboardInterrupt

    def _watch(self) -> None:
        numbers = {int(s) for s in STOP_SIGNALS}
        seen = 0
        deadline: float | None = None
        while True:
            ready, _, _ = select.select([self._read_fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self._read_fd, 64)
                except OSError:
                    return
                if not data:
                    return
                for signum in data:
                    if signum not in numbers:
                        continue
                    seen += 1
                    request_stop()
                    if seen == 1:
                        deadline = time.monotonic() + self.grace_s
                        self._arm_backstop()
                    else:
                        self._exit_now("a second stop signal came")
            if deadline is not None and time.monotonic() >= deadline:
                self._exit_now(f"it did not stop within {self.grace_s:g} s of the stop signal")

    def _arm_backstop(self) -> None:
        self._backstop = open(os.devnull, "w")  # open until the process ends
        faulthandler.dump_traceback_later(self.grace_s + 1.5, exit=True, file=self._backstop)

    def _exit_now(self, reason: str) -> None:
        log.error("%s: %s; exiting without a clean stop", self.name, reason)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(1)


def _cause(exc: BaseException | None, kind: type[E]) -> E | None:
    """The first exception of ``kind`` in ``exc``'s chain (Bytewax wraps step errors)."""
    for _ in range(20):
        if exc is None:
            return None
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
