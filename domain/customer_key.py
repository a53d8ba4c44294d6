"""One customer's key in rule_triggers, across merges and erasure: its rule engine
(``CustomerTriggers``), its profile (``domain.profile``), and what it does with the identity
notices of its stream (``connectors.resolved.merge_notices``). Pure: the flow stores and
fetches the handed-over state; nothing here reads a clock or Redis.

A merge of A into B arrives as two notices. A's key gets ``merged`` after every event
resolved to A: it fires what was due by then, packs its rule state and profile into a
``HandOver`` for the flow to leave in the handover store, and is gone. B's key gets
``absorbed`` before B's first event after the merge: it waits, holding everything that
comes, until the flow finds A's state (``absorb``); then it combines both
(``customer_rules.absorb``, ``profile.merge``) and takes what it held, in order. A second
merge's ``absorbed`` that comes while B waits is held in its place too: B takes the items
before it with A's state only, then waits again, so when the handovers arrive never changes
what is decided. Whatever
order the partitions are read in, B decides nothing after the merge without A's history:
one coupon under the survivor, caps counting both ids' coupons. Chains follow: when B is
merged into C, B's state already holds A's.

``erased`` drops everything: the key is gone, and a ``CustomerErased`` tells the flow's
sinks to delete the profile, the coupon codes and the handover entries of the id.

A change of the profile leaves a ``ProfilePending`` note; ``settle`` makes the last note of
a batch its one ``ProfileWrite``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from domain.customer_rules import (
    GONE_CUSTOMER,
    CouponDecision,
    CouponSuppressed,
    CustomerEvent,
    Offer,
    absorb,
    state_from_json,
    state_to_json,
)
from domain.profile import (
    CustomerProfile,
    ProfileSettings,
    merge,
    next_segment_change_ms,
    observe,
    profile_fields,
    profile_from_json,
    profile_to_json,
)
from domain.resumable import lists_as_tuples, resumable
from domain.rules import RuleSet
from domain.stock_view import StockView
from domain.trigger_engine import AudienceTriggers, CustomerTriggers

MERGED = "merged"
ABSORBED = "absorbed"
ERASED = "erased"


@dataclass(frozen=True, slots=True)
class IdentityNotice:
    """A merge or an erasure, as it reaches one customer's key (``other``: the survivor of a
    ``merged`` notice, the merged id of an ``absorbed`` one)."""

    kind: str  # merged | absorbed | erased
    customer_id: str
    other: str | None
    ts_ms: int
    event_id: str
    source_partition: int = 0


def _gone(offer: Offer) -> CouponSuppressed:
    return CouponSuppressed(offer.rule_id, GONE_CUSTOMER)


def reaches_audiences(item: object) -> bool:
    """Whether every region's audience takes this item (``audience_notice``)."""
    return isinstance(item, IdentityNotice) and item.kind in (MERGED, ERASED)


def audience_notice(audience: AudienceTriggers, notice: IdentityNotice, rules: RuleSet) -> None:
    """A ``merged`` or ``erased`` notice as every region's audience takes it: the merged
    viewer's views count for the survivor, the erased one's are dropped (``absorbed`` says
    only to the survivor's key what its ``merged`` twin says to everyone)."""
    if notice.kind == MERGED and notice.other and notice.other != notice.customer_id:
        audience.follow_merge(notice.customer_id, notice.other, notice.ts_ms, rules)
    elif notice.kind == ERASED:
        audience.forget(notice.customer_id)


@dataclass(frozen=True, slots=True)
class HandOver:
    """The state of ``merged`` for ``survivor``: the flow leaves it in the handover store."""

    survivor: str
    merged: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ProfileWrite:
    """The public profile hash of a customer as of ``as_of_ms`` (event time)."""

    customer_id: str
    fields: dict[str, str]
    as_of_ms: int


@dataclass(frozen=True, slots=True)
class ProfilePending:
    """The profile changed as of ``as_of_ms``: a ``ProfileWrite`` is due. ``settle`` turns
    the last of a batch into one: only a batch's latest profile is written, and its
    fields cost more to compute than the rules of an event."""

    customer_id: str
    as_of_ms: int


@dataclass(frozen=True, slots=True)
class ProfileRetired:
    """A customer merged into another: its own profile hash goes (the survivor's holds it)."""

    customer_id: str


@dataclass(frozen=True, slots=True)
class CustomerErased:
    """Delete what Redis keeps of an erased customer: profile, coupon codes, handovers."""

    customer_id: str
    codes: tuple[str, ...]


KeyItem = CustomerEvent | Offer | IdentityNotice


def _offer_json(offer: Offer) -> dict[str, Any]:
    return {
        "rule_id": offer.rule_id,
        "sku": offer.sku,
        "store_id": offer.store_id,
        "reason": offer.reason,
        "evidence": list(offer.evidence),
        "ts_ms": offer.ts_ms,
    }


def pack(triggers: CustomerTriggers, profile: CustomerProfile | None) -> bytes:
    """A key's state as JSON (no pickle: it crosses Redis)."""
    document = {
        "rules": json.loads(state_to_json(triggers.state)),
        "profile": json.loads(profile_to_json(profile)) if profile else None,
        "held_offers": [_offer_json(o) for o in triggers.held_offers],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def unpack(payload: bytes, customer_id: str) -> tuple[CustomerTriggers, CustomerProfile | None]:
    """The state ``pack`` wrote, as the survivor ``customer_id`` will keep it."""
    document = json.loads(payload)
    state = state_from_json(json.dumps(document["rules"]).encode())
    profile_doc = document.get("profile")
    profile = profile_from_json(json.dumps(profile_doc).encode()) if profile_doc else None
    offers = [
        Offer(
            o["rule_id"],
            customer_id,
            o["sku"],
            o["store_id"],
            o["reason"],
            tuple(o["evidence"]),
            o["ts_ms"],
        )
        for o in document.get("held_offers", [])
    ]
    return CustomerTriggers(customer_id, state, tuple(offers)), profile


@resumable
@dataclass(slots=True)
class CustomerKey:
    """What rule_triggers keeps under one customer id."""

    triggers: CustomerTriggers = field(default_factory=CustomerTriggers)
    profile: CustomerProfile | None = None
    #: merged ids whose state this key waits for, in the order their notices came (tuples,
    #: not lists: nearly always empty, and the empty tuple is shared by every key)
    waiting: tuple[str, ...] = ()
    #: what came while waiting, in arrival order
    held: tuple[KeyItem, ...] = ()
    #: merged away or erased: the flow discards the key
    gone: bool = False
    #: event time of the last profile written (a segment timer fires after it)
    written_ms: int | None = None

    def __post_init__(self) -> None:
        self.waiting, self.held = tuple(self.waiting), tuple(self.held)

    @staticmethod
    def _resume_upgrade(held: dict[str, Any]) -> dict[str, Any]:
        """A snapshot of when ``waiting`` and ``held`` were lists."""
        return lists_as_tuples(held, "waiting", "held")

    def __deepcopy__(self, memo: dict[int, object]) -> CustomerKey:
        return CustomerKey(
            copy.deepcopy(self.triggers, memo),
            copy.deepcopy(self.profile, memo),
            self.waiting,  # tuples of frozen items: shared
            self.held,
            self.gone,
            self.written_ms,
        )

    @property
    def customer_id(self) -> str:
        return self.triggers.customer_id

    def take(
        self,
        item: KeyItem,
        rules: RuleSet,
        stock: StockView,
        settings: ProfileSettings,
        *,
        replay: bool,
    ) -> list[Any]:
        """One item of the key's stream: rule outcomes, profile notes (``settle``), and at
        most one ``HandOver`` or ``CustomerErased``."""
        if isinstance(item, IdentityNotice) and item.kind == ERASED:
            return self._erase(item)
        if self.gone:  # a duplicate after the key's end: nothing more is sent to it
            return [_gone(item)] if isinstance(item, Offer) else []
        if self.waiting:
            # Another merge's notice is held in its place like any item: what came before
            # it is decided with the states merged so far, not with the later one's (which
            # may hold purchases read early but made after those items).
            self.held = (*self.held, item)
            return []
        if isinstance(item, IdentityNotice):
            self.triggers.customer_id = self.triggers.customer_id or item.customer_id
            if item.kind == ABSORBED and item.other and item.other != item.customer_id:
                self.waiting = (*self.waiting, item.other)
                return []
            if item.kind == MERGED and item.other and item.other != item.customer_id:
                out: list[Any] = [*self.triggers.fire_due(item.ts_ms - 1, rules, stock)]
                out += self._profile_timer(item.ts_ms - 1, settings)
                self.gone = True
                # Offers to this id are not handed over: the audience sends the survivor's
                # to the survivor, and one that reached this key before its notice is
                # dropped as one that came after it is (``finish``).
                out += [_gone(offer) for offer in self.triggers.held_offers]
                self.triggers.held_offers = ()
                payload = pack(self.triggers, self.profile)
                handed = HandOver(item.other, item.customer_id, payload)
                return [*out, handed, ProfileRetired(item.customer_id)]
            return []
        if isinstance(item, Offer):
            if replay:
                self.triggers.hold_offer(item)
                return []
            if not self.customer_id:  # live: a key made by the offer, whose customer is gone
                self.gone = True
                return [_gone(item)]
            return self.triggers.on_offer(item, rules, stock)
        out = [*self.triggers.on_event(item, rules, stock)]
        self.profile = observe(self.profile, item, settings)
        out.append(self._profile_write(item.ts_ms, settings))
        return out

    def absorb(
        self,
        merged: str,
        payload: bytes,
        rules: RuleSet,
        stock: StockView,
        settings: ProfileSettings,
        *,
        replay: bool,
    ) -> list[Any]:
        """``merged``'s state has been found: combine it, then take what was held while no
        state was missing any more."""
        if merged not in self.waiting:
            return []
        at = self.waiting.index(merged)
        self.waiting = self.waiting[:at] + self.waiting[at + 1 :]
        theirs, their_profile = unpack(payload, self.customer_id)
        self.triggers.state = absorb(self.triggers.state, theirs.state)
        # (a payload from before merged keys dropped their offers may still hold some)
        out: list[Any] = [_gone(offer) for offer in theirs.held_offers]
        if their_profile is not None:
            self.profile = (
                their_profile
                if self.profile is None
                else merge(self.profile, their_profile, settings)
            )
        if self.profile is not None and self.profile.last_seen_ms is not None:
            out.append(self._profile_write(self.profile.last_seen_ms, settings))
        while not self.waiting and self.held and not self.gone:
            item, self.held = self.held[0], self.held[1:]
            out += self.take(item, rules, stock, settings, replay=replay)
        if self.gone:  # merged away by a held notice: what came after it is not taken
            out += [_gone(item) for item in self.held if isinstance(item, Offer)]
            self.held = ()
        return out

    def fire_due(
        self, mark_ms: int | None, rules: RuleSet, stock: StockView, settings: ProfileSettings
    ) -> list[Any]:
        """Timers due by ``mark_ms``: the rules' and the profile's segment change."""
        if self.waiting or self.gone or mark_ms is None:
            return []
        fired = self.triggers.fire_due(mark_ms, rules, stock)
        return [*fired, *self._profile_timer(mark_ms, settings)]

    def finish(
        self, end_ms: int | None, rules: RuleSet, stock: StockView, settings: ProfileSettings
    ) -> list[Any]:
        if self.waiting or self.gone:
            return []
        if not self.customer_id:
            # Only offers came: their customer was merged away (through a chain the
            # region's audience could not follow) or erased, and its key discarded first.
            self.gone = True
            gone = [_gone(offer) for offer in self.triggers.held_offers]
            self.triggers.held_offers = ()
            return gone
        out: list[Any] = [*self.triggers.finish(end_ms, rules, stock)]
        if end_ms is not None:
            out += self._profile_timer(end_ms, settings)
        return out

    def next_deadline(self, settings: ProfileSettings) -> int | None:
        if self.gone:
            return None
        deadlines = [self.triggers.next_deadline()]
        if self.profile is not None and self.written_ms is not None:
            deadlines.append(next_segment_change_ms(self.profile, settings, self.written_ms))
        return min((d for d in deadlines if d is not None), default=None)

    def settle(self, outcomes: list[Any], settings: ProfileSettings) -> list[Any]:
        """``outcomes`` of this key (from any of its methods, in order) with its
        ``ProfilePending`` notes gone but the last, which becomes the ``ProfileWrite`` of
        the profile as it stands (every change of the profile leaves a note, so the last
        note is as of the latest change). A key merged away or erased writes nothing: the
        ``ProfileRetired`` or ``CustomerErased`` it sent removes its profile."""
        last = -1
        for index, item in enumerate(outcomes):
            if isinstance(item, ProfilePending):
                last = index
        if last < 0:
            return outcomes
        settled = []
        for index, item in enumerate(outcomes):
            if not isinstance(item, ProfilePending):
                settled.append(item)
            elif index == last and not self.gone and self.profile is not None:
                fields = profile_fields(self.profile, item.as_of_ms, settings)
                settled.append(ProfileWrite(self.customer_id, fields, item.as_of_ms))
        return settled

    def _profile_timer(self, mark_ms: int, settings: ProfileSettings) -> list[ProfilePending]:
        """A segment that changed by time alone (active → at risk → lapsed) is rewritten."""
        if self.profile is None or self.written_ms is None:
            return []
        out = []
        due = next_segment_change_ms(self.profile, settings, self.written_ms)
        while due is not None and due <= mark_ms:
            out.append(self._profile_write(due, settings))
            due = next_segment_change_ms(self.profile, settings, self.written_ms)
        return out

    def _profile_write(self, as_of_ms: int, settings: ProfileSettings) -> ProfilePending:
        assert self.profile is not None
        self.written_ms = max(as_of_ms, self.written_ms or as_of_ms)
        return ProfilePending(self.customer_id, as_of_ms)

    def _erase(self, notice: IdentityNotice) -> list[Any]:
        dropped = [_gone(offer) for offer in self.triggers.held_offers]
        state = self.triggers.state
        codes = {t.code for t in state.open_triggers}
        codes |= {d.code for d in state.held if isinstance(d, CouponDecision)}
        self.triggers = CustomerTriggers()
        self.profile = None
        self.waiting, self.held = (), ()
        self.gone = True
        return [*dropped, CustomerErased(notice.customer_id, tuple(sorted(codes)))]
