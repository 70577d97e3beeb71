"""The generator: determinism, wire validity, and the statistical shape (sessions, funnel, Zipf, diurnal) on 100k."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pandas as pd
import pytest

from clickstream_lib import events
from clickstream_lib.errors import ConfigError
from clickstream_lib.generator import SCENARIOS, Generator, bot_shard, iso_timestamps, shard_weights
from clickstream_lib.producer_pool import split

NOW = 1_795_946_400_000  # 2026-11-29T10:00:00Z
DAY = 86_400_000
FUNNEL = {name: i for i, name in enumerate(events.INTERACTION_TYPES)}


@pytest.fixture(scope="module")
def week() -> pd.DataFrame:
    """100k events of a simulated week: the ground the statistical tests stand on."""
    return Generator(seed=11).backfill(NOW - 7 * DAY, NOW, 100_000).to_frame()


def test_same_seed_same_events_other_seed_others() -> None:
    def run(seed: int) -> list[tuple[bytes, bytes]]:
        gen = Generator(seed=seed)
        gen.set_scenario("malformed", share=0.02)
        gen.set_scenario("duplicates")
        out = gen.batch(3_000, now_ms=NOW).to_messages() + gen.batch(2_000, now_ms=NOW + 500).to_messages()
        return out + gen.backfill(NOW - DAY, NOW, 2_000).to_messages()

    first = run(5)
    assert first == run(5)
    other = run(6)
    assert len(other) == len(first) and other != first
    assert len({v for _, v in first}) > 0.9 * len(first)  # not one message repeated


def test_every_message_validates_against_the_schema_and_parses() -> None:
    gen = Generator(seed=3)
    batch = gen.batch(5_000, now_ms=NOW)
    validator = jsonschema.Draft202012Validator(events.json_schema())
    dicts = batch.to_dicts()
    frame = batch.to_frame()
    assert len(batch) == len(dicts) == len(frame) == 5_000
    for (key, value), wire, row in zip(batch.to_messages(), dicts, frame.itertuples(index=False), strict=True):
        obj = orjson.loads(value)
        assert obj == wire
        # The default profile sends no experiment and no other properties.
        without = {"experiment_name", "experiment_variation", "properties"}
        assert set(obj) == {"timestamp" if f == "timestamp_ms" else f for f in events.FIELDS} - without
        validator.validate(obj)
        parsed = events.parse(value, reference_ms=NOW)
        assert not isinstance(parsed, events.Rejection), parsed
        assert key == obj["user_id"].encode()  # key = user id: per-user order in one partition
        assert parsed == {f: getattr(row, f) for f in events.FIELDS}  # to_frame is parse's normal form


def test_frame_columns_and_types() -> None:
    frame = Generator(seed=1).batch(500, now_ms=NOW).to_frame()
    assert list(frame.columns) == [*events.FIELDS, "scenario"]
    assert frame["event_id"].is_unique
    assert frame["timestamp_ms"].dtype == np.int64
    purchases = frame[frame.interaction_type == "purchase"]
    others = frame[frame.interaction_type != "purchase"]
    assert (others.price == 0.0).all() and (others.currency == "").all()
    if len(purchases):
        assert (purchases.price > 0).all() and purchases.currency.str.fullmatch("[A-Z]{3}").all()


def test_sessions_follow_the_30_minute_rule(week: pd.DataFrame) -> None:
    df = week.sort_values(["user_id", "timestamp_ms"], kind="stable")
    gap = df.groupby("user_id")["timestamp_ms"].diff()
    same_session = df["session_id"].eq(df.groupby("user_id")["session_id"].shift())
    has_prev = gap.notna()
    timeout = 30 * 60 * 1000
    # Sessionising by "a new session after 30 minutes of inactivity" gives back exactly the generator's sessions.
    assert (gap[has_prev & same_session] < timeout).all()
    assert (gap[has_prev & ~same_session] > timeout).all()
    assert df.groupby("session_id")["user_id"].nunique().max() == 1
    sessions = df["session_id"].nunique()
    per_session = len(df) / sessions
    assert 3.0 < per_session < 5.5  # 3 views + funnel steps on average
    assert (df.groupby("user_id")["session_id"].nunique() > 1).sum() > 1_000  # users come back


def test_funnel_is_ordered_and_converts_a_few_percent(week: pd.DataFrame) -> None:
    df = week.sort_values(["session_id", "timestamp_ms"], kind="stable")
    step = df["interaction_type"].map(FUNNEL)
    # In every session: views first, then click -> add_to_cart -> purchase, each at most once, in that order.
    prev = step.groupby(df["session_id"]).shift()
    assert (step[prev.notna()] >= prev[prev.notna()]).all()
    funnel_rows = df[step > 0]
    assert not funnel_rows.duplicated(["session_id", "interaction_type"]).any()
    depth = step.groupby(df["session_id"]).max()
    reached = {name: (depth >= i).mean() for name, i in FUNNEL.items()}
    # Steps are consecutive: a purchase implies a cart, which implies a click.
    for i in (2, 3):
        sessions_i = set(depth[depth >= i].index)
        with_prev = set(df.loc[step == i - 1, "session_id"])
        assert sessions_i <= with_prev
    gen = Generator(seed=11)
    assert reached["view"] == 1.0
    assert reached["click"] == pytest.approx(gen.funnel_rates[0], abs=0.03)
    assert reached["add_to_cart"] / reached["click"] == pytest.approx(gen.funnel_rates[1], abs=0.03)
    assert 0.01 < reached["purchase"] < 0.06  # "a few percent of sessions convert"
    assert reached["purchase"] == pytest.approx(gen.conversion_rate, rel=0.3)
    # The funnel's item is the session's last viewed item.
    last_view = df[step == 0].groupby("session_id")["item_id"].last()
    buys = df[step == 3].set_index("session_id")["item_id"]
    assert (buys == last_view.reindex(buys.index)).all()


def test_item_popularity_is_zipf_like(week: pd.DataFrame) -> None:
    views = week.loc[week.interaction_type == "view", "item_id"].value_counts().to_numpy()
    ranks = np.arange(1, 101)
    slope = np.polyfit(np.log(ranks), np.log(views[:100]), 1)[0]
    assert -1.35 < slope < -0.85  # Zipf exponent 1.1 by default
    top10 = views[: len(views) // 10].sum() / views.sum()
    assert top10 > 0.5  # a long tail: the top 10% of items get most views
    assert week["item_id"].nunique() > 500  # ... and the tail is there


def test_diurnal_curve_and_time_range(week: pd.DataFrame) -> None:
    ts = week["timestamp_ms"]
    assert ts.between(NOW - 7 * DAY, NOW - 1).all()
    assert ts.is_monotonic_increasing
    hours = ((ts % DAY) // 3_600_000).value_counts()
    assert hours.idxmax() in range(17, 24)  # evening peak (UTC)
    assert hours.max() > 2.5 * hours.min()


def test_mixes_and_prices(week: pd.DataFrame) -> None:
    assert set(week.device) == {"mobile", "desktop", "tablet"}
    assert week.device.value_counts(normalize=True)["mobile"] == pytest.approx(0.58, abs=0.08)
    assert week.groupby("user_id").device.nunique().max() == 1  # a user keeps their device
    assert set(week.referrer) <= {"direct", "search", "social", "email", "ads"}
    assert week.country.nunique() >= 10
    purchases = week[week.interaction_type == "purchase"]
    assert len(purchases) > 100
    eur = purchases[purchases.currency == "EUR"]
    assert set(eur.country) <= {"DE", "FR", "ES", "IT", "NL"}
    assert (purchases.price > 0).all()


def _rule_sessions(frame: pd.DataFrame, gap_ms: int = 1_800_000) -> pd.DataFrame:
    """Sessions as the sessions query cuts them: a user's run of events with no gap over 30 minutes."""
    df = frame.sort_values(["user_id", "timestamp_ms"], kind="stable")
    ts, user = df.timestamp_ms.to_numpy(), df.user_id.to_numpy()
    new = np.ones(len(df), dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (np.diff(ts) > gap_ms)
    times = pd.Series(ts).groupby(np.cumsum(new))
    return pd.DataFrame({"events": times.size(), "duration_ms": times.max() - times.min()})


def _live(gen: Generator, rate: int, seconds: int, step_ms: int = 1_000) -> pd.DataFrame:
    """``rate`` events/s for ``seconds``, one call every ``step_ms`` (as a producer's token bucket would pace it)."""
    k = rate * step_ms // 1000
    frames = []
    for i in range(seconds * 1000 // step_ms):
        now = NOW + i * step_ms
        frame = gen.batch(k, now_ms=now).to_frame()
        assert len(frame) == k  # the rate asked for
        # Stamped when sent: ``now``, or a millisecond or so before for a user with two events in one call.
        assert frame.timestamp_ms.max() == now and frame.timestamp_ms.min() > now - 100
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_live_sessions_interleave_with_backfill_think_times(week: pd.DataFrame) -> None:
    rate = 40
    gen = Generator(seed=6, n_users=25_000)
    assert gen.users_for_rate(rate) < 25_000  # enough users for every session to be 30 minutes from the next
    live = _live(gen, rate, 45 * 60)
    stats = gen.live_stats()
    assert stats["early_sessions"] == 0 and stats["ahead"] == 0  # nothing had to give

    # Concurrency follows from the rate and the session length (Little's law): ~1,100 sessions at 40 events/s.
    expected = gen.live_sessions_for_rate(rate)
    assert 900 < expected < 1_300
    assert stats["active_sessions"] == pytest.approx(expected, rel=0.25)
    # ... and shows in the data: in the last ten minutes, most seconds carry events of many different sessions,
    # whose spans overlap.
    spans = live.groupby("session_id").timestamp_ms.agg(["min", "max"])
    t = NOW + 40 * 60_000
    assert ((spans["min"] <= t) & (spans["max"] >= t)).sum() > 300

    # The 30-minute rule gives back exactly the generated sessions, with the backfill's think times.
    ours = _rule_sessions(live)
    assert len(ours) == live.session_id.nunique()
    theirs = _rule_sessions(week)
    assert ours.duration_ms.median() == pytest.approx(theirs.duration_ms.median(), rel=0.25)  # about a minute
    assert 30_000 < ours.duration_ms.median() < 120_000
    assert ours.duration_ms.mean() == pytest.approx(gen.mean_session_duration_s * 1000, rel=0.2)
    assert (ours.events == 1).mean() == pytest.approx((theirs.events == 1).mean(), abs=0.05)  # bounce rate
    assert ours.events.mean() == pytest.approx(theirs.events.mean(), rel=0.1)

    # Per user, event times only go forward, and funnels stay in order.
    assert live.groupby("user_id").timestamp_ms.apply(lambda s: s.is_monotonic_increasing and s.is_unique).all()
    step = live.interaction_type.map(FUNNEL)
    prev = step.groupby(live.session_id).shift()
    assert (step[prev.notna()] >= prev[prev.notna()]).all()


def test_live_mode_with_too_few_users_keeps_the_rate() -> None:
    """More traffic than the users can make with real think times: sessions come closer, then compress."""
    gen = Generator(seed=4, n_users=200)
    frames = [gen.batch(2_000, now_ms=NOW + i * 1000).to_frame() for i in range(3)]
    for i, frame in enumerate(frames):
        assert len(frame) == 2_000
        assert frame.timestamp_ms.max() == NOW + i * 1000  # never ahead of the call
        assert frame.timestamp_ms.min() > NOW - 60_000
    df = pd.concat(frames, ignore_index=True)
    # Emission order is time order per user, strictly: funnels stay ordered in event time.
    assert df.groupby("user_id").timestamp_ms.apply(lambda s: s.is_monotonic_increasing and s.is_unique).all()
    step = df.interaction_type.map(FUNNEL)
    prev = step.groupby(df.session_id).shift()
    assert (step[prev.notna()] >= prev[prev.notna()]).all()
    stats = gen.live_stats()
    assert stats["active_sessions"] <= 200 and stats["early_sessions"] > 0 and stats["ahead"] > 0


def test_live_event_ids_do_not_depend_on_the_clock() -> None:
    """How many sessions a call starts follows the wall clock; the event ids and scenario draws must not."""

    def run(step_ms: int) -> tuple[list[str], dict[str, int]]:
        gen = Generator(seed=12, n_users=500)
        for name in ("duplicates", "flash_sale", "late_events", "malformed"):
            gen.set_scenario(name)
        batches = [gen.batch(k, now_ms=NOW + i * step_ms) for i, k in enumerate([300, 50, 700, 1, 400])]
        ids = [e for b in batches for e in b.to_frame().event_id]
        return ids, {k: sum(b.scenario_counts().get(k, 0) for b in batches) for k in ("duplicates", "malformed")}

    fast, slow = run(5), run(60_000)
    assert fast == slow


def test_scenarios_are_labelled_and_switch_off() -> None:
    gen = Generator(seed=9)
    plain = gen.batch(20_000, now_ms=NOW).to_frame()
    assert set(plain.scenario) == {""}
    for name in SCENARIOS:
        gen.set_scenario(name)
    assert set(gen.scenarios()) == set(SCENARIOS)
    batch = gen.batch(40_000, now_ms=NOW + 1000)
    frame = batch.to_frame()
    counts = batch.scenario_counts()
    assert set(counts) == {"", *SCENARIOS}
    assert len(batch) == 40_000 == len(frame) + counts["malformed"]

    sale_item = gen.scenarios()["flash_sale"]["item"]
    sale = frame[frame.scenario == "flash_sale"]
    assert (sale.referrer == "flash_sale").all()
    assert (frame.item_id == sale_item).mean() > 20 * (plain.item_id == sale_item).mean()  # one item spikes
    assert (frame.item_id == sale_item).mean() > 0.05

    bots = frame[frame.scenario == "bot_burst"]
    assert set(bots.user_id) == {"bot_0001"} and set(bots.device) == {"bot"}
    assert len(bots) / len(batch) == pytest.approx(0.2, abs=0.02)
    assert frame.user_id.value_counts().index[0] == "bot_0001"

    late = frame[frame.scenario == "late_events"]
    delay = (NOW + 1000) - late.timestamp_ms
    assert len(late) > 0.02 * len(frame)
    assert delay.min() >= 110_000 and delay.max() <= 6 * 3600 * 1000 + 5_000  # minutes to hours

    dups = frame[frame.scenario == "duplicates"]
    assert len(dups) / len(batch) == pytest.approx(0.02, abs=0.01)
    first_pos = {eid: i for i, eid in reversed(list(enumerate(frame.event_id)))}
    for i, row in zip(dups.index, dups.itertuples(index=False), strict=True):
        original = frame.loc[first_pos[row.event_id]]
        assert first_pos[row.event_id] < i and original.scenario != "duplicates"
        assert original.drop("scenario").equals(pd.Series(row._asdict()).drop("scenario"))
    assert frame.event_id.nunique() == len(frame) - len(dups)

    gen.set_scenario("bot_burst", on=False)
    gen.set_scenario("malformed", on=False)
    after = gen.batch(5_000, now_ms=NOW + 2000)
    assert "bot_burst" not in after.scenario_counts() and not after.malformed


def test_malformed_messages_cover_every_reason() -> None:
    gen = Generator(seed=2)
    gen.set_scenario("malformed", share=0.5)
    batch = gen.batch(200, now_ms=NOW)
    expected = [reason for _, _, reason in batch.malformed]
    assert set(expected) == set(events.REASONS)
    got: list[str] = []
    for key, value in batch.to_messages():
        result = events.parse(value, reference_ms=NOW)
        if isinstance(result, events.Rejection):
            got.append(result.reason)
            assert key  # malformed messages still carry a key
    assert got == expected  # in message order, each with its documented reason
    assert batch.n_valid + len(batch.malformed) == len(batch) == 200


def test_set_scenario_rejects_unknown_names_and_params() -> None:
    gen = Generator(seed=1)
    with pytest.raises(ConfigError, match="not a scenario"):
        gen.set_scenario("earthquake")
    with pytest.raises(ConfigError, match="not a parameter"):
        gen.set_scenario("bot_burst", speed=3)
    with pytest.raises(ConfigError, match="share"):
        gen.set_scenario("duplicates", share=1.5)
    with pytest.raises(ConfigError, match="catalogue"):
        gen.set_scenario("flash_sale", item="item_9999")
    with pytest.raises(ConfigError, match="user id"):
        gen.set_scenario("bot_burst", user='bad"name')
    gen.set_scenario("flash_sale", item="item_0007", share=0.5)
    assert gen.scenarios()["flash_sale"]["item"] == "item_0007"


def test_backfill_exact_count_and_small_sizes() -> None:
    gen = Generator(seed=8, n_users=50, n_items=20)
    for n in (0, 1, 7, 500):
        batch = gen.backfill(NOW - DAY, NOW, n)
        assert len(batch) == n == len(batch.to_messages())
    assert len(gen.batch(0, now_ms=NOW)) == 0
    assert gen.batch(0, now_ms=NOW).to_messages() == []


def test_write_jsonl_one_message_per_line() -> None:
    gen = Generator(seed=5)
    gen.set_scenario("malformed", share=0.1)
    batch = gen.batch(1_000, now_ms=NOW)
    buf = io.BytesIO()
    written = batch.write_jsonl(buf)
    lines = buf.getvalue().splitlines()
    assert written == len(buf.getvalue()) and len(lines) == 1_000
    reasons = Counter(
        r.reason for r in (events.parse(line, reference_ms=NOW) for line in lines) if isinstance(r, events.Rejection)
    )
    assert sum(reasons.values()) == len(batch.malformed)


def test_iso_timestamps_match_format_timestamp() -> None:
    rng = np.random.default_rng(0)
    dense = NOW + rng.integers(0, 2_000, 1_000)  # one or two seconds: the dense-table path
    sparse = NOW + rng.integers(-400 * DAY, DAY, 1_000)  # a year: the sorted path
    for ts in (dense, sparse):
        assert iso_timestamps(ts) == [events.format_timestamp(int(t)) for t in ts]


def test_shards_split_the_users_and_share_catalogue_and_prices() -> None:
    """Producer processes use one shard each: disjoint users, the same items, prices and user attributes."""
    whole = Generator(seed=4, n_users=600).backfill(NOW - DAY, NOW, 30_000).to_frame()
    parts = [Generator(seed=4, n_users=600, shard=(i, 3)).backfill(NOW - DAY, NOW, 10_000).to_frame() for i in range(3)]
    number = {u: i for i, u in enumerate(Generator(seed=4, n_users=600).users)}
    users = [set(p["user_id"]) for p in parts]
    for i, part_users in enumerate(users):
        assert part_users and {number[u] % 3 for u in part_users} == {i}
    assert set.union(*users) <= set(number) and len(set.union(*users)) > 500  # nearly every user is active

    # One catalogue: an item costs the same in a currency whichever shard sells it, as in the unsharded generator.
    def prices(frame: pd.DataFrame) -> dict[tuple[str, str], set[float]]:
        bought = frame[frame["interaction_type"] == "purchase"]
        by_item: dict[tuple[str, str], set[float]] = bought.groupby(["item_id", "currency"])["price"].agg(set).to_dict()
        return by_item

    merged: dict[tuple[str, str], set[float]] = {}
    for p in parts:
        for key, value in prices(p).items():
            merged.setdefault(key, set()).update(value)
    reference = prices(whole)
    assert all(len(v) == 1 for v in merged.values())
    assert all(merged[k] == reference[k] for k in merged.keys() & reference.keys())
    # A user's device and country do not depend on the shard.
    attrs = whole.groupby("user_id")[["device", "country"]].first()
    for p in parts:
        got = p.groupby("user_id")[["device", "country"]].first()
        common = got.index.intersection(attrs.index)
        assert len(common) > 50 and got.loc[common].equals(attrs.loc[common])
    # Deterministic per shard; shards are not copies of each other.
    again = Generator(seed=4, n_users=600, shard=(1, 3)).backfill(NOW - DAY, NOW, 10_000).to_frame()
    assert again["event_id"].tolist() == parts[1]["event_id"].tolist()
    assert not set(parts[0]["event_id"]) & set(parts[1]["event_id"])


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_bot_burst_totals_do_not_depend_on_the_number_of_shards(workers: int) -> None:
    """One shard sends the bot, carrying its share of all messages: one bot session, the same totals as with one
    process, and the same human traffic in every shard."""
    scenarios = [("bot_burst", {"share": 0.2})]
    parts = split(30_000, workers, shard_weights(workers, scenarios))
    bots, humans, bot_sessions, senders = 0, [], set(), set()
    for i, n in enumerate(parts):
        assert n is not None
        gen = Generator(seed=3, n_users=900, shard=(i, workers))
        gen.set_scenario("bot_burst", share=0.2)
        frame = pd.concat([gen.batch(min(700, n - j), now_ms=NOW + j).to_frame() for j in range(0, n, 700)])
        bot = frame[frame.scenario == "bot_burst"]
        bots += len(bot)
        humans.append(len(frame) - len(bot))
        bot_sessions |= set(bot.session_id)
        senders |= {i} if len(bot) else set()
    assert bots == 6_000  # 20% of 30,000, as one process sends
    assert humans == [24_000 // workers] * workers
    assert len(bot_sessions) == 1 and senders == {bot_shard("bot_0001", workers)}


def test_bot_burst_share_too_large_for_the_shards_is_a_config_error() -> None:
    owner = bot_shard("bot_0001", 20)
    gen = Generator(seed=1, n_users=600, shard=(owner, 20))
    with pytest.raises(ConfigError, match="fewer workers"):
        gen.set_scenario("bot_burst", share=0.4)  # 0.4 of all from one of 20 shards: 93% of that shard's messages
    Generator(seed=1, n_users=600, shard=((owner + 1) % 20, 20)).set_scenario("bot_burst", share=0.4)  # sends none


@pytest.mark.parametrize("shard", [(3, 3), (-1, 2), (0, 0), (0, 601)])
def test_a_bad_shard_is_a_config_error(shard: tuple[int, int]) -> None:
    with pytest.raises(ConfigError, match="shard"):
        Generator(seed=1, n_users=600, shard=shard)


def test_case_study_profile_has_its_types_weights_and_metadata() -> None:
    from clickstream_lib.generator import CASE_STUDY_EXPERIMENTS, CASE_STUDY_TYPES, CaseStudyGenerator

    gen = CaseStudyGenerator(seed=4)
    batch = gen.batch(20_000, now_ms=NOW)
    validator = jsonschema.Draft202012Validator(events.json_schema())
    frame = batch.to_frame()
    assert list(frame.columns) == list(events.FIELDS)
    for (key, value), row in zip(batch.to_messages(), frame.itertuples(index=False), strict=True):
        obj = orjson.loads(value)
        validator.validate(obj)
        assert set(obj) == {"user_id", "item_id", "interaction_type", "timestamp", "metadata"}
        assert set(obj["metadata"]) == {"experiment_name", "experiment_variation", "session_id", "device_name"}
        assert key == obj["user_id"].encode()
        parsed = events.parse(value, reference_ms=NOW)
        assert not isinstance(parsed, events.Rejection), parsed
        assert parsed == {f: getattr(row, f) for f in events.FIELDS}
    shares = frame["interaction_type"].value_counts(normalize=True)
    for itype, weight in CASE_STUDY_TYPES.items():
        assert abs(shares[itype] - weight) < 0.015, itype
    assert frame["user_id"].str.fullmatch(r"user_\d{4}").all() and frame["item_id"].nunique() == 50
    # One experiment and variation per user, every variation in use.
    per_user = frame.groupby("user_id")[["experiment_name", "experiment_variation"]].nunique()
    assert (per_user == 1).all().all()
    pairs = set(zip(frame["experiment_name"], frame["experiment_variation"], strict=True))
    assert pairs == {(e, v) for e, vs in CASE_STUDY_EXPERIMENTS.items() for v in vs}
    # Deterministic under a seed; a backfill spreads times in order.
    assert (
        CaseStudyGenerator(seed=4).batch(100, now_ms=NOW).to_messages()
        == CaseStudyGenerator(seed=4).batch(100, now_ms=NOW).to_messages()
    )
    times = gen.backfill(NOW - DAY, NOW, 1_000).to_frame()["timestamp_ms"]
    assert times.is_monotonic_increasing and times.min() >= NOW - DAY and times.max() < NOW


def test_cli_generate_case_study_profile(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "case.jsonl"
    args = ["generate", "--profile", "case-study", "--events", "500", "--out", str(out), "--seed", "1"]
    subprocess.run(
        [sys.executable, "-m", "clickstream_lib", *args],
        check=True,
        capture_output=True,
        timeout=120,
    )
    lines = out.read_bytes().splitlines()
    assert len(lines) == 500
    assert {orjson.loads(x)["interaction_type"] for x in lines} >= {"open_app", "login", "view"}
    assert all(not isinstance(events.parse(x), events.Rejection) for x in lines)
