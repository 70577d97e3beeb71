"""What the sink checks and learns before it joins the consumer group: the store keeps deduplication on, the topic's
epoch, its partitions."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from .. import topics
from ..errors import StoreError
from ..settings import Settings
from ..store import Store

logger = logging.getLogger(__name__)

# Bytes fetched per partition per request (kafka-python's default is 1 MiB, ~2 500 events). kafka-python fetches a
# partition again only once its previous response is consumed, so a backlog costs a round trip per response; 8 MiB
# also lets a partition fill a 20 000-row batch from one response. Live traffic is unaffected: the broker answers
# with what it has.
FETCH_MAX_PARTITION_BYTES = 8 * 1024 * 1024


def check_dedup(store: Store) -> None:
    """Refuse a store whose tables would ignore the sink's deduplication tokens."""
    # Without a deduplication window the engine silently ignores insert tokens: a replayed batch would be
    # stored twice. Replicated tables use replicated_deduplication_window, which is on by default.
    for table in ("events", "dead_letters"):
        engine = store.scalar(
            "SELECT engine FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            {"db": store.database, "t": table},
        )
        if engine is None:
            raise StoreError(f"table {store.table(table)} does not exist — run the schema migrations (connect())")
        if str(engine).startswith("Replicated"):
            continue
        if store.dedup_window(table) <= 0:
            raise StoreError(
                f"{store.table(table)} has non_replicated_deduplication_window = 0, so ClickHouse would ignore "
                "the sink's deduplication tokens and a replayed batch would be stored twice — run "
                f"ALTER TABLE {store.table(table)} MODIFY SETTING non_replicated_deduplication_window = 100000"
            )


def warn_undeduplicated_views(store: Store) -> list[str]:
    """Materialized-view targets that would count a replayed batch twice; logged as a warning.

    The engine drops a replayed ``events`` block but still pushes it into the views; only a target table with
    its own deduplication window drops it there too (measured on chdb 26.9).
    """
    unsafe: list[str] = []
    views = store.query_rows(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND engine = 'MaterializedView'",
        {"db": store.database},
    )
    for (ddl,) in views:
        m = re.search(r"\bTO\s+`?(\w+)`?\.`?(\w+)`?", str(ddl))
        if not m or m.group(1) != store.database:
            continue
        target = m.group(2)
        engine = store.scalar(
            "SELECT engine FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            {"db": store.database, "t": target},
        )
        if engine and not str(engine).startswith("Replicated") and store.dedup_window(target) <= 0:
            unsafe.append(store.table(target))
    if unsafe:
        logger.warning(
            "%s have non_replicated_deduplication_window = 0: a batch replayed after a crash is dropped from "
            "events but counted again in these rollups — run ALTER TABLE <table> MODIFY SETTING "
            "non_replicated_deduplication_window = 100000 on each",
            ", ".join(sorted(set(unsafe))),
        )
    return sorted(set(unsafe))


def await_partitions(consumer: KafkaConsumer, topic: str, timeout_s: float = 15.0) -> None:
    """Wait until this consumer's metadata lists the topic's partitions (it was perhaps created a moment ago)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if consumer.partitions_for_topic(topic):
                return
        except KafkaError as exc:
            logger.debug("metadata for %s not available yet: %s", topic, exc)
        if time.monotonic() > deadline:
            logger.warning("no partition metadata for %s after %.0f s; joining the group anyway", topic, timeout_s)
            return
        time.sleep(0.2)


def topic_epoch(settings: Settings, topic: str) -> str:
    """The topic's id, shortened: names the tokens, so a re-created topic (offsets from 0 again) gets new ones."""
    try:
        with topics.admin(settings) as client:
            described = client.describe_topics([topic])
    except KafkaError as exc:
        raise topics.unreachable(settings, exc) from exc
    topic_id = str(described[0].get("topic_id") or "") if described else ""
    # Brokers older than 2.8 have no topic ids; the epoch then cannot tell a re-created topic apart.
    return topic_id.replace("-", "")[:12] or "0"


def consumer_configs(
    settings: Settings, batch_max_rows: int, *, instance_id: str | None = None, extra: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """kafka-python options of the sink's consumer, and of a consumer-group-less reader of recorded ranges."""
    cfg = topics.client_config(
        settings,
        group_id=settings.kafka_group_id,
        client_id=f"clickstream-sink-{socket.gethostname()}-{os.getpid()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch_max_rows,
        max_partition_fetch_bytes=FETCH_MAX_PARTITION_BYTES,
        check_crcs=True,
        # kafka-python 3.0 stopped returning records for partitions that were sought/paused during a rebalance
        # when incremental fetch sessions (KIP-227) were on (seen in the two-member takeover test).
        enable_incremental_fetch_sessions=False,
        # A group leader that saw no partitions for a just-created topic assigns nothing until its next metadata
        # refresh (default 5 min); refresh often enough that such a miss heals in seconds.
        metadata_max_age_ms=15_000,
    )
    if instance_id:
        cfg["group_instance_id"] = instance_id
    cfg.update(extra or {})
    # A consumer-group-less reader of recorded ranges of any partition (recovering a group insert).
    fetch_config: dict[str, Any] = {
        **{k: v for k, v in cfg.items() if k not in ("group_id", "group_instance_id", "client_id")},
        "group_id": None,
        "client_id": f"{cfg['client_id']}-rebuild",
    }
    return cfg, fetch_config
