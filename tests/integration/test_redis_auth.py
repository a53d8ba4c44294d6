"""Redis credentials pass through the configuration: a flow works against a redis-server that
only admits an ACL user with a password, and stops at once with an authentication error when
the password is wrong (no minutes of retries)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis

from base.config import Config, dump_config
from connectors.generator import TrafficModel, produce
from connectors.reference_files import load_reference
from omnistream.embedded import die_with_parent, free_port, redis_server_binary
from omnistream.processes import start_flow

pytestmark = pytest.mark.integration


@pytest.fixture
def acl_redis(tmp_path: Path) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(
        f'port {port}\nbind 127.0.0.1\nsave ""\ndir {tmp_path}\n'
        "user default off\n"
        "user omni on >s3cret-pass ~* &* +@all\n"
    )
    process = subprocess.Popen(
        [str(redis_server_binary()), str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with redis.Redis(port=port, username="omni", password="s3cret-pass") as client:
                client.ping()
                break
        except redis.RedisError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield port, process
    process.terminate()
    process.wait(timeout=10)


def run_stock_pool(config: Config, tmp_path: Path, name: str) -> tuple[int, str]:
    path = tmp_path / f"{name}.yaml"
    dump_config(config, path)
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        code = start_flow("stock_pool", path, until_idle=True, log=log).wait(timeout=120)
    return code, log_path.read_text(errors="replace")


def test_acl_user_and_password_pass_through(
    omni_config: Config, tmp_path: Path, acl_redis: tuple[int, subprocess.Popen[bytes]]
) -> None:
    port, _ = acl_redis
    produce(
        omni_config, TrafficModel(load_reference(omni_config), seed=5).events(2_000), progress=False
    )
    with redis.Redis(port=port) as anonymous:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()  # the default user is off: credentials are really needed

    good = omni_config.with_overrides(redis={"url": f"redis://omni:s3cret-pass@127.0.0.1:{port}/0"})
    code, log = run_stock_pool(good, tmp_path, "good")
    assert code == 0, log[-3000:]
    with redis.Redis(port=port, username="omni", password="s3cret-pass") as client:
        keys = list(client.scan_iter(match=f"{omni_config.redis.key_prefix}stock:*"))
    assert len(keys) > 100

    bad = omni_config.with_overrides(redis={"url": f"redis://omni:wrong@127.0.0.1:{port}/0"})
    started = time.monotonic()
    code, log = run_stock_pool(bad, tmp_path, "bad")
    assert code != 0
    assert time.monotonic() - started < 60  # no retrying for minutes
    assert "AuthenticationError" in log or "invalid username-password" in log
    assert "s3cret-pass" not in log and "wrong@" not in log
