"""Reconciliation: does every message Kafka holds appear in the store exactly once?

Per partition of the topic it sets Kafka's side — log start and high watermark (what the broker holds), the sink
group's committed offset — against the store's (:func:`clickstream_lib.queries.reconcile`): rows stored, dead
letters, duplicate event ids, and the distinct offsets stored. A partition balances when every offset from log start
to high watermark is stored once, as an event or a dead letter (``missing == 0``), no event id is stored twice, and
the group has committed up to the high watermark. When the generator is ours, the producer's acknowledged count per
partition (``producer_acked``, from the broker's answers to its sends) stands next to what Kafka and the store hold
there. It is the first thing to check when numbers look wrong.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w
import pandas as pd

from .. import queries, topics
from ..errors import BrokerUnavailable, ClickstreamError
from ..settings import Settings
from ..store import Store

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "partition",
    "log_start",
    "high_watermark",
    "committed",
    "rows_stored",
    "dead_letters",
    "duplicates",
    "missing",
    "lag",
    "balanced",
)


def kafka_offsets(settings: Settings, topic: str) -> pd.DataFrame:
    """Per partition of ``topic``: log_start, high_watermark, and the sink group's committed offset (None when the
    group has committed nothing there). Reads with a client that does not join the group.

    Raises:
        BrokerUnavailable: Kafka is not reachable (the message names the setting).
    """
    from kafka import KafkaConsumer, TopicPartition

    try:
        consumer = KafkaConsumer(
            **topics.client_config(settings), group_id=settings.kafka_group_id, enable_auto_commit=False
        )
    except Exception as exc:
        raise BrokerUnavailable(
            f"Kafka not reachable at {settings.kafka_broker_url} ({type(exc).__name__}) — start it with "
            "`clickstream stack up` or set KAFKA_BROKER_URL"
        ) from exc
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        start = consumer.beginning_offsets(tps) if tps else {}
        end = consumer.end_offsets(tps) if tps else {}
        rows = [
            {
                "partition": tp.partition,
                "log_start": int(start[tp]),
                "high_watermark": int(end[tp]),
                "committed": consumer.committed(tp),
            }
            for tp in tps
        ]
    finally:
        consumer.close(autocommit=False)
    return pd.DataFrame(rows, columns=["partition", "log_start", "high_watermark", "committed"])


def reconcile(
    store: Store, settings: Settings, topic: str | None = None, acked: Mapping[Any, int] | None = None
) -> pd.DataFrame:
    """Kafka's side and the store's per partition of ``topic`` (default: the settings' topic); see the module doc.

    Columns: :data:`COLUMNS`, with ``producer_acked`` after ``high_watermark`` when ``acked`` (messages the producer
    had acknowledged, by partition) is given. ``missing`` is the offsets Kafka holds that the store has neither as an
    event nor as a dead letter (negative: the store holds offsets the log no longer has, e.g. after retention
    deleted them); ``lag`` is high watermark minus committed offset.
    """
    topic = topic or settings.kafka_topic
    kafka = kafka_offsets(settings, topic)
    stored = queries.reconcile(store, topic=topic)
    stored = stored.drop(columns=["topic"]).astype({"partition": "int64"})
    df = kafka.merge(stored, on="partition", how="outer").sort_values("partition").reset_index(drop=True)
    for col in ("log_start", "high_watermark", "rows_stored", "dead_letters", "duplicates", "offsets_stored"):
        df[col] = df[col].fillna(0).astype("int64")
    # Offsets before the log start are not Kafka's any more; count only the stored ones Kafka still holds.
    df["missing"] = df["high_watermark"] - df["log_start"] - df["offsets_stored"]
    committed = pd.to_numeric(df["committed"], errors="coerce")
    df["lag"] = (df["high_watermark"] - committed.fillna(df["log_start"])).astype("int64")
    df["committed"] = committed.astype("Int64")
    df["balanced"] = (df["missing"] == 0) & (df["duplicates"] == 0) & (df["lag"] == 0)
    df.attrs["topic"] = topic
    columns = list(COLUMNS)
    if acked is not None:
        by_partition = {int(p): int(n) for p, n in acked.items()}  # keys arrive as strings over a served store
        df["producer_acked"] = df["partition"].map(lambda p: by_partition.get(int(p), 0)).astype("int64")
        columns.insert(columns.index("high_watermark") + 1, "producer_acked")
    return df[columns]


def totals(df: pd.DataFrame, produced: int | None = None) -> dict[str, Any]:
    """The whole topic in one line: messages in Kafka, rows stored, dead letters, duplicates, missing, and — when the
    generator is ours — what the producer had acknowledged (``produced``; default: the sum of ``producer_acked``
    when the frame has it) and the difference to Kafka."""
    if produced is None and "producer_acked" in df.columns:
        produced = int(df["producer_acked"].sum())
    out: dict[str, Any] = {
        "in_kafka": int((df["high_watermark"] - df["log_start"]).sum()),
        "rows_stored": int(df["rows_stored"].sum()),
        "dead_letters": int(df["dead_letters"].sum()),
        "duplicates": int(df["duplicates"].sum()),
        "missing": int(df["missing"].sum()),
        "lag": int(df["lag"].sum()),
    }
    if produced is not None:
        out["producer_acked"] = int(produced)
        out["acked_not_in_kafka"] = int(produced) - out["in_kafka"]
    out["balanced"] = bool(df["balanced"].all()) and out.get("acked_not_in_kafka", 0) == 0
    return out


def producer_acks(stats: Mapping[str, Any] | None) -> Mapping[Any, int] | int | None:
    """What a pipeline's :meth:`~clickstream_lib.pipeline.Pipeline.stats` say its producer acknowledged: by partition,
    or the total from an owner that does not count by partition; None without a pipeline."""
    if stats is None:
        return None
    by_partition = stats.get("acked_by_partition")
    if isinstance(by_partition, Mapping):
        return by_partition
    return int(stats.get("acked") or 0)


def reconcile_html(df: pd.DataFrame, summary: Mapping[str, Any]) -> str:
    """The table and the summary line, with ``data-reconcile`` hooks (per key of ``summary``)."""
    from .base import format_number, table_html

    verdict = "balanced" if summary.get("balanced") else "does not balance"
    parts = [
        f'{html.escape(k.replace("_", " "))}: <b data-reconcile="{html.escape(k)}">{format_number(v)}</b>'
        for k, v in summary.items()
        if k != "balanced"
    ]
    head = (
        f'<div class="cs-status"><b>Reconciliation</b> · <b data-reconcile="verdict">{verdict}</b> · '
        + " · ".join(parts)
        + "</div>"
    )
    return head + table_html(df.astype({"balanced": str}), "reconcile", max_rows=100)


class ReconcilePanel:
    """The reconciliation table as a widget; :meth:`refresh` re-reads Kafka and the store (never raises).

    Args:
        store: the open store.
        settings: Kafka and the topic.
        produced: returns what the producer acknowledged when the generator is ours — by partition (e.g.
            :func:`producer_acks` of the pipeline's stats) or a total — or None.
    """

    def __init__(
        self, store: Store, settings: Settings, produced: Callable[[], Mapping[Any, int] | int | None] | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.produced = produced
        self.frame: pd.DataFrame | None = None
        self.summary: dict[str, Any] = {}
        self.widget = w.HTML("")
        self.widget.add_class("cs-reconcile")

    def refresh(self) -> None:
        try:
            acked = self.produced() if self.produced else None
            by_partition = acked if isinstance(acked, Mapping) else None
            self.frame = reconcile(self.store, self.settings, acked=by_partition)
            self.summary = totals(self.frame, acked if isinstance(acked, int) else None)
            self.widget.value = reconcile_html(self.frame, self.summary)
        except ClickstreamError as exc:
            logger.warning("reconciliation failed: %s", exc)
            self.widget.value = f'<div class="cs-status" data-reconcile="error">{html.escape(str(exc))}</div>'
