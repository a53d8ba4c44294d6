"""Real ``omnistream`` processes for the fail-fast and stop-on-request tests: start one with a
configuration file, wait for it with a bound, read what it printed, and a TCP port that
accepts connections and never answers (a broker or Redis that is "there" but hangs)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from base.config import Config, dump_config
from omnistream.embedded import die_with_parent

#: Signs of output nobody should see: Python tracebacks, Rust panics, librdkafka's own
#: stderr format (``%3|1700000000.123|FAIL|...``).
NOISE = ("Traceback", "panicked", "stack backtrace", "%3|", "%4|", "%6|", "%7|")


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    log: Path
    started: float

    def wait(self, timeout_s: float) -> tuple[int | None, float]:
        """Exit code (None: still running after ``timeout_s``, then killed) and seconds since
        the start."""
        try:
            code: int | None = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            code = None
        return code, time.monotonic() - self.started

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[str]:
        return [line for line in self.output().splitlines() if line.strip()]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def start(args: list[str], config: Config, tmp_path: Path, name: str) -> Run:
    """``omnistream <args> --config <file>`` as a child in its own session (a terminal's
    Ctrl-C does not reach it; the tests send signals themselves), output to a file."""
    config_path = tmp_path / f"{name}.yaml"
    dump_config(config, config_path)
    log = tmp_path / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "omnistream.cli", *args, "--config", str(config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    return Run(process, log, time.monotonic())


class Blackhole:
    """A listening loopback port that accepts connections and never answers.

    ``wait_for_client()`` tells when the process under test is connecting — that is, in the
    middle of its start-up check — without guessing from the wall clock."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._clients: list[socket.socket] = []
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._clients.append(client)
            self._connected.set()

    def wait_for_client(self, timeout_s: float = 30.0) -> bool:
        return self._connected.wait(timeout_s)

    def close(self) -> None:
        self._server.close()
        for client in self._clients:
            client.close()
