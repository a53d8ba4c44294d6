"""The visit writer's records: each visit's task as the console reads it, the removal of
a store's visits past their retention (only when the writer says the store is due for a
look, and never another kind of task), and an erased customer's visits in every store."""

from __future__ import annotations

import orjson

from connectors.customer_io import visit_record, visit_task_id, visit_writes, visits_of_erased
from domain.customer_rules import VisitTask

HOUR = 3_600_000


def visit(customer: str, store: str, at_ms: int) -> VisitTask:
    return VisitTask("store-visit", customer, store, (("SKU1", at_ms - 1),), "check-in",
                     (f"ev-{customer}-{at_ms}",), at_ms)  # fmt: skip


def test_old_visits_leave_when_their_store_is_due_and_other_tasks_stay() -> None:
    old, fresh = visit("c1", "ST1", 0), visit("c2", "ST1", 10 * HOUR)
    pickup = orjson.dumps({"kind": "pickup_prep", "updated_at_ms": 0}).decode()
    held = {visit_task_id(v): visit_record(v).decode() for v in (old, fresh)}
    hashes = {"ST1": {**held, "pickup-1": pickup}}
    new = visit("c3", "ST1", 13 * HOUR)
    written = ("ST1", visit_task_id(new), visit_record(new))
    records = visit_writes([new], hashes.__getitem__, 12 * HOUR)
    assert records == [written, ("ST1", visit_task_id(old), None)]
    # Not due for a look: the old visit stays until the store's next look.
    assert visit_writes([new], hashes.__getitem__, 12 * HOUR, lambda _s: False) == [written]


def test_an_erased_customers_visits_leave_every_store() -> None:
    a, b, other = visit("gone", "ST1", 0), visit("gone", "ST2", 5), visit("kept", "ST1", 9)
    hashes = {
        "ST1": {visit_task_id(v): visit_record(v).decode() for v in (a, other)},
        "ST2": {visit_task_id(b): visit_record(b).decode()},
    }
    removals = visits_of_erased(["gone"], ["ST1", "ST2"], hashes.__getitem__)
    expected = [("ST1", visit_task_id(a), None), ("ST2", visit_task_id(b), None)]
    assert sorted(removals) == sorted(expected)
