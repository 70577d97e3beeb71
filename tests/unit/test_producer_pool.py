"""Pure logic of the multi-process producer: how work is split and how counters are combined."""

from __future__ import annotations

from dataclasses import replace

import pytest

from clickstream_lib.errors import ConfigError
from clickstream_lib.producer import ProducerStats
from clickstream_lib.producer_pool import combine, produce_in_processes, split
from clickstream_lib.settings import Settings


@pytest.mark.parametrize(
    ("total", "workers", "want"),
    [(10, 3, [4, 3, 3]), (2, 4, [1, 1, 0, 0]), (0, 2, [0, 0]), (None, 2, [None, None]), (7, 1, [7])],
)
def test_split_is_even_and_complete(total: int | None, workers: int, want: list[int | None]) -> None:
    assert split(total, workers) == want


@pytest.mark.parametrize(
    ("total", "weights", "want"),
    [
        (10, [1.0, 1.0], [5, 5]),
        (9_000, [0.8, 0.8, 1.4], [2_400, 2_400, 4_200]),
        (10, [0.5, 0.5, 2.0], [2, 2, 6]),
        (7, [0.5, 0.5, 2.0], [1, 1, 5]),
        (None, [0.5, 1.5], [None, None]),
    ],
)
def test_split_follows_the_weights_and_is_complete(total: int | None, weights: list[float], want: list[int]) -> None:
    got = split(total, len(weights), weights)
    assert got == want
    assert total is None or sum(x for x in got if x is not None) == total


def test_combine_sums_counters_and_merges_errors() -> None:
    a = ProducerStats(
        sent=10, acked=8, failed=1, errors={"X": 1}, rate_now=5, elapsed_s=2, running=False, target_rate=50
    )
    b = ProducerStats(sent=6, acked=6, errors={"X": 2, "Y": 1}, rate_now=3, elapsed_s=3, running=True, target_rate=50)
    a, b = replace(a, acked_by_partition={0: 5, 1: 3}), replace(b, acked_by_partition={1: 4, 2: 2})
    got = combine([a, b])
    assert (got.sent, got.acked, got.failed, got.in_flight) == (16, 14, 1, 1)
    assert got.acked_by_partition == {0: 5, 1: 7, 2: 2}
    assert got.errors == {"X": 3, "Y": 1}
    assert (got.rate_now, got.elapsed_s, got.running, got.target_rate) == (8, 3, True, 100)
    assert combine([a, ProducerStats(target_rate=None)]).target_rate is None  # unlimited somewhere: no total
    # With start times, elapsed spans the first start to the last end, not the longest single run.
    early, late = replace(a, started_at=100.0, elapsed_s=2.0), replace(b, started_at=101.5, elapsed_s=3.0)
    assert combine([early, late]).elapsed_s == 4.5 and combine([early, late]).started_at == 100.0


def test_no_workers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--workers"):
        produce_in_processes(Settings.from_env({}), 0, rate=None, events=1)
