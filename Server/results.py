"""Predictions and alerts from Kafka into MongoDB; offsets are committed only after MongoDB has them.

A crash before the commit makes Kafka redeliver the batch; the inserts are
keyed by reading id, so the repeat changes nothing. A message that is not a
valid result, or that MongoDB refuses, is kept in the rejections collection
and the dead-letter topic (:class:`pipeline.batch.BatchLoop` decides that, and
retries while MongoDB is away).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, Message, Producer

from pipeline import contract
from pipeline.batch import Attempt, BatchLoop, DeadLetters, Failure, KafkaSource
from pipeline.health import Dependency
from pipeline.kafka import consumer_config
from Server import metrics
from Server.aggregates import Aggregator
from Server.ingest import RETRYABLE
from Server.settings import Settings
from Server.store import TRANSIENT, Store, WriteNotConfirmed

logger = logging.getLogger(__name__)

BATCH_MAX = 1000
MIN_WAIT_MS = 10
#: Which collection a result goes to, and its label in pipeline_results_stored_total.
_KINDS = {
    contract.COLLECTION_PREDICTIONS: "prediction",
    contract.COLLECTION_PREDICTION_ERRORS: "prediction_error",
    contract.COLLECTION_ALERTS: "alert",
}


@dataclass(frozen=True)
class Parsed:
    """A message from the results or alerts topic as the MongoDB document it becomes."""

    collection: str
    document: dict[str, Any]


def parse(raw: bytes, is_alert: bool) -> Parsed:
    """A message from the alerts topic (``is_alert``) or the results topic as its document.

    Raises :class:`contract.ContractError` for anything else (tests/unit/test_fuzz.py).
    """
    if is_alert:
        return Parsed(contract.COLLECTION_ALERTS, contract.parse_alert(raw).to_document())
    result = contract.parse_result(raw)
    if isinstance(result, contract.Prediction):
        return Parsed(contract.COLLECTION_PREDICTIONS, result.to_document())
    return Parsed(contract.COLLECTION_PREDICTION_ERRORS, result.to_document())


class ResultsSink:
    """Consumes the results and alerts topics and stores predictions, prediction errors and alerts."""

    what = "store predictions"

    # The same collaborators as Server.ingest.Bridge's: Server.__main__ wires both from one set.
    def __init__(
        self,
        settings: Settings,
        store: Store,
        producer: Producer,
        stop: threading.Event,
        aggregator: Aggregator | None = None,
        kafka: Dependency | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.settings = settings
        self.store = store
        self.mongo = Dependency("mongodb")
        consumer = Consumer(
            consumer_config(settings, settings.KAFKA_RESULTS_GROUP_ID, f"{settings.MQTT_CLIENT_ID}-results", kafka)
        )
        # A batch waits at most the bridge's batch budget to fill (a fixed 0.5 s was
        # added to every prediction's latency below 2,000 results/s); under load,
        # what queued during the last insert comes back at once anyway. Not 0 even
        # when SERVER_BATCH_WAIT_MS is: an idle sink must not spin.
        wait_s = max(settings.SERVER_BATCH_WAIT_MS, MIN_WAIT_MS) / 1000
        self.source = KafkaSource(
            consumer, [settings.KAFKA_TOPIC_RESULTS, settings.KAFKA_TOPIC_ALERTS], BATCH_MAX, wait_s
        )
        dead_letters = DeadLetters(
            producer,
            settings.KAFKA_TOPIC_DEADLETTER,
            stop,
            metrics.REJECTED,
            lambda documents: store.insert_new(contract.COLLECTION_REJECTIONS, documents),
        )
        self.loop = BatchLoop(self.source, self, dead_letters, stop, RETRYABLE)

    def run(self) -> None:
        """Consume until stopped; then commit what was stored and leave the group."""
        self.loop.run()

    def handle(self, message: Message) -> Parsed:
        """The document a message becomes (a contract error rejects it)."""
        return parse(message.value() or b"", message.topic() == self.settings.KAFKA_TOPIC_ALERTS)

    def write(self, items: list[Parsed], attempt: Attempt) -> dict[int, Failure]:
        """Insert each collection's documents (keyed by reading id); returns those MongoDB refused."""
        refused: dict[int, Failure] = {}
        stored: list[dict[str, Any]] = []
        # Documents a try stored without MongoDB confirming its write concern: the retry finds them as
        # duplicates, and they are counted (and aggregated) once, by the try that ends without an error.
        uncounted: set[tuple[str, Any]] = attempt.memo.setdefault("stored, not counted", set())
        for collection, kind in _KINDS.items():
            # Keyed by document id, not position: a retry one message at a time passes other lists.
            done = attempt.of(collection)
            indexes = [
                i for i, item in enumerate(items) if item.collection == collection and item.document["_id"] not in done
            ]
            if not indexes:
                continue
            documents = [items[i].document for i in indexes]
            try:
                inserted = self.store.insert_new(collection, documents)
            except TRANSIENT as error:
                if isinstance(error, WriteNotConfirmed):
                    uncounted.update(
                        (collection, d["_id"]) for p, d in enumerate(documents) if error.inserted.is_new(p)
                    )
                self.mongo.down()
                raise
            self.mongo.up()
            done.update(d["_id"] for d in documents)
            for position, reason in inserted.refused.items():
                refused[indexes[position]] = Failure("store_refused", reason)
            new = [
                d
                for p, d in enumerate(documents)
                if inserted.is_new(p) or (p in inserted.duplicates and (collection, d["_id"]) in uncounted)
            ]
            uncounted.difference_update((collection, d["_id"]) for d in new)
            metrics.RESULTS_STORED.labels(kind).inc(len(new))
            if collection == contract.COLLECTION_PREDICTIONS:
                # Only predictions stored now: a redelivered one must not count twice.
                stored = new
                if self.aggregator is not None:
                    self.aggregator.touch_accuracy(stored)
        stored_at = datetime.now(UTC)
        for document in stored:
            metrics.SCORED_TO_STORED.observe(max(0.0, (stored_at - document["scored_at"]).total_seconds()))
            metrics.PUBLISH_TO_PREDICTION.observe(max(0.0, (stored_at - document["ds"]).total_seconds()))
        return refused
