"""Reading the reference CSV files named in the configuration."""

from __future__ import annotations

import csv
from pathlib import Path

from base.config import Config
from domain.reference import ReferenceData, ReferenceDataError, parse_locations, parse_products


def _read_csv(path: str) -> tuple[list[dict[str, str]], list[str]]:
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return rows, list(reader.fieldnames or [])
    except OSError as exc:
        raise ReferenceDataError(f"{path}: cannot read reference file: {exc.strerror}") from exc


def load_reference(config: Config) -> ReferenceData:
    """Load and validate both files; an error names the file, the line and the column."""
    location_rows, location_header = _read_csv(config.reference.locations)
    product_rows, product_header = _read_csv(config.reference.products)
    return ReferenceData(
        locations=parse_locations(config.reference.locations, location_rows, location_header),
        products=parse_products(config.reference.products, product_rows, product_header),
    )
