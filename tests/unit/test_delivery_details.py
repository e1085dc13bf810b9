"""The delivery core's details the ordering tests leave open: refusals, retries, what is counted, client settings.

Found by mutation testing (`make mutation`): each test here fails under a mutant that passed the
unit tests before (tests/mutation-survivors.md lists those still passing, and why they are harmless).
"""

from __future__ import annotations

import threading
from typing import Any, cast
from unittest import mock

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import REGISTRY

from pipeline import kafka as kafka_module
from pipeline.health import Dependency
from pipeline.kafka import Committer, Deliveries, KafkaUnavailable, consumer_config, producer_config, send_all
from pipeline.settings import KafkaSettings
from Server.aggregates import Aggregator
from tests.unit.fakes import FakeMessage, RecordingConsumer
from tests.unit.test_orderings import (  # noqa: F401 - the fixtures too: the same isolation and builder
    _no_settings_from_the_environment,
    make_bridge,
    make_scorer,
    make_sink,
    prediction_message,
    reading,
    reading_message,
)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class Clock:
    """Stands in for pipeline.kafka's ``time``: moves only when told (or at each producer poll)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class SilentProducer:
    """Never answers; each poll takes one second of the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.polls = 0

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        self.clock.now += 1.0
        return 0


# --- pipeline.kafka ------------------------------------------------------------------------------


def test_the_producer_never_loses_nor_doubles_a_record_it_reports_delivered() -> None:
    kafka = Dependency("kafka")
    config = producer_config(KafkaSettings(KAFKA_BOOTSTRAP_SERVERS="k1:9092,k2:9092"), "bridge-7", kafka)
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["message.timeout.ms"] == 600_000, "ten minutes: an outage is ridden out, not failed"
    assert (config["bootstrap.servers"], config["client.id"]) == ("k1:9092,k2:9092", "bridge-7")
    assert callable(config["error_cb"])


def test_the_consumer_is_in_its_group_under_its_name() -> None:
    config = consumer_config(KafkaSettings(KAFKA_BOOTSTRAP_SERVERS="k1:9092"), "group-g", "client-c", Dependency("k"))
    assert (config["group.id"], config["client.id"], config["bootstrap.servers"]) == ("group-g", "client-c", "k1:9092")
    assert config["enable.auto.commit"] is False
    assert callable(config["error_cb"])
    assert "error_cb" not in consumer_config(KafkaSettings(), "g", "c"), "no dependency to report to: no callback"


def test_kafka_is_reported_down_when_every_broker_is_unreachable_and_only_then() -> None:
    kafka = Dependency("kafka")
    kafka.up()
    on_error = producer_config(KafkaSettings(), "c", kafka)["error_cb"]
    on_error(KafkaError(KafkaError._TRANSPORT))
    assert kafka(), "one broker's hiccup is not an outage"
    on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert not kafka()


def test_a_confirmed_record_is_not_produced_again_on_a_retry() -> None:
    deliveries = Deliveries()
    message = cast(Message, FakeMessage(b"", "t"))
    deliveries.callback_for("a")(None, message)
    deliveries.callback_for("b")(KafkaError(KafkaError._MSG_TIMED_OUT), message)
    assert deliveries.answered("a")
    assert not deliveries.answered("b"), "not taken: produced again"
    deliveries.callback_for("c")(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), message)
    assert deliveries.answered("c") and "c" in deliveries.refused, "refused for what it is: never again"


def test_unconfirmed_records_fail_the_batch_after_the_confirm_timeout_or_the_stop_grace() -> None:
    # Each poll takes a second: the first sets the stop grace's deadline 5 s on; past 30 s or 5 s, it fails.
    for stopping, polls in ((False, 31), (True, 7)):
        clock, stop = Clock(), threading.Event()
        if stopping:
            stop.set()
        producer = SilentProducer(clock)
        deliveries = Deliveries()
        deliveries.pending.add("a")
        with mock.patch.object(kafka_module, "time", clock), pytest.raises(KafkaUnavailable):
            deliveries.wait(cast(Producer, producer), stop)
        assert producer.polls == polls, (stopping, producer.polls)


class FullProducer:
    """Refuses ``full`` produce calls with BufferError (librdkafka's queue is full), then takes records."""

    def __init__(self, full: int = 0, refuse: bytes | None = None) -> None:
        self.full = full
        self.refuse = refuse
        self.produced: list[bytes] = []
        self.polls = 0

    def produce(self, topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        if value == self.refuse:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.produced.append(value)

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        return 0


def record(value: bytes) -> tuple[str, bytes, bytes]:
    return ("t", b"k", value)


def test_send_all_waits_for_room_in_a_full_queue_and_gives_up_only_when_stopping() -> None:
    producer = FullProducer(full=2)
    deliveries = send_all(cast(Producer, producer), [("a", record(b"a"))], threading.Event())
    assert producer.produced == [b"a"] and producer.polls == 2
    assert deliveries.pending == {"a"}
    stop = threading.Event()
    stop.set()
    with pytest.raises(KafkaUnavailable):
        send_all(cast(Producer, FullProducer(full=1)), [("a", record(b"a"))], stop)


def test_send_all_skips_answered_records_and_goes_on_past_a_refused_one() -> None:
    producer = FullProducer(refuse=b"big")
    deliveries = Deliveries()
    deliveries.confirmed.add("done")
    records = [("done", record(b"done")), ("big", record(b"big")), ("b", record(b"b"))]
    assert send_all(cast(Producer, producer), records, threading.Event(), deliveries) is deliveries
    assert producer.produced == [b"b"]
    assert set(deliveries.refused) == {"big"} and deliveries.refused["big"]
    assert deliveries.pending == {"b"}


def test_a_committer_with_nothing_finished_commits_nothing() -> None:
    consumer = RecordingConsumer({})
    committer = Committer(consumer, "t", every_s=0.0)  # type: ignore[arg-type]
    committer.tick()
    committer.flush()
    assert consumer.commits == 0


def test_a_commit_is_due_once_exactly_every_s_has_passed() -> None:
    clock, consumer = Clock(), RecordingConsumer({})
    committer = Committer(consumer, "t", every_s=1.0, clock=clock.monotonic)  # type: ignore[arg-type]
    clock.now += 1.0
    committer.done()
    assert consumer.commits == 1


# --- the bridge's write --------------------------------------------------------------------------


def test_a_reading_mongodb_refuses_is_kept_as_a_rejection_of_that_very_message() -> None:
    built = make_bridge(refuse=frozenset({"r-2"}))
    assert built.bridge.loop.process([reading("r-1", mid=1)])
    batch = [reading("r-1", mid=2), reading("r-2", mid=3), reading("r-3", mid=4)]  # r-1 again: skipped
    assert built.bridge.loop.process(batch)
    [(_, [rejection])] = [(c, d) for c, d in built.store.inserted if c == "rejections"]
    assert rejection["kind"] == "store_refused"
    assert rejection["payload"] == batch[1].payload.decode(), "the refused message, not its neighbour"
    assert built.store.ids("readings") == ["r-1", "r-3"]
    assert "r-2" not in built.bridge.recent and "r-3" in built.bridge.recent
    assert [mid for mid, _ in built.client.acked] == [1, 2, 3, 4]


def test_a_reading_kafka_refuses_is_kept_as_a_rejection_of_that_very_message() -> None:
    built = make_bridge()
    built.producer.fail_next_answers(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    batch = [reading("r-1", mid=1)]
    assert built.bridge.loop.process(batch)
    [(_, [rejection])] = [(c, d) for c, d in built.store.inserted if c == "rejections"]
    assert rejection["kind"] == "kafka_refused"
    assert rejection["payload"] == batch[0].payload.decode()


def test_the_bridge_counts_what_it_stored_forwarded_and_skipped_and_hands_new_readings_to_the_aggregator() -> None:
    built = make_bridge()
    aggregator = mock.Mock(spec=Aggregator)
    built.bridge.aggregator = aggregator
    before = {name: sample(f"pipeline_readings_{name}_total") for name in ("stored", "forwarded", "duplicate")}
    assert built.bridge.loop.process([reading("r-1", mid=1)])
    assert built.bridge.loop.process([reading("r-1", mid=2), reading("r-2", mid=3), reading("r-2", mid=4)])
    after = {name: sample(f"pipeline_readings_{name}_total") - before[name] for name in before}
    assert after == {"stored": 2.0, "forwarded": 2.0, "duplicate": 2.0}
    touched = [[r.id for r in call.args[0]] for call in aggregator.touch.call_args_list]
    assert touched == [["r-1"], ["r-2"]]


# --- the results sink's write --------------------------------------------------------------------


def test_a_result_mongodb_refuses_is_kept_as_a_rejection_of_that_very_message() -> None:
    batch = [prediction_message("r-1"), prediction_message("r-2")]
    built = make_sink([batch], refuse=frozenset({"r-2"}))
    built.sink.run()
    [(_, [rejection])] = [(c, d) for c, d in built.store.inserted if c == "rejections"]
    assert rejection["kind"] == "store_refused"
    assert rejection["payload"] == batch[1].value().decode()
    assert built.events[-1] == "commit", "kept as a rejection: committed"


def test_the_sink_counts_what_it_stored_and_hands_new_predictions_to_the_aggregator() -> None:
    built = make_sink([[prediction_message("r-1"), prediction_message("r-2")]])
    aggregator = mock.Mock(spec=Aggregator)
    built.sink.aggregator = aggregator
    before = sample("pipeline_results_stored_total", {"kind": "prediction"})
    built.sink.run()
    assert sample("pipeline_results_stored_total", {"kind": "prediction"}) - before == 2.0
    [call] = aggregator.touch_accuracy.call_args_list
    assert [d["_id"] for d in call.args[0]] == ["r-1", "r-2"]


# --- the model service's write -----------------------------------------------------------------


def test_a_batch_retried_after_kafka_did_not_take_it_is_scored_once_and_counted_once(
    make_scorer: Any,  # noqa: F811 - the fixture imported above
) -> None:
    built = make_scorer([[reading_message("r-1"), reading_message("r-2")]])
    built.producer.fail_next_answers(KafkaError(KafkaError._MSG_TIMED_OUT))
    before = sample("pipeline_readings_scored_total")
    with mock.patch.object(built.scorer, "score", wraps=built.scorer.score) as score:
        built.scorer.run()
    assert built.events.count("produce results-t r-1") == 2, "produced again after Kafka did not take it"
    assert built.events[-1] == "commit"
    assert score.call_count == 1, "the retry produces the results of the first scoring"
    assert sample("pipeline_readings_scored_total") - before == 2.0
