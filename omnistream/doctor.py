"""``omnistream doctor``: is everything the flows need there, one line per check.

What a new installation gets wrong is spread over places that each fail differently and
late: a configuration value, a missing PII key (identity_stitch refuses to start), a broker
address, topics never created on a cluster that does not auto-create them, a Redis URL, a
rules file with a typo (refused at reload). The doctor asks each in turn and prints one line
per check::

    ok   config     deploy/omnistream.yaml
    FAIL topics     missing: omni.pos.sales

and exits 1 when any check failed (a warning does not fail), never with a traceback.

The PII key: the flows need one (``pii.key``/``OMNI_PII_KEY``; the demo makes a random one
for itself, so there is no default key that could leak into production); empty is a failure,
shorter than 16 characters a warning (it keys the hash that stands for phones and e-mails,
so a short one can be brute-forced).

The broker and Redis are asked side by side, each for as long as
``flow.startup_wait_seconds``, like at a flow's start; the topics are checked only when the
broker answered.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from base.config import Config, ConfigError, load_config

#: A PII key shorter than this is reported as weak (a warning).
MIN_PII_KEY_CHARS = 16


@dataclass(frozen=True)
class Check:
    """The outcome of one check: ``status`` is ``ok``, ``warn``, ``FAIL`` or ``skip``."""

    status: str
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name:<9} {self.detail}"


def _pii(config: Config) -> Check:
    key = config.pii.key
    if not key:
        return Check(
            "FAIL",
            "pii",
            "pii.key / OMNI_PII_KEY (or OMNI_PII_KEY_FILE) is not set: identity_stitch "
            "refuses to start without it",
        )
    if len(key) < MIN_PII_KEY_CHARS:
        return Check(
            "warn",
            "pii",
            f"key set but only {len(key)} characters (at least {MIN_PII_KEY_CHARS} advised: "
            "it keys the hashes of phones and e-mails)",
        )
    return Check("ok", "pii", f"key set ({len(key)} characters)")


def _broker(config: Config) -> tuple[Check, bool]:
    from omnistream.preflight import kafka_problem

    problem = kafka_problem(config, config.flow.startup_wait_seconds)
    if problem is not None:
        return Check("FAIL", "broker", problem), False
    from connectors.kafka_clients import make_admin

    count = len(make_admin(config).list_topics(timeout=10).brokers)
    return Check(
        "ok", "broker", f"{config.kafka.bootstrap} ({count} broker{'s' * (count != 1)})"
    ), True


def _topics(config: Config, broker_ok: bool) -> Check:
    if not broker_ok:
        return Check("skip", "topics", "not checked: the broker did not answer")
    from omnistream.topics_cli import topic_states

    states = topic_states(config)
    missing = [s.name for s in states if s.missing]
    short = [
        f"{s.name} has {s.partitions} (kafka.partitions {config.kafka.partitions})"
        for s in states
        if s.short_of(config)
    ]
    if missing or short:
        parts = []
        if missing:
            parts.append(f"missing: {', '.join(missing)} (omnistream topics create)")
        if short:
            parts.append(f"too few partitions: {'; '.join(short)}")
        return Check("FAIL", "topics", " — ".join(parts))
    detail = f"{len(states)} topics, each with at least {config.kafka.partitions} partitions"
    return Check("ok", "topics", detail)


def _redis(config: Config) -> Check:
    from omnistream.preflight import redis_problem
    from state.redis_io import connect, describe

    problem = redis_problem(config, config.flow.startup_wait_seconds)
    if problem is not None:
        return Check("FAIL", "redis", problem)
    client = connect(config)
    try:
        info = client.info("server")
    finally:
        client.close()
    if "redis_version" not in info and info:  # a cluster client answers per node
        info = next(iter(info.values()))
    version = info.get("redis_version", "unknown") if isinstance(info, dict) else "unknown"
    return Check("ok", "redis", f"{describe(config.redis.url)} (Redis {version})")


def _reference(config: Config) -> Check:
    from connectors.reference_files import load_reference
    from domain.reference import ReferenceDataError

    try:
        reference = load_reference(config)
    except ReferenceDataError as exc:
        return Check("FAIL", "reference", str(exc))
    return Check(
        "ok",
        "reference",
        f"{len(reference.locations)} locations, {len(reference.products)} products",
    )


def _rules(config: Config) -> Check:
    from connectors.rules_file import load_rules
    from domain.rules import RulesError

    try:
        rules = load_rules(config.rules.file)
    except RulesError as exc:
        first = exc.problems[0] if exc.problems else "invalid"
        more = (
            f" (+{len(exc.problems) - 1} more; omnistream rules check)"
            if len(exc.problems) > 1
            else ""
        )
        return Check("FAIL", "rules", f"{first}{more}")
    return Check("ok", "rules", f"{config.rules.file} ({len(rules.rules)} rules)")


def checks(config: Config) -> list[Check]:
    """Every check after the configuration, in the order a flow meets them. The broker and
    Redis are asked side by side, so a stack with both down costs one start-up wait, not
    two."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="doctor") as pool:
        broker_asked = pool.submit(_guarded, "broker", lambda: _broker(config))
        redis_asked = pool.submit(_guarded, "redis", lambda: (_redis(config), True))
        broker, broker_ok = broker_asked.result()
        redis_check = redis_asked.result()[0]
    return [
        _pii(config),
        broker,
        _guarded("topics", lambda: (_topics(config, broker_ok), True))[0],
        redis_check,
        _guarded("reference", lambda: (_reference(config), True))[0],
        _guarded("rules", lambda: (_rules(config), True))[0],
    ]


def _guarded(name: str, run: Callable[[], tuple[Check, bool]]) -> tuple[Check, bool]:
    """A check that raised is a failed check with the error, not a traceback."""
    try:
        return run()
    except Exception as exc:
        return Check("FAIL", name, f"{type(exc).__name__}: {exc}"), False


def run_doctor(config_path: str | None) -> int:
    """Print one line per check; 0 when none failed, 1 otherwise."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(Check("FAIL", "config", str(exc)).line())
        return 1
    failed = False
    print(Check("ok", "config", config.source).line())
    for check in checks(config):
        print(check.line())
        sys.stdout.flush()
        failed = failed or check.status == "FAIL"
    return 1 if failed else 0
