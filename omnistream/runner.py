"""Running one flow in this process: Bytewax execution, metrics endpoint, recovery.

This is what ``omnistream run <flow>`` does; the demo, the tests and the benchmark start it
as a subprocess so every flow runs exactly as operators run it.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import shutil
import signal
import tempfile
from datetime import timedelta
from pathlib import Path

from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from prometheus_client import start_http_server

from omnistream.config import Config, ConfigError

log = logging.getLogger(__name__)

#: Flows that exist today, by the name used on the command line.
FLOWS: dict[str, str] = {
    "stock_pool": "flows.stock_pool",
    "identity_stitch": "flows.identity_stitch",
    "rule_triggers": "flows.rule_triggers",
    "attribution": "flows.attribution",
}


#: Addresses meaning "every interface": only when configured so (compose, inside a container).
ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})  # noqa: S104


def serve_metrics(config: Config) -> str:
    """Start the flow's one /metrics endpoint; returns a scratch directory to remove after.

    On all interfaces, Bytewax's dataflow API server serves it (its per-step metrics plus
    prometheus_client's default registry; it always listens on 0.0.0.0, and the variables
    are read when the flow starts). On one address — loopback by default — prometheus_client
    serves the default registry (Omnistream's and the process metrics) there instead.
    """
    cache_dir = tempfile.mkdtemp(prefix="omnistream-flow-")
    if config.metrics.host in ALL_INTERFACES:
        os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] = "true"
        os.environ["BYTEWAX_DATAFLOW_API_PORT"] = str(config.metrics.port)
        # The API server also caches the dataflow's JSON picture; keep it out of the cwd.
        os.environ.setdefault("BYTEWAX_DATAFLOW_API_CACHE_PATH", cache_dir)
    else:
        os.environ.pop("BYTEWAX_DATAFLOW_API_ENABLED", None)
        try:
            start_http_server(config.metrics.port, addr=config.metrics.host)
        except OSError as exc:
            # Like Bytewax's own server: a taken port costs the metrics (Prometheus then
            # reports the flow down), not the flow.
            log.error(
                "metrics not served: cannot listen on %s:%d (%s)",
                config.metrics.host,
                config.metrics.port,
                exc.strerror,
            )
    return cache_dir


def prepare_recovery(directory: str, partitions: int, backup: timedelta) -> RecoveryConfig | None:
    """Create the recovery partitions on first use; later starts resume from them.

    They are created in a scratch directory inside ``directory`` and moved in with
    ``part-0`` last, so a process killed while creating them leaves either no ``part-0``
    (the next start creates them again) or all of them: Bytewax opens every ``*.sqlite3``
    there, and a half-made one stopped every later start ("No recovery partitions found").
    """
    if not directory:
        return None
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "part-0.sqlite3").exists():
        for leftover in path.glob(".init-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".init-", dir=path))
        init_db_dir(staging, partitions)
        parts = sorted(staging.glob("part-*.sqlite3"), key=lambda p: p.name == "part-0.sqlite3")
        for part in parts:
            os.replace(part, path / part.name)
        staging.rmdir()
    return RecoveryConfig(str(path), backup_interval=backup)


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


def run_flow(config: Config, name: str, *, until_idle: bool) -> None:
    """Build and run a flow until stopped (or until its inputs drain with ``until_idle``)."""
    if not config.pii.key:
        # Only identity_stitch hashes PII, but every flow decodes inputs that may carry it;
        # a deployment without the secret is a misconfigured one, so nothing starts.
        raise ConfigError(
            f"{config.source}: key `pii.key`: expected the secret for hashing phone numbers "
            "and e-mails (set OMNI_PII_KEY); flows refuse to start without it (the demo and "
            "the benchmark make a development key)"
        )
    module = importlib.import_module(FLOWS[name])
    flow = module.build(config, until_idle=until_idle)
    cache_dir = serve_metrics(config)
    recovery = prepare_recovery(
        config.recovery.dir,
        max(1, config.flow.workers),
        timedelta(seconds=config.recovery.backup_seconds),
    )
    epoch_s = config.recovery.snapshot_seconds if recovery else config.flow.epoch_seconds
    log.info(
        "running %s (workers=%d, recovery=%s, metrics on %s:%d/metrics)",
        name,
        config.flow.workers,
        config.recovery.dir or "off",
        config.metrics.host or "*",
        config.metrics.port,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    tune_garbage_collector()
    try:
        cli_main(
            flow,
            workers_per_process=config.flow.workers,
            epoch_interval=timedelta(seconds=epoch_s),
            recovery_config=recovery,
        )
    except KeyboardInterrupt:
        log.info("%s stopped by signal", name)
    except BytewaxRuntimeError as exc:
        # A signal lands inside whichever Python callback Bytewax is running and comes back
        # wrapped; that is a requested stop, not a failure.
        if not _caused_by_interrupt(exc):
            raise
        log.info("%s stopped by signal", name)
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(cache_dir, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (docker stop, systemd) stops a flow the same way as Ctrl-C."""
    raise KeyboardInterrupt


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
