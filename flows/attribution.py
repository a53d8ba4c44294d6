"""attribution: credit each conversion to the marketing touches before it (several models).

Wiring only; the steps are in ``domain.attribution_paths`` (whose docstring states how
merges along chains and erasures are followed), the models in ``domain.attribution``, the
decoders in ``connectors.attribution_io``.

    events.resolved (touches: campaign visits, ad clicks; purchases: orders, till sales;
      identity's merge and erasure notices), triggers.coupon (touches: coupons sent),
      identity.changes (merges, erasures)
      → decode, a Kafka batch at a time; rejections → deadletter
      → merges, one key, merges and erasures only: each merge resolved to the end of its
        chain (A into B, B into C: A's path belongs to C), ids merged earlier repointed; an
        erasure erases every id of the customer (and reaches the erased id's router in the
        order of its own stream too, ``ErasedInStream``)
      → router, keyed by the customer id an item arrived with. Live: items go to the owner
        at once, and each id hands its own touches and conversions to every new owner. In a
        replay: each id holds its items and sends them, with its own merge, to the owner at
        the end of the input
      → paths, keyed by the customer that owns the path: touches, purchases (each id once);
        in a replay the whole group of ids, replayed in event-time order at the end
      → credit, one key: heuristic models per path, the Markov chain over all paths, each
        conversion id once over all paths (live, a path cannot always know what was
        credited under another id of its customer: ``CreditedConversions``); in a replay
        the paths' outcomes, which come at the end from every worker in no fixed order, are
        credited then, in event-time order (so any number of workers and processes credits
        alike)
      → attribution.credits; totals per model × channel → the store and gauges

No step is fed back into itself and no side store is needed: the merges step tells every id
of a chain its new owner, so the owner's path is fed by every id directly.

Step ids are part of the recovery snapshots: keep them stable (``inputs``, ``merges``,
``router``, ``paths``, ``credit``, ``totals`` hold state). The router became a
``StatefulLogic`` (it sends what it held at the end of a replay) under the step ids
``op.stateful_map`` gave it (``router.stateful_flat_map.stateful``), and its state is still
a ``RouterState`` (older snapshots load, ``RouterState.__setstate__``). The credit step
became one the same way (``credit.stateful_flat_map.stateful``); its snapshots of before, a
``MarkovState`` alone, load as that state with nothing held.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeGuard, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow, operator
from bytewax.operators import KeyedStream, StatefulLogic

from base import topics
from base.config import Config, load_config
from base.flow_names import ATTRIBUTION
from base.metrics import ATTRIBUTED_CONVERSIONS, ATTRIBUTED_REVENUE, ATTRIBUTION_CONVERSIONS
from base.units import DAY_MS
from connectors import operators as flow_op
from connectors.attribution_io import DECODERS, credits_message
from connectors.operators import Decoded, FlowIO
from connectors.reference_files import load_reference
from connectors.streams import BatchSink, KafkaIO
from domain.attribution import MODELS, AttributionParams, ConvertedPath, Credits, MarkovState
from domain.attribution_paths import (
    Absorb,
    AttributionInput,
    CreditedConversions,
    CustomerPath,
    Erase,
    ErasedInStream,
    LatestTotals,
    PathItem,
    PathOutcome,
    PathSnapshot,
    RouterInput,
    TotalsCell,
    accumulate,
    chain_merges,
    credit_once,
    in_event_time_order,
    latest_cells,
    route,
    route_finish,
    with_erasures_in_stream,
)
from domain.attribution_paths import (
    # Recovery snapshots written before the router's state moved to the domain name it
    # ``flows.attribution.RouterState``: unpickling them finds it here.
    RouterState as RouterState,
)
from domain.events import Origin
from domain.reference import ReferenceData
from state.attribution_store import AttributionStore, RedisAttributionStore

INPUTS = (topics.EVENTS_RESOLVED, topics.TRIGGERS_COUPON, topics.IDENTITY_CHANGES)


def params_of(config: Config) -> AttributionParams:
    a = config.attribution
    return AttributionParams(
        lookback_ms=int(a.lookback_days * DAY_MS),
        max_touches=a.max_touches,
        half_life_ms=int(a.half_life_days * DAY_MS),
        first_share=a.first_share,
        last_share=a.last_share,
        markov_refresh_conversions=a.markov_refresh_conversions,
        markov_refresh_ms=int(a.markov_refresh_minutes * 60_000),
    )


def build(
    config: Config,
    *,
    until_idle: bool = False,
    reference: ReferenceData | None = None,
    io: FlowIO | None = None,
    open_store: Callable[[], AttributionStore] | None = None,
    snapshots: bool = True,
) -> Dataflow:
    """The attribution dataflow on ``io`` (Kafka by default) writing its totals to the
    store ``open_store()`` gives each worker (Redis by default).

    ``until_idle`` is a replay: the flow ends with its inputs, and each path applies what it
    was given in event-time order at the end. The decoders need no reference data; it is
    still loaded when not given, so a broken reference file stops this flow at start as it
    does every other. ``snapshots=False``: a run without recovery, whose keys are never
    snapshotted (``connectors.operators.keyed_state``)."""
    params = params_of(config)
    if reference is None:
        load_reference(config)
    if io is None:
        io = KafkaIO(config, until_idle=until_idle)
    if open_store is None:

        def open_store() -> AttributionStore:
            return RedisAttributionStore.from_config(config)

    flow = Dataflow(ATTRIBUTION)
    batches = flow_op.decode(
        "inputs_decode",
        flow_op.read("inputs", flow, io, INPUTS),
        config,
        ATTRIBUTION,
        INPUTS,
        _decode,
    )
    items = flow_op.per_batch("items", batches, _inputs_of)
    merges = op.branch("split_merges", items, _is_merge)
    chained = op.flat_map(
        "chained",
        flow_op.keyed_map(
            "merges",
            op.key_on("all_merges", merges.trues, lambda _: "all"),
            chain_merges,
            snapshots=snapshots,
        ),
        lambda kv: kv[1],
    )
    routed = op.flat_map(
        "routed",
        _as_stateful_map(
            "router",
            op.key_on(
                "key_by_arrival_customer",
                op.merge("router_inputs", merges.falses, chained),
                _arrival_key,
            ),
            lambda resume: RouterLogic(params, not until_idle, resume),
            snapshots,
        ),
        lambda kv: kv[1],
    )
    outcomes = op.map(
        "path_outcomes",
        flow_op.keyed_state(
            "paths",
            op.map_value(
                "owned_item",
                op.key_on("key_by_owner", routed, lambda pair: pair[0]),
                lambda pair: pair[1],
            ),
            lambda resume: PathLogic(params, not until_idle, resume),
            snapshots=snapshots,
        ),
        lambda kv: kv[1],
    )
    credited = op.flat_map(
        "credited",
        _as_stateful_map(
            "credit",
            op.key_on("one_chain", outcomes, lambda _: "all"),
            lambda resume: CreditLogic(params, not until_idle, resume),
            snapshots,
        ),
        lambda kv: kv[1],
    )
    flow_op.output(
        "attribution_credits",
        io,
        topics.ATTRIBUTION_CREDITS,
        op.map("encode_credits", credited, lambda pair: credits_message(*pair)),
    )
    cells = op.flat_map(
        "totals_cells",
        flow_op.keyed_map(
            "totals",
            op.key_on("all_totals", credited, lambda _: "all"),
            accumulate,
            snapshots=snapshots,
        ),
        lambda kv: kv[1],
    )
    allowlist = channel_allowlist(config)
    op.output("totals_store", cells, BatchSink(lambda: _totals_writer(open_store(), allowlist)))
    flow_op.dead_letters(
        "deadletter", io, ATTRIBUTION, flow_op.rejections("inputs_rejected", batches)
    )
    return flow


def _decode(name: str, raw: bytes, origin: Origin) -> Any:
    return DECODERS[name](raw, origin)


def _inputs_of(batch: Decoded[list[AttributionInput]]) -> list[AttributionInput | ErasedInStream]:
    """The touches, purchases and merges of a batch (a message may hold a touch and a
    purchase), each erasure also as ``ErasedInStream``, in its place among the others."""
    return [item for found in batch.records for item in with_erasures_in_stream(found)]


def _is_merge(item: AttributionInput | ErasedInStream) -> TypeGuard[Absorb | Erase]:
    """Merges and erasures go through the merges step: it knows every id of a customer.
    An ``ErasedInStream`` stays with the events around it, on the way to the router."""
    return isinstance(item, Absorb | Erase)


def _arrival_key(item: RouterInput) -> str:
    """Walk-in sales (no customer) share one key: they have no path and no merges."""
    return item.customer_id or ""


Routed = list[tuple[str, PathItem]]


class RouterLogic(StatefulLogic[RouterInput, Routed, RouterState]):
    """``domain.attribution_paths.route`` per arrival id; at the end of a replay what the
    id held goes to its owner (``route_finish``). Each item gives one list of (owner, path
    item), as the ``stateful_map`` it replaced did. An erased id keeps its bare mark."""

    def __init__(self, params: AttributionParams, live: bool, resume: RouterState | None) -> None:
        self.params = params
        self.live = live
        self.state = resume

    def on_item(self, value: RouterInput) -> tuple[list[Routed], bool]:
        self.state, out = route(self.state, value, self.params, self.live)
        return [out], StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Routed], bool]:
        if self.live or self.state is None:
            return [], StatefulLogic.RETAIN
        return [route_finish(self.state.customer_id or "", self.state)], StatefulLogic.RETAIN

    def snapshot(self) -> RouterState:
        assert self.state is not None
        return copy.deepcopy(self.state)


V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")


def _as_stateful_map(
    step_id: str,
    up: KeyedStream[V],
    builder: Callable[[S | None], StatefulLogic[V, W, S]],
    snapshots: bool,
) -> KeyedStream[W]:
    """The router's and the credit step's state: under the step ids of their snapshots
    (``_stateful_map_with_eof``), or with none at all."""
    if snapshots:
        return _stateful_map_with_eof(step_id, up, builder)
    return flow_op.keyed_state(step_id, up, builder, snapshots=False)


@operator
def _stateful_map_with_eof(
    step_id: str,
    up: KeyedStream[V],
    builder: Callable[[S | None], StatefulLogic[V, W, S]],
) -> KeyedStream[W]:
    """``op.stateful`` nested as ``op.stateful_map`` nests it (``stateful_map`` →
    ``stateful_flat_map`` → ``stateful``), so the router and the credit step keep the step
    ids their snapshots were written under when they were ``stateful_map`` steps."""
    return _stateful_flat_map_ids("stateful_flat_map", up, builder)


@operator
def _stateful_flat_map_ids(
    step_id: str,
    up: KeyedStream[V],
    builder: Callable[[S | None], StatefulLogic[V, W, S]],
) -> KeyedStream[W]:
    return op.stateful("stateful", up, builder)


class PathLogic(StatefulLogic[PathItem, PathOutcome, PathSnapshot]):
    """``domain.attribution_paths.CustomerPath`` as a Bytewax stateful step: the end of
    the input (a replay) replays what the path was given; an erased customer's path keeps
    only its bare mark (``CustomerPath.take`` says why it is not discarded)."""

    def __init__(self, params: AttributionParams, live: bool, resume: PathSnapshot | None) -> None:
        self.path = CustomerPath(params, live, resume)

    def on_item(self, value: PathItem) -> tuple[list[PathOutcome], bool]:
        out = self.path.take(value)
        return out, StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[PathOutcome], bool]:
        return self.path.finish(), StatefulLogic.RETAIN

    def snapshot(self) -> PathSnapshot:
        return self.path.snapshot()


Credited = list[tuple[ConvertedPath, Credits]]
#: the Markov chain, the outcomes a replay holds for its end, the conversion ids credited
CreditSnapshot = tuple[MarkovState | None, list[PathOutcome], CreditedConversions]


class CreditLogic(StatefulLogic[PathOutcome, Credited, CreditSnapshot]):
    """``credit_once`` on the one key of all paths: live, each outcome as it comes; in a
    replay, every outcome at the end of the input, ``in_event_time_order`` (the module
    docstring). Each conversion id once over all paths (``CreditedConversions`` says why a
    path's own check is not enough live). Each item gives one list of credited conversions,
    as the ``stateful_map`` it replaced did. Snapshots of before resume: a ``MarkovState``
    alone, or a pair without the ids credited (which start empty)."""

    def __init__(
        self,
        params: AttributionParams,
        live: bool,
        resume: CreditSnapshot | tuple[MarkovState | None, list[PathOutcome]] | MarkovState | None,
    ) -> None:
        self.params = params
        self.live = live
        if isinstance(resume, MarkovState) or resume is None:
            resume = (resume, [])
        if len(resume) == 2:
            resume = (*resume, CreditedConversions())
        self.state, self.held, self.credited = resume

    def on_item(self, value: PathOutcome) -> tuple[list[Credited], bool]:
        if not self.live:
            self.held.append(value)
            return [], StatefulLogic.RETAIN
        self.state, out = _credit_counted(self.state, self.credited, value, self.params)
        return [out], StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Credited], bool]:
        credited: Credited = []
        for item in in_event_time_order(self.held):
            self.state, out = _credit_counted(self.state, self.credited, item, self.params)
            credited += out
        self.held = []
        return ([credited] if credited else []), StatefulLogic.RETAIN

    def snapshot(self) -> CreditSnapshot:
        return copy.deepcopy(self.state), list(self.held), copy.deepcopy(self.credited)


def _credit_counted(
    state: MarkovState | None,
    credited: CreditedConversions,
    item: PathOutcome,
    params: AttributionParams,
) -> tuple[MarkovState, list[tuple[ConvertedPath, Credits]]]:
    """``credit_once``, counting conversions with and without touches."""
    state, out = credit_once(state, credited, item, params)
    for converted, _ in out:
        ATTRIBUTION_CONVERSIONS.labels("touched" if converted.path else "direct").inc()
    return state, out


#: The ``channel`` label of a channel not in ``attribution.channels``.
OTHER_CHANNEL = "other"


def channel_allowlist(config: Config) -> frozenset[str]:
    """``attribution.channels``: the channels the gauges name one by one."""
    return frozenset(c.strip() for c in config.attribution.channels.split(",") if c.strip())


class TotalsGauges:
    """The attributed revenue and conversion gauges, per model × channel label.

    A channel of the allowlist is its own label; every other one is added into ``other``,
    so the number of series is bounded by the configuration whatever a connector writes in
    ``campaign.source``. The cells come absolute and only when they change, so the channels
    folded into ``other`` are remembered here to set its sum; the first write of a process
    starts from the store's totals, so ``other`` (and every channel) is whole again after a
    restart."""

    def __init__(self, allowlist: frozenset[str]) -> None:
        self.allowlist = allowlist - {OTHER_CHANNEL}
        #: model → folded channel → (revenue, conversions), absolute
        self._folded: dict[str, dict[str, tuple[float, float]]] = {}

    def label(self, channel: str) -> str:
        """A channel's label (a channel named ``other`` is counted with the folded ones)."""
        return channel if channel in self.allowlist else OTHER_CHANNEL

    def set(self, cells: LatestTotals) -> None:
        """Set the gauges of these absolute cells (and ``other`` of their models)."""
        others: set[str] = set()
        for (model, channel), (revenue, conversions) in cells.items():
            if self.label(channel) == channel:
                ATTRIBUTED_REVENUE.labels(model, channel).set(revenue)
                ATTRIBUTED_CONVERSIONS.labels(model, channel).set(conversions)
            else:
                self._folded.setdefault(model, {})[channel] = (revenue, conversions)
                others.add(model)
        for model in others:
            folded = self._folded[model].values()
            ATTRIBUTED_REVENUE.labels(model, OTHER_CHANNEL).set(sum(r for r, _ in folded))
            ATTRIBUTED_CONVERSIONS.labels(model, OTHER_CHANNEL).set(sum(c for _, c in folded))


def _totals_writer(
    store: AttributionStore, allowlist: frozenset[str]
) -> tuple[Callable[[list[TotalsCell]], None], Callable[[], None]]:
    """A worker's writer of totals cells: the last value of each cell per batch to the
    store, then to the gauges (``TotalsGauges``), which start from the store's totals."""
    gauges = TotalsGauges(allowlist)
    started = False

    def write(cells: list[TotalsCell]) -> None:
        nonlocal started
        latest = latest_cells(cells)
        if not started:
            started = True
            stored = store.read_totals(MODELS)
            gauges.set({(m, c): cell for m, table in stored.items() for c, cell in table.items()})
        store.write_totals(latest)
        gauges.set(latest)

    return write, store.close


def __getattr__(name: str) -> Dataflow:
    """``python -m bytewax.run flows.attribution:flow`` builds from the environment."""
    if name == "flow":
        return build(load_config())
    raise AttributeError(name)
