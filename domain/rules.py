"""The rules file of rule_triggers: schema and validation, pure.

Ops edit one YAML file; ``parse_rules`` turns it into typed ``Rule`` records or reports
*every* problem at once, each naming the rule (id and position), the key and what was
expected, so a broken edit can be fixed in one pass. The flow refuses to start on an invalid
file and keeps the old rules when a changed file is invalid.

Durations are written ``90s``, ``30m``, ``6h``, ``7d`` (or a number of seconds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RULE_KINDS = (
    "low_stock",
    "stockout",
    "browse_nearby_stock",
    "cart_abandonment",
    "win_back",
    "overstock",
    "expiring_stock",
    "campaign_prep",
    "lapsed",
    "repurchase",
    "store_visit",
    "redemption_review",
)
#: Kinds whose triggers are coupons for a customer (the others suggest stock moves).
COUPON_KINDS = frozenset(
    {
        "browse_nearby_stock",
        "cart_abandonment",
        "win_back",
        "overstock",
        "expiring_stock",
        "lapsed",
        "repurchase",
    }
)
COUPON_TYPES = ("percent_off", "amount_off", "free_shipping", "gift")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_OFFSET = re.compile(r"^[+-](0\d|1[0-4]):([0-5]\d)$")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Param:
    kind: str  # int | number | duration
    default: float | None = None  # None: required
    minimum: float = 0.0


#: ``min_available`` of a coupon kind: a coupon naming a sku is held back (``no_stock``) when
#: fewer units are available to sell where it sends the customer. 0 turns the guard off.
_MIN_AVAILABLE = Param("int", 1, 0)

#: Parameters of each rule kind, with defaults (None = required).
PARAMS: dict[str, dict[str, Param]] = {
    "low_stock": {"target_cover_days": Param("number", 7, 0.1)},
    "stockout": {},
    "browse_nearby_stock": {
        "views": Param("int", 3, 1),
        "within": Param("duration", 1800, 1),
        "min_available": Param("int", 1, 1),
    },
    "cart_abandonment": {"within": Param("duration", 3600, 1), "min_available": _MIN_AVAILABLE},
    "win_back": {"inactive_days": Param("number", 60, 1), "min_available": _MIN_AVAILABLE},
    "overstock": {
        "cover_days": Param("number", 60, 1),
        "idle_days": Param("number", 30, 1),
        "min_on_hand": Param("int", 10, 0),
        "viewed_within": Param("duration", 7 * 86400, 1),
        "min_available": _MIN_AVAILABLE,
    },
    "expiring_stock": {
        "within_days": Param("number", 3, 0),
        "viewed_within": Param("duration", 7 * 86400, 1),
        "min_available": _MIN_AVAILABLE,
    },
    "campaign_prep": {"triggers": Param("int", 50, 1), "window": Param("duration", 3600, 1)},
    # Fires on its own timer at the last purchase + inactive_days (win_back waits for the
    # customer to come back; lapsed reaches out while they are away).
    "lapsed": {"inactive_days": Param("number", 30, 1), "min_available": _MIN_AVAILABLE},
    # The sku's ``repurchase_days`` come from the products file; lead_days fires that early.
    "repurchase": {"lead_days": Param("number", 0, 0), "min_available": _MIN_AVAILABLE},
    # A task for the store, not a coupon: the customer's latest views travel with it.
    "store_visit": {
        "max_views": Param("int", 5, 1),
        "views_within": Param("duration", 7 * 86400, 1),
    },
    # An insight, not a trigger: each day's coupons of every coupon rule × variant, once
    # their `window` has passed, are judged on the share redeemed at a till within it
    # (domain.redemption_review). `threshold` is a share in [0, 1]; `window` at most the
    # conversion window (a coupon's redemption is only seen while its trigger is open).
    "redemption_review": {
        "threshold": Param("number", 0.3, 0),
        "window": Param("duration", 7 * 86400, 3600),
        "min_sent": Param("int", 20, 1),
    },
}
#: Kinds that neither send a coupon nor suggest a stock move: they may not run experiments.
INSIGHT_KINDS = frozenset({"redemption_review"})


class RulesError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Coupon:
    type: str
    value: float
    expires_in_s: float


@dataclass(frozen=True)
class Experiment:
    """An A/B test of one rule. Each variant may carry its own offer — a coupon on a coupon
    rule, parameters on a stock rule (two transfer policies) — and falls back to the rule's
    where it names none; ``control`` is drawn but sent nothing, which is what uplift is
    measured against. ``rules check`` refuses variants that offer the same thing: such an
    experiment can only ever measure noise."""

    salt: str
    control_share: float
    #: variant name → weight (> 0)
    variants: dict[str, float]
    #: variant name → the coupon it sends, for the variants with their own
    coupons: dict[str, Coupon] = field(default_factory=dict)
    #: variant name → the parameters it changes (the rest are the rule's)
    params: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class QuietHours:
    start_minute: int
    end_minute: int
    offset_minutes: int


@dataclass(frozen=True)
class Rule:
    rule_id: str
    kind: str
    cooldown_s: float
    params: dict[str, float]
    coupon: Coupon | None = None
    experiment: Experiment | None = None
    quiet_hours: QuietHours | None = None
    enabled: bool = True

    def coupon_of(self, variant: str) -> Coupon | None:
        """The coupon a customer drawn into ``variant`` is sent (the rule's when the
        variant has none of its own; the rule's too on a holdout record, which says what
        the rule offers although nothing is sent)."""
        if self.experiment is not None and variant in self.experiment.coupons:
            return self.experiment.coupons[variant]
        return self.coupon

    def params_of(self, variant: str) -> dict[str, float]:
        """The parameters ``variant`` runs with: the rule's, changed by the variant's."""
        if self.experiment is not None and variant in self.experiment.params:
            return {**self.params, **self.experiment.params[variant]}
        return self.params


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    frequency_cap_per_day: int
    conversion_window_s: float
    source: str = ""
    #: customers offered one clearance coupon, at most (most recent viewers first)
    max_audience: int = 1000
    by_id: dict[str, Rule] = field(default_factory=dict, compare=False)
    #: enabled rules per kind, built once when the file is loaded (asked on every event)
    by_kind: dict[str, list[Rule]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for rule in self.rules:
            if rule.enabled:
                self.by_kind.setdefault(rule.kind, []).append(rule)

    def of_kind(self, kind: str) -> list[Rule]:
        return self.by_kind.get(kind, [])


def parse_duration(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    return None


def duration_text(seconds: float) -> str:
    """A duration as the rules file writes it (``86400`` → ``1d``, ``5400`` → ``90m``).

    >>> duration_text(86400), duration_text(5400), duration_text(45.5)
    ('1d', '90m', '45.5s')
    """
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class _Checker:
    """Collects problems instead of stopping at the first."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def fail(self, where: str, key: str, expected: str, got: object) -> None:
        self.problems.append(
            f"{self.source}: {where}: key `{key}`: expected {expected}, got {got!r}"
        )

    def number(
        self, where: str, key: str, value: object, minimum: float, integer: bool = False
    ) -> float | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if integer:
            ok = ok and float(value).is_integer()  # type: ignore[arg-type]
        if not ok or value < minimum:  # type: ignore[operator]
            kind = "an integer" if integer else "a number"
            self.fail(where, key, f"{kind} ≥ {minimum:g}", value)
            return None
        return float(value)  # type: ignore[arg-type]

    def duration(self, where: str, key: str, value: object, minimum: float = 0) -> float | None:
        seconds = parse_duration(value)
        if seconds is None or seconds < minimum:
            self.fail(where, key, "a duration like 90s, 30m, 6h or 7d", value)
            return None
        return seconds

    def mapping(self, where: str, key: str, value: object) -> Mapping[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(where, key, "a mapping", value)
            return None
        return value

    def known_keys(
        self, where: str, prefix: str, value: Mapping[str, Any], allowed: set[str]
    ) -> None:
        for key in value:
            if key not in allowed:
                self.problems.append(
                    f"{self.source}: {where}: key `{prefix}{key}`: unknown key (expected one "
                    f"of {', '.join(sorted(allowed)) or 'none'})"
                )


def _clock_minutes(text: object) -> int | None:
    match = _CLOCK.match(text) if isinstance(text, str) else None
    return int(match.group(1)) * 60 + int(match.group(2)) if match else None


def _parse_rule(check: _Checker, index: int, raw: object) -> Rule | None:
    where = f"rule #{index + 1}"
    if not isinstance(raw, dict):
        check.fail(where, "rules[]", "a mapping", raw)
        return None
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        check.fail(where, "id", "a lower-case id (letters, digits, . _ -)", rule_id)
        rule_id = f"#{index + 1}"
    else:
        where = f"rule `{rule_id}` (#{index + 1})"
    check.known_keys(
        where,
        "",
        raw,
        {"id", "kind", "cooldown", "params", "coupon", "experiment", "quiet_hours", "enabled"},
    )
    kind = raw.get("kind")
    if kind not in RULE_KINDS:
        check.fail(where, "kind", f"one of {', '.join(RULE_KINDS)}", kind)
        return None
    cooldown = check.duration(where, "cooldown", raw.get("cooldown"))
    given = check.mapping(where, "params", raw.get("params") or {}) or {}
    params = _parse_params(check, where, "params.", kind, given, defaults=True)
    coupon = _parse_coupon(check, where, kind, raw.get("coupon"))
    experiment = _parse_experiment(check, where, kind, raw.get("experiment"))
    if experiment is not None and kind in INSIGHT_KINDS:
        check.fail(where, "experiment", f"no experiment on a {kind} rule (it sends nothing)", kind)
    elif experiment is not None:
        _refuse_identical_variants(check, where, experiment, coupon, params)
    quiet = _parse_quiet_hours(check, where, raw.get("quiet_hours"))
    if quiet is not None and kind not in COUPON_KINDS:
        check.fail(where, "quiet_hours", "quiet hours only on coupon rules", kind)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        check.fail(where, "enabled", "true or false", enabled)
    if kind == "redemption_review" and params.get("threshold", 0) > 1:
        check.fail(where, "params.threshold", "a share in [0, 1]", params["threshold"])
    if cooldown is None:
        return None
    return Rule(rule_id, kind, cooldown, params, coupon, experiment, quiet, enabled is not False)


def _parse_params(
    check: _Checker,
    where: str,
    prefix: str,
    kind: str,
    given: Mapping[str, Any],
    *,
    defaults: bool,
) -> dict[str, float]:
    """A rule's parameters (every one, defaults filled in), or with ``defaults=False`` only
    those a variant changes."""
    check.known_keys(where, prefix, given, set(PARAMS[kind]))
    params: dict[str, float] = {}
    for name, spec in PARAMS[kind].items():
        if not defaults and name not in given:
            continue
        value = given.get(name, spec.default)
        key = f"{prefix}{name}"
        if value is None:
            check.fail(where, key, "a value (required)", None)
            continue
        parsed = (
            check.duration(where, key, value, spec.minimum)
            if spec.kind == "duration"
            else check.number(where, key, value, spec.minimum, spec.kind == "int")
        )
        if parsed is not None:
            params[name] = parsed
    return params


def _parse_coupon(
    check: _Checker, where: str, kind: str, raw: object, key: str = "coupon"
) -> Coupon | None:
    if kind not in COUPON_KINDS:
        if raw is not None:
            check.fail(where, key, "no coupon on a stock rule or a store visit", raw)
        return None
    section = check.mapping(where, key, raw)
    if section is None:
        return None
    check.known_keys(where, f"{key}.", section, {"type", "value", "expires_in"})
    coupon_type = section.get("type")
    if coupon_type not in COUPON_TYPES:
        check.fail(where, f"{key}.type", f"one of {', '.join(COUPON_TYPES)}", coupon_type)
    value = check.number(where, f"{key}.value", section.get("value", 0), 0)
    if coupon_type == "percent_off" and value is not None and not 0 < value <= 100:
        check.fail(where, f"{key}.value", "a percentage in (0, 100]", section.get("value"))
    expires = check.duration(where, f"{key}.expires_in", section.get("expires_in", "72h"), 60)
    if coupon_type not in COUPON_TYPES or value is None or expires is None:
        return None
    return Coupon(str(coupon_type), value, expires)


def _refuse_identical_variants(
    check: _Checker,
    where: str,
    experiment: Experiment,
    coupon: Coupon | None,
    params: dict[str, float],
) -> None:
    """Two variants that send the same coupon with the same parameters cannot differ in
    anything but noise: refuse them, naming both."""
    seen: dict[tuple[Coupon | None, tuple[tuple[str, float], ...]], str] = {}
    for name in sorted(experiment.variants):
        offer = experiment.coupons.get(name, coupon)
        merged = {**params, **experiment.params.get(name, {})}
        key = (offer, tuple(sorted(merged.items())))
        if key in seen:
            sends = (
                "no coupon"
                if offer is None
                else f"{offer.type} {offer.value:g} expiring in {duration_text(offer.expires_in_s)}"
            )
            check.fail(
                where,
                f"experiment.variants.{name}",
                f"an offer that differs from variant `{seen[key]}`'s (both send {sends} "
                "with the same params): give each variant its own `coupon` or `params`",
                name,
            )
        else:
            seen[key] = name


def _parse_variant(
    check: _Checker, where: str, kind: str, name: str, raw: object
) -> tuple[float | None, Coupon | None, dict[str, float]]:
    """One variant: a weight alone (``amount_15: 1``: the rule's offer), or a mapping with
    ``weight`` (1) and its own ``coupon`` (coupon rules) or the ``params`` it changes
    (stock rules)."""
    key = f"experiment.variants.{name}"
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        if raw <= 0:
            check.fail(where, key, "a weight > 0", raw)
            return None, None, {}
        return float(raw), None, {}
    section = check.mapping(where, key, raw)
    if section is None:
        return None, None, {}
    check.known_keys(where, f"{key}.", section, {"weight", "coupon", "params"})
    weight = section.get("weight", 1)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
        check.fail(where, f"{key}.weight", "a weight > 0", weight)
        weight = None
    coupon = None
    if "coupon" in section:
        coupon = _parse_coupon(check, where, kind, section["coupon"], f"{key}.coupon")
    params: dict[str, float] = {}
    if "params" in section and kind in COUPON_KINDS:
        # A coupon rule's params decide whether it fires at all, before any arm is drawn:
        # its variants differ in what they send.
        check.fail(
            where, f"{key}.params", "no params on a coupon rule's variant", section["params"]
        )
    elif "params" in section:
        given = check.mapping(where, f"{key}.params", section["params"]) or {}
        params = _parse_params(check, where, f"{key}.params.", kind, given, defaults=False)
    return (None if weight is None else float(weight)), coupon, params


def _parse_experiment(check: _Checker, where: str, kind: str, raw: object) -> Experiment | None:
    if raw is None:
        return None
    section = check.mapping(where, "experiment", raw)
    if section is None:
        return None
    check.known_keys(where, "experiment.", section, {"salt", "control_share", "variants"})
    salt = section.get("salt")
    if not isinstance(salt, str) or not salt:
        check.fail(where, "experiment.salt", "a non-empty string", salt)
    share = section.get("control_share", 0)
    if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share < 1:
        check.fail(where, "experiment.control_share", "a share in [0, 1)", share)
        share = None
    variants = section.get("variants", {"default": 1})
    good_variants = (
        isinstance(variants, dict)
        and bool(variants)
        and all(isinstance(k, str) and _ID.match(k) and k != "control" for k in variants)
    )
    if not good_variants:
        check.fail(
            where,
            "experiment.variants",
            "a mapping of variant name (a lower-case id, not `control`) to a weight > 0 or "
            "to {weight, coupon, params}",
            variants,
        )
        return None
    weights: dict[str, float] = {}
    coupons: dict[str, Coupon] = {}
    changed: dict[str, dict[str, float]] = {}
    for name, raw_variant in variants.items():
        weight, coupon, params = _parse_variant(check, where, kind, name, raw_variant)
        if weight is None:
            good_variants = False
            continue
        weights[name] = weight
        if coupon is not None:
            coupons[name] = coupon
        if params:
            changed[name] = params
    if not isinstance(salt, str) or not salt or share is None or not good_variants:
        return None
    return Experiment(salt, float(share), weights, coupons, changed)


def _parse_quiet_hours(check: _Checker, where: str, raw: object) -> QuietHours | None:
    if raw is None:
        return None
    section = check.mapping(where, "quiet_hours", raw)
    if section is None:
        return None
    check.known_keys(where, "quiet_hours.", section, {"start", "end", "utc_offset"})
    start, end = _clock_minutes(section.get("start")), _clock_minutes(section.get("end"))
    if start is None:
        check.fail(where, "quiet_hours.start", "a time HH:MM", section.get("start"))
    if end is None:
        check.fail(where, "quiet_hours.end", "a time HH:MM", section.get("end"))
    offset_text = section.get("utc_offset", "+08:00")
    match = _OFFSET.match(offset_text) if isinstance(offset_text, str) else None
    if match is None:
        check.fail(where, "quiet_hours.utc_offset", "an offset like +08:00", offset_text)
    if start is None or end is None or match is None:
        return None
    sign = -1 if offset_text.startswith("-") else 1
    offset = sign * (int(match.group(1)) * 60 + int(match.group(2)))
    return QuietHours(start, end, offset)


def parse_rules(source: str, doc: object) -> RuleSet:
    """Validate a loaded rules document; raises ``RulesError`` listing every problem."""
    check = _Checker(source)
    if not isinstance(doc, dict):
        raise RulesError([f"{source}: expected a mapping with `rules` at the top level"])
    check.known_keys("top level", "", doc, {"version", "defaults", "rules"})
    if doc.get("version", 1) != 1:
        check.fail("top level", "version", "1", doc.get("version"))
    defaults = check.mapping("top level", "defaults", doc.get("defaults") or {}) or {}
    check.known_keys(
        "top level",
        "defaults.",
        defaults,
        {"frequency_cap_per_day", "conversion_window", "max_audience"},
    )
    audience = check.number(
        "top level", "defaults.max_audience", defaults.get("max_audience", 1000), 1, integer=True
    )
    cap = check.number(
        "top level",
        "defaults.frequency_cap_per_day",
        defaults.get("frequency_cap_per_day", 3),
        1,
        integer=True,
    )
    window = check.duration(
        "top level", "defaults.conversion_window", defaults.get("conversion_window", "7d"), 60
    )
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        check.fail("top level", "rules", "a non-empty list of rules", raw_rules)
        raw_rules = []
    rules = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(raw_id, str) and raw_id in seen:
            check.fail(
                f"rule `{raw_id}` (#{index + 1})",
                "id",
                f"a unique id (also used by rule #{seen[raw_id]})",
                raw_id,
            )
        elif isinstance(raw_id, str):
            seen[raw_id] = index + 1
        rule = _parse_rule(check, index, raw)
        if rule is not None:
            rules.append(rule)
    for rule in rules:
        review_s = rule.params.get("window", 0) if rule.kind == "redemption_review" else 0
        if window is not None and review_s > window:
            check.fail(
                f"rule `{rule.rule_id}`",
                "params.window",
                f"at most defaults.conversion_window ({duration_text(window)}): a redemption "
                "is seen only while the coupon's conversion window is open",
                duration_text(review_s),
            )
    if check.problems:
        raise RulesError(check.problems)
    assert cap is not None and window is not None
    assert audience is not None
    return RuleSet(
        tuple(rules), int(cap), window, source, int(audience), {r.rule_id: r for r in rules}
    )
