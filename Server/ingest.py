"""MQTT readings into MongoDB and Kafka, acknowledged only once both have them.

The broker sends at most SERVER_MAX_INFLIGHT unacknowledged messages (MQTT 5
Receive Maximum), so memory stays bounded whatever happens downstream. Each
batch is validated; valid readings are produced to Kafka (idempotent producer,
``acks=all``), then inserted into MongoDB keyed by reading id; rejected payloads
are stored with their reason and produced to the dead-letter topic. Only then
are the batch's messages acknowledged (manual PUBACK). If MongoDB or Kafka is
away, the batch is retried with backoff and nothing is acknowledged, so the
broker stops sending and keeps the rest in the persistent session. A crash
loses nothing: unacknowledged messages are redelivered and the keyed writes
make the repeat harmless: a reading already in MongoDB is not forwarded again,
and every consumer writes by reading id. The cycle itself (and what becomes a
rejection) is :class:`pipeline.batch.BatchLoop`'s.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import paho.mqtt.client as mqtt
from confluent_kafka import Producer
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from pipeline import contract
from pipeline.batch import Attempt, BatchLoop, DeadLetters, Failure
from pipeline.health import Dependency
from pipeline.kafka import Deliveries, KafkaUnavailable, send_all
from pipeline.metrics import CONNECTED, RECONNECTS
from pipeline.mqtt import connect, make_client
from Server import metrics
from Server.aggregates import Aggregator
from Server.settings import Settings
from Server.store import TRANSIENT, Store, WriteNotConfirmed

logger = logging.getLogger(__name__)

RETRYABLE = TRANSIENT + (KafkaUnavailable,)

#: Mosquitto's store, published every sys_interval (10 s) and retained: its queue depth, as gauges.
BROKER_STORE_TOPICS = {
    "$SYS/broker/store/messages/count": metrics.BROKER_STORED,
    "$SYS/broker/store/messages/bytes": metrics.BROKER_STORED_BYTES,
}


@dataclass
class Incoming:
    """A message as received, tagged with the connection it came on."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int
    received_at: datetime


def prepare(payload: bytes, topic: str, received_at: datetime, max_bytes: int) -> Prepared:
    """One MQTT message, validated, with its Kafka value and MongoDB document built.

    Raises :class:`contract.ContractError` for a payload that breaks the
    contract; tests/unit/test_fuzz.py holds the property that nothing else
    escapes and that what it returns is encodable within the limits.
    """
    reading = contract.parse_reading(payload, topic, max_bytes=max_bytes, received_at=received_at)
    value = contract.dumps(reading.to_message())
    if len(value) > contract.MAX_RECORD_BYTES:
        raise contract.ContractError(
            f"the reading's Kafka record is {len(value)} bytes, over the {contract.MAX_RECORD_BYTES}-byte limit",
            "too_large",
        )
    return Prepared(reading, value, reading.to_document())


class RecentIds:
    """The ids of the last ``size`` readings stored, oldest forgotten first (insertion-ordered dict)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: dict[str, None] = {}

    def __contains__(self, reading_id: object) -> bool:
        return reading_id in self._ids

    def add_all(self, ids: Iterable[str]) -> None:
        """Remember ``ids``, forgetting the oldest beyond ``size``."""
        for reading_id in ids:
            self._ids[reading_id] = None
        excess = len(self._ids) - self.size
        if excess > 0:
            for reading_id in list(itertools.islice(self._ids, excess)):
                del self._ids[reading_id]


@dataclass(frozen=True)
class Prepared:
    """A valid reading with its Kafka value and MongoDB document, both built (and so encodable)."""

    reading: contract.Reading
    value: bytes
    document: dict[str, Any]


class Bridge:
    """The MQTT side of the server: subscribe, batch, store, forward, acknowledge.

    It is the :class:`pipeline.batch.Source` (the broker's messages, acknowledged
    by manual PUBACK) and the :class:`pipeline.batch.Handler` (validate, then
    MongoDB and Kafka) of its :class:`pipeline.batch.BatchLoop`.
    """

    transport: Literal["mqtt", "kafka"] = "mqtt"
    what = "store and forward readings"

    # The same collaborators as Server.results.ResultsSink's: Server.__main__ wires both from one set.
    def __init__(
        self,
        settings: Settings,
        store: Store,
        producer: Producer,
        stop: threading.Event,
        aggregator: Aggregator | None = None,
        kafka: Dependency | None = None,
    ) -> None:
        self.settings = settings
        self.aggregator = aggregator
        self.store = store
        self.producer = producer
        self.stop = stop
        self.recent = RecentIds(settings.SERVER_DEDUPE_CACHE)
        self.sensor_series = metrics.SensorSeries(settings.SERVER_SENSOR_METRICS_MAX)
        self.mongo = Dependency("mongodb")
        self.kafka = kafka or Dependency("kafka")
        self.inbox: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
        self.connection = 0
        self.connected = threading.Event()
        self.subscription = f"$share/{settings.MQTT_SHARE_GROUP}/{contract.MQTT_READINGS_FILTER}"
        client = make_client(settings, settings.MQTT_CLIENT_ID, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client
        self.loop = BatchLoop(
            self,
            self,
            DeadLetters(
                producer,
                settings.KAFKA_TOPIC_DEADLETTER,
                stop,
                metrics.REJECTED,
                lambda documents: store.insert_new(contract.COLLECTION_REJECTIONS, documents),
            ),
            stop,
            RETRYABLE,
        )

    # --- MQTT callbacks (paho's network thread) ------------------------------

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason_code: ReasonCode, _props: Any
    ) -> None:
        if reason_code.is_failure:
            logger.error(
                "MQTT broker %s:%s refused the bridge: %s",
                self.settings.MQTT_HOST,
                self.settings.MQTT_PORT,
                reason_code,
            )
            return
        self.connection += 1
        CONNECTED.labels("mqtt").set(1)
        RECONNECTS.labels("mqtt").inc()
        # Subscribe on every connect, session or not: a broker that lost its
        # state would otherwise leave the bridge subscribed to nothing.
        client.subscribe(
            [(self.subscription, SubscribeOptions(qos=1))]
            + [(topic, SubscribeOptions(qos=0)) for topic in BROKER_STORE_TOPICS]
        )
        logger.info(
            "connected to MQTT %s:%s as %s (session present: %s); subscribing to %s",
            self.settings.MQTT_HOST,
            self.settings.MQTT_PORT,
            self.settings.MQTT_CLIENT_ID,
            flags.session_present,
            self.subscription,
        )

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, codes: list[ReasonCode], _props: Any
    ) -> None:
        if codes and codes[0].is_failure:
            logger.error("the broker refused the subscription to %s: %s", self.subscription, codes[0])
            return
        if any(code.is_failure for code in codes[1:]):
            logger.warning("the broker refused $SYS (its queue depth will not be measured): %s", codes[1:])
        # Ready only now: a reading published before the SUBACK could find no subscriber.
        self.connected.set()
        logger.info("subscribed to %s", self.subscription)

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: ReasonCode, _props: Any
    ) -> None:
        self.connected.clear()
        CONNECTED.labels("mqtt").set(0)
        if not self.stop.is_set():
            logger.warning(
                "lost MQTT connection (%s); reconnecting, unacknowledged readings will be redelivered", reason_code
            )

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        # The topic's raw bytes: paho's `topic` property would raise on bytes that are not UTF-8
        # (a broker must refuse them, but an exception here would end paho's network thread).
        topic = bytes(message._topic).decode("utf-8", errors="replace")
        gauge = BROKER_STORE_TOPICS.get(topic)
        if gauge is not None:
            with contextlib.suppress(ValueError):
                gauge.set(float(message.payload))
            return
        self.inbox.put(
            Incoming(topic, bytes(message.payload), message.mid, message.qos, self.connection, datetime.now(UTC))
        )
        metrics.INBOX.inc()

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> bool:
        """Connect and start the network loop (paho reconnects with backoff); False if stopped first."""
        return connect(self.client, self.settings, self.stop, receive_maximum=self.settings.SERVER_MAX_INFLIGHT)

    def close(self) -> None:
        """Disconnect; the persistent session keeps what was not acknowledged."""
        self.client.disconnect()
        self.client.loop_stop()

    def run(self) -> None:
        """Process batches until stopped, then finish the batch in hand."""
        self.loop.run()

    # --- pipeline.batch.Source ---------------------------------------------

    def poll(self) -> list[Incoming]:
        """The next batch: up to SERVER_BATCH_MAX messages, waiting at most SERVER_BATCH_WAIT_MS for more."""
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.settings.SERVER_BATCH_WAIT_MS / 1000
        while len(batch) < self.settings.SERVER_BATCH_MAX:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=remaining) if remaining > 0 else self.inbox.get_nowait())
            except queue.Empty:
                break
        metrics.RECEIVED.inc(len(batch))
        metrics.BATCH_SIZE.observe(len(batch))
        return batch

    def describe(self, item: Incoming) -> tuple[bytes, str, datetime]:
        return item.payload, item.topic, item.received_at

    def done(self, batch: list[Incoming]) -> None:
        """Acknowledge the batch: MongoDB and Kafka have every reading, the rejections are kept."""
        # Only QoS 1 is acknowledged: the subscription is QoS 1, so nothing arrives at QoS 2, and a
        # QoS 0 message (the broker's own topics) has no packet id to acknowledge. A message from an
        # earlier connection is redelivered on the new one (persistent session); acking its old
        # packet id could ack another message.
        self.client.ack_all(item.mid for item in batch if item.qos == 1 and item.connection == self.connection)
        metrics.INBOX.dec(len(batch))

    def tick(self) -> None:
        """Nothing is due between batches: acknowledgements go out with each batch."""

    def release(self, finished: bool) -> None:
        """Nothing to do: :meth:`close` disconnects once the service has stopped."""

    # --- pipeline.batch.Handler --------------------------------------------

    def handle(self, item: Incoming) -> Prepared:
        """Validate one payload and build its Kafka value and MongoDB document (any error rejects it)."""
        return prepare(item.payload, item.topic, item.received_at, self.settings.SERVER_MAX_PAYLOAD_BYTES)

    def write(self, batch: list[Prepared], attempt: Attempt) -> dict[int, Failure]:
        """Kafka and MongoDB get the readings; returns those either refused, by index.

        A reading this bridge stored recently (a redelivery, or a sensor's
        resend) is recognised by its id in a bounded in-memory set and skipped;
        after a restart that set is empty, so a redelivered reading may reach
        Kafka a second time (the model service and MongoDB key by reading id,
        so that changes nothing). MongoDB's duplicate-key answer catches the
        rest. Asking MongoDB first would cost a query per batch, and FerretDB
        answers an ``_id $in`` query by scanning the whole collection. What
        Kafka confirmed or MongoDB stored in an earlier try of this batch
        (``attempt``) is not sent again.
        """
        fresh: dict[str, int] = {}
        for index, item in enumerate(batch):
            if item.reading.id not in self.recent:
                fresh.setdefault(item.reading.id, index)  # the same id twice in a batch: one copy
        todo = [batch[i] for i in fresh.values()]
        deliveries: Deliveries = attempt.memo.setdefault("kafka", Deliveries())
        stored_before = attempt.of("mongodb")
        # What a try made durable is counted, aggregated and timed once, by the call that ends without an error:
        # a try that stored readings and then failed on Kafka left them for the next (or a one-at-a-time) call.
        uncounted: dict[str, contract.Reading] = attempt.memo.setdefault("stored, not counted", {})
        forwarded_counted: set[Hashable] = attempt.memo.setdefault("forwarded, counted", set())
        records = (
            (p.reading.id, (self.settings.KAFKA_TOPIC_READINGS, p.reading.sensor.encode(), p.value)) for p in todo
        )
        # Kafka confirms while MongoDB inserts: the batch waits for the slower, not for both in turn.
        try:
            send_all(self.producer, records, self.stop, deliveries)
        except Exception:
            self.kafka.down()
            raise
        to_insert = [i for i, p in enumerate(todo) if p.reading.id not in stored_before]
        try:
            inserted = self.store.insert_new(contract.COLLECTION_READINGS, [todo[i].document for i in to_insert])
        except Exception as error:
            if isinstance(error, WriteNotConfirmed):
                # Taken by the primary only: tried again, acknowledged only once confirmed, counted once.
                new = (todo[to_insert[i]].reading for i in range(len(to_insert)) if error.inserted.is_new(i))
                uncounted.update((reading.id, reading) for reading in new)
            if isinstance(error, TRANSIENT):
                self.mongo.down()
            raise
        self.mongo.up()
        # What this batch's earlier try stored comes back as duplicates: not a redelivery.
        redelivered = sum(1 for i in inserted.duplicates if todo[to_insert[i]].reading.id not in uncounted)
        stored_before.update(todo[to_insert[i]].reading.id for i in range(len(to_insert)) if i not in inserted.refused)
        uncounted.update(
            (todo[to_insert[i]].reading.id, todo[to_insert[i]].reading)
            for i in range(len(to_insert))
            if inserted.is_new(i)
        )
        try:
            deliveries.wait(self.producer, self.stop, self.kafka)
        except Exception:
            self.kafka.down()
            raise
        self.kafka.up()
        index_of = {p.reading.id: i for i, p in enumerate(todo)}
        refused: dict[int, Failure] = {
            index_of[key]: Failure("kafka_refused", reason)
            for key, reason in deliveries.refused.items()
            if key in index_of
        }
        refused.update((to_insert[i], Failure("store_refused", reason)) for i, reason in inserted.refused.items())
        stored = [uncounted.pop(p.reading.id) for p in todo if p.reading.id in uncounted]
        if self.aggregator is not None:
            self.aggregator.touch(stored)
        self.recent.add_all(p.reading.id for i, p in enumerate(todo) if i not in refused)
        forwarded = deliveries.confirmed - forwarded_counted
        forwarded_counted.update(forwarded)
        metrics.FORWARDED.inc(len(forwarded))
        metrics.STORED.inc(len(stored))
        self.sensor_series.stored(reading.sensor for reading in stored)
        metrics.DUPLICATES.inc(len(batch) - len(todo) + redelivered)
        now = datetime.now(UTC)
        for reading in stored:
            metrics.PUBLISH_TO_STORED.observe(max(0.0, (now - reading.ts).total_seconds()))
        # Map the refusals (indexes into `todo`) back to indexes into `batch`.
        positions = list(fresh.values())
        return {positions[i]: failure for i, failure in refused.items()}
