"""The rules file of a running rule_triggers flow, re-read when it changes.

The flow refuses to start on an invalid file. Afterwards, a changed file (new modification
time, size or content) is validated; a valid one is in force from the next event on, an
invalid one is refused, logged with every problem and counted, and the previous rules stay in
force; ``omnistream_rules_file_refused`` is 1 until a valid file is in force again (the alert
OmnistreamRulesReloadRefused). The file is looked at no more often than every
``reload_seconds`` (wall clock).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable

from base.metrics import RULES_ACTIVE, RULES_FILE_REFUSED, RULES_RELOADS, TRIGGER_INSIGHTS
from connectors.rules_file import load_rules
from domain.rules import COUPON_KINDS, RulesError, RuleSet

log = logging.getLogger(__name__)


class LiveRules:
    def __init__(
        self,
        path: str,
        reload_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.reload_seconds = reload_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._rules = load_rules(path)  # raises RulesError: the flow does not start
        self._stamp = self._file_stamp()
        self._digest = self._content_digest()
        self._next_look = clock() + reload_seconds
        # Both outcomes from 0: an alert on increase() sees nothing of a first sample of 1.
        RULES_RELOADS.labels("ok")
        RULES_RELOADS.labels("invalid")
        RULES_FILE_REFUSED.set(0)
        _expose(self._rules)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def _content_digest(self) -> str:
        try:
            with open(self.path, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            return ""

    def watch(self) -> None:
        """Also look for changes from a daemon thread, so a change is validated, logged and
        counted when it is made, not only when the next event arrives."""

        def loop() -> None:
            while True:
                time.sleep(self.reload_seconds)
                self.current()

        threading.Thread(target=loop, name="rules-watch", daemon=True).start()

    def current(self) -> RuleSet:
        """The rules in force; looks for a changed file at most every ``reload_seconds``."""
        now = self._clock()
        if now < self._next_look:
            return self._rules
        with self._lock:
            if now >= self._next_look:
                self._next_look = now + self.reload_seconds
                self._maybe_reload()
        return self._rules

    def _maybe_reload(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        digest = self._content_digest()
        if digest == self._digest:
            return  # touched, not changed
        self._digest = digest
        try:
            rules = load_rules(self.path)
        except RulesError as error:
            RULES_RELOADS.labels("invalid").inc()
            RULES_FILE_REFUSED.set(1)
            log.error(
                "rules file %s changed but is invalid; the previous rules stay in force:\n  %s",
                self.path,
                "\n  ".join(error.problems),
            )
            return
        self._rules = rules
        RULES_RELOADS.labels("ok").inc()
        RULES_FILE_REFUSED.set(0)
        _expose(rules)
        log.info(
            "rules file %s reloaded: %d rules (%s)",
            self.path,
            len(rules.rules),
            ", ".join(r.rule_id for r in rules.rules),
        )


def _expose(rules: RuleSet) -> None:
    """The rules' gauges, and a zero for every insight a review in force may publish: an
    alert on ``increase()`` sees nothing of a counter series whose first sample is 1."""
    RULES_ACTIVE.set(sum(r.enabled for r in rules.rules))
    if not rules.of_kind("redemption_review"):
        return
    for rule in rules.rules:
        if rule.enabled and rule.kind in COUPON_KINDS:
            experiment = rule.experiment
            for variant in experiment.variants if experiment is not None else ("default",):
                TRIGGER_INSIGHTS.labels(rule.rule_id, variant, "low_redemption")
