"""The scoring loop: Kafka readings in, predictions out, offsets committed after.

Readings are consumed in micro-batches (up to MODEL_BATCH_MAX, waiting at most
MODEL_BATCH_WAIT_MS) and scored with one predict call per batch. Predictions
are produced to the results topic keyed by sensor; only once Kafka has
confirmed them are the input offsets committed. A crash re-scores at most the
uncommitted batch, and the bridge stores by reading id, so nothing doubles.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Message, Producer

from Models_analysis import metrics
from Models_analysis.model import Forecasts, LoadedModel, score
from Models_analysis.registry import ModelRegistry
from Models_analysis.settings import Settings
from pipeline import contract
from pipeline.health import Dependency
from pipeline.kafka import Committer, KafkaUnavailable, consumer_config, produce_all
from pipeline.metrics import LagProbe
from pipeline.retry import RetryError, until_done

logger = logging.getLogger(__name__)

WARN_EVERY_S = 30.0


class Scorer:
    """One model-service replica in the consumer group."""

    def __init__(
        self,
        settings: Settings,
        models: ModelRegistry,
        producer: Producer,
        stop: threading.Event,
        kafka: Dependency | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.producer = producer
        self.stop = stop
        self.kafka = kafka or Dependency("kafka")
        self.lag = LagProbe(settings.KAFKA_TOPIC_READINGS)
        self.consumer = Consumer(
            consumer_config(settings, settings.KAFKA_GROUP_ID, settings.KAFKA_CLIENT_ID, self.kafka)
        )
        self.committer = Committer(self.consumer, settings.KAFKA_TOPIC_READINGS)
        self._last_warning = 0.0
        self.forecasts = Forecasts(settings.MODEL_FORECAST_CACHE)

    def run(self) -> None:
        """Consume and score until stopped; the batch in hand is finished first."""
        self.consumer.subscribe([self.settings.KAFKA_TOPIC_READINGS])
        try:
            while not self.stop.is_set():
                messages = self.consumer.consume(
                    num_messages=self.settings.MODEL_BATCH_MAX, timeout=self.settings.MODEL_BATCH_WAIT_MS / 1000
                )
                self.lag.maybe_measure(self.consumer)
                batch = [m for m in messages if not self._is_error(m)]
                if batch and not self.process(batch):
                    return
                self.committer.tick()  # everything consumed so far is finished
            self.committer.flush()
        finally:
            self.consumer.close()

    def _is_error(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.code() != KafkaError._PARTITION_EOF and time.monotonic() - self._last_warning > WARN_EVERY_S:
            self._last_warning = time.monotonic()
            logger.warning("Kafka consumer of %s: %s", self.settings.KAFKA_TOPIC_READINGS, error)
        return True

    def process(self, messages: list[Message]) -> bool:
        """Score one batch, produce the results, commit. False if stopped before it was durable."""
        readings: list[contract.Reading] = []
        records: list[tuple[str, bytes, bytes]] = []
        for message in messages:
            raw = message.value() or b""
            try:
                readings.append(contract.parse_forwarded_reading(raw))
            except contract.ContractError as error:
                rejection = contract.Rejection.of(raw, "kafka", message.topic() or "", str(error), datetime.now(UTC))
                records.append(
                    (
                        self.settings.KAFKA_TOPIC_DEADLETTER,
                        rejection.topic.encode(),
                        contract.dumps(rejection.model_dump()),
                    )
                )
                metrics.REJECTED.inc()
                logger.warning("rejected a message on %s: %s", rejection.topic, error)
        self.models.refresh()
        results = self.score(readings)
        records.extend(
            (self.settings.KAFKA_TOPIC_RESULTS, result.sensor.encode(), contract.result_message(result))
            for result in results
        )
        records.extend(
            (self.settings.KAFKA_TOPIC_ALERTS, r.sensor.encode(), contract.result_message(contract.Alert.of(r)))
            for r in results
            if isinstance(r, contract.Prediction) and r.anomaly
        )
        try:
            until_done(
                lambda: self._produce(records),
                self.stop,
                "produce predictions",
                (KafkaUnavailable,),
            )
        except RetryError:
            logger.warning(
                "stopping with %d predictions unconfirmed; their readings will be scored again", len(results)
            )
            return False
        scored_at = datetime.now(UTC)
        for result in results:
            if isinstance(result, contract.Prediction):
                metrics.SCORED.inc()
                metrics.ANOMALIES.inc(result.anomaly)
            else:
                metrics.PREDICTION_ERRORS.inc()
        for reading in readings:
            if reading.received_at is not None:
                metrics.STORED_TO_SCORED.observe(max(0.0, (scored_at - reading.received_at).total_seconds()))
        self.committer.done()
        return True

    def score(self, readings: list[contract.Reading]) -> list[contract.Result]:
        """Score readings, one predict per model in use; results keep the readings' order."""
        groups: dict[Path, tuple[LoadedModel, list[int]]] = {}
        results: list[contract.Result | None] = [None] * len(readings)
        now = datetime.now(UTC)
        for index, reading in enumerate(readings):
            model = self.models.for_sensor(reading.sensor)
            if model is None:
                results[index] = contract.PredictionError(
                    id=reading.id,
                    sensor=reading.sensor,
                    reason=f"no model for sensor {reading.sensor} and no default.joblib",
                    model=contract.ModelIdentity(name="none", hash="none"),
                    scored_at=now,
                )
                continue
            groups.setdefault(model.path, (model, []))[1].append(index)
        for model, indexes in groups.values():
            with metrics.PREDICT_SECONDS.time():
                scored = score(model, [readings[i] for i in indexes], self.settings.MODEL_TIME_GRID_MS, self.forecasts)
            metrics.BATCH_SIZE.observe(len(indexes))
            for i, result in zip(indexes, scored, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def _produce(self, records: list[tuple[str, bytes, bytes]]) -> None:
        try:
            produce_all(self.producer, records, self.stop)
        except KafkaUnavailable:
            self.kafka.down()
            raise
        self.kafka.up()
