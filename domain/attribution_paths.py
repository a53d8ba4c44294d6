"""Attribution's journey from input to credits, pure: which customer's path a touch, a
purchase or a merge belongs to, how a path turns into converted and abandoned paths, how a
converted path is credited, and the running totals per model × channel.

The flow (``flows.attribution``) runs these as its steps, keyed as follows:

- ``chain_merges`` on one key, merges only: resolves each merge to the customer that
  survives the whole chain (A merged into B, then B into C: A's path belongs to C) and tells
  the customers merged into B earlier that their path now belongs to C;
- ``route`` per customer id an item arrived with: a customer merged into another hands its
  touches (and the purchases already credited under its id) over, and forwards everything
  that arrives for it later to the survivor;
- ``CustomerPath`` per customer that owns the path: touches, purchases (each conversion id
  credited once); in a replay the items are applied at the end in event-time order;
- ``credit`` on one key: the heuristic models per path, the Markov chain over all paths;
- ``accumulate`` on one key: absolute totals per model × channel.

The models themselves are in ``domain.attribution``. Nothing here reads a clock: time is
the event time of the items.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from domain.attribution import (
    MODELS,
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
    """``customer_id`` was merged into ``into`` (a ``merged`` change of ``identity.changes``)."""

    customer_id: str
    into: str


AttributionInput = CustomerTouch | Purchase | Absorb


# --- merge chains: the customer that survives ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Repoint:
    """``customer_id`` was merged into a customer that has now been merged into ``into``:
    its path belongs to ``into`` from now on (the merges step's word to the router)."""

    customer_id: str
    into: str


@dataclass(slots=True)
class MergeChains:
    """Every merge seen, as alias → the customer that survives it, and survivor → the ids
    merged into it (transitively). ``survivor`` always names the end of the chain, so one
    look-up resolves an id."""

    survivor: dict[str, str] = field(default_factory=dict)
    merged: dict[str, list[str]] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, object]) -> MergeChains:
        return MergeChains(dict(self.survivor), {k: list(v) for k, v in self.merged.items()})


def chain_merges(
    state: MergeChains | None, item: Absorb
) -> tuple[MergeChains, list[Absorb | Repoint]]:
    """One merge of ``identity.changes`` resolved through the merges seen before it (in
    arrival order: the topic's partitions interleave as they may).

    ``identity.changes`` names a merge's two customers only (``merged_from`` → ``customer_id``):
    after A → B and B → C, the router of A knew only B, so A's path, handed to B, stayed
    there when B's path went to C: a purchase credited under A (an order placed on a device)
    was credited again when its store pickup arrived under C. Here A → B becomes A → (the
    end of B's chain), and B → C also repoints every id merged into B before to C.

    >>> state, out = chain_merges(None, Absorb("a", into="b"))
    >>> out
    [Absorb(customer_id='a', into='b')]
    >>> chain_merges(state, Absorb("b", into="c"))[1]
    [Absorb(customer_id='b', into='c'), Repoint(customer_id='a', into='c')]

    A merge into itself, a second merge of an id already merged (a replayed change), and one
    that would close a loop (its survivor's chain ends at the id itself) change nothing, as
    in ``route``."""
    if state is None:
        state = MergeChains()
    old = item.customer_id
    into = state.survivor.get(item.into, item.into)
    if old in state.survivor or into == old:
        return state, []
    moved = state.merged.pop(old, [])
    for earlier in moved:
        state.survivor[earlier] = into
    state.survivor[old] = into
    state.merged.setdefault(into, []).extend([old, *moved])
    return state, [Absorb(old, into), *(Repoint(earlier, into) for earlier in moved)]


#: What the router is fed: the decoded items, merges resolved by ``chain_merges``.
RouterInput = CustomerTouch | Purchase | Absorb | Repoint


# --- routing: the customer that owns the path --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handover:
    """Touches of a customer merged into the one this is sent to, and the conversions
    already credited under the old id (so the store pickup of an order placed before the
    merge is not credited again)."""

    touches: tuple[Touch, ...]
    conversions: tuple[tuple[str, int], ...] = ()


#: Conversions a router remembers per customer id, for a handover.
ROUTER_CONVERSIONS_KEPT = 200


@dataclass(slots=True)
class RouterState:
    """What the router keeps per customer id: the survivor once merged, until then the
    touches (at most ``max_touches``) a handover would need, and the conversions routed for
    this id (at most ``ROUTER_CONVERSIONS_KEPT``), kept after the merge too: when the
    survivor is merged on, the new one is told of them (``Repoint``)."""

    absorbed_into: str | None = None
    touches: tuple[Touch, ...] = ()
    conversions: tuple[tuple[str, int], ...] = ()

    def __deepcopy__(self, memo: dict[int, object]) -> RouterState:
        """Bytewax snapshots state every epoch; the fields are immutable (frozen touches in
        tuples), so a new holder is a full copy (the generic deepcopy was 8% of the flow)."""
        return RouterState(self.absorbed_into, self.touches, self.conversions)


#: What a path is fed: a touch, a handover from a merged customer, or a purchase.
PathItem = Touch | Handover | Purchase


def route(
    state: RouterState | None, item: RouterInput, params: AttributionParams
) -> tuple[RouterState, list[tuple[str, PathItem]]]:
    """``item`` (keyed by the customer id it arrived with) as (owner of the path, what the
    owner's path is fed). A merged customer keeps the touches it has seen (bounded) to hand
    them over when the merge becomes known; a merge into itself or a second merge of the
    same id changes nothing.

    A ``Repoint`` (the survivor was merged on) moves the owner to the new survivor and tells
    its path of the conversions routed for this id, so none of them is credited again
    there. The touches handed over before stay where they went: that path may have used
    some of them, which this router cannot know. (Along a chain a touch can still lead two
    conversions: B's path may use a touch of B's for a purchase routed from A, which B's
    router does not see when it hands B's touches to C. Without a loop in the dataflow
    only B's path knows; conversions, the figure subscribers and totals count, are each
    credited once.)"""
    if state is None:
        state = RouterState()
    if isinstance(item, Repoint):
        if state.absorbed_into is None:  # the merge itself not seen yet: it is this one
            item = Absorb(item.customer_id, item.into)
        else:
            if state.absorbed_into == item.into:
                return state, []
            state.absorbed_into = item.into
            if not state.conversions:
                return state, []
            return state, [(item.into, Handover((), state.conversions))]
    if isinstance(item, Absorb):
        if state.absorbed_into is not None or item.into == item.customer_id:
            return state, []
        state.absorbed_into = item.into
        handover = Handover(state.touches, state.conversions)
        state.touches = ()
        return state, [(item.into, handover)]
    owner = state.absorbed_into
    if isinstance(item, CustomerTouch):
        used_until = max((ts for _, ts in state.conversions), default=None)
        if owner is None and (used_until is None or item.touch.ts_ms > used_until):
            # A touch older than a conversion of this id is that conversion's (a replay
            # applies the path in event-time order), even when read after it.
            kept = (*state.touches, item.touch)
            state.touches = kept[-max(1, params.max_touches) :]
        return state, [(owner or item.customer_id, item.touch)]
    if item.customer_id:
        seen = (*state.conversions, (item.conversion_id, item.ts_ms))
        state.conversions = seen[-ROUTER_CONVERSIONS_KEPT:]
        # The conversion uses up the touches before it: a later handover must not bring
        # them back to credit a second conversion.
        state.touches = tuple(t for t in state.touches if t.ts_ms > item.ts_ms)
    return state, [(owner or item.customer_id or "", item)]


# --- a customer's path -------------------------------------------------------------------------

#: What a path gives the crediting step.
PathOutcome = ConvertedPath | AbandonedPath


def follow_path(
    state: PathState | None, item: PathItem, params: AttributionParams
) -> tuple[PathState, list[PathOutcome]]:
    """Apply one item to a customer's path: touches join it (and may abandon the touches
    that aged out of the lookback), a handover also marks the conversions credited under
    the merged id, a purchase converts the path (once per conversion id)."""
    if isinstance(item, Touch | Handover):
        touches = [item] if isinstance(item, Touch) else list(item.touches)
        state, abandoned = add_touches(state, touches, params)
        if isinstance(item, Handover):
            for conversion_id, ts_ms in item.conversions:
                state.converted.setdefault(conversion_id, ts_ms)
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


#: A path's recovery snapshot: its state, and (in a replay) the items not applied yet.
PathSnapshot = tuple[PathState | None, list[Touch | Purchase]]


class CustomerPath:
    """One customer's path. Live, items are applied as they come. In a replay they are kept
    and applied at the end in event-time order (``replay_order``), so a merge read after the
    purchase it precedes still hands its touches over in time, and the result does not
    depend on how the input topics interleaved.

    >>> path = CustomerPath(AttributionParams(), live=False)
    >>> path.take(Purchase("c1", "order:o1", 50.0, 2_000, "e2"))
    []
    >>> path.take(Touch("email", None, 1_000, "e1"))
    []
    >>> [[t.channel for t in c.path] for c in path.finish()]
    [['email']]
    """

    __slots__ = ("live", "params", "pending", "state")

    def __init__(
        self, params: AttributionParams, live: bool, resume: PathSnapshot | None = None
    ) -> None:
        self.params = params
        self.live = live
        self.state, self.pending = resume if resume is not None else (None, [])

    def take(self, item: PathItem) -> list[PathOutcome]:
        """Apply (live) or keep (replay) one item; what the path gave up or converted."""
        if self.live:
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
        """The end of the input: apply what a replay kept, in event-time order."""
        out: list[PathOutcome] = []
        for item in sorted(self.pending, key=replay_order):
            self.state, produced = follow_path(self.state, item, self.params)
            out += produced
        self.pending = []
        return out

    def snapshot(self) -> PathSnapshot:
        return copy.deepcopy(self.state), list(self.pending)


# --- crediting ---------------------------------------------------------------------------------


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
