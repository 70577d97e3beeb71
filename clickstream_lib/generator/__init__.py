"""A realistic synthetic clickstream, generated in numpy batches and deterministic under a seed.

The model, in the order a reader meets it in a dashboard:

* **Users** have a fixed device and country and a skewed activity level (a few users are much busier).
* **Sessions**: a user's visit is a run of events less than 30 minutes apart; the next visit of the same user starts
  at least 30 minutes after the previous one ended, so the "30 minutes of inactivity" rule recovers the sessions.
* **Funnel**: a session views a few items (Zipf-like popularity: a long tail), then may go on, in order, to
  ``click`` -> ``add_to_cart`` -> ``purchase`` of the last viewed item, with configurable step rates. The defaults
  (40% / 25% / 30%) make about 3% of sessions convert, near published e-commerce figures.
* **Time**: :meth:`Generator.backfill` stamps events with a simulated clock over a date range, session starts
  following a diurnal curve (peak in the evening, UTC). :meth:`Generator.batch` is the live mode (below): events
  are stamped with the wall clock when they are sent.
* **Mixes**: referrer per session, device and country per user, a price per item (in the user's currency).

Live mode: the caller sets the rate (``batch(n)`` at the moments it chooses, a producer's token bucket), the
generator keeps a schedule of running sessions in wall-clock time. Each call sends the events that are due
(earliest first, each session's think times as in backfill: 1 s to 20 min, 40 s on average); when fewer are due
than asked for, new sessions start, one per missing event, their first event now and the rest scheduled. So at a
steady rate ``R`` sessions start at ``R / L`` per second (``L`` = :attr:`Generator.mean_session_length`: their
first and later events together make ``R``) and by Little's law ``R / L * D`` run at once (``D`` =
:attr:`Generator.mean_session_duration_s`, about 100 s): at 200 events/s about 5,700 interleaved sessions.
``event_time`` is the moment of the call (never ahead of it), strictly increasing per user. The user pool bounds
this: a user has one session at a time, and the next one starts after the 30-minute timeout so that the
inactivity rule recovers the sessions; that takes ``R / L * (D + 30 min)`` users (:meth:`Generator.users_for_rate`,
about ``540 * R``). With fewer, new sessions go to the users idle longest, less than 30 minutes after their last
one (the rule then joins them; ``session_id`` still tells them apart), and when every user is in a session, events
go out ahead of their schedule (think times compressed so the rate holds). :meth:`Generator.live_stats` counts both.

Scenarios can be switched on and off between batches (:meth:`Generator.set_scenario`), and every event they
touch is labelled in :meth:`EventBatch.to_frame`'s ``scenario`` column so tests can check the pipeline's reaction:

=============  ==================================================================================================
flash_sale     a share of new sessions go straight to one item (referrer ``flash_sale``, page ``/sale/<item>``,
               boosted funnel, discounted price)
bot_burst      one user (default ``bot_0001``, device ``bot``) sends a share of all messages, views and clicks;
               with shards, one shard sends it (:func:`bot_shard`, :func:`shard_weights`)
late_events    a share of events carry an event time minutes to hours in the past
duplicates     a share of messages are re-sends of an earlier message of the batch (same ``event_id``)
malformed      a share of messages are invalid, cycling through every reason in :data:`events.REASONS`
=============  ==================================================================================================

The package's parts: :mod:`.model` (constants, tables, session shapes), :mod:`.batch` (:class:`EventBatch`),
:mod:`.schedule` (live mode's :class:`~.schedule.LiveSchedule`), :mod:`.scenarios` (shards, malformed messages),
:mod:`.case_study` (the case study's profile) and :mod:`.core` (the :class:`Generator` front).

Example:
    >>> gen = Generator(seed=42)
    >>> batch = gen.batch(10_000)
    >>> messages = batch.to_messages()        # [(key=user_id bytes, value=JSON bytes), ...]
    >>> frame = batch.to_frame()              # ground truth, columns events.FIELDS + scenario
"""

from __future__ import annotations

from .batch import EventBatch
from .case_study import (
    CASE_STUDY_DEVICES,
    CASE_STUDY_EXPERIMENTS,
    CASE_STUDY_TYPES,
    PROFILES,
    CaseStudyBatch,
    CaseStudyGenerator,
)
from .core import Generator
from .model import COUNTRIES, CURRENCIES, DEVICES, REFERRERS, SCENARIO_DEFAULTS, SCENARIOS, iso_timestamps
from .scenarios import bot_shard, shard_weights

__all__ = [
    "CASE_STUDY_DEVICES",
    "CASE_STUDY_EXPERIMENTS",
    "CASE_STUDY_TYPES",
    "COUNTRIES",
    "CURRENCIES",
    "DEVICES",
    "PROFILES",
    "REFERRERS",
    "SCENARIOS",
    "SCENARIO_DEFAULTS",
    "CaseStudyBatch",
    "CaseStudyGenerator",
    "EventBatch",
    "Generator",
    "bot_shard",
    "iso_timestamps",
    "shard_weights",
]
