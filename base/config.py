"""One configuration object for every command and flow.

The configuration is a YAML file (``--config PATH`` or ``OMNI_CONFIG``) whose every key can
be overridden from the environment as ``OMNI_<SECTION>_<KEY>`` (``kafka.partitions`` →
``OMNI_KAFKA_PARTITIONS``), plus the short names fixed by CONTRACT §6 (``OMNI_TOPIC_PREFIX``,
``OMNI_LOCATIONS``, ``OMNI_PRODUCTS``, ``OMNI_RULES``); ``kafka.client`` takes one
``OMNI_KAFKA_CLIENT_<NAME>`` per librdkafka property, and every variable an ``OMNI_X_FILE``
variant that reads the value from a file (a mounted secret). It is validated once, at start,
and passed down; nothing deeper reads the environment. A bad value is reported with the file (or
variable), the dotted key and what was expected, so an operator can fix it without reading
code.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: The shipped sample reference data and rules: package data of the app (``omnistream``), a
#: sibling of this package wherever it is installed. Found by path, not imported, so the base
#: layer imports nothing of the layers above it.
SAMPLE_DATA_DIR = Path(__file__).resolve().parent.parent / "omnistream" / "sample_data"

#: Contract names (CONTRACT §6) that do not follow the OMNI_<SECTION>_<KEY> pattern.
ENV_ALIASES: dict[str, str] = {
    "OMNI_TOPIC_PREFIX": "kafka.topic_prefix",
    "OMNI_LOCATIONS": "reference.locations",
    "OMNI_PRODUCTS": "reference.products",
    "OMNI_RULES": "rules.file",
}
#: Keys whose value may be a YAML list, read as the comma-separated string they hold.
LIST_KEYS = frozenset({"flow.addresses", "attribution.channels"})
#: ``attribution.channels`` by default: the channel names and campaign sources of the
#: generator's traffic, ``direct`` (a conversion without touches) and ``coupon:<rule_id>``
#: of every coupon rule of the shipped rules file.
DEFAULT_ATTRIBUTION_CHANNELS = ",".join(
    (
        *("app", "mini_program", "web", "live_stream", "social", "kiosk"),
        *("app_push", "sms", "wechat", "baidu", "newsletter", "smzdm"),
        *("douyin", "taobao_live", "xiaohongshu", "weibo"),
        "direct",
        *(
            f"coupon:{rule}"
            for rule in (
                "browse-nearby",
                "cart-abandonment",
                "win-back",
                "lapsed",
                "repurchase",
                "store-overstock",
                "expiring-fresh",
            )
        ),
    )
)


#: ``OMNI_KAFKA_CLIENT_<NAME>`` sets one librdkafka property of ``kafka.client``: the name
#: lower-cased with ``_`` read as ``.`` (``OMNI_KAFKA_CLIENT_SASL_PASSWORD`` →
#: ``sasl.password``), over the file's mapping. librdkafka's property names have no ``_``.
KAFKA_CLIENT_PREFIX = "OMNI_KAFKA_CLIENT_"

#: ``OMNI_X_FILE=/path`` gives the value of ``OMNI_X`` as the content of a file (a mounted
#: secret), without its trailing newline.
FILE_SUFFIX = "_FILE"


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names source, key, expectation."""


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = 4
    replication_factor: int = 1
    #: Largest number of messages a source partition hands over per poll.
    batch_size: int = 1000
    #: Extra librdkafka settings given to every consumer and producer (SASL, TLS, tuning).
    client: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "omni:"
    #: ``url`` names one node of a Redis Cluster (``state.redis_io.connect``): the stores
    #: whose scripts keep to one hash slot run on it; identity_stitch needs one primary and
    #: refuses to start (docs/redis-cluster.md).
    cluster: bool = False


@dataclass(frozen=True)
class ReferenceConfig:
    locations: str = str(SAMPLE_DATA_DIR / "locations.csv")
    products: str = str(SAMPLE_DATA_DIR / "products.csv")


@dataclass(frozen=True)
class RulesConfig:
    #: The rules file of rule_triggers (``omnistream rules check FILE`` validates one).
    file: str = str(SAMPLE_DATA_DIR / "rules.yaml")
    #: How often (wall clock) the running flow looks for a changed rules file.
    reload_seconds: float = 2.0
    #: Event-time allowance for slightly out-of-order input: a timer (cart deadline, quiet
    #: hours end, clearance audience) fires once its input has moved this far past it.
    timer_grace_seconds: float = 0.5
    #: When an input partition has been silent this long (wall clock), its event time is
    #: assumed to move on with the wall clock, so timers fire during sparse live traffic.
    #: Only while tailing live topics; ``--until-idle`` replays use event time alone.
    idle_advance_seconds: float = 0.5


@dataclass(frozen=True)
class PiiConfig:
    #: Secret of the keyed hash of phone numbers and e-mails; required outside the demo.
    key: str = ""
    default_country_code: str = "86"


@dataclass(frozen=True)
class MetricsConfig:
    #: Port of the flow's /metrics endpoint.
    port: int = 3030
    #: Address it listens on: loopback unless configured otherwise. ``0.0.0.0`` (all
    #: interfaces, e.g. inside a container) serves Bytewax's dataflow API endpoint, which
    #: adds Bytewax's per-step metrics but cannot listen on one address only.
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class RecoveryConfig:
    #: Directory of recovery snapshots; empty means "no recovery".
    dir: str = ""
    snapshot_seconds: float = 10.0
    backup_seconds: float = 30.0


@dataclass(frozen=True)
class StockConfig:
    #: How long (event time) applied movements are remembered, so that a stock count which
    #: arrives late can still be rebased onto the movements that came after it.
    late_window_hours: float = 48.0
    #: How long (event time) an event id is remembered to drop its duplicates.
    dedup_hours: float = 168.0
    #: How long (event time) an open order is remembered to route its cancellation.
    order_ttl_days: float = 30.0


@dataclass(frozen=True)
class IdentityConfig:
    #: Most identifiers of one type a customer may hold; more are refused as a conflict.
    max_anon: int = 100
    max_phone: int = 5
    max_email: int = 5
    max_order: int = 2000
    #: A value seen with more customers than this is blocked from linking (shared devices).
    max_customers_per_identifier: int = 3
    #: Regular expression (full match) of junk identifier values that never link anyone;
    #: empty means the built-in list (null, undefined, anonymous, -1, 0, all zeros/dashes …).
    junk_pattern: str = ""
    #: Identity keys in Redis expire this long after their last update.
    ttl_days: float = 400.0


@dataclass(frozen=True)
class AttributionConfig:
    #: Touches older than this before a conversion are not credited.
    lookback_days: float = 30.0
    #: A path keeps at most this many touches (the oldest are dropped).
    max_touches: int = 20
    #: ``time_decay``: a touch's weight halves every this many days before the conversion.
    half_life_days: float = 7.0
    #: ``position_based``: shares of the first and the last touch (the rest to the middle).
    first_share: float = 0.4
    last_share: float = 0.4
    #: ``markov``: the removal effects are refreshed after this many conversions …
    markov_refresh_conversions: int = 100
    #: … or this many minutes of event time, whichever comes first.
    markov_refresh_minutes: float = 60.0
    #: Channels the ``channel`` label of the attributed revenue and conversion gauges may
    #: name (comma-separated, or a YAML list); any other channel is counted under ``other``
    #: there, so a connector's free-text ``campaign.source`` cannot create series without
    #: bound. Redis totals and ``attribution.credits`` keep every channel as it came.
    channels: str = DEFAULT_ATTRIBUTION_CHANNELS


@dataclass(frozen=True)
class FlowConfig:
    workers: int = 1
    #: Epoch length when recovery is off. Bytewax snapshots every key changed in an epoch
    #: at its end even when nothing stores the snapshots, so short epochs only cost CPU
    #: (rule_triggers copied its region audiences every half second); sinks write each batch
    #: as it comes, so latency does not depend on it (trigger p99 ≈ 0.3 s with 0.5 s or 5 s).
    epoch_seconds: float = 10.0
    #: While catching up, a partition whose latest event time is more than this ahead of
    #: the slowest partition still being read (in the same process) waits for it. It bounds
    #: what the flows hold back to apply in event-time order; it does not change results.
    alignment_seconds: float = 600.0
    #: How long a flow or command keeps asking for the broker and Redis when it starts
    #: before it reports one unreachable: a compose stack comes up in any order, so a
    #: dependency a few seconds late is waited for rather than reported.
    startup_wait_seconds: float = 10.0
    #: Every process of the flow's Bytewax cluster as ``HOST:PORT``, comma-separated: the
    #: same list, in the same order, for every process (``run --addresses``). Empty: the
    #: flow is one process. Each process runs ``workers`` worker threads.
    addresses: str = ""
    #: This process's position in ``addresses`` (``run --process-id``), 0 without them.
    process_id: int = 0
    #: How long a process of a cluster waits at start for the others to connect before it
    #: reports the missing ones: they may start in any order, and minutes apart on a
    #: cluster that is pulling images, but a process never waits forever.
    cluster_wait_seconds: float = 60.0

    def cluster(self) -> tuple[str, ...]:
        """The addresses of the cluster's processes (validated at load); () for one process."""
        return parse_addresses(self.addresses)


@dataclass(frozen=True)
class FulfilmentConfig:
    #: A pickup order is due for collection this long (event time) after it is placed: the
    #: ``due_at`` of its ``pickup_prep`` task, and when the task counts as overdue.
    pickup_prep_minutes: float = 120.0
    #: A task done (collected) or cancelled stays on the store console this long (event
    #: time) before the flow removes it from Redis.
    task_retention_hours: float = 12.0


@dataclass(frozen=True)
class ServiceConfig:
    #: Where ``omnistream serve`` listens (``--host``/``--port`` override).
    host: str = "127.0.0.1"
    port: int = 8080
    #: How often (wall clock) an open store console checks Redis for changed tasks.
    console_poll_seconds: float = 0.25
    #: How long ``/metrics`` reuses the experiment report it computed (wall clock): its
    #: tallies read every arm's whole Redis hash, so not at every scrape.
    experiments_cache_seconds: float = 30.0


@dataclass(frozen=True)
class ProfileConfig:
    """The customer profile (CONTRACT §11): segment thresholds, interest window, bounds."""

    #: ``new``: a customer with exactly one purchase, made less than this many days ago.
    new_days: float = 30.0
    #: ``active`` (or ``loyal``): last purchase less than this many days ago …
    active_days: float = 30.0
    #: … ``loyal`` with at least this many purchases within ``loyal_window_days``.
    loyal_purchases: int = 3
    loyal_window_days: float = 180.0
    #: ``at_risk`` until the last purchase is this many days old, ``lapsed`` after (also a
    #: customer who never bought and has shown no activity for as long).
    lapsed_days: float = 60.0
    #: ``top_categories`` weigh engagement (view 1, add to cart 3, purchase 5) of the last
    #: this many UTC days.
    interest_window_days: int = 30
    #: Length of ``top_categories`` (CONTRACT: at most 5).
    max_categories: int = 5
    #: Event ids kept per customer to drop replayed duplicates: this long (event time) …
    dedup_hours: float = 168.0
    #: … and at most this many.
    max_event_ids: int = 1000
    #: Profile hashes in Redis expire this long after their last write.
    ttl_days: float = 400.0


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    stock: StockConfig = field(default_factory=StockConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    fulfilment: FulfilmentConfig = field(default_factory=FulfilmentConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    #: Where the configuration came from, for messages.
    source: str = "<defaults>"

    def topic(self, name: str) -> str:
        """The full topic name of a CONTRACT topic (``stock.changes`` → ``acme.stock.changes``)."""
        return f"{self.kafka.topic_prefix}{name}"

    def with_overrides(
        self, origins: Mapping[str, str] | None = None, **sections: Mapping[str, Any]
    ) -> Config:
        """A copy with some keys replaced, validated like the file (used by demo and tests).

        ``origins`` names where a replaced key came from (``{"flow.process_id": "option
        --process-id"}``) for the messages of the checks across keys; else the file."""
        raw = {name: dataclasses.asdict(getattr(self, name)) for name in _section_names()}
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        return _build(raw, self.source, env={}, origins=origins)


def parse_addresses(text: str) -> tuple[str, ...]:
    """``"h1:7001,h2:7001"`` → ``("h1:7001", "h2:7001")``; ``ValueError`` saying what is
    wrong. A host is a name, an IPv4 address or a bracketed IPv6 one (``[::1]:7001``), as
    Bytewax's cluster transport (Rust's socket addresses) takes them."""
    if not text.strip():
        return ()
    found: list[str] = []
    for entry in (part.strip() for part in text.split(",")):
        host, sep, port = entry.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]") and len(host) > 2
        if (
            not sep
            or not host
            or any(c.isspace() for c in entry)
            or (":" in host and not bracketed)
            or not port.isdigit()
            or not 0 < int(port) < 65536
        ):
            raise ValueError(f"expected HOST:PORT with a port 1..65535, got {entry!r}")
        if entry in found:
            raise ValueError(f"expected one address per process, got {entry!r} twice")
        found.append(entry)
    return tuple(found)


def metrics_port_offsets(addresses: tuple[str, ...]) -> list[int]:
    """Per process of a cluster, what its /metrics port adds to ``metrics.port``: how many
    processes before it name the same host. Processes on hosts (containers, pods) of their
    own all serve on ``metrics.port``; two on one host do not collide."""
    hosts = [address.rpartition(":")[0] for address in addresses]
    return [hosts[:n].count(host) for n, host in enumerate(hosts)]


def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config) if f.name != "source"]


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in _section_names()}


def _expected(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, "a mapping of strings"
    )


def _coerce(value: Any, tp: Any, where: str, key: str, from_env: bool) -> Any:
    """Turn a YAML or environment value into the declared type, or say what was expected."""
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: key `{key}`: expected a mapping of strings, got {value!r}")
        return {k: str(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_env and str(value).lower() in {"1", "true", "yes", "0", "false", "no"}:
            return str(value).lower() in {"1", "true", "yes"}
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env:
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_env:
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where}: key `{key}`: expected {_expected(tp)}, got {value!r}")


def _build(
    raw: Mapping[str, Any],
    source: str,
    env: Mapping[str, str],
    origins: Mapping[str, str] | None = None,
    env_origins: Mapping[str, str] | None = None,
) -> Config:
    """The validated ``Config`` of ``raw`` (the file's sections) under ``env`` (variable →
    value, ``*_FILE`` variants already read; ``env_origins`` names where each came from)."""
    sections: dict[str, Any] = {}
    #: dotted key → where its value came from, when not from ``source``
    where: dict[str, str] = dict(origins or {})
    env_origins = env_origins or {}
    section_types = _section_types()
    for name in raw:
        if name not in section_types:
            known = ", ".join(sorted(section_types))
            raise ConfigError(f"{source}: key `{name}`: unknown section (expected one of {known})")
    for name, section_type in section_types.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: key `{name}`: expected a mapping, got {values!r}")
        hints = typing.get_type_hints(section_type)
        known_keys = {f.name for f in dataclasses.fields(section_type)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known_keys:
                raise ConfigError(
                    f"{source}: key `{name}.{key}`: unknown key "
                    f"(expected one of {', '.join(sorted(known_keys))})"
                )
            if f"{name}.{key}" in LIST_KEYS and isinstance(value, list):
                # A YAML list of the processes or channels reads better than one long string.
                value = ",".join(str(v) for v in value)
            kwargs[key] = _coerce(value, hints[key], source, f"{name}.{key}", from_env=False)
        for key in known_keys:
            variable = f"OMNI_{name.upper()}_{key.upper()}"
            aliases = [alias for alias, target in ENV_ALIASES.items() if target == f"{name}.{key}"]
            for var in [variable, *aliases]:
                if var in env:
                    origin = env_origins.get(var, f"environment {var}")
                    if f"{name}.{key}" == "kafka.client":
                        raise ConfigError(
                            f"{origin}: key `kafka.client`: expected one variable per "
                            f"librdkafka property, {KAFKA_CLIENT_PREFIX}<NAME> "
                            f"({KAFKA_CLIENT_PREFIX}SASL_PASSWORD → sasl.password)"
                        )
                    kwargs[key] = _coerce(env[var], hints[key], origin, f"{name}.{key}", True)
                    where[f"{name}.{key}"] = origin
        if name == "kafka":
            client = _kafka_client_from_env(env)
            if client:
                kwargs["client"] = {**kwargs.get("client", {}), **client}
        sections[name] = section_type(**kwargs)
    config = Config(**sections, source=source)
    _check_ranges(config, where)
    _check_cluster(config, where)
    return config


def _kafka_client_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """The librdkafka properties given as ``OMNI_KAFKA_CLIENT_<NAME>`` variables."""
    return {
        var[len(KAFKA_CLIENT_PREFIX) :].lower().replace("_", "."): value
        for var, value in env.items()
        if var.startswith(KAFKA_CLIENT_PREFIX) and len(var) > len(KAFKA_CLIENT_PREFIX)
    }


def known_variables() -> frozenset[str]:
    """Every ``OMNI_*`` name the configuration reads (besides ``OMNI_KAFKA_CLIENT_<NAME>``
    and the ``*_FILE`` variants): ``OMNI_CONFIG``, ``OMNI_<SECTION>_<KEY>`` of every key, and
    the contract's short names."""
    names = {"OMNI_CONFIG", *ENV_ALIASES}
    for section, section_type in _section_types().items():
        for f in dataclasses.fields(section_type):
            names.add(f"OMNI_{section.upper()}_{f.name.upper()}")
    return frozenset(names)


def _is_known(name: str, known: frozenset[str]) -> bool:
    return name in known or (
        name.startswith(KAFKA_CLIENT_PREFIX) and len(name) > len(KAFKA_CLIENT_PREFIX)
    )


def _file_target(name: str, known: frozenset[str]) -> str | None:
    """The variable ``name`` gives from a file (``OMNI_PII_KEY_FILE`` → ``OMNI_PII_KEY``), or
    None. A name that is itself a key's variable (``OMNI_RULES_FILE``: ``rules.file``) is no
    file variant; ``OMNI_KAFKA_CLIENT_…_FILE`` always is (no librdkafka property ends in
    ``.file``)."""
    if not name.endswith(FILE_SUFFIX) or name in known:
        return None
    target = name[: -len(FILE_SUFFIX)]
    return target if _is_known(target, known) else None


def read_environment(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The configuration's variables of ``env`` (name → value) with every ``OMNI_X_FILE``
    read into ``OMNI_X``, and where each came from (for messages).

    Secrets mounted as files (compose and Kubernetes secrets) are read here, once, like any
    other value; both ``OMNI_X`` and ``OMNI_X_FILE`` set, or a file that cannot be read, is a
    configuration error naming them."""
    known = known_variables()
    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith("OMNI_"):
            continue
        target = _file_target(name, known)
        if target is None:
            if _is_known(name, known):
                values[name] = value
                origins[name] = f"environment {name}"
            continue
        if target in env:
            raise ConfigError(
                f"environment {target} and {name}: expected one of them (the value or the "
                f"file holding it), got both"
            )
        try:
            text = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"environment {name}: cannot read the file {value!r} holding {target}: {reason}"
            ) from None
        values[target] = text.removesuffix("\n").removesuffix("\r")
        origins[target] = f"environment {name} (file {value})"
    return values, origins


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One warning per ``OMNI_*`` variable of ``env`` the configuration does not read (a
    mistyped name would otherwise be ignored without a word), with the closest known name
    when one is close."""
    known = known_variables()
    warnings: list[str] = []
    for name in sorted(env):
        if not name.startswith("OMNI_") or _is_known(name, known) or _file_target(name, known):
            continue
        base, suffix = (
            (name[: -len(FILE_SUFFIX)], FILE_SUFFIX) if name.endswith(FILE_SUFFIX) else (name, "")
        )
        close = difflib.get_close_matches(base, sorted(known), n=1, cutoff=0.8)
        if not close and suffix:
            close = [c[: -len(suffix)] for c in difflib.get_close_matches(name, known, 1, 0.8)]
            suffix = FILE_SUFFIX if close else ""
        hint = f" (did you mean {close[0]}{suffix}?)" if close else ""
        warnings.append(f"unknown environment variable {name}, ignored{hint}")
    return warnings


def _check_cluster(config: Config, where: Mapping[str, str]) -> None:
    """The cluster's addresses parse, and this process's id is one of them.

    Every process is given the same addresses and its own id, often each from a different
    place (addresses in the file, the id from the environment of a pod), so a message names
    where each value came from and both ways of setting it."""
    flow = config.flow

    def origin(key: str) -> str:
        return where.get(key, config.source)

    try:
        addresses = parse_addresses(flow.addresses)
    except ValueError as exc:
        raise ConfigError(
            f"{origin('flow.addresses')}: key `flow.addresses` (OMNI_FLOW_ADDRESSES, "
            f"--addresses): {exc} (every process of the cluster, comma-separated)"
        ) from None
    if not addresses and flow.process_id != 0:
        raise ConfigError(
            f"{origin('flow.process_id')}: key `flow.process_id` (OMNI_FLOW_PROCESS_ID, "
            f"--process-id): expected 0 for a flow run as one process, got "
            f"{flow.process_id!r}; a process of a cluster also needs every process's address "
            "in `flow.addresses` (OMNI_FLOW_ADDRESSES, --addresses)"
        )
    if addresses and not 0 <= flow.process_id < len(addresses):
        raise ConfigError(
            f"{origin('flow.process_id')}: key `flow.process_id` (OMNI_FLOW_PROCESS_ID, "
            f"--process-id): expected 0..{len(addresses) - 1}, this process's position in "
            f"`flow.addresses` ({len(addresses)} given, from {origin('flow.addresses')}), "
            f"got {flow.process_id!r}"
        )
    offsets = metrics_port_offsets(addresses)
    if config.metrics.port + max(offsets, default=0) > 65535:
        raise ConfigError(
            f"{origin('metrics.port')}: key `metrics.port`: expected a port that leaves room "
            f"for one per process on a host (the processes of `flow.addresses` on one host "
            f"serve on metrics.port, metrics.port + 1 …), got {config.metrics.port!r}"
        )


def _check_ranges(config: Config, where: Mapping[str, str] | None = None) -> None:
    """Values that parse but cannot work: caught here rather than deep inside a flow.

    Each message names where the value came from (``where``: dotted key → an environment
    variable or option), else the file."""
    where = where or {}

    def src(*keys: str) -> str:
        return next((where[k] for k in keys if k in where), config.source)

    positive = {
        "kafka.partitions": config.kafka.partitions,
        "kafka.replication_factor": config.kafka.replication_factor,
        "kafka.batch_size": config.kafka.batch_size,
        "stock.late_window_hours": config.stock.late_window_hours,
        "stock.dedup_hours": config.stock.dedup_hours,
        "stock.order_ttl_days": config.stock.order_ttl_days,
        "flow.workers": config.flow.workers,
        "identity.max_anon": config.identity.max_anon,
        "identity.max_phone": config.identity.max_phone,
        "identity.max_email": config.identity.max_email,
        "identity.max_order": config.identity.max_order,
        "identity.max_customers_per_identifier": config.identity.max_customers_per_identifier,
        "identity.ttl_days": config.identity.ttl_days,
        "flow.epoch_seconds": config.flow.epoch_seconds,
        "flow.alignment_seconds": config.flow.alignment_seconds,
        "flow.startup_wait_seconds": config.flow.startup_wait_seconds,
        "flow.cluster_wait_seconds": config.flow.cluster_wait_seconds,
        "fulfilment.pickup_prep_minutes": config.fulfilment.pickup_prep_minutes,
        "fulfilment.task_retention_hours": config.fulfilment.task_retention_hours,
        "service.console_poll_seconds": config.service.console_poll_seconds,
        "service.experiments_cache_seconds": config.service.experiments_cache_seconds,
        "recovery.snapshot_seconds": config.recovery.snapshot_seconds,
        "recovery.backup_seconds": config.recovery.backup_seconds,
        "rules.reload_seconds": config.rules.reload_seconds,
        "attribution.lookback_days": config.attribution.lookback_days,
        "attribution.max_touches": config.attribution.max_touches,
        "attribution.half_life_days": config.attribution.half_life_days,
        "attribution.markov_refresh_conversions": config.attribution.markov_refresh_conversions,
        "attribution.markov_refresh_minutes": config.attribution.markov_refresh_minutes,
        "profile.new_days": config.profile.new_days,
        "profile.active_days": config.profile.active_days,
        "profile.loyal_purchases": config.profile.loyal_purchases,
        "profile.loyal_window_days": config.profile.loyal_window_days,
        "profile.lapsed_days": config.profile.lapsed_days,
        "profile.interest_window_days": config.profile.interest_window_days,
        "profile.max_categories": config.profile.max_categories,
        "profile.dedup_hours": config.profile.dedup_hours,
        "profile.max_event_ids": config.profile.max_event_ids,
        "profile.ttl_days": config.profile.ttl_days,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{src(key)}: key `{key}`: expected a value > 0, got {value!r}")
    a = config.attribution
    if not (
        0 <= a.first_share <= 1 and 0 <= a.last_share <= 1 and a.first_share + a.last_share <= 1
    ):
        raise ConfigError(
            f"{src('attribution.first_share', 'attribution.last_share')}: key "
            f"`attribution.first_share`/`attribution.last_share`: expected "
            f"shares in [0, 1] adding up to at most 1, got {a.first_share!r} and {a.last_share!r}"
        )
    p = config.profile
    if p.lapsed_days <= p.active_days:
        raise ConfigError(
            f"{src('profile.lapsed_days')}: key `profile.lapsed_days`: expected more days than "
            f"`profile.active_days` ({p.active_days!r}), got {p.lapsed_days!r}"
        )
    if p.max_categories > 5:
        raise ConfigError(
            f"{src('profile.max_categories')}: key `profile.max_categories`: expected at most "
            f"5 (CONTRACT §11), got {p.max_categories!r}"
        )
    if not 0 < config.service.port < 65536:
        raise ConfigError(
            f"{src('service.port')}: key `service.port`: expected a port 1..65535, "
            f"got {config.service.port!r}"
        )
    if not 0 < config.metrics.port < 65536:
        raise ConfigError(
            f"{src('metrics.port')}: key `metrics.port`: expected a port 1..65535, "
            f"got {config.metrics.port!r}"
        )
    if not config.pii.default_country_code.isdigit():
        raise ConfigError(
            f"{src('pii.default_country_code')}: key `pii.default_country_code`: expected digits, "
            f"got {config.pii.default_country_code!r}"
        )
    if config.identity.junk_pattern:
        try:
            re.compile(config.identity.junk_pattern)
        except re.error as exc:
            raise ConfigError(
                f"{src('identity.junk_pattern')}: key `identity.junk_pattern`: expected a regular "
                f"expression, got {config.identity.junk_pattern!r} ({exc})"
            ) from None
    if not config.kafka.bootstrap.strip():
        raise ConfigError(
            f"{src('kafka.bootstrap')}: key `kafka.bootstrap`: expected host:port[,host:port]"
        )
    if not config.redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"{src('redis.url')}: key `redis.url`: expected a redis://, rediss:// or unix:// URL, "
            f"got {config.redis.url!r}"
        )
    if config.redis.cluster and config.redis.url.startswith("unix://"):
        raise ConfigError(
            f"{src('redis.cluster')}: key `redis.cluster`: expected false with a unix:// "
            f"`redis.url` (a Redis Cluster is reached over TCP), got true"
        )
    if config.redis.cluster and _url_database(config.redis.url) not in ("", "0"):
        raise ConfigError(
            f"{src('redis.url')}: key `redis.url`: expected database 0 (or none) with "
            f"`redis.cluster` true (a Redis Cluster has only database 0), got "
            f"/{_url_database(config.redis.url)}"
        )


def _url_database(url: str) -> str:
    """The database of a redis:// URL's path ("" when it names none)."""
    rest = url.split("://", 1)[-1].split("?", 1)[0]
    return rest.split("/", 1)[1] if "/" in rest else ""


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read the YAML file (if any) and the environment, validate, and return the config.

    ``path`` wins over ``OMNI_CONFIG``; with neither, the built-in defaults apply (and the
    sample reference data shipped with the package). Relative paths inside the file are
    relative to the file, so a config directory can be moved as a whole.
    """
    env = os.environ if env is None else env
    values, env_origins = read_environment(env)
    chosen = path if path is not None else values.get("OMNI_CONFIG") or None
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if chosen is not None:
        file = Path(chosen)
        source = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{file}: cannot read the configuration file: {exc.strerror}"
            ) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping of sections at the top level")
        raw = _resolve_relative_paths(loaded, file.parent)
    return _build(raw, source, values, env_origins=env_origins)


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    for section, key in [
        ("reference", "locations"),
        ("reference", "products"),
        ("rules", "file"),
        ("recovery", "dir"),
    ]:
        values = raw.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str) and values[key]:
            candidate = Path(values[key])
            if not candidate.is_absolute():
                values[key] = str(base / candidate)
    return raw


def dump_config(config: Config, path: str | os.PathLike[str]) -> None:
    """Write a config as YAML that ``load_config`` reads back to an equal config.

    Used to hand the demo's effective configuration to the flow processes it starts.
    """
    raw = {name: dataclasses.asdict(getattr(config, name)) for name in _section_names()}
    Path(path).write_text(yaml.safe_dump(raw, sort_keys=True), encoding="utf-8")
