"""OneID: linking identifiers into customers (CONTRACT §4), as pure logic.

An identifier is ``type:value`` with type ∈ anon, user, member, phone, email, order (phone and
email values are keyed hashes, never raw). Every event carrying two or more identifiers
links them; linked identifiers form one customer.

``IdentityGraph`` holds (part of) the graph in memory and ``link_identifiers`` applies one
event to it. The Redis store loads the part of the graph a batch touches into a graph, lets
this module decide, and writes the difference back atomically — so the rules live here once
and are tested without Redis.

Rules (each has a test):

- Identifiers are taken in priority order user > member > phone > email > order > anon; the
  event resolves to the customer of the first usable one.
- Two customers merge when an event links them; the older one (first seen, then smaller id)
  keeps its id and takes every identifier of the other.
- A customer's id is the one its oldest event (event time, then the smaller minted id) mints,
  whatever order the events arrive in: the id, like the grouping, is a function of the
  events alone, so a restart or a rebuild that reads partitions in another interleaving ends
  with the same ``omni:id:*`` values. An event older than its customer (a late arrival from
  another partition) therefore renames the customer, reported as a ``merged`` change from the
  old id — the same change subscribers already follow for merges.
- A merge (or a new identifier) that would give one customer two different ``user`` or two
  different ``member`` identifiers is refused and reported as a ``conflict``: a shared
  device must not fuse strangers. So is one that would exceed a per-type limit.
- Junk values (empty, ``null``, ``undefined``, all zeros …) never link anyone; neither does a
  value that has been seen with more than ``max_customers_per_identifier`` customers (a shared
  test device, a store's default loyalty card): it is *blocked*.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from domain.events import ClickEvent, PosEvent
from domain.resumable import resumable

PRIORITY: tuple[str, ...] = ("user", "member", "phone", "email", "order", "anon")
_RANK = {kind: rank for rank, kind in enumerate(PRIORITY)}

DEFAULT_JUNK_PATTERNS: tuple[str, ...] = (
    r"",
    r"(?i:null|none|nil|undefined|unknown|anonymous|guest|test|n/?a|nan|\(null\))",
    r"-1",
    r"[0\s-]+",
    r"0{8}-0{4}-0{4}-0{4}-0{12}",
)
DEFAULT_LIMITS: dict[str, int] = {
    "user": 1,
    "member": 1,
    "phone": 5,
    "email": 5,
    "order": 2000,
    "anon": 100,
}


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    junk_patterns: tuple[str, ...] = DEFAULT_JUNK_PATTERNS
    max_customers_per_identifier: int = 3

    def compiled_junk(self) -> re.Pattern[str]:
        return re.compile("|".join(f"(?:{p})" for p in self.junk_patterns))


def normalise_phone(raw: str, default_country_code: str = "86") -> str | None:
    """Digits only, with the default country code when the number has none.

    A leading ``+`` or ``00`` marks a country code; a bare 11-digit number has none.

    >>> normalise_phone("138-0013-8000")
    '8613800138000'
    >>> normalise_phone("+44 20 7946 0958")
    '442079460958'
    """
    text = raw.strip()
    digits = re.sub(r"\D", "", text)
    if len(digits) < 6 or len(set(digits)) == 1:
        return None  # "0", "-1", "00000000000": placeholders, not anybody's number
    if text.startswith("+"):
        return digits
    if digits.startswith("00"):
        return digits[2:] or None
    if len(digits) == 11:
        return default_country_code + digits
    return digits


def normalise_email(raw: str) -> str | None:
    text = raw.strip().lower()
    return text if "@" in text else None


def hash_pii(key: str, normalised: str) -> str:
    """HMAC-SHA256 (key = UTF-8 of the secret) of the normalised value, lower-case hex."""
    return hmac.new(key.encode("utf-8"), normalised.encode("utf-8"), hashlib.sha256).hexdigest()


def pii_identifier_value(kind: str, raw: str, key: str, default_country_code: str) -> str | None:
    """The stored value of a raw phone or e-mail: its keyed hash, or None when unusable."""
    normalised = (
        normalise_phone(raw, default_country_code) if kind == "phone" else normalise_email(raw)
    )
    return None if normalised is None else hash_pii(key, normalised)


def identifier(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def kind_of(ident: str) -> str:
    return ident.split(":", 1)[0]


def by_priority(identifiers: Iterable[str]) -> list[str]:
    """Distinct identifiers, highest priority first (stable within a type)."""
    unique = list(dict.fromkeys(identifiers))
    if len(unique) > 1:
        unique.sort(key=_rank_of)
    return unique


def _rank_of(ident: str) -> int:
    return _RANK[ident.partition(":")[0]]


@resumable
@dataclass(slots=True)
class Customer:
    customer_id: str
    first_seen_ms: int
    identifiers: set[str] = field(default_factory=set)

    def of_kind(self, kind: str) -> set[str]:
        return {i for i in self.identifiers if kind_of(i) == kind}

    def age_key(self) -> tuple[int, str]:
        """Older customers sort first: first seen, then the smaller id."""
        return (self.first_seen_ms, self.customer_id)


@dataclass(frozen=True, slots=True)
class IdentityChange:
    """One entry for ``identity.changes``."""

    kind: str  # linked | merged | conflict | erased
    customer_id: str
    identifiers: tuple[str, ...]
    merged_from: tuple[str, ...] = ()
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    customer_id: str | None
    changes: tuple[IdentityChange, ...]
    #: Identifiers of the event that were refused as junk or blocked (for metrics).
    junk: tuple[str, ...] = ()
    #: True when this event minted a new customer that still stands after its merges.
    created: bool = False


@resumable
@dataclass(slots=True)
class IdentityGraph:
    """Identifier owners and customers; a whole graph, or the part a batch needs."""

    owners: dict[str, str] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)
    #: identifier → customers it was seen with (capped), for blocking shared values.
    sightings: dict[str, set[str]] = field(default_factory=dict)
    #: identifier → the event that blocked it. That event itself still sees it unblocked, so
    #: a replay of it resolves exactly as the first time.
    blocked: dict[str, str] = field(default_factory=dict)

    def customer_of(self, ident: str) -> Customer | None:
        owner = self.owners.get(ident)
        return None if owner is None else self.customers.get(owner)


def new_customer_id(event_id: str, ident: str) -> str:
    """Deterministic, so that a replay of the same event mints the same id."""
    return "c" + hashlib.sha256(f"{event_id}\x1f{ident}".encode()).hexdigest()[:19]


def _refusal(target: Customer, incoming: Iterable[str], policy: IdentityPolicy) -> str | None:
    """Why ``incoming`` identifiers cannot join ``target``, or None if they can."""
    incoming = set(incoming)
    for kind in ("user", "member"):  # a fixed order: the reason must not vary by process
        mine = target.of_kind(kind)
        theirs = {i for i in incoming if kind_of(i) == kind}
        if mine and theirs and mine != theirs:
            return f"two_{kind}s"
    for kind, limit in policy.limits.items():
        total = len(target.of_kind(kind) | {i for i in incoming if kind_of(i) == kind})
        if total > limit:
            return f"limit_{kind}"
    return None


def link_identifiers(
    graph: IdentityGraph,
    identifiers: Sequence[str],
    event_id: str,
    ts_ms: int,
    policy: IdentityPolicy,
    junk: re.Pattern[str] | None = None,
) -> Resolution:
    """Apply one event's identifiers to the graph and say which customer it belongs to."""
    junk = junk if junk is not None else policy.compiled_junk()
    usable: list[str] = []
    refused: list[str] = []
    for ident in by_priority(identifiers):
        value = ident.split(":", 1)[1]
        if junk.fullmatch(value.strip()) or graph.blocked.get(ident, event_id) != event_id:
            refused.append(ident)
        else:
            usable.append(ident)
    if not usable:
        return Resolution(None, (), tuple(refused))

    changes: list[IdentityChange] = []
    conflicts: list[IdentityChange] = []
    absorbed_into: dict[str, str] = {}
    primary = usable[0]
    target = graph.customer_of(primary)
    created = target is None
    if target is None:
        target = Customer(new_customer_id(event_id, primary), ts_ms, {primary})
        graph.customers[target.customer_id] = target
        graph.owners[primary] = target.customer_id
    linked: list[str] = [primary] if created else []

    for ident in usable[1:]:
        other = graph.customer_of(ident)
        if other is not None and other.customer_id == target.customer_id:
            continue
        incoming = other.identifiers if other is not None else {ident}
        reason = _refusal(target, incoming, policy)
        if reason is not None:
            parties = {target.customer_id, *([other.customer_id] if other else [])}
            sighted = (ident,) if kind_of(primary) == "user" else (primary, ident)
            known = all(parties <= graph.sightings.get(i, set()) for i in sighted)
            if not known:  # a conflict already seen (a replay, a repeat) is reported once
                conflicts.append(
                    IdentityChange("conflict", target.customer_id, (primary, ident), reason=reason)
                )
            _sighted(graph, ident, parties, policy, event_id)
            if kind_of(primary) != "user":  # a shared card or phone is sighted too, never
                _sighted(graph, primary, parties, policy, event_id)  # an account
            continue
        if other is None:
            target.identifiers.add(ident)
            graph.owners[ident] = target.customer_id
            linked.append(ident)
            continue
        survivor, absorbed = sorted([target, other], key=Customer.age_key)
        survivor.identifiers |= absorbed.identifiers
        for moved in absorbed.identifiers:
            graph.owners[moved] = survivor.customer_id
        del graph.customers[absorbed.customer_id]
        absorbed_into[absorbed.customer_id] = survivor.customer_id
        survivor.first_seen_ms = min(survivor.first_seen_ms, absorbed.first_seen_ms)
        if created and absorbed is target:
            linked = []  # the new identifiers now belong to the survivor; reported below
            created = False
            changes.append(
                IdentityChange("linked", survivor.customer_id, tuple(sorted(absorbed.identifiers)))
            )
        else:
            changes.append(
                IdentityChange(
                    "merged",
                    survivor.customer_id,
                    tuple(sorted(absorbed.identifiers)),
                    merged_from=(absorbed.customer_id,),
                )
            )
        target = survivor
    if linked:
        changes.insert(0, IdentityChange("linked", target.customer_id, tuple(linked)))
    if (
        ts_ms <= target.first_seen_ms
        and (ts_ms, minted_id := new_customer_id(event_id, primary)) < target.age_key()
    ):
        # This event is older than everything its customer was built from (it arrived
        # late, from another partition): the customer takes the id this event would have
        # minted had it arrived first, so ids do not depend on arrival order.
        renamed = Customer(minted_id, ts_ms, target.identifiers)
        del graph.customers[target.customer_id]
        graph.customers[minted_id] = renamed
        for moved in renamed.identifiers:
            graph.owners[moved] = minted_id
        absorbed_into[target.customer_id] = minted_id
        changes.append(
            IdentityChange(
                "merged",
                minted_id,
                tuple(sorted(renamed.identifiers)),
                merged_from=(target.customer_id,),
            )
        )
        target = renamed
    if absorbed_into:  # changes, conflicts and sightings name the customers that still exist
        # A change made before its customer was itself absorbed (a customer this event
        # minted takes a younger one, then joins an older one) must name the survivor, or a
        # subscriber folding the changes keeps the absorbed identifiers under a customer
        # nothing maps on: its merged_from alias would point at an id never announced.
        changes = [
            c
            if c.customer_id not in absorbed_into
            else dataclasses.replace(c, customer_id=_final(c.customer_id, absorbed_into))
            for c in changes
        ]
        conflicts = [
            dataclasses.replace(c, customer_id=_final(c.customer_id, absorbed_into))
            for c in conflicts
        ]
        for seen in graph.sightings.values():
            if seen & absorbed_into.keys():
                seen.difference_update(absorbed_into.keys() - {target.customer_id})
                seen.add(target.customer_id)
    return Resolution(target.customer_id, tuple(changes + conflicts), tuple(refused), created)


def _final(customer_id: str, absorbed_into: dict[str, str]) -> str:
    while customer_id in absorbed_into:
        customer_id = absorbed_into[customer_id]
    return customer_id


def _sighted(
    graph: IdentityGraph, ident: str, customers: set[str], policy: IdentityPolicy, event_id: str
) -> None:
    """Remember which customers an identifier was seen with; block it past the limit."""
    seen = graph.sightings.setdefault(ident, set())
    seen |= customers
    if len(seen) > policy.max_customers_per_identifier:
        graph.blocked.setdefault(ident, event_id)


def erase_customer(graph: IdentityGraph, customer_id: str) -> IdentityChange | None:
    """Forget a customer: every identifier is unlinked (CONTRACT §4 ``erased``)."""
    customer = graph.customers.pop(customer_id, None)
    if customer is None:
        return None
    for ident in customer.identifiers:
        if graph.owners.get(ident) == customer_id:
            del graph.owners[ident]
    return IdentityChange("erased", customer_id, tuple(sorted(customer.identifiers)))


def identifiers_of(event: ClickEvent | PosEvent) -> list[str]:
    """Every identifier an input event carries (phone/e-mail already hashed by the decoder)."""
    found: list[str] = []
    if isinstance(event, ClickEvent):
        found.append(identifier("anon", event.anonymous_id))
        if event.user_id is not None:
            found.append(identifier("user", event.user_id))
        if event.email_hash is not None:
            found.append(identifier("email", event.email_hash))
    else:
        if event.member_code is not None:
            found.append(identifier("member", event.member_code))
    if event.phone_hash is not None:
        found.append(identifier("phone", event.phone_hash))
    if event.order_id is not None:
        found.append(identifier("order", event.order_id))
    return found


# -- a batch against a stored graph ------------------------------------------------------
#
# A store (Redis, or the in-memory one of the tests) does not hand ``link_identifiers`` its
# whole graph: it reads the part a batch touches, lets the rules decide on that part, and
# writes the difference back. Which part is read is itself part of the result — a merge
# renames the sightings it can see, and those are the sightings of the batch's identifiers
# only — so the part, the loop over a batch and the difference are defined here, once, and
# every store gives the same answers for the same batches.


@dataclass(slots=True)  # not frozen: one per event, and a frozen __init__ costs 5× more
class EventIdentifiers:
    """What resolving one event needs: its id (replays and minted ids), its event time and
    every identifier it carries."""

    event_id: str
    ts_ms: int
    identifiers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StoredCustomer:
    """A customer record as a store keeps it; ``version`` grows with every write, so a
    writer can tell that the record changed since it read it."""

    first_seen_ms: int
    identifiers: frozenset[str]
    version: int


@dataclass(frozen=True, slots=True)
class Sighting:
    """The customers an identifier was seen with (for blocking shared values), and the
    event that blocked it, if any."""

    seen: frozenset[str]
    blocked_by: str | None = None


@dataclass(slots=True)
class GraphPart:
    """The part of a stored graph one batch reads: the graph the rules work on, and what
    was read to build it (to write back only the difference, and to check nothing read has
    changed meanwhile)."""

    graph: IdentityGraph
    #: identifier → its owner as read ("" when it had none), for every identifier asked for
    owners: dict[str, str]
    #: customer → version of its record as read (None: the owner key named a missing record)
    versions: dict[str, int | None]
    #: identifier → its sighting as read (identifiers never sighted are absent)
    sightings: dict[str, Sighting]


def graph_part(
    owners: dict[str, str],
    customers: dict[str, StoredCustomer | None],
    sightings: dict[str, Sighting],
) -> GraphPart:
    """The graph of the identifiers asked for: their owners' records (with every identifier
    of those customers) and their own sightings.

    ``owners`` maps each identifier asked for to its owner ("" for none), ``customers``
    each of those owners to its record (None when missing), ``sightings`` the identifiers
    asked for that were sighted. An owner key naming a missing record is ignored (the
    identifier is free); an owner key wins over a record listing the identifier elsewhere.
    """
    graph = IdentityGraph()
    versions: dict[str, int | None] = {}
    for customer_id, record in customers.items():
        if record is None:
            versions[customer_id] = None
            continue
        graph.customers[customer_id] = Customer(
            customer_id, record.first_seen_ms, set(record.identifiers)
        )
        versions[customer_id] = record.version
        for ident in record.identifiers:
            graph.owners[ident] = customer_id
    for ident, owner in owners.items():
        if owner and owner in graph.customers:
            graph.owners[ident] = owner
    for ident, sighting in sightings.items():
        graph.sightings[ident] = set(sighting.seen)
        if sighting.blocked_by is not None:
            graph.blocked[ident] = sighting.blocked_by
    return GraphPart(graph, dict(owners), versions, dict(sightings))


def resolve_events(
    graph: IdentityGraph,
    events: Sequence[EventIdentifiers],
    previous: Sequence[Resolution | None],
    policy: IdentityPolicy,
    junk: re.Pattern[str] | None = None,
) -> tuple[list[Resolution], list[tuple[str, Resolution]], set[str]]:
    """Resolve a batch's events in order on ``graph``.

    An event with a ``previous`` resolution (a replay after a crash: its effects are
    already stored) gets that resolution again, so its outputs are the same as the first
    time. Returns one resolution per event, the resolutions to remember (of the events that
    changed the graph) and the customers the batch changed (each is named by a change).
    """
    junk = junk if junk is not None else policy.compiled_junk()
    resolutions: list[Resolution] = []
    remembered: list[tuple[str, Resolution]] = []
    touched: set[str] = set()
    for event, before in zip(events, previous, strict=True):
        if before is not None:
            resolutions.append(before)
            continue
        resolution = link_identifiers(
            graph, event.identifiers, event.event_id, event.ts_ms, policy, junk
        )
        resolutions.append(resolution)
        if resolution.changes or resolution.created:
            remembered.append((event.event_id, resolution))
        # Every customer an event changes (gains identifiers, absorbs another, is minted or
        # renamed) is named by one of its changes.
        touched.update(change.customer_id for change in resolution.changes)
    return resolutions, remembered, touched


@dataclass(frozen=True, slots=True)
class GraphWrites:
    """What a store writes after a batch: the difference between a ``GraphPart`` as read
    and its graph after the rules."""

    #: identifier → new owner
    owners: dict[str, str]
    #: identifiers that lost their owner (their customer was erased)
    dropped_owners: tuple[str, ...]
    #: customer → its new record (version one past the one read)
    customers: dict[str, StoredCustomer]
    #: customers merged away, renamed or erased
    dropped_customers: tuple[str, ...]
    #: identifier → its new sighting
    sightings: dict[str, Sighting]


def graph_writes(part: GraphPart, touched: Iterable[str]) -> GraphWrites:
    """The writes that take a store from ``part`` as read to ``part.graph``; ``touched``
    are the customers whose records changed (``resolve_events``)."""
    graph = part.graph
    read_owners = part.owners
    owners = {
        ident: owner for ident, owner in graph.owners.items() if read_owners.get(ident) != owner
    }
    dropped_owners = tuple(
        ident for ident, owner in read_owners.items() if owner and ident not in graph.owners
    )
    dropped_customers = tuple(cid for cid in part.versions if cid not in graph.customers)
    customers: dict[str, StoredCustomer] = {}
    for cid in touched:
        customer = graph.customers.get(cid)
        if customer is None:
            continue
        version = (part.versions.get(cid) or 0) + 1
        customers[cid] = StoredCustomer(
            customer.first_seen_ms, frozenset(customer.identifiers), version
        )
    sightings: dict[str, Sighting] = {}
    for ident, seen in graph.sightings.items():
        sighting = Sighting(frozenset(seen), graph.blocked.get(ident))
        if part.sightings.get(ident) != sighting:
            sightings[ident] = sighting
    return GraphWrites(owners, dropped_owners, customers, dropped_customers, sightings)
