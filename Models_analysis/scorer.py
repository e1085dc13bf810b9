"""The scoring loop: Kafka readings in, predictions out, offsets committed after.

Readings are consumed in micro-batches (up to MODEL_BATCH_MAX, waiting at most
MODEL_BATCH_WAIT_MS) and scored with one predict call per model in use.
Predictions are produced to the results topic keyed by sensor; only once Kafka
has confirmed them are the input offsets committed. A crash re-scores at most
the uncommitted batch, and the bridge stores by reading id, so nothing doubles.
The cycle, and what becomes a dead letter, is :class:`pipeline.batch.BatchLoop`'s.

Each model in use has its forecasts made ahead on a time grid
(Models_analysis.ahead): a reading inside its model's grid is scored by a
lookup, and only readings outside it call predict.

Every predict call runs under a time budget (MODEL_PREDICT_TIMEOUT_S) in a
worker thread of its own: past it, the batch's readings become prediction
errors that say so, the service reports itself not ready with the reason, and
the next batches do too, at once, until the call returns. A Python thread
cannot be killed, so a model that never returns holds one thread and its
memory; the readings keep being stored by the bridge whatever the model does.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, Message, Producer

from Models_analysis import metrics
from Models_analysis.adaptive import Levels, adapt, nominal_level
from Models_analysis.ahead import RETRY_AFTER_S, Grids, plan
from Models_analysis.model import Forecasts, LoadedModel, prediction, score
from Models_analysis.registry import ModelRegistry
from Models_analysis.settings import Settings
from pipeline import contract
from pipeline.batch import Attempt, BatchLoop, DeadLetters, Failure, KafkaSource
from pipeline.health import Dependency
from pipeline.kafka import Deliveries, KafkaUnavailable, consumer_config, send_all

logger = logging.getLogger(__name__)


class PredictBudget:
    """Runs predict calls one at a time in a worker thread, each within ``timeout_s``.

    ``health`` is down (with the reason) while a call is past its budget.
    """

    def __init__(self, timeout_s: float, health: Dependency) -> None:
        self.timeout_s = timeout_s
        self.health = health
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._late: concurrent.futures.Future[object] | None = None
        self._late_since = 0.0
        health.up()

    def busy(self) -> str | None:
        """Why no call can be made now (an earlier call is past its budget and still running), else None."""
        if self._late is not None and self._late.done():
            self._late = None
        if self._late is None:
            return None
        return (
            f"the model's predict has run {time.monotonic() - self._late_since:.0f}s, past its"
            f" {self.timeout_s:g}s budget (MODEL_PREDICT_TIMEOUT_S), and has not returned"
        )

    def call(self, function: Callable[..., object], *args: object) -> object:
        """``function(*args)`` within the budget; TimeoutError (with the reason) past it."""
        future = self._pool.submit(function, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            self._late, self._late_since = future, time.monotonic() - self.timeout_s
            reason = f"the model's predict did not return within {self.timeout_s:g}s (MODEL_PREDICT_TIMEOUT_S)"
            self.health.down(reason)
            logger.error("%s; its readings become prediction errors until it returns", reason)
            future.add_done_callback(self._returned)
            raise TimeoutError(reason) from None

    def _returned(self, _future: concurrent.futures.Future[object]) -> None:
        # In the worker thread, as soon as the late call ends: ready again without waiting for a batch.
        logger.warning("the model's late predict call returned after %.1fs", time.monotonic() - self._late_since)
        self.health.up()

    def close(self) -> None:
        """Let a running call go (a hung one cannot be stopped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Scored:
    """What one batch became: the results and alerts to produce, keyed by (topic, reading id)."""

    records: list[tuple[tuple[str, str], tuple[str, bytes, bytes]]]
    results: list[contract.Result]
    origin: dict[tuple[str, str], int]


class Scorer:
    """One model-service replica in the consumer group."""

    what = "produce predictions"

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
        self.model = Dependency("model")
        self.budget = PredictBudget(settings.MODEL_PREDICT_TIMEOUT_S, self.model)
        consumer = Consumer(consumer_config(settings, settings.KAFKA_GROUP_ID, settings.KAFKA_CLIENT_ID, self.kafka))
        # The model files are looked at between batches and while idle: a file swapped on a quiet system shows
        # in pipeline_model_info and the log within MODEL_RELOAD_CHECK_S, not only once a reading arrives.
        self.source = KafkaSource(
            consumer,
            [settings.KAFKA_TOPIC_READINGS],
            settings.MODEL_BATCH_MAX,
            settings.MODEL_BATCH_WAIT_MS / 1000,
            on_tick=models.refresh,
        )
        self.forecasts = Forecasts(settings.MODEL_FORECAST_CACHE)
        self.grids = Grids(settings.MODEL_TIME_GRID_MS, settings.MODEL_FORECAST_AHEAD)
        self.levels = Levels(settings.MODEL_ADAPTIVE_GAMMA)
        dead_letters = DeadLetters(producer, settings.KAFKA_TOPIC_DEADLETTER, stop, metrics.REJECTED)
        self.loop = BatchLoop(self.source, self, dead_letters, stop, (KafkaUnavailable,))

    def run(self) -> None:
        """Consume and score until stopped; the batch in hand is finished first."""
        try:
            self.loop.run()
        finally:
            self.budget.close()
            self.grids.close()

    def handle(self, message: Message) -> contract.Reading:
        """One reading from the readings topic (a contract error makes it a dead letter)."""
        return contract.parse_forwarded_reading(message.value() or b"")

    def write(self, readings: list[contract.Reading], attempt: Attempt) -> dict[int, Failure]:
        """Score the batch once, produce its results and alerts; returns the readings Kafka refused."""
        # Scored once per list of readings: a retry one message at a time passes each reading alone.
        memo_key = ("scored", tuple(r.id for r in readings))
        scored: Scored | None = attempt.memo.get(memo_key)
        if scored is None:
            self.models.refresh()
            scored = attempt.memo[memo_key] = self._build(readings)
        deliveries: Deliveries = attempt.memo.setdefault("kafka", Deliveries())
        try:
            send_all(self.producer, scored.records, self.stop, deliveries).wait(self.producer, self.stop, self.kafka)
        except KafkaUnavailable:
            self.kafka.down()
            raise
        self.kafka.up()
        counted = attempt.of("counted")
        fresh = [r for r in scored.results if r.id not in counted]
        counted.update(r.id for r in fresh)
        self._count([r for r in readings if r.id in {f.id for f in fresh}], fresh)
        return {
            scored.origin[key]: Failure("kafka_refused", reason)
            for key, reason in deliveries.refused.items()
            if key in scored.origin
        }

    def _build(self, readings: list[contract.Reading]) -> Scored:
        results = self.score(readings)
        records: list[tuple[tuple[str, str], tuple[str, bytes, bytes]]] = []
        origin: dict[tuple[str, str], int] = {}
        topics = self.settings.KAFKA_TOPIC_RESULTS, self.settings.KAFKA_TOPIC_ALERTS
        for index, result in enumerate(results):
            key = (topics[0], result.id)
            records.append((key, (topics[0], result.sensor.encode(), contract.result_message(result))))
            origin[key] = index
            if isinstance(result, contract.Prediction) and result.anomaly:
                alert = contract.Alert.of(result)
                key = (topics[1], result.id)
                records.append((key, (topics[1], result.sensor.encode(), contract.result_message(alert))))
                origin[key] = index
        return Scored(records, results, origin)

    def _count(self, readings: list[contract.Reading], results: list[contract.Result]) -> None:
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

    def score(self, readings: list[contract.Reading]) -> list[contract.Result]:
        """Score readings, one predict per model in use, each within the time budget; results keep their order."""
        groups: dict[Path, tuple[LoadedModel, list[int]]] = {}
        results: list[contract.Result | None] = [None] * len(readings)
        now = datetime.now(UTC)

        def errors(indexes: list[int], reason: str, model: contract.ModelIdentity) -> None:
            for i in indexes:
                reading = readings[i]
                results[i] = contract.PredictionError(
                    id=reading.id, sensor=reading.sensor, reason=reason, model=model, scored_at=now
                )

        for index, reading in enumerate(readings):
            model = self.models.for_sensor(reading.sensor)
            if model is None:
                errors(
                    [index],
                    f"no model for sensor {reading.sensor} and no default.joblib",
                    contract.ModelIdentity(name="none", hash="none"),
                )
                continue
            groups.setdefault(model.path, (model, []))[1].append(index)
        for model, indexes in groups.values():
            busy = self.budget.busy()
            if busy is not None:
                errors(indexes, busy, model.identity)
                continue
            batch = [readings[i] for i in indexes]
            try:
                with metrics.PREDICT_SECONDS.time():
                    scored = self._score_model(model, batch)
            except TimeoutError as error:
                errors(indexes, str(error), model.identity)
                continue
            metrics.BATCH_SIZE.observe(len(indexes))
            level = nominal_level(model.model, model.metadata)
            for i, result in zip(indexes, scored, strict=True):
                results[i] = adapt(self.levels, result, level)
        if self.grids.enabled:
            in_use = getattr(self.models, "in_use", None)
            if in_use is not None:
                self.grids.keep_only(m.identity.hash for m in in_use())
            metrics.GRIDS.set(len(self.grids))
        return [r for r in results if r is not None]

    def _direct(self, model: LoadedModel, batch: list[contract.Reading]) -> list[contract.Result]:
        """Score by predict calls, within the time budget (TimeoutError past it)."""
        scored = self.budget.call(self._locked_score, model, batch)
        return scored  # type: ignore[return-value]

    def _locked_score(self, model: LoadedModel, batch: list[contract.Reading]) -> list[contract.Result]:
        # Never beside a background refresh of the same model's grid (Grids.lock).
        with self.grids.lock(model.identity.hash):
            return score(model, batch, self.settings.MODEL_TIME_GRID_MS, self.forecasts)

    def _score_model(self, model: LoadedModel, batch: list[contract.Reading]) -> list[contract.Result]:
        """One model's readings: a lookup in its grid where it covers them, a direct predict for the rest."""
        if not self.grids.enabled:
            return self._direct(model, batch)
        now = datetime.now(UTC)
        grid = self.grids.get(model.identity.hash)
        decided = plan(grid, [r.ts for r in batch], now, self.grids.horizon)
        if decided.build_at is not None and self.grids.may_build(model.identity.hash):
            try:
                grid = self.budget.call(self.grids.build, model, decided.build_at)  # type: ignore[assignment]
            except TimeoutError:
                raise
            except Exception as error:  # noqa: BLE001 - the readings are scored one by one below instead
                self.grids.failed(model.identity.hash)
                logger.warning(
                    "could not forecast ahead with model %s (%s); predicting its readings directly for %.0fs",
                    model.identity.name,
                    error,
                    RETRY_AFTER_S,
                )
                grid = None
        elif decided.refresh_at is not None:
            self.grids.refresh_later(model, decided.refresh_at)
        results: list[contract.Result | None] = [None] * len(batch)
        outside: list[int] = []
        for index, reading in enumerate(batch):
            row = grid.lookup(reading.ts) if grid is not None else None
            if row is None:
                outside.append(index)
            else:
                results[index] = prediction(reading, row, model.identity, now)
        metrics.FORECASTS.labels("grid").inc(len(batch) - len(outside))
        if outside:
            direct = self._direct(model, [batch[i] for i in outside])
            for i, result in zip(outside, direct, strict=True):
                results[i] = result
        return [r for r in results if r is not None]
