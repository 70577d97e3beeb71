"""What the sink checks and learns before it joins the consumer group: the store keeps deduplication on, the topic's
epoch, its partitions."""

from __future__ import annotations

import logging
import re
import time

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from .. import topics
from ..errors import StoreError
from ..settings import Settings
from ..store import Store

logger = logging.getLogger(__name__)


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
