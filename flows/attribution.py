"""attribution: credit each conversion to the marketing touches before it (several models).

Wiring only; the models are in ``domain.attribution``.

    events.resolved (touches: campaign visits, ad clicks; conversions: orders, till sales)
    triggers.coupon (touches: coupons sent), identity.changes (merges)
      → router, keyed by the customer id an item arrived with: a customer merged into
        another hands its touches over and forwards everything later to it
      → paths, keyed by the customer that owns the path: touches, conversions (each id once)
      → credit, one key: heuristic models per path, the Markov chain over all paths
      → attribution.credits; totals per model × channel → Redis and gauges

Step ids are part of the recovery snapshots: keep them stable.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic

from base import topics
from base.config import Config, load_config
from base.flow_names import ATTRIBUTION
from base.metrics import ATTRIBUTION_CONVERSIONS
from base.units import DAY_MS
from connectors.attribution_io import (
    DECODERS,
    Absorb,
    Conversion,
    CustomerTouch,
    Ignored,
    credits_message,
)
from connectors.reference_files import load_reference
from connectors.streams import BatchSink, deadletter_output, kafka_events, kafka_output
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
from domain.events import Origin
from state.attribution_store import AttributionStore, TotalsCell

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
    absorbed_into: str | None = None
    touches: tuple[Touch, ...] = ()
    conversions: tuple[tuple[str, int], ...] = ()

    def __deepcopy__(self, memo: dict[int, object]) -> RouterState:
        """Bytewax snapshots state every epoch; the fields are immutable (frozen touches in
        tuples), so a new holder is a full copy (the generic deepcopy was 8% of the flow)."""
        return RouterState(self.absorbed_into, self.touches, self.conversions)


def route(
    state: RouterState | None, item: Any, params: AttributionParams
) -> tuple[RouterState, list[tuple[str, Any]]]:
    """Items keyed by the customer that owns the path. A merged customer keeps the touches it
    has seen (bounded) to hand them over when the merge becomes known."""
    if state is None:
        state = RouterState()
    if isinstance(item, Absorb):
        if state.absorbed_into is not None or item.into == item.customer_id:
            return state, []
        state.absorbed_into = item.into
        handover = Handover(state.touches, state.conversions)
        state.touches, state.conversions = (), ()
        return state, [(item.into, handover)]
    owner = state.absorbed_into
    if isinstance(item, CustomerTouch):
        if owner is None:
            kept = (*state.touches, item.touch)
            state.touches = kept[-max(1, params.max_touches) :]
        return state, [(owner or item.customer_id, item.touch)]
    assert isinstance(item, Conversion)
    if owner is None and item.customer_id:
        seen = (*state.conversions, (item.conversion_id, item.ts_ms))
        state.conversions = seen[-ROUTER_CONVERSIONS_KEPT:]
        # The conversion uses up the touches before it: a later handover must not bring
        # them back to credit a second conversion.
        state.touches = tuple(t for t in state.touches if t.ts_ms > item.ts_ms)
    return state, [(owner or item.customer_id or "", item)]


def follow_path(
    state: PathState | None, item: Any, params: AttributionParams
) -> tuple[PathState, list[ConvertedPath | AbandonedPath]]:
    out: list[ConvertedPath | AbandonedPath] = []
    if isinstance(item, Touch | Handover):
        touches = [item] if isinstance(item, Touch) else list(item.touches)
        state, abandoned = add_touches(state, touches, params)
        if isinstance(item, Handover):
            for conversion_id, ts_ms in item.conversions:
                state.converted.setdefault(conversion_id, ts_ms)
        out += abandoned
        return state, out
    assert isinstance(item, Conversion)
    state, converted = convert(
        state,
        item.conversion_id,
        item.customer_id,
        item.revenue,
        item.ts_ms,
        item.event_id,
        params,
    )
    if converted is not None:
        out.append(converted)
    return state, out


def _replay_order(item: Any) -> tuple[int, int]:
    """Touches before a conversion of the same millisecond."""
    return (item.ts_ms, 0 if isinstance(item, Touch) else 1)


class PathLogic(StatefulLogic[Any, Any, tuple[PathState | None, list[Any]]]):
    """One customer's path. Live, items are applied as they come. In a replay
    (``--until-idle``) they are kept and applied at the end in event-time order, so a merge
    read after the conversion it precedes still hands its touches over in time, and the
    result does not depend on how the input topics interleaved."""

    def __init__(
        self,
        params: AttributionParams,
        live: bool,
        resume: tuple[PathState | None, list[Any]] | None,
    ) -> None:
        self.params = params
        self.live = live
        self.state, self.pending = resume if resume is not None else (None, [])

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        if self.live:
            self.state, out = follow_path(self.state, value, self.params)
            return list(out), StatefulLogic.RETAIN
        if isinstance(value, Handover):
            self.pending += value.touches
            if value.conversions:
                # Credited under the old id: known here before anything is replayed.
                self.state, _ = follow_path(
                    self.state, Handover((), value.conversions), self.params
                )
        else:
            self.pending.append(value)
        return [], StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        for item in sorted(self.pending, key=_replay_order):
            self.state, produced = follow_path(self.state, item, self.params)
            out += produced
        self.pending = []
        return out, StatefulLogic.RETAIN

    def snapshot(self) -> tuple[PathState | None, list[Any]]:
        return copy.deepcopy(self.state), list(self.pending)


def credit(
    state: MarkovState | None, item: ConvertedPath | AbandonedPath, params: AttributionParams
) -> tuple[MarkovState, list[tuple[ConvertedPath, Credits]]]:
    if state is None:
        state = MarkovState()
    if isinstance(item, AbandonedPath):
        add_path(state, item.channels, False)
        return state, []
    credited = heuristic_credits(item.path, item.ts_ms, item.revenue, params)
    credited["markov"] = markov_credit(state, item.path, item.ts_ms, item.revenue, params)
    ATTRIBUTION_CONVERSIONS.labels("touched" if item.path else "direct").inc()
    return state, [(item, credited)]


def accumulate(
    totals: dict[str, dict[str, list[float]]] | None, item: tuple[ConvertedPath, Credits]
) -> tuple[dict[str, dict[str, list[float]]], list[TotalsCell]]:
    """Running totals per model × channel; emits the absolute cells this conversion changed."""
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


def build(config: Config, *, until_idle: bool = False) -> Dataflow:
    params = params_of(config)
    reference = load_reference(config)

    def decode(name: str, raw: bytes, origin: Origin) -> Any:
        return DECODERS[name](raw, origin)

    flow = Dataflow(ATTRIBUTION)
    inputs = kafka_events(
        "inputs",
        flow,
        config,
        ATTRIBUTION,
        INPUTS,
        reference,
        until_idle=until_idle,
        decoder=decode,
    )
    items: Any = op.flat_map("items", inputs.oks, _inputs_of)
    routed = op.flat_map(
        "routed",
        op.stateful_map(
            "router",
            op.key_on("key_by_arrival_customer", items, _arrival_key),
            lambda state, item: route(state, item, params),
        ),
        lambda kv: kv[1],
    )
    paths = op.map(
        "path_outcomes",
        op.stateful(
            "paths",
            op.map_value(
                "owned_item",
                op.key_on("key_by_owner", routed, lambda pair: pair[0]),
                lambda pair: pair[1],
            ),
            lambda resume: PathLogic(params, not until_idle, resume),
        ),
        lambda kv: kv[1],
    )
    credited = op.flat_map(
        "credited",
        op.stateful_map(
            "credit",
            op.key_on("one_chain", paths, lambda _: "all"),
            lambda state, item: credit(state, item, params),
        ),
        lambda kv: kv[1],
    )
    kafka_output(
        "attribution_credits",
        config,
        topics.ATTRIBUTION_CREDITS,
        op.map("encode_credits", credited, lambda pair: credits_message(*pair)),
    )
    cells = op.flat_map(
        "totals_cells",
        op.stateful_map("totals", op.key_on("all_totals", credited, lambda _: "all"), accumulate),
        lambda kv: kv[1],
    )

    def open_writer() -> tuple[Any, Any]:
        store = AttributionStore.from_config(config)
        return store.write_cells, store.close

    op.output("totals_store", cells, BatchSink(open_writer))
    deadletter_output("deadletter", config, ATTRIBUTION, inputs.errs)
    return flow


def _inputs_of(decoded: Any) -> list[Any]:
    """The decoder gives a list of touches/conversions/merges, or ``Ignored``."""
    return [] if isinstance(decoded, Ignored) else list(decoded)


def _arrival_key(item: Any) -> str:
    """Walk-in sales (no customer) share one key: they have no path and no merges."""
    return item.customer_id or ""


def __getattr__(name: str) -> Dataflow:
    """``python -m bytewax.run flows.attribution:flow`` builds from the environment."""
    if name == "flow":
        return build(load_config())
    raise AttributeError(name)
