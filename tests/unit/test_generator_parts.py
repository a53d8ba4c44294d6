"""The generator's parts on their own: the wire forms, malformations beside the simulation,
and the model without Kafka (``tests/unit/test_generator.py`` tests the whole stream)."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from base.config import load_config
from connectors.generator.malformations import Malformations
from connectors.generator.simulation import Simulation, customer_base
from connectors.generator.traffic import DEFAULT_START_MS
from connectors.generator.wire import event_ts, format_email, format_phone, local_date
from connectors.reference_files import load_reference
from domain.identity import normalise_email, normalise_phone
from domain.timeparse import parse_event_time

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = load_reference(load_config(env={}))
CHINA = timezone(timedelta(hours=8))

# --- wire forms -------------------------------------------------------------------------------


def test_every_typed_form_of_a_phone_or_email_is_the_same_identity() -> None:
    """Identity stitching relies on it: however a shopper types their number or address, the
    normalised value (what gets hashed) is the same."""
    rng = random.Random(1)
    phone, email = "13800138000", "li.wang42@example.cn"
    phones = {format_phone(rng, phone) for _ in range(400)}
    emails = {format_email(rng, email) for _ in range(400)}
    assert len(phones) == 4 and len(emails) == 3  # every form was drawn
    assert {normalise_phone(p) for p in phones} == {normalise_phone(phone)} == {"8613800138000"}
    assert {normalise_email(e) for e in emails} == {email}


@pytest.mark.parametrize(
    "ts_ms",
    [
        1_700_000_000_001,
        DEFAULT_START_MS,
        DEFAULT_START_MS + 999,
        1_793_462_399_999,
        1_793_462_400_000,
    ],
)
def test_event_ts_reads_back_to_the_same_instant_in_both_forms(ts_ms: int) -> None:
    rng = random.Random(ts_ms)
    forms = {type(ts): ts for ts in (event_ts(rng, ts_ms) for _ in range(50))}
    assert set(forms) == {int, str}
    assert forms[int] == ts_ms
    assert parse_event_time(forms[str]) == ts_ms
    local = datetime.fromtimestamp(ts_ms / 1000, tz=CHINA)
    assert forms[str][:23] == local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}"
    assert forms[str].endswith("+08:00")


def test_local_date_is_the_calendar_day_in_china() -> None:
    # 2026-10-31T15:59:59.999Z is 23:59:59.999 in China; a millisecond later it is 1 November.
    before = int(datetime(2026, 10, 31, 15, 59, 59, 999_000, tzinfo=UTC).timestamp() * 1000)
    for ts_ms in (before, before + 1, DEFAULT_START_MS):
        for plus_days in (0, 1, 30):
            day = datetime.fromtimestamp(ts_ms / 1000, tz=CHINA).date() + timedelta(plus_days)
            assert local_date(ts_ms, plus_days) == day.isoformat()
    assert (local_date(before), local_date(before + 1)) == ("2026-10-31", "2026-11-01")


# --- malformations beside the simulation ------------------------------------------------------


def test_malformations_do_not_change_the_simulation() -> None:
    """Malformations read the simulation between two of its events; the good events that
    follow are the ones a simulation nobody read would have published."""
    shoppers = customer_base(REFERENCE, 300)
    read = Simulation(REFERENCE, 4, shoppers, DEFAULT_START_MS)
    alone = Simulation(REFERENCE, 4, shoppers, DEFAULT_START_MS)
    malformed = Malformations(read)
    events = read.run()
    first = [e.value for e in itertools.islice(events, 2_000)]
    bad = [malformed.make() for _ in range(3_000)]
    rest = [e.value for e in itertools.islice(events, 2_000)]
    assert first + rest == [e.value for e in itertools.islice(alone.run(), 4_000)]
    assert all(e.bad_reason is not None for e in bad)
    good_ids = {e.event_id for e in itertools.islice(alone.run(), 4_000)}
    assert not good_ids & {e.event_id for e in bad}  # never mistaken for a duplicate


# --- the model without Kafka ------------------------------------------------------------------


def test_the_model_runs_without_loading_kafka() -> None:
    """Importing the package and generating a noisy stream loads no Kafka client; asking for
    the Kafka side (``produce``) loads it then."""
    script = """
import sys
from base.config import load_config
from connectors.generator import TrafficModel
from connectors.reference_files import load_reference
model = TrafficModel(load_reference(load_config(env={})), seed=3, bad_ratio=0.5)
count = sum(1 for _ in model.events(3_000))
print(count, "confluent_kafka" in sys.modules)
from connectors.generator import produce
import connectors.generator.producing as producing
print(produce is producing.produce, "confluent_kafka" in sys.modules)
"""
    reply = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert reply.stdout.split() == ["3000", "False", "True", "True"]


def test_an_unknown_name_is_an_attribute_error() -> None:
    import connectors.generator as generator

    with pytest.raises(AttributeError, match="no_such_name"):
        _ = generator.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        from connectors.generator import make_producer  # type: ignore[attr-defined]  # noqa: F401
