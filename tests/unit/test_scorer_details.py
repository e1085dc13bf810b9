"""The model service's details the ordering tests leave open (issue #12): one predict per model in use,
what a reading without a model or past the predict budget becomes, the anomaly check, what Kafka
refused, what is counted, and the wiring of Scorer and PredictBudget.

Found by mutation testing (`make mutation`): each test fails under a mutant that passed before.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

import pytest
from confluent_kafka import KafkaError, Producer
from prometheus_client import REGISTRY

from Models_analysis import scorer as scorer_module
from Models_analysis.model import LoadedModel
from Models_analysis.registry import ModelRegistry
from Models_analysis.scorer import PredictBudget, Scorer
from Models_analysis.settings import Settings as ModelSettings
from pipeline import contract
from pipeline.health import Dependency
from tests.unit.fakes import FakeMessage, HalfTakingProducer, RecordingConsumer, RecordingProducer, SlowToAnswer
from tests.unit.models import ConstantModel
from tests.unit.test_orderings import (
    MODEL,
    _no_settings_from_the_environment,  # noqa: F401 - the same isolation from the caller's shell
)

NOW = datetime.now(UTC).replace(microsecond=0)
LOW = contract.ModelIdentity(name="low", hash="h-low")
HIGH = contract.ModelIdentity(name="high", hash="h-high")


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class SensorModels:
    """Stands in for ModelRegistry: a model per sensor (None: no model, and no default)."""

    def __init__(self, models: dict[str, LoadedModel | None]) -> None:
        self.models = models
        self.asked: list[str] = []
        self.refreshes = 0

    def for_sensor(self, sensor: str) -> LoadedModel | None:
        self.asked.append(sensor)
        return self.models.get(sensor)

    def refresh(self, force: bool = False) -> None:
        self.refreshes += 1


def loaded(identity: contract.ModelIdentity, level: float) -> LoadedModel:
    return LoadedModel(ConstantModel(level, 1.0), identity, Path(f"{identity.name}.joblib"))


LOW_MODEL, HIGH_MODEL = loaded(LOW, 0.0), loaded(HIGH, 100.0)


def forwarded(
    reading_id: str, sensor: str, v: float, received_at: datetime | None = None, ago_s: float = 5.0
) -> contract.Reading:
    ts = NOW - timedelta(seconds=ago_s)
    return contract.Reading(id=reading_id, sensor=sensor, ts=ts, v=v, received_at=received_at or NOW)


def message(r: contract.Reading) -> FakeMessage:
    return FakeMessage(contract.dumps(r.to_message()), "readings-t", r.sensor.encode())


@dataclass
class Built:
    scorer: Scorer
    consumer: RecordingConsumer
    producer: RecordingProducer
    stop: threading.Event
    config: dict[str, Any]


@pytest.fixture
def build() -> Iterator[Callable[..., Built]]:
    made: list[Built] = []

    def make(
        models: dict[str, LoadedModel | None] | None = None,
        batches: list[list[FakeMessage]] | None = None,
        kafka: Dependency | None = None,
        **values: Any,
    ) -> Built:
        stop = threading.Event()
        consumers: list[RecordingConsumer] = []

        def consumer(config: dict[str, Any]) -> RecordingConsumer:
            consumers.append(RecordingConsumer(config, batches, stop=stop))
            return consumers[-1]

        producer = RecordingProducer()
        registry = cast(ModelRegistry, SensorModels(models if models is not None else {"s-1": LOW_MODEL}))
        # No grid of forecasts ahead (MODEL_FORECAST_AHEAD=0): every reading is a direct predict.
        settings = ModelSettings(**{**MODEL, "MODEL_FORECAST_AHEAD": 0, **values})
        with mock.patch.object(scorer_module, "Consumer", consumer):
            scorer = Scorer(settings, registry, cast(Producer, producer), stop, kafka)
        scorer.source.committer.every_s = 0.0
        made.append(Built(scorer, consumers[0], producer, stop, consumers[0].config))
        return made[-1]

    yield make
    for b in made:
        b.scorer.budget.close()


def results(built: Built) -> list[dict[str, Any]]:
    return [json.loads(value) for topic, _, value in built.producer.produced if topic == "results-t"]


# --- scoring: one predict per model, in the readings' order ---------------------------------------


def test_each_sensors_readings_are_scored_by_its_own_model_in_one_predict_each(build: Any) -> None:
    built: Built = build({"s-1": LOW_MODEL, "s-2": HIGH_MODEL})
    readings = [forwarded("r-1", "s-1", 0.5), forwarded("r-2", "s-2", 100.5), forwarded("r-3", "s-1", 0.0, ago_s=6)]
    low_before, high_before = len(LOW_MODEL.model.rows_seen), len(HIGH_MODEL.model.rows_seen)
    scored = built.scorer.score(readings)
    assert [(r.id, r.model.name, cast(contract.Prediction, r).yhat) for r in scored] == [
        ("r-1", "low", 0.0),
        ("r-2", "high", 100.0),
        ("r-3", "low", 0.0),
    ]
    assert LOW_MODEL.model.rows_seen[low_before:] == [2], "one predict for both of s-1's readings"
    assert HIGH_MODEL.model.rows_seen[high_before:] == [1]
    assert cast(Any, built.scorer.models).asked == ["s-1", "s-2", "s-1"]


def test_a_reading_is_an_anomaly_only_outside_its_interval(build: Any) -> None:
    built: Built = build()  # level 0, interval [-1, 1]
    values = {"in": 0.5, "upper": 1.0, "lower": -1.0, "above": 1.01, "below": -1.01}
    scored = built.scorer.score([forwarded(name, "s-1", v) for name, v in values.items()])
    anomalies = {r.id: cast(contract.Prediction, r).anomaly for r in scored}
    assert anomalies == {"in": False, "upper": False, "lower": False, "above": True, "below": True}


def test_a_reading_without_a_model_is_a_prediction_error_and_the_others_are_scored(build: Any) -> None:
    built: Built = build({"s-1": LOW_MODEL, "s-9": None})
    scored = built.scorer.score([forwarded("r-1", "s-9", 1.0), forwarded("r-2", "s-1", 0.0)])
    error, ok = scored
    assert error == contract.PredictionError(
        id="r-1",
        sensor="s-9",
        reason="no model for sensor s-9 and no default.joblib",
        model=contract.ModelIdentity(name="none", hash="none"),
        scored_at=error.scored_at,
    )
    assert isinstance(ok, contract.Prediction) and ok.id == "r-2"


class LateBudget:
    """Stands in for PredictBudget: ``busy`` says why no call can be made, or every call is late."""

    def __init__(self, busy: str | None = None) -> None:
        self.reason = busy
        self.calls = 0

    def busy(self) -> str | None:
        return self.reason

    def call(self, function: Any, *args: Any) -> Any:
        self.calls += 1
        raise TimeoutError("the model's predict did not return within 2s (MODEL_PREDICT_TIMEOUT_S)")

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("busy", "reason"),
    [
        ("an earlier predict is still running", "an earlier predict is still running"),
        (None, "the model's predict did not return within 2s (MODEL_PREDICT_TIMEOUT_S)"),
    ],
)
def test_while_the_model_is_late_every_models_readings_become_errors_that_say_why(
    build: Any, busy: str | None, reason: str
) -> None:
    built: Built = build({"s-1": LOW_MODEL, "s-2": HIGH_MODEL})
    budget = LateBudget(busy)
    built.scorer.budget = cast(PredictBudget, budget)
    scored = built.scorer.score([forwarded("r-1", "s-1", 0.0), forwarded("r-2", "s-2", 0.0)])
    assert [(r.id, type(r).__name__, cast(contract.PredictionError, r).reason, r.model) for r in scored] == [
        ("r-1", "PredictionError", reason, LOW),
        ("r-2", "PredictionError", reason, HIGH),
    ]
    assert budget.calls == (0 if busy else 2), "busy: no call at all"


# --- what the batch loop produces, refuses and counts -----------------------------------------------


def test_every_anomaly_gets_its_own_alert(build: Any) -> None:
    readings = [forwarded("r-1", "s-1", 50.0), forwarded("r-2", "s-1", -50.0), forwarded("r-3", "s-1", 0.0)]
    built: Built = build(batches=[[message(r) for r in readings]])
    built.scorer.run()
    alerts = [json.loads(v) for t, _, v in built.producer.produced if t == "alerts-t"]
    assert [(a["id"], a["direction"], a["miss"]) for a in alerts] == [("r-1", "above", 49.0), ("r-2", "below", 49.0)]
    assert [r["id"] for r in results(built)] == ["r-1", "r-2", "r-3"]
    assert built.consumer.commits == 1


def test_a_result_kafka_refuses_makes_its_reading_a_dead_letter(build: Any) -> None:
    readings = [forwarded("r-1", "s-1", 0.0)]
    built: Built = build(batches=[[message(r) for r in readings]])
    built.producer.fail_next_answers(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    built.scorer.run()
    [dead] = [json.loads(v) for t, _, v in built.producer.produced if t == "dead-t"]
    assert (dead["kind"], dead["reason"]) == (
        "kafka_refused",
        "Kafka refused the record: Broker: Message size too large",
    )
    assert dead["payload"] == message(readings[0]).value().decode(), "the reading's own message"
    assert built.consumer.commits == 1, "kept as a dead letter: committed"


def test_a_retry_produces_only_the_results_kafka_did_not_confirm(build: Any) -> None:
    readings = [forwarded("r-1", "s-1", 0.0), forwarded("r-2", "s-1", 0.0)]
    built: Built = build(batches=[[message(r) for r in readings]])
    built.producer = HalfTakingProducer()
    built.scorer.producer = cast(Producer, built.producer)
    scored = sample("pipeline_readings_scored_total")
    built.scorer.run()
    assert [r["id"] for r in results(built)] == ["r-1", "r-2", "r-2"]
    assert sample("pipeline_readings_scored_total") - scored == 2.0
    assert built.consumer.commits == 1


def test_what_a_batch_scored_is_counted_with_its_latency_from_the_bridge(build: Any) -> None:
    now = datetime.now(UTC)
    readings = [forwarded("r-1", "s-1", 0.5, now), forwarded("r-2", "s-1", 5.0, now), forwarded("r-3", "s-9", 0.0, now)]
    ahead = forwarded("r-4", "s-1", 0.0, now + timedelta(hours=1))  # a bridge clock an hour ahead counts 0
    built: Built = build({"s-1": LOW_MODEL, "s-9": None}, batches=[[message(r) for r in [*readings, ahead]]])
    names = ("readings_scored_total", "anomalies_total", "prediction_errors_total")
    before = {name: sample(f"pipeline_{name}") for name in names}
    count, total = (sample(f"pipeline_stored_to_scored_seconds_{s}") for s in ("count", "sum"))
    built.scorer.run()
    after = {name: sample(f"pipeline_{name}") - before[name] for name in names}
    assert after == {"readings_scored_total": 3.0, "anomalies_total": 1.0, "prediction_errors_total": 1.0}
    assert sample("pipeline_stored_to_scored_seconds_count") - count == 4.0
    assert 0.0 <= sample("pipeline_stored_to_scored_seconds_sum") - total < 3.0, "seconds old, not floored at 1"


# --- wiring -----------------------------------------------------------------------------------------


def test_the_consumer_reports_kafka_down_to_the_services_dependency(build: Any) -> None:
    kafka = Dependency("kafka")
    kafka.up()
    built: Built = build(kafka=kafka, KAFKA_GROUP_ID="model-g", KAFKA_CLIENT_ID="model-c")
    assert (built.config["group.id"], built.config["client.id"]) == ("model-g", "model-c")
    built.config["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert not kafka()
    assert built.scorer.kafka is kafka


def test_the_consumer_takes_model_batch_max_waiting_model_batch_wait_ms(build: Any) -> None:
    built: Built = build(batches=[], MODEL_BATCH_MAX=7, MODEL_BATCH_WAIT_MS=30)
    built.scorer.run()
    assert built.consumer.consumed[0] == (7, 0.03)
    assert built.consumer.subscribed == ["readings-t"]


# --- the predict budget ------------------------------------------------------------------------------


def test_predict_calls_never_overlap() -> None:
    budget = PredictBudget(5.0, Dependency("model"))
    running, most = [0], [0]
    lock = threading.Lock()

    def predict() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    try:
        threads = [threading.Thread(target=budget.call, args=(predict,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        budget.close()
    assert most[0] == 1


def test_closing_does_not_wait_for_a_hung_predict_nor_run_one_queued_behind_it() -> None:
    budget = PredictBudget(0.05, Dependency("model"))
    release, ran = threading.Event(), threading.Event()
    try:
        with pytest.raises(TimeoutError):
            budget.call(release.wait, 10)
        queued = threading.Thread(target=lambda: pytest.raises(TimeoutError, budget.call, ran.set))
        queued.start()
        queued.join(5)
        started = time.monotonic()
        budget.close()
        assert time.monotonic() - started < 1.0, "a stopping service is not held by a hung model"
    finally:
        release.set()
    assert not ran.wait(0.5), "the call queued behind the hung one was cancelled"


def test_a_momentarily_full_kafka_queue_delays_the_batch_and_makes_no_dead_letter(build: Any) -> None:
    built: Built = build(batches=[[message(forwarded("r-1", "s-1", 0.0))]])
    produce, full = built.producer.produce, [2]

    def sometimes_full(*args: Any, **kwargs: Any) -> None:
        if full[0]:
            full[0] -= 1
            raise BufferError("queue full")
        produce(*args, **kwargs)

    built.producer.produce = sometimes_full  # type: ignore[method-assign]
    built.scorer.run()
    assert built.producer.topics() == ["results-t"]
    assert built.consumer.commits == 1


class RefusingAlerts(RecordingProducer):
    """Kafka refuses every record on the alerts topic for what it is (say, too large); confirms the rest."""

    def poll(self, timeout: float = 0) -> int:
        callbacks, self._callbacks = self._callbacks, []
        for msg, callback in callbacks:
            refused = msg.topic() == "alerts-t"
            callback(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if refused else None, msg)
        return len(callbacks)


def test_an_alert_kafka_refuses_makes_its_reading_a_dead_letter(build: Any) -> None:
    readings = [forwarded("r-1", "s-1", 0.0), forwarded("r-2", "s-1", 50.0)]
    built: Built = build(batches=[[message(r) for r in readings]])
    built.producer = RefusingAlerts()
    built.scorer.producer = built.scorer.loop.dead_letters.producer = cast(Producer, built.producer)
    built.scorer.run()
    [dead] = [json.loads(v) for t, _, v in built.producer.produced if t == "dead-t"]
    assert (dead["kind"], dead["payload"]) == ("kafka_refused", message(readings[1]).value().decode())
    assert [r["id"] for r in results(built)] == ["r-1", "r-2"]
    assert built.consumer.commits == 1


class FailingLookup(SensorModels):
    """A registry whose lookup fails unexpectedly (not a missing model) for one sensor."""

    def for_sensor(self, sensor: str) -> LoadedModel | None:
        if sensor == "s-bad":
            raise RuntimeError("the model file of s-bad cannot be read")
        return super().for_sensor(sensor)


def test_a_reading_that_fails_unexpectedly_is_a_dead_letter_and_the_rest_of_its_batch_is_scored(build: Any) -> None:
    readings = [forwarded("r-1", "s-1", 0.0), forwarded("r-2", "s-bad", 0.0), forwarded("r-3", "s-1", 0.0, ago_s=6)]
    built: Built = build(batches=[[message(r) for r in readings]])
    built.scorer.models = cast(ModelRegistry, FailingLookup({"s-1": LOW_MODEL}))
    built.scorer.run()
    assert [r["id"] for r in results(built)] == ["r-1", "r-3"], "each scored alone once the batch failed"
    [dead] = [json.loads(v) for t, _, v in built.producer.produced if t == "dead-t"]
    assert (dead["kind"], dead["payload"]) == ("unexpected", message(readings[1]).value().decode())
    assert built.consumer.commits == 1


class OneRowAtATime(ConstantModel):
    """Refuses a predict of more than one row (a grid of forecasts ahead); counts those tries."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)
        self.grid_tries = 0

    def predict(self, frame: Any) -> Any:
        if len(frame) > 1:
            self.grid_tries += 1
            raise ValueError("one row at a time")
        return super().predict(frame)


def test_after_a_grid_of_forecasts_fails_the_model_is_not_asked_for_one_again_for_a_while(build: Any) -> None:
    model = OneRowAtATime()
    built: Built = build({"s-1": LoadedModel(model, LOW, Path("low.joblib"))}, MODEL_FORECAST_AHEAD=100)
    first = built.scorer.score([forwarded("r-1", "s-1", 0.0, ago_s=1)])
    second = built.scorer.score([forwarded("r-2", "s-1", 0.0, ago_s=0)])
    assert [type(r).__name__ for r in first + second] == ["Prediction", "Prediction"], "scored directly"
    assert model.grid_tries == 1, "no second try within RETRY_AFTER_S"
    built.scorer.grids.close()


def test_the_model_services_readiness_says_kafka_is_down_while_it_answers_nothing(build: Any) -> None:
    built: Built = build(batches=[[message(forwarded("r-1", "s-1", 0.0))]])
    built.scorer.kafka.up()
    clock = SimpleNamespace(now=100.0)
    clock.monotonic = lambda: clock.now
    producer = SlowToAnswer(clock, 12, built.scorer.kafka)
    built.scorer.producer = cast(Producer, producer)
    with mock.patch("pipeline.kafka.time", clock):
        built.scorer.run()
    assert "Kafka has answered none of 1 records for 10s" in producer.seen, "down, with why, while it was silent"
    assert built.scorer.kafka(), "up again once the results were confirmed"
    assert built.consumer.commits == 1
