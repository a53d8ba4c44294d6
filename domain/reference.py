"""Reference data: the locations and products that events may name (CONTRACT §1).

Parsing is pure (rows in, records out) so it is tested without files; reading the files is
``connectors.reference_files.load_reference``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LOCATION_TYPES = frozenset({"warehouse", "forward_warehouse", "store"})


class ReferenceDataError(ValueError):
    """A reference row is unusable; the message names the file, the row and the column."""


@dataclass(frozen=True, slots=True)
class Location:
    location_id: str
    type: str
    region: str
    name: str = ""
    lat: float | None = None
    lon: float | None = None
    #: The file's ``ships_online`` / ``pickup`` columns (CONTRACT §8); None when absent or
    #: empty, and then the type decides (``ships`` and ``offers_pickup``).
    ships_online: bool | None = None
    pickup: bool | None = None

    @property
    def ships(self) -> bool:
        """Can ship online orders: warehouses by default, stores only when the file says so."""
        if self.ships_online is not None:
            return self.ships_online
        return self.type != "store"

    @property
    def offers_pickup(self) -> bool:
        """Hands over store-pickup orders: stores by default."""
        if self.pickup is not None:
            return self.pickup
        return self.type == "store"

    @property
    def has_coordinates(self) -> bool:
        return self.lat is not None and self.lon is not None


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    category: str
    price: float
    #: Default low-stock threshold of the sku at every location.
    reorder_point: int
    lead_time_days: int
    #: Days a received batch keeps; None for goods that do not perish.
    shelf_life_days: int | None
    #: Units held back from selling at every location (CONTRACT §8, "safety line").
    safety_stock: int = 0
    #: Typical days until the same customer buys the sku again; None: not a repurchase item.
    repurchase_days: int | None = None


@dataclass(frozen=True, slots=True)
class ReferenceData:
    locations: Mapping[str, Location]
    products: Mapping[str, Product]


def _number(
    source: str,
    line: int,
    column: str,
    text: str,
    kind: type,
    allow_empty: bool = False,
    signed: bool = False,
) -> float | int | None:
    text = text.strip()
    if text == "" and allow_empty:
        return None
    try:
        value = kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ReferenceDataError(
            f"{source}:{line}: column `{column}`: expected {expected}, got {text!r}"
        ) from None
    if value < 0 and not signed:
        raise ReferenceDataError(f"{source}:{line}: column `{column}`: expected ≥ 0, got {text!r}")
    return value


def _require_columns(source: str, header: Iterable[str], required: Iterable[str]) -> None:
    missing = [c for c in required if c not in set(header)]
    if missing:
        raise ReferenceDataError(f"{source}: header: missing column(s) {', '.join(missing)}")


def _flag(source: str, line: int, column: str, text: str | None) -> bool | None:
    """``true``/``false`` (any case, also 1/0, yes/no); empty or absent: None (the default)."""
    value = (text or "").strip().lower()
    if value == "":
        return None
    if value in {"true", "1", "yes"}:
        return True
    if value in {"false", "0", "no"}:
        return False
    raise ReferenceDataError(
        f"{source}:{line}: column `{column}`: expected true or false, got {text!r}"
    )


def parse_locations(
    source: str, rows: list[dict[str, str]], header: list[str]
) -> dict[str, Location]:
    """Rows of ``location_id,type,region[,name,lat,lon]``; line numbers count the header as 1."""
    _require_columns(source, header, ["location_id", "type", "region"])
    locations: dict[str, Location] = {}
    for line, row in enumerate(rows, start=2):
        location_id = (row.get("location_id") or "").strip()
        kind = (row.get("type") or "").strip()
        region = (row.get("region") or "").strip()
        if not location_id:
            raise ReferenceDataError(
                f"{source}:{line}: column `location_id`: expected a non-empty id"
            )
        if kind not in LOCATION_TYPES:
            raise ReferenceDataError(
                f"{source}:{line}: column `type`: expected one of "
                f"{', '.join(sorted(LOCATION_TYPES))}, got {kind!r}"
            )
        if not region:
            raise ReferenceDataError(f"{source}:{line}: column `region`: expected a region code")
        if location_id in locations:
            raise ReferenceDataError(
                f"{source}:{line}: column `location_id`: duplicate {location_id!r}"
            )
        lat = (
            _number(source, line, "lat", row.get("lat") or "", float, True, signed=True)
            if "lat" in row
            else None
        )
        lon = (
            _number(source, line, "lon", row.get("lon") or "", float, True, signed=True)
            if "lon" in row
            else None
        )
        if (lat is None) != (lon is None):
            raise ReferenceDataError(
                f"{source}:{line}: columns `lat`/`lon`: expected both or neither"
            )
        if lat is not None and not -90 <= lat <= 90:
            raise ReferenceDataError(f"{source}:{line}: column `lat`: expected -90..90, got {lat}")
        if lon is not None and not -180 <= lon <= 180:
            raise ReferenceDataError(
                f"{source}:{line}: column `lon`: expected -180..180, got {lon}"
            )
        locations[location_id] = Location(
            location_id,
            kind,
            region,
            (row.get("name") or "").strip(),
            lat,  # type: ignore[arg-type]
            lon,  # type: ignore[arg-type]
            _flag(source, line, "ships_online", row.get("ships_online")),
            _flag(source, line, "pickup", row.get("pickup")),
        )
    return locations


def parse_products(
    source: str, rows: list[dict[str, str]], header: list[str]
) -> dict[str, Product]:
    """Rows of ``sku,category,price,reorder_point,lead_time_days,shelf_life_days``.

    An empty ``shelf_life_days`` means the goods do not perish.
    """
    _require_columns(
        source,
        header,
        ["sku", "category", "price", "reorder_point", "lead_time_days", "shelf_life_days"],
    )
    products: dict[str, Product] = {}
    for line, row in enumerate(rows, start=2):
        sku = (row.get("sku") or "").strip()
        if not sku:
            raise ReferenceDataError(f"{source}:{line}: column `sku`: expected a non-empty sku")
        if sku in products:
            raise ReferenceDataError(f"{source}:{line}: column `sku`: duplicate {sku!r}")
        products[sku] = Product(
            sku=sku,
            category=(row.get("category") or "").strip(),
            price=float(_number(source, line, "price", row.get("price") or "", float) or 0.0),
            reorder_point=int(
                _number(source, line, "reorder_point", row.get("reorder_point") or "", int) or 0
            ),
            lead_time_days=int(
                _number(source, line, "lead_time_days", row.get("lead_time_days") or "", int) or 0
            ),
            shelf_life_days=_number(
                source,
                line,
                "shelf_life_days",  # type: ignore[arg-type]
                row.get("shelf_life_days") or "",
                int,
                allow_empty=True,
            ),
            safety_stock=int(
                _number(source, line, "safety_stock", row.get("safety_stock") or "0", int) or 0
            ),
            repurchase_days=_number(
                source,
                line,
                "repurchase_days",  # type: ignore[arg-type]
                row.get("repurchase_days") or "",
                int,
                allow_empty=True,
            ),
        )
    return products
