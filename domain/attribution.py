"""Multi-touch attribution, pure: paths of marketing touches per customer and the models that
credit a conversion's revenue to the channels on its path.

Heuristic models (per conversion, from its own path):

- ``first_touch`` / ``last_touch``: all revenue to the first / last touch's channel;
- ``linear``: equal shares per touch;
- ``time_decay``: a touch's weight halves every ``half_life`` before the conversion;
- ``position_based``: ``first`` and ``last`` shares (40 % / 40 %) to the first and last touch,
  the rest split over the touches between; a lone touch takes everything, two split evenly.

``markov``: a first-order Markov chain over all paths seen so far (converting and not),
``start → channel → … → conversion | null``. The removal effect of a channel is the share of
conversions the chain loses when the channel is removed (its visits lead to ``null``). A
conversion's revenue is split over the channels on its path in proportion to their removal
effects, with the weights in force when it converted; the weights are refreshed every N
conversions or M minutes of event time.

A conversion without touches is credited to ``direct`` by every model. Credits are exact
floats (no per-conversion rounding), so totals over many conversions are exact to the cent.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from base.units import DAY_MS
from domain.resumable import resumable

DIRECT = "direct"
START, CONVERSION, NULL = "(start)", "(conversion)", "(null)"
HEURISTIC_MODELS = ("first_touch", "last_touch", "linear", "time_decay", "position_based")
MODELS = (*HEURISTIC_MODELS, "markov")
#: Credited conversion ids older than twice the lookback are forgotten, once an hour.
PRUNE_EVERY_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Touch:
    channel: str
    campaign: str | None
    ts_ms: int
    event_id: str


@dataclass(frozen=True, slots=True)
class AttributionParams:
    lookback_ms: int = 30 * DAY_MS
    max_touches: int = 20
    half_life_ms: int = 7 * DAY_MS
    first_share: float = 0.4
    last_share: float = 0.4
    markov_refresh_conversions: int = 100
    markov_refresh_ms: int = 60 * 60_000


Credits = dict[str, dict[str, float]]  # model → channel → revenue


def path_for(
    touches: Sequence[Touch], conversion_ms: int, params: AttributionParams
) -> list[Touch]:
    """The touches that lead to a conversion: within the lookback, at most the last
    ``max_touches`` (older ones dropped), in time order."""
    window = [t for t in touches if conversion_ms - params.lookback_ms <= t.ts_ms <= conversion_ms]
    window.sort(key=lambda t: (t.ts_ms, t.event_id))
    return window[-params.max_touches :] if params.max_touches > 0 else window


def _spread(channels: Sequence[str], weights: Sequence[float], revenue: float) -> dict[str, float]:
    total = sum(weights)
    credit: dict[str, float] = {}
    for channel, weight in zip(channels, weights, strict=True):
        credit[channel] = credit.get(channel, 0.0) + revenue * weight / total
    return credit


def position_weights(n: int, first: float, last: float) -> list[float]:
    if n == 1:
        return [1.0]
    if n == 2:
        return [0.5, 0.5]
    middle = (1.0 - first - last) / (n - 2)
    return [first, *([middle] * (n - 2)), last]


def heuristic_credits(
    path: Sequence[Touch], conversion_ms: int, revenue: float, params: AttributionParams
) -> Credits:
    if not path:
        return {model: {DIRECT: revenue} for model in HEURISTIC_MODELS}
    channels = [t.channel for t in path]
    n = len(path)
    decay = [0.5 ** ((conversion_ms - t.ts_ms) / params.half_life_ms) for t in path]
    return {
        "first_touch": {channels[0]: revenue},
        "last_touch": {channels[-1]: revenue},
        "linear": _spread(channels, [1.0] * n, revenue),
        "time_decay": _spread(channels, decay, revenue),
        "position_based": _spread(
            channels, position_weights(n, params.first_share, params.last_share), revenue
        ),
    }


# --- Markov --------------------------------------------------------------------------------------


def conversion_probability(
    transitions: dict[str, dict[str, float]], removed: str | None = None
) -> float:
    """P(reaching ``conversion`` from ``start``) in the absorbing chain; visiting ``removed``
    leads to ``null``.

    Solved exactly as the linear system ``p = Q·p + r`` over the transient states (Gaussian
    elimination with partial pivoting; a chain has a state per channel, so a dozen or so).
    Value iteration needed thousands of sweeps when channels loop on themselves, and was
    most of the flow's time. Every recorded state reaches ``conversion`` or ``null`` (paths
    end there), so the system has exactly one solution.
    """
    states = [s for s in transitions if s not in (CONVERSION, NULL, removed) and transitions[s]]
    if START not in states:
        return 0.0
    index = {state: n for n, state in enumerate(states)}
    size = len(states)
    # Row n: p[n] − Σ_t P(n→t)·p[t] = P(n→conversion), augmented with the right-hand side.
    rows: list[list[float]] = []
    for state in states:
        outgoing = transitions[state]
        total = sum(outgoing.values())
        row = [0.0] * (size + 1)
        row[index[state]] = 1.0
        for target, count in outgoing.items():
            if target == CONVERSION:
                row[size] += count / total
            elif target in index:
                row[index[target]] -= count / total
        rows.append(row)
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        lead = rows[col][col]
        if lead == 0.0:
            continue  # unreachable for chains built by add_path; left at 0 rather than fail
        for r in range(size):
            if r != col and rows[r][col] != 0.0:
                factor = rows[r][col] / lead
                target_row, source_row = rows[r], rows[col]
                for c in range(col, size + 1):
                    target_row[c] -= factor * source_row[c]
    start = index[START]
    lead = rows[start][start]
    return rows[start][size] / lead if lead != 0.0 else 0.0


def removal_effects(transitions: dict[str, dict[str, float]]) -> dict[str, float]:
    """Channel → removal effect (1 − P(conv without it) / P(conv))."""
    full = conversion_probability(transitions)
    channels = [s for s in transitions if s not in (START, CONVERSION, NULL)]
    if full <= 0:
        return dict.fromkeys(channels, 0.0)
    return {c: max(0.0, 1.0 - conversion_probability(transitions, c) / full) for c in channels}


def shares(effects: dict[str, float]) -> dict[str, float]:
    total = sum(effects.values())
    return {c: e / total for c, e in effects.items()} if total > 0 else {}


@resumable
@dataclass(slots=True)
class MarkovState:
    """Transition counts over every path seen, and the weights in force."""

    transitions: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    conversions_since_refresh: int = 0
    refreshed_at_ms: int | None = None
    paths: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> MarkovState:
        return MarkovState(
            {s: dict(t) for s, t in self.transitions.items()},
            dict(self.weights),
            self.conversions_since_refresh,
            self.refreshed_at_ms,
            self.paths,
        )


def add_path(state: MarkovState, channels: Sequence[str], converted: bool) -> None:
    """Count one path's transitions (``start → … → conversion | null``)."""
    sequence = [START, *channels, CONVERSION if converted else NULL]
    for source, target in itertools.pairwise(sequence):
        outgoing = state.transitions.setdefault(source, {})
        outgoing[target] = outgoing.get(target, 0.0) + 1.0
    for terminal in (CONVERSION, NULL):
        state.transitions.setdefault(terminal, {})
    state.paths += 1


def refresh(state: MarkovState, now_ms: int) -> None:
    state.weights = removal_effects(state.transitions)
    state.conversions_since_refresh = 0
    state.refreshed_at_ms = now_ms


def markov_credit(
    state: MarkovState,
    path: Sequence[Touch],
    conversion_ms: int,
    revenue: float,
    params: AttributionParams,
) -> dict[str, float]:
    """Credit one conversion with the weights in force (refreshed first when due), then
    count its path."""
    channels = [t.channel for t in path]
    due = (
        state.refreshed_at_ms is None
        or state.conversions_since_refresh >= params.markov_refresh_conversions
        or conversion_ms - state.refreshed_at_ms >= params.markov_refresh_ms
    )
    if channels:
        add_path(state, channels, True)
    if due:
        refresh(state, conversion_ms)
    state.conversions_since_refresh += 1
    if not channels:
        return {DIRECT: revenue}
    present = sorted(set(channels))
    weights = [state.weights.get(c, 0.0) for c in present]
    if sum(weights) <= 0:
        weights = [float(Counter(channels)[c]) for c in present]  # no signal yet: linear
    return _spread(present, weights, revenue)


# --- per-customer paths ----------------------------------------------------------------------


@resumable
@dataclass(slots=True)
class PathState:
    """A customer's touches not yet used by a conversion, and the conversions already
    credited (a replayed or repeated conversion id is credited once)."""

    touches: list[Touch] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)  # conversion id → ts
    pruned_at_ms: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> PathState:
        return PathState(list(self.touches), dict(self.converted), self.pruned_at_ms)


@dataclass(frozen=True, slots=True)
class ConvertedPath:
    conversion_id: str
    customer_id: str | None
    revenue: float
    ts_ms: int
    event_id: str
    path: tuple[Touch, ...]


@dataclass(frozen=True, slots=True)
class AbandonedPath:
    """Touches that aged out of the lookback without a conversion (a non-converting path
    for the Markov chain), given up at ``ts_ms``: the time of the touch that came more than
    the lookback after them (where a replay puts it among the conversions)."""

    channels: tuple[str, ...]
    ts_ms: int = 0


def add_touches(
    state: PathState | None, touches: Sequence[Touch], params: AttributionParams
) -> tuple[PathState, list[AbandonedPath]]:
    if state is None:
        state = PathState()
    out: list[AbandonedPath] = []
    known = {t.event_id for t in state.touches}
    for touch in sorted(touches, key=lambda t: (t.ts_ms, t.event_id)):
        if touch.event_id in known:
            continue
        if state.touches and touch.ts_ms - state.touches[-1].ts_ms > params.lookback_ms:
            # The old touches can no longer lead to a conversion: a path that did not convert.
            out.append(AbandonedPath(tuple(t.channel for t in state.touches), touch.ts_ms))
            state.touches = []
        state.touches.append(touch)
        state.touches.sort(key=lambda t: (t.ts_ms, t.event_id))
        known.add(touch.event_id)
    # Bounded: more touches than a path can use are never needed.
    del state.touches[: -max(params.max_touches * 4, 1)]
    return state, out


def convert(
    state: PathState | None,
    conversion_id: str,
    customer_id: str | None,
    revenue: float,
    ts_ms: int,
    event_id: str,
    params: AttributionParams,
) -> tuple[PathState, ConvertedPath | None]:
    """The conversion's path (touches up to it are used up), or None for a conversion id
    already credited (a replay, or a store pickup of an online order already counted)."""
    if state is None:
        state = PathState()
    if conversion_id in state.converted:
        return state, None
    path = path_for(state.touches, ts_ms, params)
    state.touches = [t for t in state.touches if t.ts_ms > ts_ms]
    state.converted[conversion_id] = ts_ms
    if ts_ms - state.pruned_at_ms >= PRUNE_EVERY_MS:
        # Amortised: the walk-in key holds every till receipt of the horizon, and rebuilding
        # it on each conversion made a long replay quadratic.
        horizon = ts_ms - 2 * params.lookback_ms
        state.converted = {c: t for c, t in state.converted.items() if t >= horizon}
        state.pruned_at_ms = ts_ms
    return state, ConvertedPath(conversion_id, customer_id, revenue, ts_ms, event_id, tuple(path))
