"""The reference fold of ``identity.changes`` (CONTRACT §4), shared by the unit and the
integration tests: written from the contract, not from the flow's code."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

#: (kind, customer_id, identifiers, merged_from) of one change.
Change = tuple[str, str, Sequence[str], Sequence[str]]


def fold_changes(changes: Iterable[Change]) -> dict[str, str]:
    """What a subscriber of ``identity.changes`` ends with, in any reading order: every
    customer an identifier was linked or merged to must lead, through the ``merged_from``
    aliases, to one surviving customer, or the answer would depend on the order."""
    alias: dict[str, str] = {}
    named: dict[str, set[str]] = defaultdict(set)
    for kind, customer_id, identifiers, merged_from in changes:
        assert kind != "erased"  # nobody is forgotten in these tests
        if kind in ("linked", "merged"):
            for ident in identifiers:
                named[ident].add(customer_id)
            for old in merged_from:
                if old != customer_id:
                    assert alias.setdefault(old, customer_id) == customer_id, (
                        f"{old} merged into two customers"
                    )

    def resolve(customer: str) -> str:
        seen = {customer}
        while (target := alias.get(customer)) is not None and target not in seen:
            seen.add(target)
            customer = target
        return customer

    mapping: dict[str, str] = {}
    for ident, customers in named.items():
        survivors = {resolve(c) for c in customers}
        assert len(survivors) == 1, f"{ident} ends with {sorted(survivors)}, by reading order"
        mapping[ident] = survivors.pop()
    return mapping
