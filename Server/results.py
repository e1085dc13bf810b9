"""Predictions from Kafka into MongoDB; offsets are committed only after MongoDB has them.

A crash before the commit makes Kafka redeliver the batch; the inserts are
keyed by reading id, so the repeat changes nothing. A message that is not a
valid result is kept in the rejections collection and the dead-letter topic.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, Producer

from pipeline import contract
from pipeline.health import Dependency
from pipeline.kafka import Committer, consumer_config, produce_all
from pipeline.metrics import LagProbe
from pipeline.retry import RetryError, until_done
from Server import metrics
from Server.aggregates import Aggregator
from Server.ingest import RETRYABLE
from Server.settings import Settings
from Server.store import Store

logger = logging.getLogger(__name__)

BATCH_MAX = 1000
MIN_WAIT_MS = 10
WARN_EVERY_S = 30.0


class ResultsSink:
    """Consumes the results topic and stores predictions and prediction errors."""

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
        self.producer = producer
        self.stop = stop
        self.lag = LagProbe(settings.KAFKA_TOPIC_RESULTS)
        self.consumer = Consumer(
            consumer_config(settings, settings.KAFKA_RESULTS_GROUP_ID, f"{settings.MQTT_CLIENT_ID}-results", kafka)
        )
        self.committer = Committer(self.consumer, settings.KAFKA_TOPIC_RESULTS)
        self._last_warning = 0.0
        # Not 0 even when SERVER_BATCH_WAIT_MS is: an idle sink must not spin.
        self._wait_s = max(settings.SERVER_BATCH_WAIT_MS, MIN_WAIT_MS) / 1000

    def run(self) -> None:
        """Consume until stopped; then commit what was stored and leave the group."""
        self.consumer.subscribe([self.settings.KAFKA_TOPIC_RESULTS, self.settings.KAFKA_TOPIC_ALERTS])
        try:
            while not self.stop.is_set():
                # A batch waits at most the bridge's batch budget to fill (a fixed 0.5 s was
                # added to every prediction's latency below 2,000 results/s); under load,
                # what queued during the last insert comes back at once anyway.
                messages = self.consumer.consume(num_messages=BATCH_MAX, timeout=self._wait_s)
                self.lag.maybe_measure(self.consumer)
                if messages and not self._store([m for m in messages if not self._is_error(m)]):
                    return
                self.committer.tick()  # everything consumed so far is finished
            self.committer.flush()
        finally:
            self.consumer.close()

    def _is_error(self, message: object) -> bool:
        error = message.error()  # type: ignore[attr-defined]
        if error is None:
            return False
        if error.code() != KafkaError._PARTITION_EOF and time.monotonic() - self._last_warning > WARN_EVERY_S:
            self._last_warning = time.monotonic()
            logger.warning("Kafka consumer of %s: %s", self.settings.KAFKA_TOPIC_RESULTS, error)
        return True

    def _store(self, messages: list) -> bool:  # type: ignore[type-arg]
        predictions: list[dict] = []  # type: ignore[type-arg]
        errors: list[dict] = []  # type: ignore[type-arg]
        alerts: list[dict] = []  # type: ignore[type-arg]
        rejections: list[contract.Rejection] = []
        now = datetime.now(UTC)
        for message in messages:
            raw = message.value() or b""
            try:
                if message.topic() == self.settings.KAFKA_TOPIC_ALERTS:
                    alerts.append(contract.parse_alert(raw).to_document())
                    continue
                result = contract.parse_result(raw)
            except contract.ContractError as error:
                rejections.append(contract.Rejection.of(raw, "kafka", message.topic(), str(error), now))
                continue
            if isinstance(result, contract.Prediction):
                predictions.append(result.to_document())
            else:
                errors.append(result.to_document())

        def write() -> None:
            inserted = self.store.insert_new(contract.COLLECTION_PREDICTIONS, predictions)
            metrics.RESULTS_STORED.labels("prediction").inc(inserted.new)
            if self.aggregator is not None:
                # Only predictions stored now: a redelivered one must not count twice.
                self.aggregator.touch_accuracy(p for i, p in enumerate(predictions) if inserted.is_new(i))
            metrics.RESULTS_STORED.labels("prediction_error").inc(
                self.store.insert_new(contract.COLLECTION_PREDICTION_ERRORS, errors).new
            )
            metrics.RESULTS_STORED.labels("alert").inc(self.store.insert_new(contract.COLLECTION_ALERTS, alerts).new)
            if rejections:
                self.store.insert_new(contract.COLLECTION_REJECTIONS, [r.to_document() for r in rejections])
                produce_all(
                    self.producer,
                    [
                        (self.settings.KAFKA_TOPIC_DEADLETTER, r.topic.encode(), contract.dumps(r.model_dump()))
                        for r in rejections
                    ],
                    self.stop,
                )
                for rejection in rejections:
                    logger.warning("rejected a message on %s: %s", rejection.topic, rejection.reason)

        try:
            until_done(write, self.stop, "store predictions", RETRYABLE)
        except RetryError:
            logger.warning("stopping with %d results not stored; Kafka will redeliver them", len(messages))
            return False
        stored_at = datetime.now(UTC)
        for document in predictions:
            metrics.SCORED_TO_STORED.observe(max(0.0, (stored_at - document["scored_at"]).total_seconds()))
            metrics.PUBLISH_TO_PREDICTION.observe(max(0.0, (stored_at - document["ds"]).total_seconds()))
        self.committer.done()
        return True
