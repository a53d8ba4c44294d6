"""``redis.cluster`` (docs/redis-cluster.md): optional and off by default, set from the file
or ``OMNI_REDIS_CLUSTER``, refused with a ``unix://`` URL, and refused by identity_stitch at
start (its compare-and-set spans hash slots), before it opens a connection."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from base.config import ConfigError, load_config
from state.identity_store import IdentityStore
from state.redis_io import connect


def test_off_by_default() -> None:
    assert load_config(env={}).redis.cluster is False


def test_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "omni.yaml"
    path.write_text("redis:\n  url: redis://10.0.0.11:6379/0\n  cluster: true\n")
    assert load_config(path, env={}).redis.cluster is True
    assert load_config(env={"OMNI_REDIS_CLUSTER": "true"}).redis.cluster is True


def test_a_non_boolean_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "omni.yaml"
    path.write_text("redis:\n  cluster: sometimes\n")
    with pytest.raises(ConfigError, match=r"redis\.cluster") as caught:
        load_config(path, env={})
    assert str(path) in str(caught.value)


def test_a_unix_socket_cannot_be_a_cluster() -> None:
    env = {"OMNI_REDIS_CLUSTER": "true", "OMNI_REDIS_URL": "unix:///run/redis.sock"}
    with pytest.raises(ConfigError, match=r"redis\.cluster.*expected false"):
        load_config(env=env)


@pytest.mark.parametrize("url", ["redis://10.0.0.11:6379/3", "rediss://:pw@h:6380/1?x=y"])
def test_a_cluster_has_only_database_0(url: str) -> None:
    env = {"OMNI_REDIS_CLUSTER": "true", "OMNI_REDIS_URL": url}
    with pytest.raises(ConfigError, match=r"redis\.url.*expected database 0"):
        load_config(env=env)
    for fine in ("redis://10.0.0.11:6379/0", "redis://10.0.0.11:6379", "redis://h:1/?a=b"):
        assert load_config(env={**env, "OMNI_REDIS_URL": fine}).redis.cluster is True


def test_identity_refuses_a_cluster_before_connecting() -> None:
    # Port 1: nothing listens there, so reaching it would be a connection error instead.
    config = load_config(
        env={"OMNI_REDIS_CLUSTER": "true", "OMNI_REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    with pytest.raises(ConfigError, match=r"redis\.cluster.*identity_stitch"):
        IdentityStore.from_config(config)


def test_an_unreachable_cluster_is_a_connection_error_naming_it() -> None:
    """A cluster client reads the slot map when built (a single-server one at its first
    command): ``connect`` says so as the ConnectionError callers handle, without the
    password."""
    env = {"OMNI_REDIS_CLUSTER": "true", "OMNI_REDIS_URL": "redis://u:secret@127.0.0.1:1/0"}
    with pytest.raises(
        redis.ConnectionError, match=r"Redis Cluster at redis://127\.0\.0\.1:1"
    ) as caught:
        connect(load_config(env=env))
    assert "secret" not in str(caught.value)
