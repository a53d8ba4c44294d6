"""The experiment report (CONTRACT §12) as gauges on ``omnistream serve``'s ``/metrics``, for
the Marketing board: per rule × variant the customers assigned and converted, the
conversion rate, and each variant's uplift against its rule's control with the 95 % Wald
interval, the p-value and the verdict — the figures of ``omnistream experiments report``,
computed by the same ``domain.experiments.report`` from the same tallies.

The tallies read every arm's whole Redis hash, so a scrape does not compute them: the report
is kept for ``service.experiments_cache_seconds`` (30 s by default) and recomputed by the
first scrape after that; the board's figures are at most that old. A failure to read Redis
(or any other failure of the report) costs the scrape its experiment figures, not the
service's other metrics: that scrape exports no experiment gauge, the failure is counted in
``omnistream_experiment_report_failures_total`` and logged in one line, and the next try
waits for the cache period too (a Redis that is down is not asked at every scrape).

Label values are rule ids and variant names of the rules file and the five verdicts:
bounded, never a customer.

``experiment_families`` is pure (reports in, metric families out); ``ExperimentMetrics`` is
the collector around it, with its source of tallies and its clock passed in.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from domain.experiments import ALPHA, ArmReport, ArmTally, report
from state.service_reads import UNAVAILABLE

log = logging.getLogger(__name__)

#: The labels of every per-arm gauge.
ARM_LABELS = ("rule", "variant")
#: The verdict gauge's labels (its value is always 1: the verdict is the label).
VERDICT_LABELS = ("rule", "variant", "verdict")


@dataclass(frozen=True, slots=True)
class Figure:
    """One per-arm gauge: its name, its help, and the figure of an ``ArmReport`` it shows
    (None: the arm has no such figure, and exports no sample)."""

    name: str
    help: str
    value: Callable[[ArmReport], float | None]


_CI = f"{1 - ALPHA:.0%}"
FIGURES: tuple[Figure, ...] = (
    Figure(
        "omnistream_experiment_customers",
        "Customers drawn into the arm (sent its coupon, or held out for the control).",
        lambda r: r.tally.assigned,
    ),
    Figure(
        "omnistream_experiment_converted_customers",
        "Customers of the arm with at least one conversion.",
        lambda r: r.tally.converted,
    ),
    Figure(
        "omnistream_experiment_conversion_rate",
        "Converted customers / customers of the arm (0..1).",
        lambda r: r.conversion_rate,
    ),
    Figure(
        "omnistream_experiment_uplift",
        "The variant's conversion rate minus its rule's control's (absolute; no control row).",
        lambda r: r.uplift,
    ),
    Figure(
        "omnistream_experiment_uplift_ci_low",
        f"Lower bound of the uplift's {_CI} Wald interval.",
        lambda r: r.ci_low,
    ),
    Figure(
        "omnistream_experiment_uplift_ci_high",
        f"Upper bound of the uplift's {_CI} Wald interval.",
        lambda r: r.ci_high,
    ),
    Figure(
        "omnistream_experiment_p_value",
        "Two-sided p-value of the Wald test of the uplift (variant against control).",
        lambda r: r.p_value,
    ),
)
VERDICT = "omnistream_experiment_verdict"
VERDICT_HELP = (
    "1 per arm, its verdict in the label: control, significant, not significant, too small "
    "or no control."
)
FAILURES = "omnistream_experiment_report_failures"
FAILURES_HELP = "Scrapes whose experiment report could not be computed (Redis unreachable …)."

#: Series name → labels of everything the collector exports (the board test checks its
#: panels against it, as against ``base.metrics``).
SERIES: dict[str, frozenset[str]] = {
    **{f.name: frozenset(ARM_LABELS) for f in FIGURES},
    VERDICT: frozenset(VERDICT_LABELS),
    f"{FAILURES}_total": frozenset(),
}


def experiment_families(reports: Sequence[ArmReport]) -> list[Metric]:
    """The gauges of a report: every figure of every arm that has it (the control has no
    uplift, interval or p-value; an arm without customers no rate), and each arm's verdict."""
    families: list[Metric] = []
    for figure in FIGURES:
        family = GaugeMetricFamily(figure.name, figure.help, labels=ARM_LABELS)
        for r in reports:
            value = figure.value(r)
            if value is not None and math.isfinite(value):  # NaN never reaches a panel
                family.add_metric((r.tally.rule_id, r.tally.variant), float(value))
        families.append(family)
    verdicts = GaugeMetricFamily(VERDICT, VERDICT_HELP, labels=VERDICT_LABELS)
    for r in reports:
        verdicts.add_metric((r.tally.rule_id, r.tally.variant, r.verdict), 1.0)
    families.append(verdicts)
    return families


class ExperimentMetrics:
    """A ``prometheus_client`` collector of the experiment report, recomputed at most every
    ``cache_s`` seconds (``clock``: monotonic seconds).

    ``collect`` runs in whichever thread renders ``/metrics`` (the service renders it off the
    event loop, as reading Redis blocks) and may run in two at once: one computes, the other
    waits for its result."""

    def __init__(
        self,
        tallies: Callable[[], Iterable[ArmTally]],
        cache_s: float,
        where: str = "Redis",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tallies = tallies
        self.cache_s = cache_s
        self.where = where
        self.clock = clock
        self.failures = 0
        self._lock = threading.Lock()
        self._reports: list[ArmReport] | None = None  # None: the last attempt failed
        self._computed_at: float | None = None

    def current(self) -> list[ArmReport] | None:
        """The report, recomputed when older than ``cache_s``; None when it could not be."""
        with self._lock:
            now = self.clock()
            if self._computed_at is None or now - self._computed_at >= self.cache_s:
                self._computed_at = now
                self._reports = self._compute()
            return self._reports

    def _compute(self) -> list[ArmReport] | None:
        try:
            return report(self.tallies())
        except UNAVAILABLE as exc:
            log.warning(
                "experiment metrics: %s unavailable (%s); none on /metrics until the "
                "next try in %.0f s",
                self.where,
                exc or type(exc).__name__,
                self.cache_s,
            )
        except Exception:
            log.exception(
                "experiment metrics: the report failed; none on /metrics until the next try "
                "in %.0f s",
                self.cache_s,
            )
        self.failures += 1
        return None

    def collect(self) -> Iterable[Metric]:
        reports = self.current()
        if reports is not None:
            yield from experiment_families(reports)
        yield CounterMetricFamily(FAILURES, FAILURES_HELP, value=self.failures)

    def describe(self) -> Iterable[Metric]:
        """The families without samples: registering the collector reads nothing."""
        yield from experiment_families([])
        yield CounterMetricFamily(FAILURES, FAILURES_HELP, value=0)
