"""Attribution's journey from input to credits, pure: which customer's path a touch, a
purchase or a merge belongs to, how a path turns into converted and abandoned paths, how a
converted path is credited, and the running totals per model × channel.

The flow (``flows.attribution``) runs these as its steps, keyed as follows:

- ``chain_merges`` on one key, merges and erasures only: resolves each merge to the customer
  that survives the whole chain (A merged into B, then B into C: A's path belongs to C),
  tells the ids merged into B earlier that their path now belongs to C (``Repoint``), and
  turns an erasure into one ``Erase`` per id of the erased customer;
- ``route`` per customer id an item arrived with (the ids a customer was ever known by);
- ``CustomerPath`` per customer that owns the path: touches, purchases (each conversion id
  credited once);
- ``credit_once`` on one key: the heuristic models per path, the Markov chain over all
  paths (a replay's outcomes all at its end, ``in_event_time_order``), each conversion id
  once over all paths (``CreditedConversions``);
- ``accumulate`` on one key: absolute totals per model × channel.

How everything A had reaches C after A → B → C, without a loop in the dataflow:

- **Live**, each id's router keeps the id's *own* touches (those after its own latest
  purchase, bounded) and its own conversions for good, also after its merge. Each time its
  owner changes (``Absorb``, then every ``Repoint`` along the chain) it hands all of them to
  the new owner's path. C's path is thus fed by every id of the chain directly (A's router
  on ``Repoint(A → C)``, B's on ``Absorb(B → C)``): nothing has to travel from B's *path*
  to C's. What B's path used up is known from the conversions handed over with it (every
  conversion passes through the router of the id it arrived with): a conversion uses up
  every touch before it, so a path drops its touches older than the newest conversion a
  handover brings. No touch credits two conversions, each conversion id once on a path.
  A handover is not ordered against the survivor's own events (it comes from another key,
  through the merges step): a store pickup under C can reach C's path before the handover
  that names its order, credited under A. The credit step, which every path feeds, credits
  each conversion id once (``CreditedConversions``, with the sequence of events). What
  such a pickup used up on C's path stays used: C's next purchase may miss touches there.
- **In a replay** (``--until-idle``) the routers hold what each id was given and send it,
  with the id's own merge (direct survivor, event time), to the path of the customer that
  survives at the end of the input (``route_finish``). Each path then replays its whole
  group in event-time order (``replay_group``): every id has a path of its own until its
  merge, where that path's unused touches and credited conversions join the survivor's and
  its later items go there. The credits depend on the event times alone, not on the order
  or the speed at which the topics were read, nor on the number of workers.

Erasure (``Erase``, from ``identity.changes`` ``erased`` or the ``identity_erased`` notice):
the merges step drops the chains of the erased customer and keeps only its ids as erased
(so a merge into it read later erases the merged id too); the erased id's router has it
first in the order of its own stream (``ErasedInStream``: through the merges step alone a
purchase read after the notice could reach the router before it); each router of the
customer's ids drops everything and keeps a bare mark (no touch, no conversion, no merge)
so that what still arrives under the id is not kept: a touch is dropped, a purchase is
credited as a walk-in (``customer_id`` null, credited to nobody; in a replay so is every
purchase the router held for it). Each path keyed by one of the ids drops what it holds
and keeps a bare mark too (what another id's router sent it before that router was told
is then dropped, or credited to nobody: ``CustomerPath.take``). The totals in Redis hold
no customer ids (``state.attribution_store``).

The models themselves are in ``domain.attribution``. Nothing here reads a clock: time is
the event time of the items.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from domain.attribution import (
    MODELS,
    PRUNE_EVERY_MS,
    AbandonedPath,
    AttributionParams,
    ConvertedPath,
    Credits,
    MarkovState,
    PathState,
    Touch,
    add_path,
    add_touches,
    convert,
    heuristic_credits,
    markov_credit,
)
from domain.resumable import resumable

# --- what the decoders hand the flow -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CustomerTouch:
    """A marketing touch (a campaign visit, an ad click, a coupon sent) of ``customer_id``."""

    customer_id: str
    touch: Touch


@dataclass(frozen=True, slots=True)
class Purchase:
    """A conversion attribution credits: an online ``order_placed`` or a till ``sale``.

    ``conversion_id`` is ``order:<order_id>`` when the purchase names an online order (so
    the store pickup of an order is the same conversion as the order, not a second one) and
    ``receipt:<store>:<receipt>`` for a walk-in sale. ``customer_id`` is None for a sale
    nobody could be recognised at."""

    customer_id: str | None
    conversion_id: str
    revenue: float
    ts_ms: int
    event_id: str


@dataclass(frozen=True, slots=True)
class Absorb:
    """``customer_id`` was merged into ``into`` at ``ts_ms`` (a ``merged`` change of
    ``identity.changes`` or an ``identity_merged`` notice; None: a change without a time,
    taken as merged from the start). Leaving the merges step, ``into`` is the end of the
    chain and ``via`` the customer the change named when that is another one."""

    customer_id: str
    into: str
    ts_ms: int | None = None
    via: str | None = None

    @property
    def direct(self) -> str:
        """The customer ``customer_id`` was merged into (not the end of its chain)."""
        return self.via or self.into


@dataclass(frozen=True, slots=True)
class Erase:
    """``customer_id`` was erased (``forget``): attribution keeps nothing of it."""

    customer_id: str


AttributionInput = CustomerTouch | Purchase | Absorb | Erase


@dataclass(frozen=True, slots=True)
class ErasedInStream:
    """The erasure of ``customer_id`` where it was read, handed to that id's router in the
    order of the stream it came in (``with_erasures_in_stream``), besides the ``Erase``
    that goes through the merges step to every id of the customer.

    The merges step is one key on one worker: what it says reaches a router by another
    route than the events read after it in the same stream, and live nothing orders the two
    (a router takes what reaches it first). Through the merges step alone, a purchase read
    after ``identity_erased`` in the erased customer's own stream reached its router before
    the ``Erase`` and was credited under the erased id."""

    customer_id: str


def with_erasures_in_stream(
    items: Sequence[AttributionInput],
) -> list[AttributionInput | ErasedInStream]:
    """``items`` of one message, each ``Erase`` preceded by its ``ErasedInStream``.

    >>> with_erasures_in_stream([Erase("c")])
    [ErasedInStream(customer_id='c'), Erase(customer_id='c')]
    """
    out: list[AttributionInput | ErasedInStream] = []
    for item in items:
        if isinstance(item, Erase):
            out.append(ErasedInStream(item.customer_id))
        out.append(item)
    return out


# --- merge chains: the customer that survives ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Repoint:
    """``customer_id`` was merged into a customer that has now been merged into ``into``:
    its path belongs to ``into`` from now on (the merges step's word to the router). ``via``
    and ``ts_ms`` repeat the id's own merge, for a router that reads this first."""

    customer_id: str
    into: str
    ts_ms: int | None = None
    via: str | None = None


@dataclass(slots=True)
class MergeChains:
    """Every merge seen, as alias → the customer that survives it, and survivor → the ids
    merged into it (transitively). ``survivor`` always names the end of the chain, so one
    look-up resolves an id. ``edges`` keeps each alias's own merge (the customer the change
    named, its time), ``erased`` the ids of erased customers (ids only)."""

    survivor: dict[str, str] = field(default_factory=dict)
    merged: dict[str, list[str]] = field(default_factory=dict)
    edges: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)

    def __deepcopy__(self, memo: dict[int, object]) -> MergeChains:
        return MergeChains(
            dict(self.survivor),
            {k: list(v) for k, v in self.merged.items()},
            dict(self.edges),
            set(self.erased),
        )

    def __setstate__(self, state: object) -> None:
        """Snapshots written before ``edges`` and ``erased`` hold the first two fields."""
        values = list(state) if isinstance(state, list | tuple) else []
        defaults: list[object] = [{}, {}, {}, set()]
        for name, value in zip(self.__slots__, [*values, *defaults[len(values) :]], strict=True):
            object.__setattr__(self, name, value)

    def __getstate__(self) -> list[object]:
        return [self.survivor, self.merged, self.edges, self.erased]


def chain_merges(
    state: MergeChains | None, item: Absorb | Erase
) -> tuple[MergeChains, list[Absorb | Repoint | Erase]]:
    """One merge or erasure resolved through the merges seen before it (in arrival order:
    the topic's partitions interleave as they may).

    ``identity.changes`` names a merge's two customers only (``merged_from`` → ``customer_id``):
    after A → B and B → C, the router of A knew only B, so A's path, handed to B, stayed
    there when B's path went to C: a purchase credited under A (an order placed on a device)
    was credited again when its store pickup arrived under C. Here A → B becomes A → (the
    end of B's chain), and B → C also repoints every id merged into B before to C.

    >>> state, out = chain_merges(None, Absorb("a", into="b"))
    >>> out
    [Absorb(customer_id='a', into='b', ts_ms=None, via=None)]
    >>> chain_merges(state, Absorb("b", into="c"))[1]
    [Absorb(customer_id='b', into='c', ts_ms=None, via=None), Repoint(customer_id='a', \
into='c', ts_ms=None, via='b')]

    A merge into itself, a second merge of an id already merged (a replayed change, or the
    same merge from its notice), and one that would close a loop (its survivor's chain ends
    at the id itself) change nothing, as in ``route``. An erasure erases every id merged
    into the customer; a merge into an erased customer, read after the erasure, erases the
    merged id and the ids merged into it (whatever order the merges and the erasure are
    read in, the same ids end erased)."""
    if state is None:
        state = MergeChains()
    if isinstance(item, Erase):
        return state, _erase_chain(state, item.customer_id)
    old = item.customer_id
    if erased_token(old) in state.erased:
        return state, []
    into = state.survivor.get(item.into, item.into)
    if erased_token(into) in state.erased or erased_token(item.into) in state.erased:
        # One customer with an erased one: erased as well, with the ids merged into it.
        return state, _erase_chain(state, old)
    if old in state.survivor or into == old:
        return state, []
    moved = state.merged.pop(old, [])
    for earlier in moved:
        state.survivor[earlier] = into
    state.survivor[old] = into
    state.edges[old] = (item.into, item.ts_ms)
    state.merged.setdefault(into, []).extend([old, *moved])
    via = item.into if item.into != into else None
    repoints = []
    for earlier in moved:
        direct, ts_ms = state.edges.get(earlier, (old, None))
        repoints.append(Repoint(earlier, into, ts_ms, direct if direct != into else None))
    return state, [Absorb(old, into, item.ts_ms, via), *repoints]


def erased_token(customer_id: str) -> str:
    """How the merges step remembers an erased id: a one-way digest, so the step can still
    tell that a merge read later concerns an erased customer without keeping the id."""
    return hashlib.sha256(("erased\x1f" + customer_id).encode()).hexdigest()


def _erase_chain(state: MergeChains, customer_id: str) -> list[Absorb | Repoint | Erase]:
    """Forget the chains of ``customer_id`` (the ids merged into it, and its own merge if it
    was merged away); keep its ids as erased."""
    ids = [customer_id, *state.merged.pop(customer_id, [])]
    survivor = state.survivor.get(customer_id)
    if survivor is not None:  # erased under an alias: only that id's part of the chain
        state.merged[survivor] = [m for m in state.merged.get(survivor, []) if m not in ids]
        if not state.merged[survivor]:
            del state.merged[survivor]
    for erased in ids:
        state.survivor.pop(erased, None)
        state.edges.pop(erased, None)
    fresh = [erased for erased in ids if erased_token(erased) not in state.erased]
    state.erased.update(erased_token(erased) for erased in ids)
    return [Erase(erased) for erased in fresh]


#: What the router is fed: the decoded items, merges resolved by ``chain_merges``, and
#: erasures as read in the id's own stream.
RouterInput = CustomerTouch | Purchase | Absorb | Repoint | Erase | ErasedInStream


# --- routing: the customer that owns the path --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handover:
    """Touches of a customer merged into the one this is sent to, and the conversions
    credited under the old id (so the store pickup of an order placed before the merge is
    not credited again, and the touches those conversions used up are not used again)."""

    touches: tuple[Touch, ...]
    conversions: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Gathered:
    """What a replay's router held for ``customer_id``, sent at the end of the input to the
    path of the customer that survives: its own merge (``merged_into`` at ``merged_at``;
    None for the survivor itself) and its touches and purchases."""

    customer_id: str
    merged_into: str | None
    merged_at: int | None
    items: tuple[Touch | Purchase, ...]


#: Conversions a router remembers per customer id, for a handover.
ROUTER_CONVERSIONS_KEPT = 200


@dataclass(slots=True)
class RouterState:
    """What the router keeps per customer id: the survivor once merged (and the id's own
    merge: ``via`` the customer it was merged into, ``merged_at``), the id's own touches
    after its latest purchase (at most ``max_touches``) and its conversions (at most
    ``ROUTER_CONVERSIONS_KEPT``), kept after the merge too, for every later owner; in a
    replay what the id was given (``pending``); ``erased``: the id was erased, nothing
    else is kept; ``customer_id``: the id itself (a step resumed from a snapshot is not
    told its key)."""

    absorbed_into: str | None = None
    touches: tuple[Touch, ...] = ()
    conversions: tuple[tuple[str, int], ...] = ()
    via: str | None = None
    merged_at: int | None = None
    pending: list[Touch | Purchase] = field(default_factory=list)
    erased: bool = False
    customer_id: str | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> RouterState:
        """Bytewax snapshots state every epoch; the fields are immutable (frozen touches in
        tuples), so a new holder is a full copy (the generic deepcopy was 8% of the flow)."""
        return RouterState(
            self.absorbed_into,
            self.touches,
            self.conversions,
            self.via,
            self.merged_at,
            list(self.pending),
            self.erased,
            self.customer_id,
        )

    def __getstate__(self) -> list[object]:
        return [getattr(self, name) for name in self.__slots__]

    def __setstate__(self, state: object) -> None:
        """Snapshots written before merges were followed along chains hold three fields."""
        values = list(state) if isinstance(state, list | tuple) else []
        defaults: list[object] = [None, (), (), None, None, [], False, None]
        for name, value in zip(self.__slots__, [*values, *defaults[len(values) :]], strict=True):
            object.__setattr__(self, name, value)


#: What a path is fed: a touch, a handover from a merged customer, a purchase, a replay's
#: gathered items of one id, or the erasure of the path's customer.
PathItem = Touch | Handover | Purchase | Gathered | Erase


def route(
    state: RouterState | None, item: RouterInput, params: AttributionParams, live: bool = True
) -> tuple[RouterState, list[tuple[str, PathItem]]]:
    """``item`` (keyed by the customer id it arrived with) as (owner of the path, what the
    owner's path is fed).

    Live, a touch or purchase goes to the owner's path at once; the router keeps the id's
    own touches after its latest purchase and its conversions, and hands all of them to
    every new owner: on the merge (``Absorb``) and each time the survivor is merged on
    (``Repoint``). A merge into itself or a second merge of the same id changes nothing.

    In a replay (``live=False``) touches and purchases are held here and merges only noted:
    ``route_finish`` sends them to the owner at the end of the input, when the end of every
    chain is known, with the id's own merge for ``replay_group``.

    After ``Erase`` the id keeps a bare mark: its touches are dropped and its purchases go
    to the walk-in path without a customer."""
    if state is None:
        state = RouterState()
    if state.customer_id is None:
        state.customer_id = item.customer_id or ""
    if isinstance(item, Erase | ErasedInStream):
        # The id's own stream and the merges step both say it (``ErasedInStream``): the
        # first one read erases, the second finds the mark and changes nothing more.
        # What a replay held: its purchases still happened, credited to nobody.
        held = [_anonymous(p) for p in state.pending if isinstance(p, Purchase)]
        mark = RouterState(erased=True, customer_id="")  # the key names the id; no copy
        return mark, [(item.customer_id, Erase(item.customer_id)), *(("", p) for p in held)]
    if state.erased:
        return state, [("", _anonymous(item))] if isinstance(item, Purchase) else []
    out: list[tuple[str, PathItem]] = []
    if live and state.pending:  # resumed live from a replay's snapshot: what it held
        holder = state.absorbed_into or item.customer_id or ""
        out += [(holder, held) for held in state.pending]
        state.pending = []
    if isinstance(item, Absorb | Repoint):
        if item.into == item.customer_id or state.absorbed_into == item.into:
            return state, out
        if isinstance(item, Absorb) and state.absorbed_into is not None:
            return state, out  # a second merge of the id: the first one holds
        if state.absorbed_into is None:  # its own merge (a Repoint read before the Absorb)
            state.via, state.merged_at = item.via or item.into, item.ts_ms
        state.absorbed_into = item.into
        if live and (state.touches or state.conversions):
            out.append((item.into, Handover(state.touches, state.conversions)))
        return state, out
    owner = state.absorbed_into or item.customer_id or ""
    if not live:
        state.pending.append(item.touch if isinstance(item, CustomerTouch) else item)
        return state, out
    if isinstance(item, CustomerTouch):
        used_until = max((ts for _, ts in state.conversions), default=None)
        if used_until is None or item.touch.ts_ms > used_until:
            # A touch older than a conversion of this id is that conversion's (a replay
            # applies the path in event-time order), even when read after it.
            kept = (*state.touches, item.touch)
            state.touches = kept[-max(1, params.max_touches) :]
        return state, [*out, (owner, item.touch)]
    if item.customer_id:
        seen = (*state.conversions, (item.conversion_id, item.ts_ms))
        state.conversions = seen[-ROUTER_CONVERSIONS_KEPT:]
        # The conversion uses up the touches before it: a later handover must not bring
        # them back to credit a second conversion.
        state.touches = tuple(t for t in state.touches if t.ts_ms > item.ts_ms)
    return state, [*out, (owner, item)]


def _anonymous(purchase: Purchase) -> Purchase:
    """An erased customer's purchase as a walk-in's: it counts in the totals, names nobody."""
    return Purchase(
        None, purchase.conversion_id, purchase.revenue, purchase.ts_ms, purchase.event_id
    )


def route_finish(customer_id: str, state: RouterState) -> list[tuple[str, PathItem]]:
    """The end of a replay's input: what the router of ``customer_id`` held, with its own
    merge, to the path of the customer that survives. An id merged away sends its merge
    even without items: the ids merged into it pass through its path in ``replay_group``."""
    if state.erased or (not state.pending and state.absorbed_into is None):
        return []
    owner = state.absorbed_into or customer_id
    direct = state.via or state.absorbed_into
    gathered = Gathered(customer_id, direct, state.merged_at, tuple(state.pending))
    state.pending = []
    return [(owner, gathered)]


# --- a customer's path -------------------------------------------------------------------------

#: What a path gives the crediting step.
PathOutcome = ConvertedPath | AbandonedPath


def follow_path(
    state: PathState | None, item: Touch | Handover | Purchase, params: AttributionParams
) -> tuple[PathState, list[PathOutcome]]:
    """Apply one item to a customer's path: touches join it (and may abandon the touches
    that aged out of the lookback), a handover also marks the conversions credited under
    the merged id, and the path keeps only touches after its newest conversion: the ids of
    a chain hand over separately and in any order, and a touch one id hands over may have
    been used on the path in between by another id's conversion (live cannot tell which
    path a conversion was on: a conversion uses every touch before it). A purchase converts
    the path (once per conversion id)."""
    if isinstance(item, Touch):
        state, abandoned = add_touches(state, [item], params)
        return state, list(abandoned)
    if isinstance(item, Handover):
        if state is None:
            state = PathState()
        for conversion_id, ts_ms in item.conversions:
            state.converted.setdefault(conversion_id, ts_ms)
        used_until = max(state.converted.values(), default=None)
        fresh = [t for t in item.touches if used_until is None or t.ts_ms > used_until]
        state, abandoned = add_touches(state, fresh, params)
        if item.conversions and used_until is not None:
            state.touches = [t for t in state.touches if t.ts_ms > used_until]
        return state, list(abandoned)
    state, converted = convert(
        state,
        item.conversion_id,
        item.customer_id,
        item.revenue,
        item.ts_ms,
        item.event_id,
        params,
    )
    return state, [converted] if converted is not None else []


def replay_order(item: Touch | Purchase) -> tuple[int, int]:
    """Event-time order; a touch before a purchase of the same millisecond."""
    return (item.ts_ms, 0 if isinstance(item, Touch) else 1)


def replay_group(
    owner: str,
    state: PathState | None,
    gathered: Sequence[Gathered],
    params: AttributionParams,
) -> tuple[PathState | None, list[PathOutcome]]:
    """A replay's whole group of ids that ended as ``owner`` (``state``: what ``owner``'s
    path held already), in event-time order: each id has its own path until its merge; at
    the merge its unused touches and credited conversions join the path of the id it was
    merged into (a ``Handover``), and its later items go there (along the chain: after
    A → B and B → C, A's items go to C once B is merged). A merge applies before items of
    the same millisecond (it came with the survivor's event of that moment); a merge
    without a time from the start.

    Unlike a live ``Handover`` (which cannot tell on which path a handed conversion was),
    the join drops none of the survivor's touches: on this timeline the merged path's
    conversions used only the merged path's touches.

    Each conversion id is credited once, at its earliest purchase in the group (the store
    pickup of an order placed under another id of the customer is the same conversion,
    whichever path either was on). Only ``owner``'s path state is kept."""
    earliest: dict[str, tuple[int, str]] = {}
    for part in gathered:
        for item in part.items:
            if isinstance(item, Purchase):
                moment = (item.ts_ms, item.event_id)
                if item.conversion_id not in earliest or moment < earliest[item.conversion_id]:
                    earliest[item.conversion_id] = moment
    # (time, 0 merge | 1 touch | 2 purchase, tie, id, what)
    timeline: list[tuple[int, int, str, str, object]] = []
    for part in gathered:
        if part.merged_into is not None and part.merged_into != part.customer_id:
            at = part.merged_at if part.merged_at is not None else -(2**62)
            timeline.append((at, 0, part.customer_id, part.customer_id, part.merged_into))
        for item in part.items:
            if isinstance(item, Purchase):
                if earliest.get(item.conversion_id) != (item.ts_ms, item.event_id):
                    continue
                timeline.append((item.ts_ms, 2, item.event_id, part.customer_id, item))
            else:
                timeline.append((item.ts_ms, 1, item.event_id, part.customer_id, item))
    timeline.sort(key=lambda entry: entry[:4])
    paths: dict[str, PathState | None] = {owner: state}
    forward: dict[str, str] = {}

    def holder(customer_id: str) -> str:
        seen = {customer_id}
        while customer_id in forward and forward[customer_id] not in seen:
            customer_id = forward[customer_id]
            seen.add(customer_id)
        return customer_id

    out: list[PathOutcome] = []
    for _, kind, _, customer_id, what in timeline:
        if kind == 0:
            assert isinstance(what, str)
            source, target = holder(customer_id), holder(what)
            if source == target:
                continue  # a loop: changes nothing
            forward[customer_id] = what
            moved = paths.pop(source, None)
            if moved is not None:
                # The merged path's touches are the unused ones: they join as they are (the
                # survivor's own touches were on another path until now, nothing used them).
                joined, abandoned = add_touches(paths.get(target), moved.touches, params)
                for conversion_id, ts_ms in moved.converted.items():
                    joined.converted.setdefault(conversion_id, ts_ms)
                paths[target] = joined
                out += abandoned
            continue
        assert isinstance(what, Touch | Purchase)
        holding = holder(customer_id)
        paths[holding], produced = follow_path(paths.get(holding), what, params)
        out += produced
    return paths.get(owner), out


def group_owner(gathered: Sequence[Gathered]) -> str:
    """The customer a replay's group ends with: the end of the merges its ids name (a path
    is not told its key; every id merged away on the way sends its merge)."""
    if not gathered:
        return ""
    edges = {g.customer_id: g.merged_into for g in gathered if g.merged_into is not None}
    customer_id, seen = gathered[0].customer_id, set()
    while customer_id in edges and customer_id not in seen:
        seen.add(customer_id)
        customer_id = edges[customer_id] or customer_id
    return customer_id


#: A path's recovery snapshot: its state, (in a replay) the items not applied yet, and
#: whether its customer was erased (then the bare mark ``(None, [], True)``). Snapshots of
#: before hold the first two.
PathSnapshot = tuple[PathState | None, list[Touch | Purchase | Gathered], bool]


class CustomerPath:
    """One customer's path. Live, items are applied as they come. In a replay the routers
    send each id's items at the end of the input (``Gathered``), and the path replays its
    whole group in event-time order (``replay_group``), so the result does not depend on
    how the input topics interleaved. Items given one by one in a replay (the walk-in path's
    purchases of erased ids) are kept and applied with them.

    >>> path = CustomerPath(AttributionParams(), live=False)
    >>> path.take(Purchase("c1", "order:o1", 50.0, 2_000, "e2"))
    []
    >>> path.take(Touch("email", None, 1_000, "e1"))
    []
    >>> [[t.channel for t in c.path] for c in path.finish()]
    [['email']]
    """

    __slots__ = ("erased", "live", "params", "pending", "state")

    def __init__(
        self,
        params: AttributionParams,
        live: bool,
        resume: PathSnapshot
        | tuple[PathState | None, list[Touch | Purchase | Gathered]]
        | None = None,
    ) -> None:
        self.params = params
        self.live = live
        if resume is None:
            resume = (None, [], False)
        elif len(resume) == 2:
            resume = (*resume, False)
        self.state, self.pending, self.erased = resume

    def take(self, item: PathItem) -> list[PathOutcome]:
        """Apply (live) or keep (replay) one item; what the path gave up or converted.

        After ``Erase`` the path holds nothing but the mark ``erased``, as the router of an
        erased id does, and keeps it: a path is fed by the routers of every id merged into
        it, and the erasure reaches each of them on its own, so a handover or a late
        purchase that one of them sent before it was told can still arrive. Discarded, the
        path started again with it (the erased customer's conversions and touches kept
        under its id). Now a touch or handover is dropped and a purchase credited to
        nobody (``_nobodys``): it happened, and it names no one."""
        if isinstance(item, Erase):
            self.state, self.pending, self.erased = None, [], True
            return []
        if self.erased:
            return _nobodys(item)
        if self.live:
            if isinstance(item, Gathered):  # a replay's router resumed live
                self.state, out = replay_group(group_owner([item]), self.state, [item], self.params)
                return out
            self.state, out = follow_path(self.state, item, self.params)
            return out
        if isinstance(item, Handover):
            self.pending += item.touches
            if item.conversions:
                # Credited under the old id: known here before anything is replayed.
                self.state, _ = follow_path(self.state, Handover((), item.conversions), self.params)
        else:
            self.pending.append(item)
        return []

    def finish(self) -> list[PathOutcome]:
        """The end of the input: replay the group this path's customer ends with (what it
        was given, in event-time order)."""
        gathered = [item for item in self.pending if isinstance(item, Gathered)]
        loose = tuple(item for item in self.pending if not isinstance(item, Gathered))
        self.pending = []
        if not gathered and not loose:
            return []
        owner = group_owner(gathered)
        own = [g for g in gathered if g.customer_id == owner]
        parts = [g for g in gathered if g.customer_id != owner]
        items = loose + tuple(item for g in own for item in g.items)
        parts.append(Gathered(owner, None, None, items))
        self.state, out = replay_group(owner, self.state, parts, self.params)
        return out

    def snapshot(self) -> PathSnapshot:
        return copy.deepcopy(self.state), list(self.pending), self.erased


def _nobodys(item: PathItem) -> list[PathOutcome]:
    """The purchases of ``item`` reaching an erased customer's path, as a walk-in's: direct,
    ``customer_id`` null (the credit step still credits each conversion id once)."""
    purchases = item.items if isinstance(item, Gathered) else (item,)
    return [
        ConvertedPath(p.conversion_id, None, p.revenue, p.ts_ms, p.event_id, ())
        for p in purchases
        if isinstance(p, Purchase)
    ]


# --- crediting ---------------------------------------------------------------------------------


def in_event_time_order(outcomes: Sequence[PathOutcome]) -> list[PathOutcome]:
    """A replay's outcomes in the order ``credit`` takes them: by event time, a path given
    up before what converts at the same time, then by conversion id (and customer, event).

    The Markov weights in force at a conversion depend on every path credited before it,
    and the paths of a replay all give their outcomes at the end of the input, from every
    worker (and process) in no fixed order: in this order a replay credits alike however
    the flow is spread, as live traffic, which arrives in about this order, is credited.
    """

    def key(outcome: PathOutcome) -> tuple[int, int, tuple[str, ...]]:
        if isinstance(outcome, AbandonedPath):
            return outcome.ts_ms, 0, outcome.channels
        ids = (outcome.conversion_id, outcome.customer_id or "", outcome.event_id)
        return outcome.ts_ms, 1, ids

    return sorted(outcomes, key=key)


def credit(
    state: MarkovState | None, item: PathOutcome, params: AttributionParams
) -> tuple[MarkovState, list[tuple[ConvertedPath, Credits]]]:
    """A converted path credited by every model (the Markov chain with the weights in force
    when it converted); an abandoned path only counts as a non-converting Markov path."""
    if state is None:
        state = MarkovState()
    if isinstance(item, AbandonedPath):
        add_path(state, item.channels, False)
        return state, []
    credited = heuristic_credits(item.path, item.ts_ms, item.revenue, params)
    credited["markov"] = markov_credit(state, item.path, item.ts_ms, item.revenue, params)
    return state, [(item, credited)]


@resumable
@dataclass(slots=True)
class CreditedConversions:
    """Every conversion id the credit step has credited (→ its time), over all paths: a
    conversion is credited once however many paths it reached.

    Each path credits a conversion id once, but live a path learns what was credited under
    the ids merged into it only from their routers' handovers, and nothing orders a
    handover against the survivor's own events: they come from another key, through the
    merges step (one key, one worker) and the old id's router, while the survivor's next
    purchase goes straight from its router to its path. So with A's order O placed and
    credited on A's path, then A → B → C, then O picked up in store as C::

        A's stream: order O (A) · identity_merged(A→B)
        B's stream:                 identity_merged(B→C)
        C's stream:                                  · pickup of O (C)

    the pickup went C's router → C's path, the merge identity_merged → merges step →
    ``Repoint(A→C)`` → A's router → ``Handover`` naming O → C's path: the pickup got there
    first (on 2 workers; on one too when the merge and the pickup were read in the same
    batch, as a step takes a batch's items key by key), and O was credited twice. So it was
    when the pickup was read before the merge (``identity.changes`` and the other streams
    have no order against each other), when an order credited before its customer's
    erasure was picked up by nobody after it (the walk-in path had not seen it), and when a
    late item of A went to B's path before the ``Repoint`` to C. The credit step is one key
    fed by every path: here the first crediting of an id is the only one (live, the first
    to arrive; in a replay, which credits ``in_event_time_order``, the earliest).

    Bounded as a path's own ``converted`` is: ids older than twice the lookback before the
    newest conversion seen are forgotten, once an hour of event time. Ids only, no
    customer (an erased customer's order ids stay until then, with nobody named)."""

    at: dict[str, int] = field(default_factory=dict)
    pruned_at_ms: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> CreditedConversions:
        return CreditedConversions(dict(self.at), self.pruned_at_ms)

    def first(self, converted: ConvertedPath, params: AttributionParams) -> bool:
        """Whether ``converted`` is the first crediting of its conversion id (and note it)."""
        if converted.conversion_id in self.at:
            return False
        self.at[converted.conversion_id] = converted.ts_ms
        if converted.ts_ms - self.pruned_at_ms >= PRUNE_EVERY_MS:
            horizon = converted.ts_ms - 2 * params.lookback_ms
            self.at = {c: t for c, t in self.at.items() if t >= horizon}
            self.pruned_at_ms = converted.ts_ms
        return True


def credit_once(
    state: MarkovState | None,
    credited: CreditedConversions,
    item: PathOutcome,
    params: AttributionParams,
) -> tuple[MarkovState, list[tuple[ConvertedPath, Credits]]]:
    """``credit``, unless ``item`` converts a conversion id credited before (nothing then:
    not a second converting path of the Markov chain either)."""
    if isinstance(item, ConvertedPath) and not credited.first(item, params):
        return state if state is not None else MarkovState(), []
    return credit(state, item, params)


# --- running totals ----------------------------------------------------------------------------

#: (model, channel, revenue, conversions): one cell of the totals, absolute.
TotalsCell = tuple[str, str, float, float]
#: model → channel → [revenue, conversions], running.
Totals = dict[str, dict[str, list[float]]]


def accumulate(
    totals: Totals | None, item: tuple[ConvertedPath, Credits]
) -> tuple[Totals, list[TotalsCell]]:
    """Running totals per model × channel; emits the absolute cells this conversion changed
    (absolute, so writing them again after a replay changes nothing). A conversion counts
    once per model, split over its channels like its revenue (evenly for a free order)."""
    if totals is None:
        totals = {}
    converted, credited = item
    cells: list[TotalsCell] = []
    for model in MODELS:
        table = totals.setdefault(model, {})
        for channel, revenue in credited.get(model, {}).items():
            cell = table.setdefault(channel, [0.0, 0.0])
            cell[0] += revenue
            if converted.revenue > 0:
                cell[1] += revenue / converted.revenue
            else:
                cell[1] += 1.0 / len(credited[model])
            cells.append((model, channel, cell[0], cell[1]))
    return totals, cells


#: (model, channel) → (revenue, conversions), absolute.
LatestTotals = dict[tuple[str, str], tuple[float, float]]


def latest_cells(cells: Sequence[TotalsCell]) -> LatestTotals:
    """The last value of each cell of a batch: only that one needs writing."""
    return {(model, channel): (revenue, conv) for model, channel, revenue, conv in cells}
