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
and every consumer writes by reading id.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import Producer
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from pipeline import contract
from pipeline.health import Dependency
from pipeline.kafka import KafkaUnavailable, produce_all, send_all
from pipeline.metrics import CONNECTED, RECONNECTS
from pipeline.mqtt import connect, make_client
from pipeline.retry import RetryError, until_done
from Server import metrics
from Server.aggregates import Aggregator
from Server.settings import Settings
from Server.store import TRANSIENT, Store

logger = logging.getLogger(__name__)

RETRYABLE = TRANSIENT + (KafkaUnavailable,)


@dataclass
class Incoming:
    """A message as received, tagged with the connection it came on."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int
    received_at: datetime


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


def reason_kind(reason: str) -> str:
    """A short, stable label for a rejection reason (for counters)."""
    return reason.split(" (")[0].split(":")[0][:60]


class Bridge:
    """The MQTT side of the server: subscribe, batch, store, forward, acknowledge."""

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
        client.subscribe(self.subscription, options=SubscribeOptions(qos=1))
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
        if any(code.is_failure for code in codes):
            logger.error("the broker refused the subscription to %s: %s", self.subscription, codes)
            return
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
        self.inbox.put(
            Incoming(message.topic, message.payload, message.mid, message.qos, self.connection, datetime.now(UTC))
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
        while not self.stop.is_set():
            batch = self._next_batch()
            if batch:
                self.process(batch)

    def _next_batch(self) -> list[Incoming]:
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
        return batch

    # --- one batch ----------------------------------------------------------

    def process(self, batch: list[Incoming]) -> None:
        """Validate, store, forward and acknowledge one batch (or leave it unacknowledged on stop)."""
        metrics.RECEIVED.inc(len(batch))
        metrics.BATCH_SIZE.observe(len(batch))
        readings: list[tuple[Incoming, contract.Reading]] = []
        rejections: list[tuple[Incoming, contract.Rejection]] = []
        for item in batch:
            try:
                reading = contract.parse_reading(
                    item.payload, item.topic, max_bytes=self.settings.SERVER_MAX_PAYLOAD_BYTES
                )
                readings.append((item, reading.model_copy(update={"received_at": item.received_at})))
            except contract.ContractError as error:
                rejections.append(
                    (item, contract.Rejection.of(item.payload, "mqtt", item.topic, str(error), item.received_at))
                )
        try:
            refused = until_done(
                lambda: self._deliver([r for _, r in readings]), self.stop, "store and forward readings", RETRYABLE
            )
            for index in sorted(refused, reverse=True):
                item, reading = readings.pop(index)
                rejections.append(
                    (item, contract.Rejection.of(item.payload, "mqtt", item.topic, refused[index], item.received_at))
                )
            if rejections:
                until_done(
                    lambda: self._reject([r for _, r in rejections]), self.stop, "keep rejected payloads", RETRYABLE
                )
        except RetryError:
            logger.warning("stopping with %d readings not yet durable; the broker will redeliver them", len(batch))
            return
        for item in batch:
            self._ack(item)
        metrics.INBOX.dec(len(batch))

    def _deliver(self, readings: list[contract.Reading]) -> dict[int, str]:
        """Kafka and MongoDB get the readings; returns {index: reason} for those MongoDB refused.

        A reading this bridge stored recently (a redelivery, or a sensor's
        resend) is recognised by its id in a bounded in-memory set and skipped;
        after a restart that set is empty, so a redelivered reading may reach
        Kafka a second time (the model service and MongoDB key by reading id,
        so that changes nothing). MongoDB's duplicate-key answer catches the
        rest. Asking MongoDB first would cost a query per batch, and FerretDB
        answers an ``_id $in`` query by scanning the whole collection.
        """
        if not readings:
            return {}
        fresh: dict[str, int] = {}
        for index, reading in enumerate(readings):
            if reading.id not in self.recent:
                fresh.setdefault(reading.id, index)  # the same id twice in a batch: one copy
        batch = [readings[i] for i in fresh.values()]
        records = [
            (self.settings.KAFKA_TOPIC_READINGS, r.sensor.encode(), contract.dumps(r.to_message())) for r in batch
        ]
        # Kafka confirms while MongoDB inserts: the batch waits for the slower, not for both in turn.
        try:
            deliveries = send_all(self.producer, records, self.stop)
        except Exception:
            self.kafka.down()
            raise
        try:
            inserted = self.store.insert_new(contract.COLLECTION_READINGS, [r.to_document() for r in batch])
        except Exception:
            self.mongo.down()
            raise
        self.mongo.up()
        try:
            deliveries.wait(self.producer, self.stop)
        except Exception:
            self.kafka.down()
            raise
        self.kafka.up()
        stored = [r for i, r in enumerate(batch) if inserted.is_new(i)]
        if self.aggregator is not None:
            self.aggregator.touch(stored)
        self.recent.add_all(r.id for i, r in enumerate(batch) if i not in inserted.refused)
        metrics.FORWARDED.inc(len(records))
        metrics.STORED.inc(inserted.new)
        metrics.DUPLICATES.inc(len(readings) - len(batch) + len(inserted.duplicates))
        now = datetime.now(UTC)
        for reading in stored:
            metrics.PUBLISH_TO_STORED.observe(max(0.0, (now - reading.ts).total_seconds()))
        # Map MongoDB's refusals (indexes into `batch`) back to indexes into `readings`.
        positions = list(fresh.values())
        return {positions[i]: reason for i, reason in inserted.refused.items()}

    def _reject(self, rejections: list[contract.Rejection]) -> None:
        unique = {r.key: r for r in rejections}
        self.store.insert_new(contract.COLLECTION_REJECTIONS, [r.to_document() for r in unique.values()])
        records = [
            (self.settings.KAFKA_TOPIC_DEADLETTER, r.topic.encode(), contract.dumps(r.model_dump())) for r in rejections
        ]
        produce_all(self.producer, records, self.stop)
        for rejection in rejections:
            metrics.REJECTED.labels(reason_kind(rejection.reason)).inc()
            logger.info("rejected a payload on %s %s: %s", rejection.transport, rejection.topic, rejection.reason)

    def _ack(self, item: Incoming) -> None:
        # A message from an earlier connection is redelivered on the new one
        # (persistent session); acking its old packet id could ack another message.
        if item.qos > 0 and item.connection == self.connection:
            self.client.ack(item.mid, item.qos)
