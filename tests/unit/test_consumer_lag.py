"""Consumer lag of a source partition (``connectors.kafka_source.consumer_lag``) and the
``topic`` label it is reported under."""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID
from hypothesis import given
from hypothesis import strategies as st

from base.topics import ALL_TOPICS
from connectors.kafka_source import consumer_lag, topic_label


def test_lag_is_end_offset_minus_position() -> None:
    assert consumer_lag(7, 0, 10) == 3
    assert consumer_lag(0, 0, 10) == 10  # resumed at offset 0: nothing of it read yet


def test_a_partition_at_its_end_lags_by_nothing() -> None:
    assert consumer_lag(10, 0, 10) == 0
    assert consumer_lag(0, 0, 0) == 0  # empty partition


def test_nothing_read_from_the_beginning_counts_from_the_first_offset() -> None:
    """Before the first message the position is logical (``OFFSET_BEGINNING``): the whole
    retained partition is still to read, not the end offset plus two."""
    assert consumer_lag(OFFSET_BEGINNING, 0, 10) == 10
    assert consumer_lag(OFFSET_BEGINNING, 4, 10) == 6  # retention deleted offsets 0-3
    assert consumer_lag(OFFSET_BEGINNING, 10, 10) == 0


def test_unknown_until_a_fetch_told_the_watermarks() -> None:
    assert consumer_lag(5, OFFSET_INVALID, OFFSET_INVALID) is None
    assert consumer_lag(5, -1, -1) is None  # what the source uses when the call failed
    assert consumer_lag(OFFSET_BEGINNING, OFFSET_INVALID, 10) is None
    assert consumer_lag(5, OFFSET_INVALID, 10) == 5  # a real position needs only the end


def test_a_snapshot_older_than_the_retention_is_read_from_the_first_offset() -> None:
    assert consumer_lag(2, 5, 10) == 5


def test_a_stale_end_offset_counts_as_the_end() -> None:
    """The cached high watermark can be older than the message just read: never negative."""
    assert consumer_lag(12, 0, 10) == 0


@given(
    low=st.integers(0, 10**12),
    span=st.integers(0, 10**9),
    read=st.integers(0, 10**9),
)
def test_lag_never_negative_nor_above_what_the_partition_holds(
    low: int, span: int, read: int
) -> None:
    high = low + span
    position = low + min(read, span)
    lag = consumer_lag(position, low, high)
    assert lag == high - position
    assert 0 <= (lag or 0) <= span


def test_topic_label_drops_the_configured_prefix() -> None:
    for name in ALL_TOPICS:
        assert topic_label(f"acme.{name}") == name
        assert topic_label(f"t0123456789.{name}") == name
        assert topic_label(name) == name
    assert topic_label("not.a.contract.topic") == "not.a.contract.topic"


def test_no_contract_topic_ends_with_another() -> None:
    """What makes the longest match the only one (``topic_label``)."""
    for name in ALL_TOPICS:
        assert [other for other in ALL_TOPICS if name.endswith(other)] == [name]
