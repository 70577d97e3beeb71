"""Acceptance (issue #20): the case study's final producer, as its users run it, through our broker and sink.

The case study's last data generator sends six interaction types — open_app 40%, login 25%, then view, click,
payment_initiated and purchase — and a nested ``metadata`` with experiment_name, experiment_variation, session_id
and device_name; its dbt models count interactions, views, clicks and purchases per day by experiment and
variation (``fct_experiment``). The double below is written here, independent of the library: its message shape,
weights and JSON encoding (``json.dumps``, naive ``YYYY-MM-DD HH:MM:SS`` times) are the case study's. The issue
gives the weights of open_app and login; the other four share the remaining 35% as below.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaProducer

from clickstream_lib import queries, topics
from clickstream_lib.settings import Settings
from clickstream_lib.sink import Sink
from clickstream_lib.store import Store
from tests.integration.sink_worker import ROOT, worker_env
from tests.integration.test_queries import experiments_truth, fct_experiment

pytestmark = pytest.mark.integration

CASE_STUDY_TYPES = {
    "open_app": 0.40,
    "login": 0.25,
    "view": 0.15,
    "click": 0.10,
    "payment_initiated": 0.06,
    "purchase": 0.04,
}
EXPERIMENTS = {"checkout_flow": ("control", "variant_a", "variant_b"), "homepage_banner": ("blue", "green")}
DEVICES = ("iPhone 15", "Pixel 8", "Galaxy S24", "MacBook Pro", "Windows PC")


def case_study_messages(n: int, seed: int, now: datetime) -> list[dict[str, Any]]:
    """``n`` messages as the case study's generator makes them: uniform users and items, weighted types, an
    experiment and variation per user, a session and device per message, times over the last three days."""
    rng = random.Random(seed)
    types, weights = list(CASE_STUDY_TYPES), list(CASE_STUDY_TYPES.values())
    out = []
    for _ in range(n):
        user = rng.randrange(300)
        name = sorted(EXPERIMENTS)[user % 2]
        variations = EXPERIMENTS[name]
        ts = now - timedelta(seconds=rng.randrange(3 * 86_400))
        out.append(
            {
                "user_id": f"user_{user:04d}",
                "item_id": f"item_{rng.randrange(50):04d}",
                "interaction_type": rng.choices(types, weights)[0],
                "timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"),
                "metadata": {
                    "experiment_name": name,
                    "experiment_variation": variations[(user // 2) % len(variations)],
                    "session_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "device_name": rng.choice(DEVICES),
                },
            }
        )
    return out


def as_frame(messages: list[dict[str, Any]]) -> pd.DataFrame:
    """The sent messages as a frame, flattened in pandas (not by the library)."""
    df = pd.json_normalize(messages)
    df.columns = [c.removeprefix("metadata.") for c in df.columns]
    df["event_time"] = pd.to_datetime(df["timestamp"]).dt.tz_localize("UTC")
    return df


def test_case_study_producer_through_the_sink(settings: Settings, store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    messages = case_study_messages(3_000, seed=20, now=now)
    topics.ensure_topic(settings, settings.kafka_topic)
    producer = KafkaProducer(**topics.client_config(settings))  # a plain kafka-python producer, as the case study's
    for msg in messages:
        producer.send(settings.kafka_topic, json.dumps(msg).encode("utf-8"))
    producer.flush()
    producer.close()

    Sink(settings, store).run(until_idle=2)

    db = store.database
    assert int(store.scalar(f"SELECT count() FROM {db}.dead_letters")) == 0
    assert int(store.scalar(f"SELECT count() FROM {db}.events")) == len(messages)
    stored_types = dict(store.query_rows(f"SELECT interaction_type, count() FROM {db}.events GROUP BY 1"))
    sent = as_frame(messages)
    assert {k: int(v) for k, v in stored_types.items()} == sent["interaction_type"].value_counts().to_dict()
    assert set(stored_types) == set(CASE_STUDY_TYPES)
    # Every metadata key landed in its column: the rows stored are the rows sent.
    got = store.query_rows(
        f"SELECT user_id, item_id, interaction_type, formatDateTime(event_time, '%Y-%m-%d %H:%i:%S'), "
        f"experiment_name, experiment_variation, session_id, device, toString(properties) FROM {db}.events"
    )
    cols = ["user_id", "item_id", "interaction_type", "timestamp", "experiment_name", "experiment_variation"]
    want = [(*r, "{}") for r in sent[[*cols, "session_id", "device_name"]].itertuples(index=False, name=None)]
    assert sorted(got) == sorted(want)
    assert int(store.scalar(f"SELECT countIf(experiment_name = '' OR experiment_variation = '') FROM {db}.events")) == 0

    # The experiments query and fct_experiment against pandas on the messages as sent.
    exp = queries.experiments(store)
    truth = experiments_truth(sent)
    keys = ["experiment_name", "experiment_variation"]
    assert exp[keys].values.tolist() == truth[keys].values.tolist()
    for col in ("users", "interactions", "purchases", "purchasers"):
        assert list(exp[col].astype(int)) == list(truth[col]), col
    for col in ("conversion_rate", "diff_vs_control", "p_value"):
        assert np.allclose(exp[col].astype(float), truth[col].astype(float), equal_nan=True, rtol=1e-9), col
    for col in ("ci_low", "ci_high"):
        assert np.allclose(exp[col].astype(float), truth[col].astype(float), atol=1e-4), col
    assert list(exp["control"]) == ["control"] * 3 + ["blue"] * 2
    daily = queries.experiment_daily(store)
    want_daily = fct_experiment(sent)
    assert len(daily) == len(want_daily) >= 2 * 5  # at least two days of five variations
    assert list(pd.to_datetime(daily["day"]).dt.date) == list(want_daily["day"])
    for col in (*keys, "users", "interactions", "views", "clicks", "purchases"):
        assert list(daily[col]) == list(want_daily[col]), col
    # The case study's other facts, fct_user and fct_item, from the rollups, count every type.
    users = queries.run(store, "user_daily")
    assert int(users["interactions"].sum()) == len(messages)
    assert users.attrs["source"] == "users_by_day"
    items = queries.run(store, "item_daily")
    assert int(items["interactions"].sum()) == len(messages)
    assert int(items["purchases"].sum()) == int((sent["interaction_type"] == "purchase").sum())


def test_produce_case_study_profile_demo_shape(settings: Settings, store: Store, tmp_path: Path) -> None:
    """`clickstream produce --profile case-study` sends the case study's shape; the sink stores it all."""
    env = worker_env(settings, tmp_path / "cli")
    args = ["produce", "--profile", "case-study", "--events", "3000", "--rate", "0", "--seed", "3", "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "clickstream_lib", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    Sink(settings, store).run(until_idle=2)
    db = store.database
    assert int(store.scalar(f"SELECT count() FROM {db}.dead_letters")) == 0
    assert int(store.scalar(f"SELECT count() FROM {db}.events")) == 3_000
    types = {r[0] for r in store.query_rows(f"SELECT DISTINCT interaction_type FROM {db}.events")}
    assert types == set(CASE_STUDY_TYPES)
    exp = queries.experiments(store)
    assert len(exp) == 5 and int(exp["interactions"].sum()) == 3_000
