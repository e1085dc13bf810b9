"""The results sink's details the ordering tests leave open (issue #12): a prediction and its alert share
an id and are both stored, what MongoDB already had is not aggregated again, a bad message is kept,
the latencies it measures, and the wiring of its consumer.

Found by mutation testing (`make mutation`): each test fails under a mutant that passed before.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from unittest import mock

from confluent_kafka import KafkaError, Producer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from pipeline import contract
from pipeline.health import Dependency
from Server import results as results_module
from Server.aggregates import Aggregator
from Server.results import ResultsSink
from Server.settings import Settings as ServerSettings
from Server.store import Store
from tests.unit.fakes import FakeMessage, RecordingConsumer, RecordingProducer, RecordingStore, UnconfirmedOnceStore
from tests.unit.test_orderings import (
    SERVER,
    _no_settings_from_the_environment,  # noqa: F401 - the same isolation from the caller's shell
    make_sink,
    prediction_message,
)

MODEL = contract.ModelIdentity(name="m", hash="h")


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_an_anomalys_prediction_and_its_alert_are_both_stored() -> None:
    anomalous = prediction_message("r-1", anomaly=True)
    alert = contract.Alert.of(contract.Prediction.model_validate_json(anomalous.value()))
    built = make_sink([[anomalous, FakeMessage(contract.result_message(alert), "alerts-t", b"s-1")]])
    built.sink.run()
    assert built.store.ids("predictions") == ["r-1"]
    assert built.store.ids("alerts") == ["r-1"], "the same reading id, in another collection"
    assert built.events[-1] == "commit"


def test_predictions_mongodb_already_had_are_neither_counted_nor_aggregated_again() -> None:
    built = make_sink([[prediction_message("r-1"), prediction_message("r-2")]])
    built.store.already = frozenset({"r-1"})
    aggregator = mock.Mock(spec=Aggregator)
    built.sink.aggregator = aggregator
    before = sample("pipeline_results_stored_total", {"kind": "prediction"})
    built.sink.run()
    assert sample("pipeline_results_stored_total", {"kind": "prediction"}) - before == 1.0
    [call] = aggregator.touch_accuracy.call_args_list
    assert [d["_id"] for d in call.args[0]] == ["r-2"], "a redelivered prediction counts once in the accuracy"


def test_predictions_whose_write_concern_was_not_confirmed_are_committed_after_a_retry_and_counted_once() -> None:
    built = make_sink([[prediction_message("r-1"), prediction_message("r-2")]])
    store = UnconfirmedOnceStore("predictions", events=built.events, already=frozenset({"r-2"}))
    built.sink.store = cast(Store, store)
    aggregator = mock.Mock(spec=Aggregator)
    built.sink.aggregator = aggregator
    before = sample("pipeline_results_stored_total", {"kind": "prediction"})
    built.sink.run()
    assert sample("pipeline_results_stored_total", {"kind": "prediction"}) - before == 1.0, "r-1, once"
    assert [d["_id"] for c in aggregator.touch_accuracy.call_args_list for d in c.args[0]] == ["r-1"]
    assert built.events[-1] == "commit", "committed once the retry confirmed them"


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(1, 8),
    already=st.sets(st.integers(0, 7)),
    unconfirmed=st.booleans(),
)
def test_each_prediction_new_to_mongodb_is_counted_and_aggregated_exactly_once(
    count: int, already: set[int], unconfirmed: bool
) -> None:
    """Whatever MongoDB had before and whether the first insert's write concern was confirmed."""
    built = make_sink([[prediction_message(f"r-{i}") for i in range(count)]])
    there = frozenset(f"r-{i}" for i in already)
    store = UnconfirmedOnceStore("predictions" if unconfirmed else "none", events=built.events, already=there)
    built.sink.store = cast(Store, store)
    aggregator = mock.Mock(spec=Aggregator)
    built.sink.aggregator = aggregator
    before = sample("pipeline_results_stored_total", {"kind": "prediction"})
    with mock.patch("tenacity.nap.time"):  # the retry's backoff, not waited out
        built.sink.run()
    new = sorted(f"r-{i}" for i in range(count) if i not in already)
    assert sample("pipeline_results_stored_total", {"kind": "prediction"}) - before == len(new)
    assert sorted(d["_id"] for c in aggregator.touch_accuracy.call_args_list for d in c.args[0]) == new
    assert built.events[-1] == "commit"


def test_a_message_that_is_not_a_result_is_kept_in_mongodb_and_on_the_dead_letter_topic() -> None:
    built = make_sink([[FakeMessage(b"not json", "results-t", b"s-1"), prediction_message("r-1")]])
    producer = RecordingProducer()
    built.sink.loop.dead_letters.producer = cast(Producer, producer)
    built.sink.run()
    [(_, [rejection])] = [(c, d) for c, d in built.store.inserted if c == "rejections"]
    assert (rejection["kind"], rejection["payload"], rejection["transport"]) == ("not_json", "not json", "kafka")
    assert producer.topics() == ["dead-t"]
    assert built.store.ids("predictions") == ["r-1"]


def test_the_latencies_of_a_stored_prediction_are_measured_as_they_are_and_never_negative() -> None:
    now = datetime.now(UTC)
    fresh = contract.Prediction(
        id="r-1", sensor="s-1", ds=now, yhat=1.0, yhat_lower=0.0, yhat_upper=2.0, v=1.0, anomaly=False, model=MODEL,
        scored_at=now,
    )  # fmt: skip
    ahead = fresh.model_copy(
        update={"id": "r-2", "ds": now + timedelta(hours=1), "scored_at": now + timedelta(hours=1)}
    )
    built = make_sink([[FakeMessage(contract.result_message(p), "results-t", b"s-1") for p in (fresh, ahead)]])
    names = ("scored_to_stored", "publish_to_prediction_stored")
    counts = {n: sample(f"pipeline_{n}_seconds_count") for n in names}
    sums = {n: sample(f"pipeline_{n}_seconds_sum") for n in names}
    built.sink.run()
    for n in names:
        assert sample(f"pipeline_{n}_seconds_count") - counts[n] == 2.0, n
        assert 0.0 <= sample(f"pipeline_{n}_seconds_sum") - sums[n] < 0.9, n


def sink_consumer(kafka: Dependency, **values: Any) -> RecordingConsumer:
    """The consumer of a results sink made with ``values``, after the sink ran (no batch came)."""
    consumers: list[RecordingConsumer] = []
    stop = threading.Event()

    def consumer(config: dict[str, Any]) -> RecordingConsumer:
        consumers.append(RecordingConsumer(config, [], stop=stop))
        return consumers[-1]

    settings = ServerSettings(**SERVER, **values)
    with mock.patch.object(results_module, "Consumer", consumer):
        store, producer = cast(Store, RecordingStore()), cast(Producer, RecordingProducer())
        sink = ResultsSink(settings, store, producer, stop, kafka=kafka)
    sink.run()
    [only] = consumers
    return only


def test_the_sinks_consumer_reads_both_topics_in_batches_waiting_the_bridges_batch_budget() -> None:
    kafka = Dependency("kafka")
    kafka.up()
    named = sink_consumer(kafka, SERVER_BATCH_WAIT_MS=50, MQTT_CLIENT_ID="b-7", KAFKA_RESULTS_GROUP_ID="results-g")
    assert named.subscribed == ["results-t", "alerts-t"]
    assert named.consumed[0] == (1000, 0.05)
    assert (named.config["group.id"], named.config["client.id"]) == ("results-g", "b-7-results")
    assert sink_consumer(kafka, SERVER_BATCH_WAIT_MS=0).consumed[0] == (1000, 0.01), "an idle sink does not spin"
    named.config["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert not kafka(), "the sink's consumer reports Kafka down too"


def test_the_aggregator_given_to_the_sink_gets_the_predictions_stored() -> None:
    aggregator = mock.Mock(spec=Aggregator)
    stop = threading.Event()
    batches = [[prediction_message("r-1")]]
    with mock.patch.object(results_module, "Consumer", lambda config: RecordingConsumer(config, batches, stop=stop)):
        store, producer = cast(Store, RecordingStore()), cast(Producer, RecordingProducer())
        sink = ResultsSink(ServerSettings(**SERVER), store, producer, stop, aggregator)
    sink.run()
    [call] = aggregator.touch_accuracy.call_args_list
    assert [d["_id"] for d in call.args[0]] == ["r-1"]
