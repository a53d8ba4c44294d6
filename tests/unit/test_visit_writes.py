"""The visit writer's records: each visit's task as the console reads it, indexed by its
``updated_at_ms``; the prune of a store's visits past their retention (only when the writer
says the store is due for a look); an erased customer's visits in every store."""

from __future__ import annotations

from connectors.customer_io import (
    visit_prunes,
    visit_record,
    visit_task_id,
    visit_writes,
    visits_of_erased,
)
from domain.customer_rules import VisitTask

HOUR = 3_600_000


def visit(customer: str, store: str, at_ms: int) -> VisitTask:
    return VisitTask("store-visit", customer, store, (("SKU1", at_ms - 1),), "check-in",
                     (f"ev-{customer}-{at_ms}",), at_ms)  # fmt: skip


def test_each_visit_is_written_with_its_index_time() -> None:
    a, b = visit("c1", "ST1", 5 * HOUR), visit("c2", "ST2", 6 * HOUR)
    assert visit_writes([a, b]) == [
        ("ST1", visit_task_id(a), visit_record(a), 5 * HOUR),
        ("ST2", visit_task_id(b), visit_record(b), 6 * HOUR),
    ]


def test_a_due_store_prunes_the_retention_before_its_newest_visit() -> None:
    batch = [visit("c1", "ST1", 13 * HOUR), visit("c2", "ST1", 11 * HOUR)]
    batch.append(visit("c3", "ST2", 20 * HOUR))
    assert visit_prunes(batch, 12 * HOUR) == [("ST1", 1 * HOUR), ("ST2", 8 * HOUR)]
    # Not due for a look: the old visits stay until the store's next look.
    assert visit_prunes(batch, 12 * HOUR, lambda store: store == "ST2") == [("ST2", 8 * HOUR)]
    assert visit_prunes([], 12 * HOUR) == []


def test_an_erased_customers_visits_leave_every_store() -> None:
    a, b, other = visit("gone", "ST1", 0), visit("gone", "ST2", 5), visit("kept", "ST1", 9)
    hashes = {
        "ST1": {visit_task_id(v): visit_record(v).decode() for v in (a, other)},
        "ST2": {visit_task_id(b): visit_record(b).decode()},
    }
    removals = visits_of_erased(["gone"], ["ST1", "ST2"], hashes.__getitem__)
    expected = [("ST1", visit_task_id(a), None, 0), ("ST2", visit_task_id(b), None, 0)]
    assert sorted(removals) == sorted(expected)
