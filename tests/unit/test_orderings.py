"""The delivery guarantees, in order, with recording stand-ins for every server (issue #12).

- The bridge acknowledges an MQTT message only after MongoDB stored its reading and Kafka
  confirmed its record; while either is away nothing is acknowledged; a redelivered reading is
  neither stored nor forwarded twice.
- The results sink commits its Kafka offsets only after MongoDB stored what it consumed.
- The model service commits its offsets only after Kafka confirmed the results it produced.
- Neither consumer lets Kafka commit offsets on its own (auto-commit is off).

Each stand-in writes what it was asked into one shared ``events`` list, so these tests read the
order directly instead of hoping a kill in a fault test lands in the right milliseconds.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from unittest import mock

import pytest
from confluent_kafka import KafkaError, Producer
from pymongo.errors import AutoReconnect

from Models_analysis import scorer as scorer_module
from Models_analysis.registry import ModelRegistry
from Models_analysis.scorer import Scorer
from Models_analysis.settings import Settings as ModelSettings
from pipeline import contract
from Server import ingest as ingest_module
from Server import results as results_module
from Server.ingest import Bridge, Incoming
from Server.results import ResultsSink
from Server.settings import Settings as ServerSettings
from Server.store import Store
from tests.unit.fakes import (
    FakeMessage,
    OneModel,
    RecordingConsumer,
    RecordingMqttClient,
    RecordingProducer,
    RecordingStore,
)
from tests.unit.models import ConstantModel

TOPICS = {
    "KAFKA_TOPIC_READINGS": "readings-t",
    "KAFKA_TOPIC_RESULTS": "results-t",
    "KAFKA_TOPIC_DEADLETTER": "dead-t",
    "KAFKA_TOPIC_ALERTS": "alerts-t",
}
SERVER: dict[str, Any] = {
    "MQTT_USERNAME": "user",
    "MQTT_PASSWORD": "password",
    "MONGO_URI": "mongodb://user:password@127.0.0.1:1/db",
    **TOPICS,
}
MODEL: dict[str, Any] = {"MQTT_USERNAME": "user", "MQTT_PASSWORD": "password", "MODEL_PREDICT_TIMEOUT_S": 30, **TOPICS}
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: nothing from the caller's shell (say, SERVER_DEDUPE_CACHE=0) changes it."""
    for cls in (ServerSettings, ModelSettings):
        for name in cls.model_fields:
            monkeypatch.delenv(name, raising=False)


def later(events: list[str], first: str, then: str) -> bool:
    """Whether ``then`` happened, exactly once, after ``first`` (which also happened exactly once)."""
    return events.count(first) == 1 and events.count(then) == 1 and events.index(first) < events.index(then)


# --- the bridge: MQTT in, MongoDB and Kafka, then the acknowledgement --------------------------


@dataclass
class Built:
    bridge: Bridge
    client: RecordingMqttClient
    producer: RecordingProducer
    store: RecordingStore
    events: list[str]
    stop: threading.Event


def make_bridge(
    store_failures: int = 0, stop_on_store_failure: bool = False, refuse: frozenset[str] = frozenset(), **values: Any
) -> Built:
    events: list[str] = []
    stop = threading.Event()
    clients: list[RecordingMqttClient] = []

    def client(settings: Any, client_id: str, *, manual_ack: bool = False) -> RecordingMqttClient:
        clients.append(RecordingMqttClient(client_id, manual_ack, events=events))
        return clients[-1]

    store = RecordingStore(
        events,
        failures=[AutoReconnect("MongoDB is away") for _ in range(store_failures)],
        on_failure=stop.set if stop_on_store_failure else None,
        refuse=refuse,
    )
    producer = RecordingProducer(events=events)
    with mock.patch.object(ingest_module, "make_client", client):
        bridge = Bridge(ServerSettings(**{**SERVER, **values}), cast(Store, store), cast(Producer, producer), stop)
    [only] = clients
    assert only.manual_ack, "the bridge acknowledges by itself, never paho on receipt"
    return Built(bridge, only, producer, store, events, stop)


def reading(reading_id: str, mid: int, sensor: str = "s-1", connection: int = 0, qos: int = 1) -> Incoming:
    raw = json.dumps({"id": reading_id, "sensor": sensor, "ts": NOW.isoformat(), "v": 1.5}).encode()
    return Incoming(contract.readings_topic(sensor), raw, mid, qos, connection, NOW)


def test_the_bridge_acknowledges_only_after_mongodb_stored_the_reading_and_kafka_confirmed_it() -> None:
    built = make_bridge()
    assert built.bridge.loop.process([reading("r-1", mid=7)])
    events = built.events
    assert later(events, "store readings r-1", "ack 7"), events
    assert later(events, "confirm readings-t r-1", "ack 7"), events
    assert events[-1] == "ack 7", "nothing after the acknowledgement"
    assert built.client.acked == [(7, 1)], "the PUBACK is sent, for the message's packet id and QoS"
    assert built.store.ids("readings") == ["r-1"]
    assert [(topic, key) for topic, key, _ in built.producer.produced] == [("readings-t", b"s-1")], "keyed by sensor"


def test_a_batch_is_acknowledged_once_every_reading_in_it_is_durable() -> None:
    built = make_bridge()
    assert built.bridge.loop.process([reading("r-1", mid=1), reading("r-2", mid=2), reading("r-3", mid=3)])
    first_ack = min(built.events.index(f"ack {mid}") for mid in (1, 2, 3))
    durable = [built.events.index(f"confirm readings-t r-{n}") for n in (1, 2, 3)]
    durable.append(built.events.index("store readings r-1,r-2,r-3"))
    assert max(durable) < first_ack, built.events
    assert built.client.acked == [(1, 1), (2, 1), (3, 1)]


def test_only_qos_1_messages_of_this_connection_are_acknowledged() -> None:
    """A QoS 0 message has no packet id (a PUBACK for it is a protocol error); an older connection's id is stale."""
    built = make_bridge()
    batch = [reading("r-1", mid=1), reading("r-2", mid=0, qos=0), reading("r-3", mid=3, connection=-1)]
    assert built.bridge.loop.process([*batch, reading("r-4", mid=4)])
    assert built.client.acked == [(1, 1), (4, 1)]


def test_nothing_is_acknowledged_while_mongodb_is_away() -> None:
    built = make_bridge(store_failures=1, stop_on_store_failure=True)
    assert not built.bridge.loop.process([reading("r-1", mid=7)]), "stopped before the batch was durable"
    assert built.client.acked == [], "the broker keeps the message and redelivers it"
    assert built.store.ids("readings") == []


def test_once_mongodb_is_back_the_batch_is_stored_then_acknowledged_and_kafka_gets_it_once() -> None:
    built = make_bridge(store_failures=1)
    assert built.bridge.loop.process([reading("r-1", mid=7)])
    events = built.events
    assert events.index("store failed readings") < events.index("store readings r-1") < events.index("ack 7"), events
    assert later(events, "confirm readings-t r-1", "ack 7"), events
    assert events.count("produce readings-t r-1") == 1, "the retry does not produce a record already on its way"
    assert built.client.acked == [(7, 1)]


def test_nothing_is_acknowledged_while_kafka_does_not_confirm() -> None:
    built = make_bridge()
    built.producer.fail_next_answers(KafkaError(KafkaError._MSG_TIMED_OUT), then=built.stop.set)
    assert not built.bridge.loop.process([reading("r-1", mid=7)]), "stopped before Kafka confirmed"
    assert "fail readings-t r-1" in built.events
    assert built.client.acked == [], "the broker keeps the message and redelivers it"


def test_a_record_kafka_did_not_take_is_produced_again_and_acknowledged_only_once_confirmed() -> None:
    built = make_bridge()
    built.producer.fail_next_answers(KafkaError(KafkaError._MSG_TIMED_OUT))
    assert built.bridge.loop.process([reading("r-1", mid=7)])
    events = built.events
    assert events.count("produce readings-t r-1") == 2, events
    assert events.index("fail readings-t r-1") < events.index("confirm readings-t r-1") < events.index("ack 7")
    assert built.store.ids("readings") == ["r-1"], "MongoDB's copy is not written again on the retry"
    assert built.client.acked == [(7, 1)]


def test_a_redelivered_reading_is_neither_stored_nor_forwarded_again_and_a_new_one_is() -> None:
    built = make_bridge()
    assert built.bridge.loop.process([reading("r-1", mid=7)])
    # The broker redelivers r-1 (its PUBACK was lost) with r-2, new.
    assert built.bridge.loop.process([reading("r-1", mid=8), reading("r-2", mid=9)])
    assert built.store.ids("readings") == ["r-1", "r-2"], "r-1 stored once, r-2 stored"
    assert [json.loads(value)["id"] for _, _, value in built.producer.produced] == ["r-1", "r-2"]
    assert built.client.acked == [(7, 1), (8, 1), (9, 1)], "the copy is acknowledged too, or it comes back forever"


def test_the_same_reading_twice_in_one_batch_is_stored_and_forwarded_once() -> None:
    built = make_bridge()
    assert built.bridge.loop.process([reading("r-1", mid=1), reading("r-1", mid=2)])
    assert built.store.ids("readings") == ["r-1"]
    assert len(built.producer.produced) == 1
    assert built.client.acked == [(1, 1), (2, 1)]


def test_the_bridge_forgets_the_oldest_ids_beyond_server_dedupe_cache() -> None:
    built = make_bridge(SERVER_DEDUPE_CACHE=2)
    assert built.bridge.loop.process([reading("r-1", mid=1), reading("r-2", mid=2), reading("r-3", mid=3)])
    assert built.bridge.loop.process([reading("r-1", mid=4), reading("r-3", mid=5)])
    assert built.store.ids("readings") == ["r-1", "r-2", "r-3", "r-1"], "r-1 was forgotten; r-3 was not"


def test_only_messages_of_the_current_connection_sent_with_qos_1_are_acknowledged() -> None:
    built = make_bridge()
    built.bridge.connection = 2
    batch = [
        reading("r-1", mid=1, connection=1),  # from before a reconnect: its packet id now means another message
        reading("r-2", mid=2, connection=2, qos=0),  # QoS 0 has no acknowledgement
        reading("r-3", mid=3, connection=2),
    ]
    assert built.bridge.loop.process(batch)
    assert built.client.acked == [(3, 1)]
    assert built.store.ids("readings") == ["r-1", "r-2", "r-3"], "all stored all the same"


def test_a_rejected_message_is_acknowledged_only_after_it_is_kept() -> None:
    built = make_bridge()
    bad = Incoming(contract.readings_topic("s-1"), b"not json", 7, 1, 0, NOW)
    assert built.bridge.loop.process([bad])
    events = built.events
    [kept] = [e for e in events if e.startswith("store rejections ")]
    assert events.index(kept) < events.index("ack 7"), events
    assert later(events, "confirm dead-t ?", "ack 7"), events
    assert built.store.ids("readings") == []
    assert built.client.acked == [(7, 1)]


def test_a_reading_kafka_refuses_becomes_a_rejection_and_is_forwarded_again_if_redelivered() -> None:
    built = make_bridge()
    built.producer.fail_next_answers(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert built.bridge.loop.process([reading("r-1", mid=7)])
    assert [name for name, _ in built.store.inserted] == ["readings", "rejections"]
    assert built.producer.topics() == ["readings-t", "dead-t"]
    assert built.client.acked == [(7, 1)], "kept as a rejection: acknowledged"
    assert "r-1" not in built.bridge.recent, "not remembered as forwarded"


def test_the_bridge_acknowledges_nothing_on_receipt() -> None:
    built = make_bridge()
    message = mock.Mock(_topic=b"sensors/s-1/readings", payload=b"{}", mid=7, qos=1)
    built.bridge._on_message(cast(Any, None), None, message)
    assert built.client.acked == [], "received is not durable"
    [queued] = [built.bridge.inbox.get_nowait()]
    assert (queued.mid, queued.qos, queued.payload) == (7, 1, b"{}")


# --- the results sink: Kafka in, MongoDB, then the commit -------------------------------------


@dataclass
class BuiltSink:
    sink: ResultsSink
    consumer: RecordingConsumer
    store: RecordingStore
    events: list[str]


def prediction_message(reading_id: str, anomaly: bool = False) -> FakeMessage:
    prediction = contract.Prediction(
        id=reading_id,
        sensor="s-1",
        ds=NOW,
        yhat=1.0,
        yhat_lower=0.0,
        yhat_upper=2.0,
        v=1.0,
        anomaly=anomaly,
        model=contract.ModelIdentity(name="m", hash="h"),
        scored_at=NOW,
    )
    return FakeMessage(contract.result_message(prediction), "results-t", b"s-1")


def make_sink(
    batches: list[list[FakeMessage]],
    failures: list[BaseException | None] | None = None,
    every_s: float = 0.0,
    refuse: frozenset[str] = frozenset(),
) -> BuiltSink:
    events: list[str] = []
    stop = threading.Event()
    consumers: list[RecordingConsumer] = []

    def consumer(config: dict[str, Any]) -> RecordingConsumer:
        consumers.append(RecordingConsumer(config, batches, events, stop))
        return consumers[-1]

    store = RecordingStore(events, failures=failures, on_failure=stop.set, refuse=refuse)
    with mock.patch.object(results_module, "Consumer", consumer):
        sink = ResultsSink(ServerSettings(**SERVER), cast(Store, store), cast(Producer, RecordingProducer()), stop)
    sink.source.committer.every_s = every_s
    [only] = consumers
    return BuiltSink(sink, only, store, events)


def test_the_results_sink_commits_each_batch_only_after_mongodb_stored_it() -> None:
    built = make_sink([[prediction_message("r-1"), prediction_message("r-2")], [prediction_message("r-3")]])
    built.sink.run()
    assert built.events == [
        "consume r-1,r-2",
        "store predictions r-1,r-2",
        "commit",
        "consume r-3",
        "store predictions r-3",
        "commit",
    ]
    assert built.consumer.closed


def test_the_results_sink_commits_what_it_stored_when_it_stops() -> None:
    built = make_sink([[prediction_message("r-1")], [prediction_message("r-2")]], every_s=3600)
    built.sink.run()
    assert built.events == ["consume r-1", "store predictions r-1", "consume r-2", "store predictions r-2", "commit"]


def test_the_results_sink_commits_nothing_while_mongodb_is_away() -> None:
    built = make_sink([[prediction_message("r-1")]], failures=[AutoReconnect("MongoDB is away")])
    built.sink.run()
    assert built.events == ["consume r-1", "store failed predictions"], "stopped during the outage: no commit"
    assert built.consumer.commits == 0
    assert built.consumer.closed


def test_a_sink_stopped_during_an_outage_does_not_commit_even_the_batches_it_stored_before() -> None:
    """A commit covers every message consumed so far: here, the batch MongoDB has not stored."""
    batches = [[prediction_message("r-1")], [prediction_message("r-2")]]
    built = make_sink(batches, failures=[None, AutoReconnect("MongoDB is away")], every_s=3600)
    built.sink.run()
    assert built.events == ["consume r-1", "store predictions r-1", "consume r-2", "store failed predictions"]
    assert built.consumer.closed


def test_the_results_sink_stores_predictions_alerts_and_prediction_errors_each_in_its_collection() -> None:
    alert = contract.Alert.of(contract.Prediction.model_validate_json(prediction_message("r-2", anomaly=True).value()))
    error = contract.PredictionError(
        id="r-3", sensor="s-1", reason="no model", model=contract.ModelIdentity(name="m", hash="h"), scored_at=NOW
    )
    batch = [
        prediction_message("r-1"),
        FakeMessage(contract.result_message(alert), "alerts-t", b"s-1"),
        FakeMessage(contract.result_message(error), "results-t", b"s-1"),
    ]
    built = make_sink([batch])
    built.sink.run()
    assert built.store.ids("predictions") == ["r-1"]
    assert built.store.ids("alerts") == ["r-2"]
    assert built.store.ids("prediction_errors") == ["r-3"]
    assert built.events[-1] == "commit"


# --- the model service: Kafka in, Kafka out, then the commit ---------------------------------


@dataclass
class BuiltScorer:
    scorer: Scorer
    consumer: RecordingConsumer
    producer: RecordingProducer
    events: list[str]
    stop: threading.Event


def reading_message(reading_id: str, v: float = 0.5) -> FakeMessage:
    forwarded = contract.Reading(id=reading_id, sensor="s-1", ts=NOW, v=v, received_at=NOW + timedelta(seconds=1))
    return FakeMessage(contract.dumps(forwarded.to_message()), "readings-t", b"s-1")


@pytest.fixture
def make_scorer() -> Iterator[Any]:
    built: list[BuiltScorer] = []

    def make(batches: list[list[FakeMessage]], every_s: float = 0.0) -> BuiltScorer:
        events: list[str] = []
        stop = threading.Event()
        consumers: list[RecordingConsumer] = []

        def consumer(config: dict[str, Any]) -> RecordingConsumer:
            consumers.append(RecordingConsumer(config, batches, events, stop))
            return consumers[-1]

        producer = RecordingProducer(events=events)
        models = cast(ModelRegistry, OneModel(ConstantModel(0.0, 1.0)))
        with mock.patch.object(scorer_module, "Consumer", consumer):
            scorer = Scorer(ModelSettings(**MODEL), models, cast(Producer, producer), stop)
        scorer.source.committer.every_s = every_s
        built.append(BuiltScorer(scorer, consumers[0], producer, events, stop))
        return built[-1]

    yield make
    for b in built:
        b.scorer.budget.close()


def test_the_model_service_commits_each_batch_only_after_kafka_confirmed_its_results(make_scorer: Any) -> None:
    built: BuiltScorer = make_scorer([[reading_message("r-1"), reading_message("r-2")], [reading_message("r-3")]])
    built.scorer.run()
    assert built.events == [
        "consume r-1,r-2",
        "produce results-t r-1",
        "produce results-t r-2",
        "confirm results-t r-1",
        "confirm results-t r-2",
        "commit",
        "consume r-3",
        "produce results-t r-3",
        "confirm results-t r-3",
        "commit",
    ]
    assert built.consumer.closed


def test_an_anomaly_is_produced_as_a_result_and_an_alert_before_the_commit(make_scorer: Any) -> None:
    built: BuiltScorer = make_scorer([[reading_message("r-1", v=50.0)]])
    built.scorer.run()
    assert built.events[-1] == "commit"
    assert later(built.events, "confirm results-t r-1", "commit"), built.events
    assert later(built.events, "confirm alerts-t r-1", "commit"), built.events


def test_the_model_service_commits_nothing_while_kafka_does_not_confirm(make_scorer: Any) -> None:
    built: BuiltScorer = make_scorer([[reading_message("r-1")]])
    built.producer.fail_next_answers(KafkaError(KafkaError._MSG_TIMED_OUT), then=built.stop.set)
    built.scorer.run()
    assert built.events == ["consume r-1", "produce results-t r-1", "fail results-t r-1"], "no commit"
    assert built.consumer.commits == 0
    assert built.consumer.closed


def test_the_model_service_commits_what_kafka_confirmed_when_it_stops(make_scorer: Any) -> None:
    built: BuiltScorer = make_scorer([[reading_message("r-1")], [reading_message("r-2")]], every_s=3600)
    built.scorer.run()
    assert built.events.count("commit") == 1 and built.events[-1] == "commit", built.events


# --- no consumer lets Kafka commit on its own ---------------------------------------------------


def test_auto_commit_is_off_and_a_new_group_starts_at_the_beginning(make_scorer: Any) -> None:
    configs = {"results sink": make_sink([]).consumer.config, "model service": make_scorer([]).consumer.config}
    for service, config in configs.items():
        assert config["enable.auto.commit"] is False, service
        assert config["auto.offset.reset"] == "earliest", service
