"""The chaos campaign's schedule (bench/chaos.py), without services: balanced rounds, drawn from the seed alone,
spread over the fault phase so that each fault's hold fits in its slot."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from chaos import FAULTS, LANES, START_JITTER, Ranges, default_rounds, plan, replay_args  # noqa: E402


def test_every_kind_comes_once_per_round_in_a_seeded_order() -> None:
    schedule = plan(1, list(FAULTS), 5, 600)
    assert set(schedule) == set(LANES)
    counts = collections.Counter(p.kind for planned in schedule.values() for p in planned)
    assert counts == {k: 5 for k in FAULTS}
    for lane, planned in schedule.items():
        for r in range(5):
            assert sorted(p.kind for p in planned if p.round == r) == sorted(LANES[lane])
        assert [p.index for p in planned] == list(range(len(planned)))
    # Shuffled, not fixed: across the lanes' rounds more than one order shows up.
    orders = {tuple(p.kind for p in schedule["sink"] if p.round == r) for r in range(5)}
    orders |= {tuple(p.kind for p in schedule["store"] if p.round == r) for r in range(5)}
    assert len(orders) > 2


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert plan(7, list(FAULTS), 5, 600) == plan(7, list(FAULTS), 5, 600)
    assert plan(7, list(FAULTS), 5, 600) != plan(8, list(FAULTS), 5, 600)


def test_faults_are_spread_over_the_phase_with_room_for_their_holds() -> None:
    phase = 600.0
    schedule = plan(3, list(FAULTS), 5, phase)
    longest = {k: hi for k, (_, hi) in Ranges().durations.items()}
    for lane, planned in schedule.items():
        slot = phase / len(planned)
        for p in planned:
            assert p.index * slot <= p.at <= (p.index + START_JITTER) * slot
            # The hold (where it has a range) ends before the next slot begins.
            assert p.at + longest.get(p.kind, 0.0) <= (p.index + 1) * slot, (lane, p)
        assert planned[-1].at < phase


def test_a_subset_of_kinds_keeps_only_their_lanes() -> None:
    schedule = plan(2, ["kill_sink", "poison"], 3, 120)
    assert set(schedule) == {"sink", "clients"}
    assert [p.kind for p in schedule["sink"]] == ["kill_sink"] * 3


def test_rounds_default_to_one_per_two_minutes() -> None:
    assert [default_rounds(m) for m in (1, 2, 3, 10, 11)] == [1, 1, 1, 5, 5]


def test_the_replay_command_keeps_the_schedule_and_drops_where_output_went() -> None:
    argv = ["--minutes", "10", "--report", "r.json", "--rate", "5000", "--keep", "--work-dir=/tmp/x", "--seed", "4"]
    assert replay_args(argv, 4) == ["--minutes", "10", "--rate", "5000", "--seed", "4"]
    assert replay_args(["--rounds", "2"], 9) == ["--rounds", "2", "--seed", "9"]
