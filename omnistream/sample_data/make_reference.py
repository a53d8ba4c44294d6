"""Write the sample reference data (CONTRACT §1): ``locations.csv`` and ``products.csv``.

Deterministic: running it again rewrites the same bytes. The files it writes are committed,
so this script only needs to run when the sample itself is meant to change::

    python omnistream/sample_data/make_reference.py

The sample is a small grocery-and-household chain in the Yangtze delta: three regions
(Shanghai ``SH``, Hangzhou ``HZ``, Suzhou ``SZ``), one central warehouse in Shanghai, one
forward warehouse in each of the other two cities, and four stores per city; 200 skus in
eight categories, of which the 15 fresh-food and chilled-dairy skus perish.

Fulfilment columns (CONTRACT §8): warehouses and forward warehouses ship online orders and
hand over no pickups; every store offers pickup, and the largest store of each city also
ships online (a "ship-from-store" store). A product's ``safety_stock`` is the few units each
location holds back from selling (0 for most skus); consumables (fresh food, dairy,
household) carry ``repurchase_days``, the usual days until a shopper buys the sku again.
The fulfilment columns draw from a random stream of their own, so adding them left every
earlier value of the files as it was.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261101
#: The fulfilment columns' own random stream (see the module docstring).
FULFILMENT_SEED = f"{SEED}-fulfilment"

# --- locations -------------------------------------------------------------------------------

#: (location_id, type, region, name, lat, lon)
LOCATIONS: list[tuple[str, str, str, str, float, float]] = [
    ("WH-SH-01", "warehouse", "SH", "Shanghai Jiading DC", 31.3747, 121.2655),
    ("FW-HZ-01", "forward_warehouse", "HZ", "Hangzhou Xiaoshan FDC", 30.1845, 120.2646),
    ("FW-SZ-01", "forward_warehouse", "SZ", "Suzhou Industrial Park FDC", 31.3161, 120.7143),
    ("ST-SH-01", "store", "SH", "Shanghai Jing'an Temple", 31.2235, 121.4456),
    ("ST-SH-02", "store", "SH", "Shanghai Lujiazui", 31.2389, 121.4997),
    ("ST-SH-03", "store", "SH", "Shanghai Xujiahui", 31.1950, 121.4370),
    ("ST-SH-04", "store", "SH", "Shanghai Wujiaochang", 31.2997, 121.5135),
    ("ST-HZ-01", "store", "HZ", "Hangzhou West Lake Yintai", 30.2500, 120.1650),
    ("ST-HZ-02", "store", "HZ", "Hangzhou Binjiang", 30.2084, 120.2110),
    ("ST-HZ-03", "store", "HZ", "Hangzhou Wulin Square", 30.2741, 120.1630),
    ("ST-HZ-04", "store", "HZ", "Hangzhou Future Sci-Tech City", 30.2890, 120.0040),
    ("ST-SZ-01", "store", "SZ", "Suzhou Guanqian Street", 31.3106, 120.6238),
    ("ST-SZ-02", "store", "SZ", "Suzhou Jinji Lake", 31.3201, 120.6969),
    ("ST-SZ-03", "store", "SZ", "Suzhou Shishan", 31.2987, 120.5720),
    ("ST-SZ-04", "store", "SZ", "Suzhou Wuzhong Wanda", 31.2650, 120.6300),
]

#: The store of each city that also ships online orders (the largest one, with a back room).
SHIP_FROM_STORE = frozenset({"ST-SH-02", "ST-HZ-01", "ST-SZ-01"})


def _location_flags(location_id: str, kind: str) -> dict[str, str]:
    ships = kind != "store" or location_id in SHIP_FROM_STORE
    return {"ships_online": str(ships).lower(), "pickup": str(kind == "store").lower()}


# --- products --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    name: str
    count: int
    brands: tuple[str, ...]
    #: (item, sizes, base price in yuan)
    items: tuple[tuple[str, tuple[str, ...], float], ...]
    reorder_point: tuple[int, int]
    lead_time_days: tuple[int, int]
    #: Shelf life in days of each perishable item (by item name); absent items keep.
    shelf_life: dict[str, int]
    #: (low, high) days until a shopper buys the sku again; None for durables.
    repurchase_days: tuple[int, int] | None = None


CATEGORIES: list[Category] = [
    Category(
        "fresh_food",
        8,
        ("FarmFresh",),
        (
            ("Strawberries", ("500g",), 29.9),
            ("Baby Spinach", ("250g",), 9.9),
            ("Chicken Breast", ("500g",), 24.9),
            ("Salmon Fillet", ("300g",), 59.9),
            ("Pork Belly", ("500g",), 32.9),
            ("Cherry Tomatoes", ("500g",), 12.9),
            ("Bananas", ("1kg",), 8.9),
            ("Silken Tofu", ("400g",), 4.5),
        ),
        (10, 25),
        (1, 1),
        {
            "Strawberries": 4,
            "Baby Spinach": 3,
            "Chicken Breast": 5,
            "Salmon Fillet": 3,
            "Pork Belly": 5,
            "Cherry Tomatoes": 7,
            "Bananas": 6,
            "Silken Tofu": 10,
        },
        repurchase_days=(3, 7),
    ),
    Category(
        "dairy",
        12,
        ("Bright Pasture", "Alpine", "Mengniu Valley"),
        (
            ("Fresh Milk", ("950ml",), 15.9),
            ("Greek Yogurt", ("400g",), 18.9),
            ("Plain Yogurt", ("4x100g",), 12.9),
            ("Drinking Yogurt", ("6x200ml",), 22.9),
            ("Whipping Cream", ("250ml",), 16.9),
            ("Cheese Slices", ("12 slices",), 24.9),
            ("Salted Butter", ("200g",), 21.9),
            ("UHT Whole Milk", ("12x250ml",), 49.9),
            ("UHT Skim Milk", ("12x250ml",), 47.9),
            ("Adult Milk Powder", ("800g",), 89.0),
            ("Condensed Milk", ("350g",), 13.9),
            ("Parmesan Block", ("200g",), 45.0),
        ),
        (8, 25),
        (1, 3),
        {
            "Fresh Milk": 7,
            "Greek Yogurt": 21,
            "Plain Yogurt": 21,
            "Drinking Yogurt": 14,
            "Whipping Cream": 10,
            "Cheese Slices": 30,
            "Salted Butter": 30,
        },
        repurchase_days=(5, 14),
    ),
    Category(
        "beverages",
        35,
        ("Nongfu", "Yuanqi", "Tsingtao", "Oriental Leaf", "Coco Isle"),
        (
            ("Mineral Water", ("550ml", "1.5L", "24x550ml"), 2.0),
            ("Sparkling Water", ("480ml", "12x480ml"), 5.5),
            ("Green Tea", ("500ml", "15x500ml"), 4.5),
            ("Oolong Tea", ("500ml",), 5.0),
            ("Lager Beer", ("500ml", "12x500ml"), 6.5),
            ("Coconut Water", ("1L",), 15.9),
            ("Orange Juice", ("1L", "300ml"), 12.9),
            ("Cold Brew Coffee", ("270ml", "6x270ml"), 9.9),
            ("Cola", ("330ml", "24x330ml"), 3.0),
        ),
        (15, 30),
        (2, 5),
        {},
    ),
    Category(
        "snacks",
        35,
        ("Three Squirrels", "Lay-Lay", "Want Want", "Oreo Lane", "Bestore"),
        (
            ("Potato Chips", ("70g", "135g"), 7.9),
            ("Mixed Nuts", ("30x25g", "500g"), 59.0),
            ("Seaweed Snack", ("40g",), 9.9),
            ("Rice Crackers", ("400g",), 14.9),
            ("Chocolate Bar", ("100g",), 12.9),
            ("Dried Mango", ("200g",), 16.9),
            ("Beef Jerky", ("100g",), 29.9),
            ("Sandwich Cookies", ("388g",), 13.9),
            ("Sunflower Seeds", ("500g",), 15.9),
        ),
        (12, 30),
        (3, 7),
        {},
    ),
    Category(
        "personal_care",
        30,
        ("Herbal Spring", "Crest Line", "Nivea Bay", "Dove Leaf"),
        (
            ("Shampoo", ("400ml", "750ml"), 45.0),
            ("Conditioner", ("400ml",), 45.0),
            ("Body Wash", ("720ml",), 39.9),
            ("Toothpaste", ("120g", "3x120g"), 14.9),
            ("Electric Toothbrush Heads", ("4 pack",), 129.0),
            ("Face Cream", ("50ml",), 139.0),
            ("Sunscreen SPF50", ("60ml",), 99.0),
            ("Hand Soap", ("300ml",), 19.9),
        ),
        (6, 20),
        (5, 10),
        {},
    ),
    Category(
        "household",
        30,
        ("Vinda", "Liby", "Blue Moon", "CleanHome"),
        (
            ("Facial Tissue", ("3-ply 6 pack", "3-ply 18 pack"), 19.9),
            ("Toilet Paper", ("10 rolls", "27 rolls"), 39.9),
            ("Laundry Detergent", ("2kg", "3kg"), 49.9),
            ("Dish Soap", ("1.1kg",), 15.9),
            ("Garbage Bags", ("100 bags",), 12.9),
            ("Kitchen Towels", ("4 rolls",), 16.9),
            ("Floor Cleaner", ("1L",), 24.9),
            ("Wet Wipes", ("80 sheets",), 9.9),
        ),
        (8, 25),
        (4, 8),
        {},
        repurchase_days=(21, 45),
    ),
    Category(
        "baby_care",
        25,
        ("Little Panda", "Pampers Park", "Beingmate Farm"),
        (
            ("Diapers Size M", ("64 pcs",), 129.0),
            ("Diapers Size L", ("54 pcs",), 129.0),
            ("Infant Formula Stage 1", ("800g",), 268.0),
            ("Infant Formula Stage 2", ("800g",), 258.0),
            ("Baby Wipes", ("80 sheets", "6x80 sheets"), 15.9),
            ("Baby Lotion", ("200ml",), 59.0),
            ("Rice Cereal", ("225g",), 39.9),
            ("Feeding Bottle", ("240ml",), 89.0),
            ("Teething Biscuits", ("64g",), 19.9),
        ),
        (5, 15),
        (5, 10),
        {},
    ),
    Category(
        "small_appliances",
        25,
        ("Midea", "Xiaomi Home", "Joyoung", "Bear"),
        (
            ("Electric Kettle", ("1.7L",), 129.0),
            ("Rice Cooker", ("3L", "4L"), 299.0),
            ("Air Fryer", ("5.5L",), 399.0),
            ("Soy Milk Maker", ("1.2L",), 459.0),
            ("Hair Dryer", ("1800W",), 199.0),
            ("Handheld Vacuum", ("cordless",), 699.0),
            ("Blender", ("1.5L",), 259.0),
            ("Sandwich Maker", ("2 slices",), 149.0),
        ),
        (5, 8),
        (7, 21),
        {},
    ),
]


def _fulfilment_columns(rng: random.Random, category: Category) -> dict[str, str]:
    """``safety_stock`` (0 for about three skus in five, else 1–3 units) and
    ``repurchase_days`` (empty for durables)."""
    safety_stock = 0 if rng.random() < 0.6 else rng.randint(1, 3)
    days = category.repurchase_days
    repurchase = "" if days is None else str(rng.randint(*days))
    return {"safety_stock": str(safety_stock), "repurchase_days": repurchase}


def _products(rng: random.Random, fulfilment_rng: random.Random) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    number = 10001
    for category in CATEGORIES:
        variants = [
            (brand, item, size, base, category.shelf_life.get(item))
            for item, sizes, base in category.items
            for brand in category.brands
            for size in sizes
        ]
        # Perishables first (every one of them is kept), then a deterministic pick.
        perishable = [v for v in variants if v[4] is not None]
        keeping = [v for v in variants if v[4] is None]
        seen_perishable_items: set[str] = set()
        chosen = []
        for variant in perishable:
            if variant[1] not in seen_perishable_items:
                seen_perishable_items.add(variant[1])
                chosen.append(variant)
        rng.shuffle(keeping)
        chosen += keeping[: category.count - len(chosen)]
        if len(chosen) != category.count:
            raise SystemExit(f"category {category.name}: only {len(chosen)} variants")
        chosen.sort(key=lambda v: (v[1], v[0], v[2]))
        for brand, item, size, base, shelf_life in chosen:
            # Shelf prices end in .9 (29.9, 129.9) except for the cheapest goods.
            factor = rng.uniform(0.85, 1.2)
            price = round(base * factor) - 0.1 if base >= 5 else round(base * factor, 1)
            low, high = category.reorder_point
            lead_low, lead_high = category.lead_time_days
            rows.append(
                {
                    "sku": f"SKU-{number}",
                    "category": category.name,
                    "price": f"{max(price, 0.5):.2f}",
                    "reorder_point": str(rng.randint(low, high)),
                    "lead_time_days": str(rng.randint(lead_low, lead_high)),
                    "shelf_life_days": "" if shelf_life is None else str(shelf_life),
                    "name": f"{brand} {item} {size}",
                    **_fulfilment_columns(fulfilment_rng, category),
                }
            )
            number += 1
    return rows


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    rng = random.Random(SEED)
    locations = [
        {
            "location_id": location_id,
            "type": kind,
            "region": region,
            "name": name,
            "lat": f"{lat:.4f}",
            "lon": f"{lon:.4f}",
            **_location_flags(location_id, kind),
        }
        for location_id, kind, region, name, lat, lon in LOCATIONS
    ]
    _write(
        HERE / "locations.csv",
        ["location_id", "type", "region", "name", "lat", "lon", "ships_online", "pickup"],
        locations,
    )
    products = _products(rng, random.Random(FULFILMENT_SEED))
    header = [
        "sku",
        "category",
        "price",
        "reorder_point",
        "lead_time_days",
        "shelf_life_days",
        "name",
        "safety_stock",
        "repurchase_days",
    ]
    _write(HERE / "products.csv", header, products)
    perishable = sum(1 for row in products if row["shelf_life_days"])
    print(f"wrote {len(locations)} locations, {len(products)} products ({perishable} perishable)")


if __name__ == "__main__":
    main()
