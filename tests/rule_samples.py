"""Rules (as the rules file writes them) that several rule tests use alike; a test that
needs other parameters states its own next to it."""

from __future__ import annotations

CART = {
    "id": "cart",
    "kind": "cart_abandonment",
    "cooldown": "1d",
    "params": {"within": "30m"},
    "coupon": {"type": "amount_off", "value": 5},
}
BROWSE = {
    "id": "browse",
    "kind": "browse_nearby_stock",
    "cooldown": "1d",
    "params": {"views": 3, "within": "30m", "min_available": 2},
    "coupon": {"type": "percent_off", "value": 10},
}
OVERSTOCK = {
    "id": "overstock",
    "kind": "overstock",
    "cooldown": "1d",
    "params": {"cover_days": 60, "idle_days": 30, "min_on_hand": 10, "viewed_within": "7d"},
    "coupon": {"type": "percent_off", "value": 20},
}
