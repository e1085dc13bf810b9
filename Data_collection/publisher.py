"""Publishing readings over MQTT at QoS 1 without losing them when the broker is away.

The client keeps a persistent session (fixed client id = the sensor id, clean
start off, a session expiry) and paho's bounded outgoing queue: while the
broker is unreachable, readings wait in the queue and are sent, in order and
with their original ids, when it returns. When the queue is full, publishing
waits instead of dropping.

A broker acknowledges a QoS 1 message before it has saved it (Mosquitto 2
saves its state every second), so a broker that crashes can lose readings it
already acknowledged. The sensor therefore keeps the readings acknowledged in
the last SENSOR_REPLAY_S seconds and publishes them again, with the same ids,
after every reconnect; the bridge recognises the copies by id.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from Data_collection import metrics
from Data_collection.settings import Settings
from pipeline import contract
from pipeline.metrics import CONNECTED, RECONNECTS
from pipeline.mqtt import connect, make_client

logger = logging.getLogger(__name__)


class Publisher:
    """One sensor's MQTT connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = contract.readings_topic(settings.SENSOR_ID)
        self._lock = threading.Lock()
        self.published = 0
        self.acked = 0
        self.refused = 0
        self.connected = threading.Event()
        self.connections = 0
        self.replayed = 0
        # mid -> payload until the broker acknowledges it; then (time, payload) in `recent`.
        self._unacked: dict[int, bytes] = {}
        self._early_acks: dict[int, ReasonCode] = {}
        self._replay_mids: set[int] = set()
        self._recent: collections.deque[tuple[float, bytes]] = collections.deque()
        client = make_client(settings, settings.SENSOR_ID)
        client.max_queued_messages_set(settings.SENSOR_QUEUE_MAX)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    def start(self, stop: threading.Event) -> bool:
        """Connect and start the network loop (paho reconnects with backoff); False if stopped first."""
        return connect(self.client, self.settings, stop)

    def publish(self, reading: contract.Reading, stop: threading.Event) -> bool:
        """Queue one reading at QoS 1; wait while the queue is full. False if stopped first."""
        payload = contract.dumps(reading.to_message())
        while True:
            info = self.client.publish(self.topic, payload, qos=1)
            # NO_CONN still queues a QoS 1 message: it goes out on reconnect.
            if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                with self._lock:
                    self.published += 1
                    early = self._early_acks.pop(info.mid, None)
                    if early is None:
                        self._unacked[info.mid] = payload
                metrics.PUBLISHED.inc()
                metrics.PENDING.inc()
                if early is not None:
                    self._acknowledged(info.mid, payload, early)
                return True
            if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                raise RuntimeError(f"publish to {self.topic} failed: {mqtt.error_string(info.rc)}")
            if stop.wait(0.05):
                return False

    @property
    def pending(self) -> int:
        """Readings published but not yet acknowledged by the broker."""
        with self._lock:
            return self.published - self.acked

    def drain(self, timeout_s: float) -> bool:
        """Wait until the broker has acknowledged every reading; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.pending > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """Disconnect cleanly (the session, and anything unsent in it, stays on the broker)."""
        self.client.disconnect()
        self.client.loop_stop()

    def _remember(self, payload: bytes) -> None:
        """Keep an acknowledged reading for the replay window (call with the lock held)."""
        now = time.monotonic()
        self._recent.append((now, payload))
        limit = self.settings.SENSOR_REPLAY_S
        while self._recent and (now - self._recent[0][0] > limit or len(self._recent) > self.settings.SENSOR_QUEUE_MAX):
            self._recent.popleft()

    def _replay(self) -> None:
        """Publish again what the broker acknowledged in the replay window (same payloads, same ids)."""
        with self._lock:
            cutoff = time.monotonic() - self.settings.SENSOR_REPLAY_S
            payloads = [payload for at, payload in self._recent if at >= cutoff]
        for payload in payloads:
            # Not tracked for draining: a copy the broker loses again is covered by the next replay.
            info = self.client.publish(self.topic, payload, qos=1)
            with self._lock:
                self._replay_mids.add(info.mid)
        self.replayed += len(payloads)
        if payloads:
            logger.info(
                "reconnected: published again the %d readings acknowledged in the last %ss",
                len(payloads),
                self.settings.SENSOR_REPLAY_S,
            )

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: ReasonCode, _props: Any
    ) -> None:
        if reason_code.is_failure:
            logger.error(
                "MQTT broker %s:%s refused sensor %s: %s",
                self.settings.MQTT_HOST,
                self.settings.MQTT_PORT,
                self.settings.SENSOR_ID,
                reason_code,
            )
            return
        logger.info(
            "connected to MQTT %s:%s as sensor %s, publishing to %s",
            self.settings.MQTT_HOST,
            self.settings.MQTT_PORT,
            self.settings.SENSOR_ID,
            self.topic,
        )
        self.connected.set()
        self.connections += 1
        if self.connections > 1 and self.settings.SENSOR_REPLAY_S > 0:
            self._replay()
        CONNECTED.labels("mqtt").set(1)
        RECONNECTS.labels("mqtt").inc()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: ReasonCode, _props: Any
    ) -> None:
        self.connected.clear()
        CONNECTED.labels("mqtt").set(0)
        if reason_code != 0:
            logger.warning(
                "lost MQTT connection (%s); %d readings wait to be sent; reconnecting", reason_code, self.pending
            )

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason_code: ReasonCode, _props: Any) -> None:
        with self._lock:
            if mid in self._replay_mids:
                self._replay_mids.discard(mid)
                return
            payload = self._unacked.pop(mid, None)
            if payload is None:
                # The PUBACK beat publish()'s return: publish() finishes the bookkeeping.
                self._early_acks[mid] = reason_code
                return
        self._acknowledged(mid, payload, reason_code)

    def _acknowledged(self, mid: int, payload: bytes, reason_code: ReasonCode) -> None:
        with self._lock:
            self.acked += 1
            if reason_code.is_failure:
                self.refused += 1
            else:
                self._remember(payload)
        metrics.ACKED.inc()
        metrics.PENDING.dec()
        if reason_code.is_failure:
            # MQTT 5 tells us when the ACL refuses a topic; MQTT 3 would drop silently.
            metrics.REFUSED.inc()
            logger.error("broker refused reading (mid %d) on %s: %s", mid, self.topic, reason_code)
