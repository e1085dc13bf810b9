"""The bridge's details the ordering tests leave open (issue #12): what prepare() builds, the wiring of
Bridge.__init__ and start(), its MQTT callbacks, batching, and what a write stores, counts and refuses.

Found by mutation testing (`make mutation`): each test fails under a mutant that passed before.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

import pytest
from confluent_kafka import KafkaError, Producer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import REGISTRY
from pymongo.errors import BulkWriteError

from pipeline import contract
from Server import ingest as ingest_module
from Server.aggregates import Aggregator
from Server.ingest import Bridge, Incoming, RecentIds, prepare
from Server.settings import Settings as ServerSettings
from Server.store import TRANSIENT, Inserted, Store, WriteNotConfirmed
from tests.unit.fakes import (
    HalfTakingProducer,
    RecordingMqttClient,
    RecordingProducer,
    RecordingStore,
    SlowToAnswer,
    UnconfirmedOnceStore,
)
from tests.unit.test_orderings import (
    SERVER,
    _no_settings_from_the_environment,  # noqa: F401 - the same isolation from the caller's shell
    make_bridge,
    reading,
)

TS = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 27, 10, 0, 1, 250000, tzinfo=UTC)
TOPIC = "sensors/s1/readings"


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def payload(**extras: object) -> bytes:
    return json.dumps({"id": "r-1", "sensor": "s1", "ts": "2026-11-27T10:00:00Z", "v": 1.5, **extras}).encode()


# --- prepare: the reading, its Kafka value and its MongoDB document --------------------------------


def test_prepare_stamps_the_arrival_and_builds_the_record_and_the_document() -> None:
    prepared = prepare(payload(zone="n"), TOPIC, RECEIVED, 16_384)
    assert prepared.reading.received_at == RECEIVED
    assert prepared.value == (
        b'{"id":"r-1","sensor":"s1","ts":"2026-11-27T10:00:00.000Z","v":1.5,'
        b'"received_at":"2026-11-27T10:00:01.250Z","zone":"n"}'
    )
    assert prepared.document == {"_id": "r-1", "sensor": "s1", "ts": TS, "v": 1.5, "received_at": RECEIVED, "zone": "n"}


def test_prepare_checks_the_sensor_against_the_topic_and_the_size_against_the_limit_given() -> None:
    with pytest.raises(contract.ContractError) as caught:
        prepare(payload(), "sensors/s2/readings", RECEIVED, 16_384)
    assert caught.value.kind == "wrong_sensor"
    raw = payload()
    assert prepare(raw, TOPIC, RECEIVED, len(raw)).reading.id == "r-1"
    with pytest.raises(contract.ContractError) as caught:
        prepare(raw, TOPIC, RECEIVED, len(raw) - 1)
    assert caught.value.kind == "too_large"


# What prepare() writes around an extra field "pad" (orjson, compact), by hand.
RECORD_FRAME = (
    b'{"id":"r-1","sensor":"s1","ts":"2026-11-27T10:00:00.000Z","v":1.5,'
    b'"received_at":"2026-11-27T10:00:01.250Z","pad":""}'
)


@pytest.mark.parametrize(("size", "kind"), [(1_000_000, "ok"), (1_000_001, "too_large")])
def test_a_reading_whose_kafka_record_passes_1_mb_is_refused_as_too_large(size: int, kind: str) -> None:
    pad = "x" * (size - len(RECORD_FRAME))
    try:
        prepared = prepare(payload(pad=pad), TOPIC, RECEIVED, 2_000_000)
    except contract.ContractError as error:
        assert (error.kind, kind) == ("too_large", "too_large")
        assert str(error) == "the reading's Kafka record is 1000001 bytes, over the 1000000-byte limit"
        return
    assert kind == "ok" and len(prepared.value) == size


# --- the wiring ------------------------------------------------------------------------------------


def test_the_bridge_makes_its_client_from_the_settings_with_its_callbacks_and_starts_with_the_stop() -> None:
    made: list[tuple[Any, str]] = []

    def client(settings: Any, client_id: str, *, manual_ack: bool = False) -> RecordingMqttClient:
        made.append((settings, client_id))
        return RecordingMqttClient(client_id, manual_ack)

    settings = ServerSettings(**SERVER, MQTT_CLIENT_ID="bridge-7", SERVER_MAX_INFLIGHT=33)
    stop = threading.Event()
    with mock.patch.object(ingest_module, "make_client", client):
        bridge = Bridge(settings, cast(Store, RecordingStore()), cast(Producer, RecordingProducer()), stop)
    assert made == [(settings, "bridge-7")]
    wired = cast(Any, bridge.client)
    assert wired.on_connect == bridge._on_connect
    assert wired.on_disconnect == bridge._on_disconnect
    assert wired.on_message == bridge._on_message
    assert wired.on_subscribe == bridge._on_subscribe
    with mock.patch.object(ingest_module, "connect", return_value=True) as connect:
        assert bridge.start()
    connect.assert_called_once_with(bridge.client, settings, stop, receive_maximum=33)


def test_the_aggregator_given_gets_the_readings_stored() -> None:
    aggregator = mock.Mock(spec=Aggregator)
    with mock.patch.object(ingest_module, "make_client", lambda *a, **k: RecordingMqttClient()):
        bridge = Bridge(
            ServerSettings(**SERVER),
            cast(Store, RecordingStore()),
            cast(Producer, RecordingProducer()),
            threading.Event(),
            aggregator,
        )
    assert bridge.loop.process([reading("r-1", mid=1)])
    [call] = aggregator.touch.call_args_list
    assert [r.id for r in call.args[0]] == ["r-1"]


# --- MQTT callbacks --------------------------------------------------------------------------------


def code(name: str, packet: int = PacketTypes.CONNACK) -> ReasonCode:
    return ReasonCode(packet, name)


def test_each_connection_is_numbered_and_shown_in_the_connected_gauge() -> None:
    built = make_bridge()
    bridge, client = built.bridge, cast(Any, built.client)
    connects = sample("pipeline_connections_total", {"server": "mqtt"})
    flags = SimpleNamespace(session_present=True)
    lost = code("Unspecified error", PacketTypes.DISCONNECT)
    bridge._on_disconnect(client, None, None, lost, None)  # whatever an earlier test left in the gauge
    assert sample("pipeline_connected", {"server": "mqtt"}) == 0.0
    bridge._on_connect(client, None, flags, code("Success"), None)
    assert sample("pipeline_connected", {"server": "mqtt"}) == 1.0
    bridge._on_disconnect(client, None, None, lost, None)
    assert sample("pipeline_connected", {"server": "mqtt"}) == 0.0
    bridge._on_connect(client, None, flags, code("Success"), None)
    assert bridge.connection == 2, "a reconnect is a new connection: the old packet ids mean nothing on it"
    assert sample("pipeline_connections_total", {"server": "mqtt"}) - connects == 2.0


def test_a_topic_that_is_not_utf8_is_queued_with_a_replacement_and_becomes_a_rejection() -> None:
    built = make_bridge()
    message = mock.Mock(_topic=b"sensors/\xff/readings", payload=payload(), mid=7, qos=1)
    built.bridge._on_message(cast(Any, None), None, message)
    queued = built.bridge.inbox.get_nowait()
    assert queued.topic == "sensors/\ufffd/readings"
    assert built.bridge.loop.process([queued])
    [(_, [rejection])] = [(c, d) for c, d in built.store.inserted if c == "rejections"]
    assert (rejection["kind"], rejection["topic"]) == ("wrong_sensor", "sensors/\ufffd/readings")


def test_a_broker_depth_that_is_not_a_number_is_ignored() -> None:
    built = make_bridge()
    before = sample("pipeline_broker_stored_bytes")
    depth = mock.Mock(_topic=b"$SYS/broker/store/messages/bytes", payload=b"lots", mid=0, qos=0)
    built.bridge._on_message(cast(Any, None), None, depth)
    assert sample("pipeline_broker_stored_bytes") == before
    assert built.bridge.inbox.empty()


# --- batching --------------------------------------------------------------------------------------


def test_an_empty_inbox_gives_an_empty_batch_soon() -> None:
    built = make_bridge()
    started = time.monotonic()
    assert built.bridge.poll() == []
    assert time.monotonic() - started < 1.0, "the loop looks at its stop between polls"


def test_a_batch_waits_server_batch_wait_ms_for_more_messages() -> None:
    built = make_bridge(SERVER_BATCH_WAIT_MS=2_000, SERVER_BATCH_MAX=3)
    bridge = built.bridge
    bridge.inbox.put(reading("r-1", mid=1))
    late = threading.Timer(0.3, lambda: bridge.inbox.put(reading("r-2", mid=2)))
    late.start()
    try:
        batch = bridge.poll()
    finally:
        late.cancel()
    assert [i.mid for i in batch] == [1, 2], "the second came within the wait"


# --- what a write stores, counts and refuses -------------------------------------------------------


def test_a_reading_on_its_topic_is_stored_with_its_arrival_time() -> None:
    built = make_bridge()
    item = Incoming(TOPIC.replace("s1", "s-1"), payload(sensor="s-1"), 7, 1, 0, RECEIVED)
    assert built.bridge.loop.process([item])
    [(_, [document])] = built.store.inserted
    assert document["received_at"] == RECEIVED
    [(_, _, value)] = built.producer.produced
    assert json.loads(value)["received_at"] == "2026-11-27T10:00:01.250Z"


def test_a_reading_already_in_mongodb_is_counted_as_a_duplicate_and_not_as_stored() -> None:
    """After a restart the bridge's memory of ids is empty: MongoDB's duplicate answer is what tells."""
    built = make_bridge()
    built.store.already = frozenset({"r-1"})
    aggregator = mock.Mock(spec=Aggregator)
    built.bridge.aggregator = aggregator
    names = ("stored", "duplicate", "forwarded")
    before = {name: sample(f"pipeline_readings_{name}_total") for name in names}
    sensor = sample("pipeline_sensor_readings_stored_total", {"sensor": "s-1"})
    assert built.bridge.loop.process([reading("r-1", mid=1), reading("r-2", mid=2)])
    after = {name: sample(f"pipeline_readings_{name}_total") - before[name] for name in names}
    assert after == {"stored": 1.0, "duplicate": 1.0, "forwarded": 2.0}
    assert sample("pipeline_sensor_readings_stored_total", {"sensor": "s-1"}) - sensor == 1.0
    [call] = aggregator.touch.call_args_list
    assert [r.id for r in call.args[0]] == ["r-2"], "only what this insert stored"
    assert built.client.acked == [(1, 1), (2, 1)]


def test_the_publish_to_stored_latency_is_the_readings_age_and_never_negative() -> None:
    built = make_bridge()
    count, total = (sample(f"pipeline_publish_to_stored_seconds_{s}") for s in ("count", "sum"))
    now = datetime.now(UTC)
    fresh = json.dumps({"id": "r-1", "sensor": "s-1", "ts": contract.iso(now), "v": 1}).encode()
    ahead = json.dumps({"id": "r-2", "sensor": "s-1", "ts": contract.iso(now + timedelta(hours=1)), "v": 1}).encode()
    batch = [Incoming(contract.readings_topic("s-1"), raw, i, 1, 0, now) for i, raw in enumerate((fresh, ahead))]
    assert built.bridge.loop.process(batch)
    assert sample("pipeline_publish_to_stored_seconds_count") - count == 2.0
    # The fresh reading is well under a second old; the one from a clock an hour ahead counts 0.
    assert 0.0 <= sample("pipeline_publish_to_stored_seconds_sum") - total < 0.9


def test_what_an_earlier_try_made_durable_is_counted_and_aggregated_once_the_batch_is_done() -> None:
    """Try 1: MongoDB stores r-1 and r-2, Kafka confirms r-1 only; try 2: Kafka confirms r-2."""
    built = make_bridge()
    built.producer = HalfTakingProducer()
    built.bridge.producer = cast(Producer, built.producer)
    aggregator = mock.Mock(spec=Aggregator)
    built.bridge.aggregator = aggregator
    before = {name: sample(f"pipeline_readings_{name}_total") for name in ("stored", "forwarded")}
    assert built.bridge.loop.process([reading("r-1", mid=1), reading("r-2", mid=2)])
    assert built.store.ids("readings") == ["r-1", "r-2"]
    assert [json.loads(v)["id"] for _, _, v in built.producer.produced] == ["r-1", "r-2", "r-2"]
    after = {name: sample(f"pipeline_readings_{name}_total") - before[name] for name in before}
    touched = [r.id for call in aggregator.touch.call_args_list for r in call.args[0]]
    assert (after, touched) == ({"stored": 2.0, "forwarded": 2.0}, ["r-1", "r-2"])


def test_a_bridge_stopping_while_kafkas_queue_is_full_keeps_and_acknowledges_nothing() -> None:
    built = make_bridge()

    def full(*args: Any, **kwargs: Any) -> None:
        raise BufferError("queue full")

    built.producer.produce = full  # type: ignore[method-assign]
    built.stop.set()
    assert not built.bridge.loop.process([reading("r-1", mid=1)])
    assert built.store.inserted == [], "neither stored nor kept as a rejection: redelivered"
    assert built.client.acked == []


def test_a_reading_kafka_refuses_at_once_is_a_rejection_and_its_neighbours_go_on() -> None:
    built = make_bridge()
    built.producer.fail_next_answers(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert built.bridge.loop.process([reading("r-1", mid=1)])
    [(_, [rejection])] = [(c, d) for c, d in built.store.inserted if c == "rejections"]
    assert (rejection["kind"], rejection["reason"]) == (
        "kafka_refused",
        "Kafka refused the record: Broker: Message size too large",
    )


# --- the ids remembered ----------------------------------------------------------------------------


def test_the_bridge_remembers_exactly_server_dedupe_cache_ids() -> None:
    recent = RecentIds(3)
    recent.add_all(["a", "b", "c"])
    assert all(i in recent for i in "abc"), "at the size: nothing forgotten"
    recent.add_all(["d"])
    assert "a" not in recent and all(i in recent for i in "bcd")
    recent.add_all(["b"])
    assert all(i in recent for i in "bcd"), "seen again: remembered, nothing new to forget"
    none = RecentIds(0)
    none.add_all(["a"])
    assert "a" not in none, "SERVER_DEDUPE_CACHE=0 remembers nothing"


def test_a_momentarily_full_kafka_queue_delays_the_batch_and_rejects_nothing() -> None:
    built = make_bridge()
    produce, full = built.producer.produce, [2]

    def sometimes_full(*args: Any, **kwargs: Any) -> None:
        if full[0]:
            full[0] -= 1
            raise BufferError("queue full")
        produce(*args, **kwargs)

    built.producer.produce = sometimes_full  # type: ignore[method-assign]
    assert built.bridge.loop.process([reading("r-1", mid=1)])
    assert [name for name, _ in built.store.inserted] == ["readings"], "stored, nothing kept as a rejection"
    assert built.producer.topics() == ["readings-t"]
    assert built.client.acked == [(1, 1)]


class PoisonStore(RecordingStore):
    """Raises (not an outage) for any insert holding ``poison``, as pymongo does for a document it cannot encode."""

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.poison = poison

    def insert_new(self, collection: str, documents: list[dict[str, Any]]) -> Any:
        if any(d.get("_id") == self.poison for d in documents):
            raise ValueError("cannot encode this document")
        return super().insert_new(collection, documents)


def test_a_batch_written_one_at_a_time_counts_each_reading_kafka_confirmed_once() -> None:
    built = make_bridge()
    built.bridge.store = cast(Store, PoisonStore("r-2"))
    before = sample("pipeline_readings_forwarded_total")
    assert built.bridge.loop.process([reading("r-1", mid=1), reading("r-2", mid=2), reading("r-3", mid=3)])
    assert cast(PoisonStore, built.bridge.store).ids("readings") == ["r-1", "r-3"]
    forwarded = [json.loads(v)["id"] for t, _, v in built.producer.produced if t == "readings-t"]
    assert forwarded == ["r-1", "r-2", "r-3"], "each once: r-2 is on Kafka, MongoDB could not take it"
    assert sample("pipeline_readings_forwarded_total") - before == 3.0, "each confirmation counted once"


def test_readings_whose_write_concern_was_not_confirmed_are_acknowledged_only_after_a_retry_and_counted_once() -> None:
    built = make_bridge()
    built.bridge.store = cast(Store, UnconfirmedOnceStore())
    aggregator = mock.Mock(spec=Aggregator)
    built.bridge.aggregator = aggregator
    before = sample("pipeline_readings_stored_total")
    duplicates = sample("pipeline_readings_duplicate_total")
    assert built.bridge.loop.process([reading("r-1", mid=1), reading("r-2", mid=2)])
    touched = [r.id for call in aggregator.touch.call_args_list for r in call.args[0]]
    assert touched == ["r-1", "r-2"], "aggregated once, though the retry saw them as duplicates"
    assert sample("pipeline_readings_stored_total") - before == 2.0
    assert sample("pipeline_readings_duplicate_total") == duplicates, (
        "stored by this batch's first try: not redelivered"
    )
    assert sorted(built.client.acked) == [(1, 1), (2, 1)], "acknowledged once the retry confirmed them"


def test_the_store_raises_on_an_unconfirmed_write_concern_with_what_the_primary_took() -> None:
    class Collection:
        def insert_many(self, documents: list[dict[str, Any]], ordered: bool) -> Any:
            raise BulkWriteError(
                {
                    "nInserted": 1,
                    "writeErrors": [{"index": 1, "code": 11000, "errmsg": "E11000 duplicate key"}],
                    "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication timed out"}],
                }
            )

    store = Store.__new__(Store)
    store.db = cast(Any, {"readings": Collection()})
    with pytest.raises(WriteNotConfirmed, match="waiting for replication timed out") as raised:
        store.insert_new("readings", [{"_id": "a"}, {"_id": "b"}])
    assert isinstance(raised.value, TRANSIENT), "the batch is tried again, never rejected"
    assert raised.value.inserted.is_new(0) and raised.value.inserted.duplicates == {1}
    collection = Collection()
    collection.insert_many = lambda documents, ordered: (_ for _ in ()).throw(  # type: ignore[method-assign]
        BulkWriteError({"nInserted": 1, "writeErrors": [{"index": 1, "code": 11000}], "writeConcernErrors": []})
    )
    store.db = cast(Any, {"readings": collection})
    assert store.insert_new("readings", [{"_id": "a"}, {"_id": "b"}]).duplicates == {1}, "no concern error: returned"


def test_the_bridges_readiness_says_kafka_is_down_while_it_answers_nothing_and_up_once_it_does() -> None:
    built = make_bridge()
    built.bridge.kafka.up()
    clock = SimpleNamespace(now=100.0)
    clock.monotonic = lambda: clock.now
    producer = SlowToAnswer(clock, 12, built.bridge.kafka)
    built.bridge.producer = cast(Producer, producer)
    with mock.patch("pipeline.kafka.time", clock):
        assert built.bridge.loop.process([reading("r-1", mid=1)])
    assert "Kafka has answered none of 1 records for 10s" in producer.seen, "down, with why, while it was silent"
    assert built.bridge.kafka(), "up again once the batch was confirmed"
    assert built.client.acked == [(1, 1)]


def test_readings_the_primary_took_before_mongodb_failed_to_confirm_are_counted_once_the_batch_is_done() -> None:
    """w=majority not confirmed: r-1 was new to the primary, r-2 already there; the retry finds both there."""
    built = make_bridge()
    store = built.store
    original = store.insert_new
    tries = [0]

    def insert_new(collection: str, documents: list[dict[str, Any]]) -> Any:
        tries[0] += 1
        if collection == "readings" and tries[0] == 1:
            store.already = frozenset({"r-1", "r-2"})
            raise WriteNotConfirmed(BulkWriteError({"writeConcernErrors": []}), Inserted(1, {1}, {}))
        return original(collection, documents)

    store.insert_new = insert_new  # type: ignore[method-assign]
    aggregator = mock.Mock(spec=Aggregator)
    built.bridge.aggregator = aggregator
    stored = sample("pipeline_readings_stored_total")
    duplicates = sample("pipeline_readings_duplicate_total")
    assert built.bridge.loop.process([reading("r-1", mid=1), reading("r-2", mid=2)])
    assert sample("pipeline_readings_stored_total") - stored == 1.0, "r-1 only: r-2 was there before"
    assert sample("pipeline_readings_duplicate_total") - duplicates == 1.0, "r-2 only: the retry found r-1 as its own"
    assert [r.id for call in aggregator.touch.call_args_list for r in call.args[0]] == ["r-1"]
    assert built.client.acked == [(1, 1), (2, 1)]
