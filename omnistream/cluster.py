"""One process of a flow's Bytewax cluster (``run --process-id N --addresses A,B,…``): its
share of the recovery partitions, its metrics port, and a watch over the cluster.

Every process serves its own /metrics (``ClusterShape.metrics_port``). How a Bytewax 0.21
cluster behaves (Timely underneath), and why the rest of this module exists:

- Each process listens on its own address and connects to the processes before it in the
  list, retrying every second forever and printing a line on stdout each time. Nothing
  runs until every process has connected. A process is never told that a peer will not
  come: ``ClusterWatch`` turns the repeated lines into one line per peer it waits for, and
  ends the process with one line once ``flow.cluster_wait_seconds`` have passed.
- A cluster cannot lose a process. When one is killed, the others end with a panic of
  their connection threads (the runner reports it as one line). So does a process whose
  dataflow fails, and the others: Bytewax 0.21 hands back that panic, not the error, so
  what a process can check for itself is checked before it starts (its address, its
  recovery partitions: ``runner.check_recovery_parts``). When one stops cleanly
  (SIGTERM), its connections close cleanly and the others wait for it forever, their
  workers spinning; the stopped process itself waits inside Bytewax until every other one
  has ended. ``ClusterWatch`` ends a process that lost a peer (exit 1) and lets one that was
  stopped go (exit 0) once its workers are done, so stopping any process ends the cluster
  within seconds and an orchestrator restarts it, resuming from the recovery snapshots.
- Recovery: every worker of the cluster opens the recovery partitions (``part-K.sqlite3``)
  it finds in its *own* process's recovery directory; the cluster as a whole must find
  every partition exactly once, and Bytewax routes each key's snapshots to the partition
  its hash names, whichever worker holds it. So each process keeps its own share in a
  directory of its own, ``<recovery.dir>/process-N``: partitions ``N*W .. N*W+W-1`` of
  ``P*W`` (P processes of W workers), created on its first start and kept whatever the
  workers later (the count cannot change; Bytewax resumes on any number of workers). Two
  processes on one host can share ``recovery.dir``; on separate hosts each keeps its
  directory with it.

The watch reads the names of this process's threads (``/proc/self/task``, Linux): Timely
names them ``timely:work-I`` (this process's workers), ``timely:recv-M`` and
``timely:send-M`` (the connection with process M). That is the only view Python has of
the cluster's connections, which are all inside Bytewax's Rust core.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from base.config import Config, ConfigError, metrics_port_offsets
from base.stopping import stop_requested
from omnistream.preflight import Unreachable

log = logging.getLogger(__name__)

#: Where an operator sets the cluster, named in every message about it.
ADDRESSES_SETTING = "flow.addresses / OMNI_FLOW_ADDRESSES / --addresses"
PROCESS_SETTING = "flow.process_id / OMNI_FLOW_PROCESS_ID / --process-id"
#: How often the watch looks at the threads (a few dozen small /proc reads each time).
POLL_S = 0.25
#: After its workers are done, how long a stopped process gives Bytewax to return by
#: itself (it does when every process stopped together) before ending the wait for peers.
STOPPED_LINGER_S = 1.0


@dataclass(frozen=True)
class ClusterShape:
    """How many processes the flow runs as, which one this is, and its workers."""

    #: every process's HOST:PORT; () for a flow run as one process
    addresses: tuple[str, ...]
    process_id: int
    #: worker threads per process (``flow.workers``)
    workers: int

    @classmethod
    def of(cls, config: Config) -> ClusterShape:
        return cls(config.flow.cluster(), config.flow.process_id, max(1, config.flow.workers))

    @property
    def processes(self) -> int:
        return max(1, len(self.addresses))

    @property
    def several(self) -> bool:
        """A cluster of more than one process (one address alone is one process)."""
        return len(self.addresses) > 1

    @property
    def others(self) -> list[int]:
        return [p for p in range(self.processes) if p != self.process_id]

    @property
    def address(self) -> str:
        return self.addresses[self.process_id]

    def metrics_port(self, port: int) -> int:
        """Every process serves its own /metrics: on ``metrics.port`` plus the number of
        processes before it in ``addresses`` that name the same host. So processes on hosts,
        containers or pods of their own all use ``metrics.port`` (one scrape port for a
        whole deployment), and two on one host (``127.0.0.1:7001,127.0.0.1:7002``) serve
        on ``metrics.port`` and ``metrics.port + 1`` instead of colliding."""
        if not self.several:
            return port
        return port + metrics_port_offsets(self.addresses)[self.process_id]

    def recovery_dir(self, directory: str) -> str:
        """This process's recovery directory: ``recovery.dir`` itself for one process,
        ``recovery.dir/process-N`` for process N of a cluster."""
        if not directory or not self.several:
            return directory
        return str(Path(directory) / f"process-{self.process_id}")

    def recovery_parts(self) -> tuple[int, range]:
        """(the number of recovery partitions of the whole cluster, the ones this process
        keeps): one per worker, this process's workers' share."""
        first = self.process_id * self.workers
        return self.processes * self.workers, range(first, first + self.workers)

    def describe(self) -> str:
        if not self.several:
            return "one process"
        return f"process {self.process_id} of {self.processes} ({','.join(self.addresses)})"


def check_recovery_layout(config: Config, shape: ClusterShape) -> None:
    """Refuse a recovery directory made for the other layout: a cluster started on a single
    process's snapshots (or the reverse) would not see them and silently start over."""
    directory = config.recovery.dir
    root = Path(directory) if directory else None
    if root is None or not root.is_dir():
        return
    where = f"{config.source}: key `recovery.dir` (OMNI_RECOVERY_DIR)"
    if shape.several:
        single = sorted(p.name for p in root.glob("part-*.sqlite3"))
        if single:
            raise ConfigError(
                f"{where}: expected a cluster's recovery directory (one process-N directory "
                f"per process) in {directory}, found the snapshots of the flow run as one "
                f"process ({', '.join(single)}); run it as one process to resume from them, "
                "or empty the directory to start the cluster over"
            )
        return
    clustered = sorted(p.name for p in root.glob("process-*") if any(p.glob("part-*.sqlite3")))
    if clustered:
        raise ConfigError(
            f"{where}: expected the recovery snapshots of the flow run as one process in "
            f"{directory}, found a cluster's ({', '.join(clustered)}); run it as that cluster "
            f"({ADDRESSES_SETTING}) to resume from them, or empty the directory to start over"
        )


def check_own_address(shape: ClusterShape) -> None:
    """This process can listen on its address: a wrong ``--process-id`` (another host's
    position, or one already running) is one line at once instead of a panic inside Bytewax
    after the other processes have connected."""
    host, _, port = shape.address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        family, kind, proto, _, sockaddr = infos[0]
        with socket.socket(family, kind, proto) as sock:
            # As Rust's listener does, so a port left in TIME_WAIT by a restart is usable.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise Unreachable(
            f"process {shape.process_id} cannot listen on {shape.address}, its address in "
            f"{ADDRESSES_SETTING}: {reason}; another process may already run as process "
            f"{shape.process_id}, or that is not this host's position ({PROCESS_SETTING})"
        ) from None


def lost_peer(exc: BaseException, shape: ClusterShape) -> Unreachable | None:
    """The one line for a dataflow ended by a lost connection to another process (Bytewax
    hands it back as a panic of its connection threads), or None for any other error."""
    for _ in range(20):
        if exc is None:
            return None
        text = str(exc)
        if type(exc).__name__ == "PanicException" and (
            "Send thread panic" in text
            or "Recv thread panic" in text
            or "timely communication error" in text
        ):
            return Unreachable(
                f"{shape.describe()} lost its connection to another process of the cluster "
                f"({ADDRESSES_SETTING}): one ended or failed (Bytewax reports a process of a "
                "cluster that fails only so, to itself too: its log shows what led to it); a "
                "cluster cannot go on without one of its processes: start every process "
                "again and they resume from their recovery snapshots"
            )
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


#: Timely's line for each failed attempt to connect to an earlier process.
_RETRY_LINE = re.compile(rb"worker (\d+):\terror connecting to worker (\d+): (.*); retrying")


def timely_threads() -> list[str] | None:
    """Names of this process's Timely threads, or None where threads cannot be listed."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    names = []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as comm:
                name = comm.read().strip()
        except OSError:
            continue  # the thread ended meanwhile
        if name.startswith("timely:"):
            names.append(name)
    return names


class ClusterWatch:
    """Watches this process's part of the cluster while the dataflow runs (see the module
    docstring): one line per peer it waits for at start, and an end with one line (exit 1)
    when the cluster does not form within ``wait_s``, or loses a process for ``grace_s``
    while this one still works; when a stop was requested, an exit 0 once this process's
    workers are done instead of Bytewax's wait for the other processes to end.

    ``cleanup`` runs before such an exit (the runner's scratch directory). ``threads``,
    ``exit_process`` and ``filter_stdout`` are there for the tests."""

    def __init__(
        self,
        name: str,
        shape: ClusterShape,
        wait_s: float,
        grace_s: float,
        cleanup: Callable[[], None] = lambda: None,
        *,
        threads: Callable[[], list[str] | None] = lambda: timely_threads(),
        exit_process: Callable[[int], None] = os._exit,
        filter_stdout: bool = True,
        poll_s: float = POLL_S,
    ) -> None:
        self.name = name
        self.shape = shape
        self.wait_s = wait_s
        self.grace_s = grace_s
        self.cleanup = cleanup
        self._threads = threads
        self._exit_process = exit_process
        self._filter = filter_stdout
        self._poll_s = poll_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cluster-watch", daemon=True)
        #: peer → (when its connection was last refused, why), from Timely's retry lines
        self._refused: dict[int, tuple[float, str]] = {}
        self._saved_stdout: int | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> ClusterWatch:
        if self._filter:
            self._filter_stdout()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join(timeout=2)
        self._restore_stdout()

    # -- Timely's retry lines ------------------------------------------------------------

    def _filter_stdout(self) -> None:
        """Route fd 1 through a pipe until the cluster forms, dropping Timely's retry lines
        (one a second per earlier process not yet listening) and passing the rest on."""
        try:
            sys.stdout.flush()
            saved = os.dup(1)
            read_end, write_end = os.pipe()
            os.dup2(write_end, 1)
            os.close(write_end)
        except OSError:
            return
        self._saved_stdout = saved
        self._reader = threading.Thread(
            target=self._pass_on, args=(read_end, saved), name="cluster-stdout", daemon=True
        )
        self._reader.start()

    def _pass_on(self, read_end: int, saved: int) -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                match = _RETRY_LINE.match(line)
                if match is None:
                    os.write(saved, line)
                    continue
                peer, reason = int(match[2]), match[3].decode("utf-8", errors="replace")
                if peer not in self._refused:
                    log.info(
                        "%s: waiting for process %d of the cluster at %s (%s)",
                        self.name,
                        peer,
                        self._address(peer),
                        reason,
                    )
                self._refused[peer] = (time.monotonic(), reason)

    def _restore_stdout(self) -> None:
        saved, self._saved_stdout = self._saved_stdout, None
        if saved is None:
            return
        sys.stdout.flush()
        os.dup2(saved, 1)  # closes the pipe's write end: the reader reads to its end
        if self._reader is not None:
            self._reader.join(timeout=2)
        os.close(saved)

    def _address(self, peer: int) -> str:
        addresses = self.shape.addresses
        return addresses[peer] if 0 <= peer < len(addresses) else "?"

    # -- the watch -----------------------------------------------------------------------

    def _watch(self) -> None:
        started = time.monotonic()
        formed = False
        lost_since: float | None = None
        idle_since: float | None = None
        while not self._done.wait(self._poll_s):
            names = self._threads()
            if names is None:
                log.debug("%s: no thread list here; the cluster is not watched", self.name)
                return
            now = time.monotonic()
            workers = sum(1 for n in names if n.startswith("timely:work-"))
            if not formed and workers:
                formed = True
                log.info("%s: the cluster is connected (%s)", self.name, self.shape.describe())
                self._restore_stdout()
                continue
            if not formed and not stop_requested():
                if now - started > self.wait_s:
                    return self._exit(1, self._not_formed())
                continue
            # Stopped with no worker of its own running: done, or its workers came and went
            # between two looks (a stop soon after the cluster formed), or it never formed.
            if workers == 0:
                # The dataflow is over here; Bytewax still waits for the other processes'
                # connections to close (for ever, when they go on without this one).
                idle_since = idle_since if idle_since is not None else now
                if stop_requested():
                    if now - idle_since > STOPPED_LINGER_S:
                        return self._exit(
                            0,
                            f"{self.name} stopped by signal ({self.shape.describe()}); the "
                            "other processes of the cluster end once they see it gone",
                            level=logging.INFO,
                        )
                elif now - idle_since > 2 * self.grace_s:
                    return self._exit(
                        1,
                        f"{self.name}: its workers are done but the other processes of the "
                        f"cluster did not end within {2 * self.grace_s:g} s",
                    )
                continue
            receiving = {
                int(n.rsplit("-", 1)[1])
                for n in names
                if n.startswith("timely:recv-") and n.rsplit("-", 1)[1].isdigit()
            }
            missing = [p for p in self.shape.others if p not in receiving]
            if not missing or stop_requested():
                lost_since = None
                continue
            lost_since = lost_since if lost_since is not None else now
            if now - lost_since > self.grace_s:
                peers = ", ".join(f"{p} ({self._address(p)})" for p in missing)
                return self._exit(
                    1,
                    f"{self.name}: {self.shape.describe()} lost process {peers} of the "
                    "cluster (it stopped or its connection broke) and cannot go on without it; "
                    "start every process again and they resume from their recovery snapshots",
                )

    def _not_formed(self) -> str:
        shape = self.shape
        recent = time.monotonic() - 3.0
        refused = [
            f"process {p} at {self._address(p)} refused ({why})"
            for p, (when, why) in sorted(self._refused.items())
            if when >= recent
        ]
        later = [p for p in shape.others if p > shape.process_id]
        if not refused and later:
            waited = ", ".join(str(p) for p in later)
            refused = [f"not every one of processes {waited} connected to {shape.address}"]
        return (
            f"{self.name}: the cluster did not form within {self.wait_s:g} s "
            f"(flow.cluster_wait_seconds): {'; '.join(refused) or 'no connection'}; every "
            f"process must be started with the same addresses ({ADDRESSES_SETTING}) and its "
            f"own id ({PROCESS_SETTING})"
        )

    def _exit(self, code: int, line: str, level: int = logging.ERROR) -> None:
        log.log(level, "%s", line)
        try:
            self.cleanup()
        finally:
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            sys.stdout.flush()
            self._exit_process(code)
