"""The bench's events/s from its samples: a small stream read between two samples must give
a lower bound, never 0 (the smoke run's reference once measured 0.0 events/s that way)."""

from __future__ import annotations

import pytest

from omnistream.bench import Sampler


def sampler(**fields: float | None) -> Sampler:
    return Sampler(port=0, flow="reference", pid=0, **fields)  # type: ignore[arg-type]


def test_events_per_second_is_the_count_over_the_samples_that_saw_it_grow() -> None:
    run = sampler(first=10.0, last=12.0, count=4_000.0, idle_at=9.5, started=1.0).result()
    assert run.seconds == pytest.approx(2.0)
    assert run.eps == pytest.approx(2_000.0)


def test_all_read_between_two_samples_is_bounded_by_the_last_idle_sample() -> None:
    run = sampler(first=10.0, last=10.0, count=8_000.0, idle_at=9.9, started=1.0).result()
    assert run.seconds == pytest.approx(0.1)
    assert run.eps == pytest.approx(80_000.0)


def test_no_idle_sample_falls_back_to_when_sampling_began() -> None:
    run = sampler(first=10.0, last=10.0, count=8_000.0, idle_at=None, started=6.0).result()
    assert run.seconds == pytest.approx(4.0)
    assert run.eps == pytest.approx(2_000.0)


def test_nothing_seen_is_zero_not_an_error() -> None:
    run = sampler(count=0.0, started=6.0).result()
    assert (run.eps, run.seconds, run.consumed) == (0.0, 0.0, 0.0)
