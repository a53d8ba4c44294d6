"""Flow processes started by the demo, the tests and the benchmark, and reading their metrics.

A flow always runs as its own ``omnistream run <flow>`` process, exactly as an operator runs
it; these helpers start one (or every process of a flow's cluster) with a given
configuration file, stop it cleanly, and read its ``/metrics`` endpoint.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from omnistream.embedded import LOOPBACK, die_with_parent

Samples = dict[str, list[tuple[dict[str, str], float]]]


def start_flow(
    name: str,
    config_path: Path,
    *,
    until_idle: bool = False,
    log: IO[bytes] | None = None,
    extra_env: dict[str, str] | None = None,
    process_id: int | None = None,
    addresses: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start ``omnistream run <name>`` as a child that dies with this process; with
    ``addresses``, as process ``process_id`` of that cluster."""
    command = [sys.executable, "-m", "omnistream.cli", "run", name, "--config", str(config_path)]
    if until_idle:
        command.append("--until-idle")
    if addresses:
        command += ["--addresses", ",".join(addresses), "--process-id", str(process_id or 0)]
    env = {**os.environ, **(extra_env or {})}
    env.pop("OMNI_CONFIG", None)
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        command,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def start_cluster(
    name: str,
    config_path: Path,
    addresses: tuple[str, ...],
    *,
    until_idle: bool = False,
    logs: list[IO[bytes]] | None = None,
) -> list[subprocess.Popen[bytes]]:
    """Every process of ``name``'s cluster on ``addresses`` (process N logs to ``logs[N]``);
    process N serves its metrics on the configured port + N."""
    return [
        start_flow(
            name,
            config_path,
            until_idle=until_idle,
            log=logs[n] if logs else None,
            process_id=n,
            addresses=addresses,
        )
        for n in range(len(addresses))
    ]


def free_port_block(count: int, host: str = LOOPBACK, attempts: int = 50) -> int:
    """The first of ``count`` consecutive TCP ports free right now on ``host`` (a cluster's
    metrics ports are the configured one + process id)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            first = int(probe.getsockname()[1])
        if first + count > 65536:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((host, port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return first
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int:
    """SIGTERM (the flow stops like on Ctrl-C), then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    return process.returncode


def scrape(
    port: int,
    host: str = "127.0.0.1",
    timeout_s: float = 2.0,
    names: Sequence[str] = (),
) -> Samples | None:
    """Samples of a process's /metrics by metric name, or None when it does not answer.
    With ``names``, only those metrics are asked for (``?name[]=``): the process renders
    just them, where a whole reply costs a busy flow milliseconds of its interpreter."""
    query = ("?" + urllib.parse.urlencode([("name[]", n) for n in names])) if names else ""
    try:
        url = f"http://{host}:{port}/metrics{query}"
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            text = reply.read().decode("utf-8")
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
        return None  # not up yet, stopping, or cut off mid-reply (IncompleteRead)
    return samples_of(text)


def samples_of(text: str) -> Samples:
    """The samples of a /metrics reply (Prometheus text format) by sample name: a counter's
    ``_total``, a histogram's ``_bucket``/``_sum``/``_count`` each under its own name. Raises
    ValueError on text that is not the exposition format."""
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def total(samples: Samples | None, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels match ``labels``."""
    if not samples:
        return 0.0
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


def wait_for_metrics(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flow process exited with code {process.returncode} at start")
        if scrape(port) is not None:
            return
        time.sleep(0.2)
    raise TimeoutError(f"flow metrics endpoint :{port} did not answer within {timeout_s:.0f} s")


def answers_ok(url: str, timeout_s: float = 1.0) -> bool:
    """Whether ``url`` answers 200 now (not up yet, refusing or cut off: False)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 - loopback
            return bool(reply.status == 200)
    except (OSError, http.client.HTTPException):  # URLError, refused, timed out, reset
        return False


def start_until_ready(
    command: Sequence[str], log: IO[bytes], ready: Callable[[], bool], timeout_s: float
) -> subprocess.Popen[bytes] | None:
    """Start ``command`` as a child that dies with this process (its output to ``log``) and
    wait until ``ready()``; None, with the child stopped and ``log`` flushed, when it exits
    first or is not ready within ``timeout_s`` (its log says why)."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter or the OS's binaries
        list(command),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            return process
        time.sleep(0.2)
    stop_process(process)
    log.flush()
    return None
