"""Kafka TLS settings under ``kafka.client`` reach every client of a running flow, end to end.

The embedded broker (Tansu 0.6.0) cannot listen on TLS itself (its ``--cert``/``--key`` are
mutually exclusive and the broker never uses the acceptor it builds; see
``tests/unit/test_kafka_client_config.py``), so TLS is terminated the way stunnel or an
Envoy sidecar would do it: a small TLS proxy in this process forwards bytes to a dedicated
Tansu, and Tansu *advertises the proxy's address* as its only listener. Every client the flow
process opens (the admin client that lists partitions, one consumer per input partition, the
producers of its output topics) learns the broker's address from metadata and therefore has
to speak TLS and trust the test CA, or it gets nothing. The test proves that by running
stock_pool to completion with ``security.protocol: SSL`` and ``ssl.ca.location`` given only
under ``kafka.client``, and checks that a client without TLS, or trusting another CA, fails.

What it does not prove: SASL end to end (Tansu's SASL needs SCRAM users it cannot store in
memory; the unit test covers SASL settings), and mutual TLS (the proxy does not ask for a
client certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from base.config import Config, dump_config
from base.topics import ALL_TOPICS
from connectors.generator import TrafficModel, produce
from connectors.kafka_clients import ensure_topics, make_admin
from connectors.reference_files import load_reference
from omnistream.embedded import LOOPBACK, die_with_parent, free_port, tansu_binary
from omnistream.processes import start_flow
from tests.kafka_helpers import read_json
from tests.tls_helpers import Certificates, make_certificates

pytestmark = pytest.mark.integration
#: Tansu reads these as defaults; a developer's shell must not redirect the test broker.
TANSU_ENV = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}


class TlsProxy:
    """Accepts TLS on a loopback port and pipes the plaintext to ``upstream_port``.

    Runs its own asyncio loop in a daemon thread; counts completed handshakes, so the test can
    tell that clients really came through it.
    """

    def __init__(self, upstream_port: int, certs: Certificates) -> None:
        self.upstream_port = upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs.server_cert, certs.server_key)
        self.handshakes = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        assert self._ready.wait(10), "TLS proxy did not start"
        return self

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._handle, LOOPBACK, 0, ssl=self.context, ssl_handshake_timeout=5
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
        # Connections still open (clients linger until closed) are cancelled, not leaked.
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1  # the handler runs only after a completed TLS handshake
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
def tls_kafka(tmp_path: Path) -> Iterator[tuple[Certificates, TlsProxy]]:
    """A Tansu whose only advertised listener is a TLS proxy in front of it."""
    certs = make_certificates(tmp_path / "certs")
    broker_port = free_port()
    with TlsProxy(broker_port, certs) as proxy:
        advertised = f"tcp://{LOOPBACK}:{proxy.port}"
        log_path = tmp_path / "tansu-tls.log"
        env = {k: v for k, v in os.environ.items() if k not in TANSU_ENV}
        argv = [
            str(tansu_binary()), "broker",
            "--listener-url", f"tcp://{LOOPBACK}:{broker_port}",
            "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent,
            )
        try:
            yield certs, proxy
        finally:
            process.kill()
            process.wait(timeout=10)


def tls_config(stack_config: Config, proxy: TlsProxy, ca: Path) -> Config:
    tag = uuid.uuid4().hex[:10]
    return stack_config.with_overrides(
        kafka={
            "bootstrap": f"{LOOPBACK}:{proxy.port}",
            "topic_prefix": f"tls{tag}.",
            "client": {"security.protocol": "SSL", "ssl.ca.location": str(ca)},
        },
        redis={"key_prefix": f"omnitls{tag}:"},
    )


def metadata_fails(config: Config) -> str:
    with pytest.raises(KafkaException) as caught:
        make_admin(config).list_topics(timeout=5)
    return str(caught.value)


def test_flow_runs_with_tls_given_only_under_kafka_client(
    omni_config: Config, tmp_path: Path, tls_kafka: tuple[Certificates, TlsProxy]
) -> None:
    certs, proxy = tls_kafka
    config = tls_config(omni_config, proxy, certs.ca)
    deadline = time.monotonic() + 20
    while True:  # Tansu answers through the proxy once it is up
        try:
            assert make_admin(config).list_topics(timeout=2).brokers
            break
        except KafkaException:
            assert time.monotonic() < deadline, "Tansu behind the TLS proxy did not answer"

    # Without TLS, or trusting another CA, a client gets no metadata from the same address.
    plain = config.with_overrides(kafka={"client": {}})
    assert metadata_fails(plain)
    wrong_ca = config.with_overrides(
        kafka={"client": {"security.protocol": "SSL", "ssl.ca.location": str(certs.other_ca)}}
    )
    assert metadata_fails(wrong_ca)

    ensure_topics(config, list(ALL_TOPICS))
    produce(config, TrafficModel(load_reference(config), seed=11).events(1_500), progress=False)
    before = proxy.handshakes
    path = tmp_path / "stock_pool.yaml"
    dump_config(config, path)
    log_path = tmp_path / "stock_pool.log"
    with log_path.open("wb") as log:
        code = start_flow("stock_pool", path, until_idle=True, log=log).wait(timeout=180)
    assert code == 0, log_path.read_text(errors="replace")[-3000:]
    # 4 partitions x 3 input topics, each its own consumer, plus admin and producers.
    assert proxy.handshakes - before >= 12, proxy.handshakes - before
    changes = read_json(config, "stock.changes")
    assert len(changes) > 100
