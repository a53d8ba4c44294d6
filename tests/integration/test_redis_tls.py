"""Redis TLS passes through the configuration end to end: a flow works against a redis-server
that accepts only TLS connections (``--port 0``) from an ACL user, when ``redis.url`` is a
``rediss://`` URL naming the CA in its query string; and the same server refuses a plain-TCP
client and a TLS client that trusts another CA, so the flow's success can only come from the
TLS settings in the URL reaching its Redis client.

The CA and server certificate are made per test (``tests/tls_helpers.py``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from base.config import Config
from connectors.generator import TrafficModel, produce
from connectors.reference_files import load_reference
from omnistream.embedded import die_with_parent, free_port, redis_server_binary
from tests.integration.test_redis_auth import run_stock_pool
from tests.tls_helpers import make_certificates

pytestmark = pytest.mark.integration

USER, PASSWORD = "omni", "tls-s3cret-pass"


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca: Path
    other_ca: Path

    def url(self, ca: Path) -> str:
        return (
            f"rediss://{USER}:{PASSWORD}@127.0.0.1:{self.port}/0"
            f"?ssl_ca_certs={ca}&ssl_cert_reqs=required"
        )


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    """redis-server listening on a TLS port only, admitting only the ACL user ``omni``."""
    certs = make_certificates(tmp_path / "certs")
    ca_cert, server_cert, server_key = certs.ca, certs.server_cert, certs.server_key
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(
        f'port 0\ntls-port {port}\nbind 127.0.0.1\nsave ""\ndir {tmp_path}\n'
        f"tls-cert-file {server_cert}\ntls-key-file {server_key}\ntls-ca-cert-file {ca_cert}\n"
        "tls-auth-clients no\n"  # server authentication only; clients prove who they are by ACL
        "user default off\n"
        f"user {USER} on >{PASSWORD} ~* &* +@all\n"
    )
    log_path = tmp_path / "redis-tls.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(redis_server_binary()), str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    server = TlsRedis(port, ca_cert, certs.other_ca)
    deadline = time.monotonic() + 20
    while True:
        try:
            with redis.Redis.from_url(server.url(ca_cert)) as client:
                client.ping()
                break
        except redis.RedisError:
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "redis-server (TLS) did not answer in time"
            time.sleep(0.1)
    yield server
    process.terminate()
    process.wait(timeout=10)


def test_tls_server_refuses_plain_tcp_and_an_untrusted_ca(tls_redis: TlsRedis) -> None:
    """What makes the flow test meaningful: nothing but a TLS client trusting our CA gets in."""
    with redis.Redis(
        port=tls_redis.port, username=USER, password=PASSWORD, socket_timeout=5
    ) as plain:
        with pytest.raises(redis.ConnectionError):
            plain.ping()  # the right credentials over plain TCP: the TLS port drops it
    with redis.Redis.from_url(tls_redis.url(tls_redis.other_ca), socket_timeout=5) as wrong_ca:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            wrong_ca.ping()
    with redis.Redis.from_url(tls_redis.url(tls_redis.ca), socket_timeout=5) as trusted:
        assert trusted.ping()
        assert trusted.acl_whoami() == USER


def test_flow_writes_its_stock_pool_over_tls(
    omni_config: Config, tmp_path: Path, tls_redis: TlsRedis
) -> None:
    produce(
        omni_config, TrafficModel(load_reference(omni_config), seed=7).events(2_000), progress=False
    )
    config = omni_config.with_overrides(redis={"url": tls_redis.url(tls_redis.ca)})
    code, log = run_stock_pool(config, tmp_path, "tls")
    assert code == 0, log[-3000:]
    assert PASSWORD not in log
    with redis.Redis.from_url(tls_redis.url(tls_redis.ca)) as client:
        keys = list(client.scan_iter(match=f"{omni_config.redis.key_prefix}stock:*"))
        assert len(keys) > 100
        position = client.hgetall(keys[0])
    assert b"on_hand" in position, (keys[0], position)
