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

Every reading is also kept on the sensor's own disk until the broker
acknowledges it (:class:`Data_collection.spool.Spool`, SENSOR_SPOOL_DIR): a sensor
killed with readings in its queue sends them, with their ids, when it starts
again. SENSOR_QUEUE_MAX bounds both; when full, the sensor stops reading its CSV
and says so, rather than drop.

A broker with no subscriber for the topic answers "no matching subscribers"
(MQTT 5 reason 16) and drops the reading. That happens right after a Mosquitto
restart, before the bridge has subscribed again (Mosquitto 2.0 does not restore
a persistent session's shared subscription). Such readings are held and
published again every second until a subscriber takes them; they count
against SENSOR_QUEUE_MAX, and may arrive after newer readings.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from Data_collection import metrics
from Data_collection.settings import Settings
from Data_collection.spool import Spool
from pipeline import contract
from pipeline.metrics import CONNECTED, RECONNECTS
from pipeline.mqtt import connect, make_client

logger = logging.getLogger(__name__)

#: MQTT 5 PUBACK reason: accepted, but nobody subscribes to the topic (so it is dropped).
NO_MATCHING_SUBSCRIBERS = 16
#: How often readings nobody took are published again.
HOLD_RETRY_S = 1.0
WARN_EVERY_S = 30.0
SENT = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)


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
        # Replayed copies (not counted in published/acked), mid -> payload.
        self._copies: dict[int, bytes] = {}
        self._recent: collections.deque[tuple[float, bytes]] = collections.deque()
        # (payload, counted) the broker had no subscriber for; published again every HOLD_RETRY_S.
        self._held: list[tuple[bytes, bool]] = []
        self._lost_at: float | None = None  # when the connection was last lost (monotonic)
        self._closed = threading.Event()
        self._last_warning = 0.0
        self._last_full_warning = 0.0
        self.spool = Spool(settings.SENSOR_SPOOL_DIR / f"{settings.SENSOR_ID}.sqlite", settings.SENSOR_QUEUE_MAX)
        client = make_client(settings, settings.SENSOR_ID)
        client.max_queued_messages_set(settings.SENSOR_QUEUE_MAX)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    def start(self, stop: threading.Event) -> bool:
        """Connect and start the network loop (paho reconnects with backoff); False if stopped first."""
        # Not on `stop`: held readings must still go out while the sensor drains on its way out.
        metrics.HELD.set_function(lambda: len(self._held))
        threading.Thread(target=self._retry_held, name="held-readings", daemon=True).start()
        return connect(self.client, self.settings, stop)

    def publish(self, reading: contract.Reading, stop: threading.Event) -> bool:
        """Keep one reading on disk and queue it at QoS 1; wait while the queue is full. False if stopped first."""
        return self._publish(contract.dumps(reading.to_message()), stop, spooled=False)

    def resend_spooled(self, stop: threading.Event) -> int:
        """Publish first what an earlier run kept on disk and the broker never acknowledged (same ids)."""
        left = self.spool.pending()
        if left:
            logger.warning(
                "sensor %s: %d readings from before the last stop were never acknowledged; publishing them first",
                self.settings.SENSOR_ID,
                len(left),
            )
        for payload in left:
            if not self._publish(payload, stop, spooled=True):
                break
        return len(left)

    def _publish(self, payload: bytes, stop: threading.Event, spooled: bool) -> bool:
        while True:
            with self._lock:
                room = len(self._held) < self.settings.SENSOR_QUEUE_MAX and (spooled or not self.spool.full)
            why = None
            if room and not spooled:
                try:
                    self.spool.add(payload)  # on disk before it can be sent
                    spooled = True
                except sqlite3.Error as error:  # a full or failing disk: wait, as for a full queue, and say why
                    room, why = False, f"the spool cannot be written ({error})"
            if room:
                # NO_CONN still queues a QoS 1 message: it goes out on reconnect.
                rc = self._send(payload, counted=True, new=True).rc
            else:
                rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
                self._warn_full(why)
            metrics.PAUSED.set(0 if rc in SENT else 1)
            if rc in SENT:
                return True
            if rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                raise RuntimeError(f"publish to {self.topic} failed: {mqtt.error_string(rc)}")
            if stop.wait(0.05):
                return False

    def _warn_full(self, why: str | None = None) -> None:
        if time.monotonic() - self._last_full_warning > WARN_EVERY_S:
            self._last_full_warning = time.monotonic()
            logger.warning(
                "sensor %s: %s: reading the CSV pauses until it can go on",
                self.settings.SENSOR_ID,
                why or f"{len(self.spool)} readings wait for the broker (SENSOR_QUEUE_MAX, kept in {self.spool.path})",
            )

    def _send(self, payload: bytes, counted: bool, new: bool = False) -> MQTTMessageInfo:
        """Publish at QoS 1 and track the message by its mid (a reading if ``counted``, else a copy)."""
        info = self.client.publish(self.topic, payload, qos=1)
        if info.rc not in SENT:
            return info
        with self._lock:
            if new:
                self.published += 1
            early = self._early_acks.pop(info.mid, None)
            if early is None:
                (self._unacked if counted else self._copies)[info.mid] = payload
        if new:
            metrics.PUBLISHED.inc()
            metrics.PENDING.inc()
        if early is not None:
            self._settle(info.mid, payload, counted, early)
        return info

    def _retry_held(self) -> None:
        """Publish again, every HOLD_RETRY_S while connected, the readings no subscriber took, until closed."""
        while not self._closed.wait(HOLD_RETRY_S):
            if not self.connected.is_set():
                continue
            with self._lock:
                held, self._held = self._held, []
            for index, (payload, counted) in enumerate(held):
                if self._send(payload, counted).rc not in SENT:
                    with self._lock:
                        self._held[:0] = held[index:]
                    break

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
        self._closed.set()
        self.client.disconnect()
        self.client.loop_stop()
        self.spool.close()

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
            # The window ends when the connection was lost, not now: after a long outage the
            # readings at risk are still those acknowledged just before the broker went away.
            cutoff = (self._lost_at or time.monotonic()) - self.settings.SENSOR_REPLAY_S
            payloads = [payload for at, payload in self._recent if at >= cutoff]
        for payload in payloads:
            # Not counted for draining: a copy the broker loses again is covered by the next replay.
            self._send(payload, counted=False)
        self.replayed += len(payloads)
        metrics.REPLAYED.inc(len(payloads))
        if payloads:
            logger.info(
                "reconnected: published again the %d readings acknowledged in the %ss before the connection was lost",
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
        with self._lock:
            self._lost_at = time.monotonic()
        CONNECTED.labels("mqtt").set(0)
        if reason_code != 0:
            logger.warning(
                "lost MQTT connection (%s); %d readings wait to be sent; reconnecting", reason_code, self.pending
            )

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason_code: ReasonCode, _props: Any) -> None:
        with self._lock:
            counted = mid in self._unacked
            payload = self._unacked.pop(mid, None) if counted else self._copies.pop(mid, None)
            if payload is None:
                # The PUBACK beat publish()'s return: _send() finishes the bookkeeping.
                self._early_acks[mid] = reason_code
                return
        self._settle(mid, payload, counted, reason_code)

    def _settle(self, mid: int, payload: bytes, counted: bool, reason_code: ReasonCode) -> None:
        """The broker answered: hold the reading if nobody subscribes, else count it acknowledged."""
        if reason_code.value == NO_MATCHING_SUBSCRIBERS:
            with self._lock:
                self._held.append((payload, counted))
                held = len(self._held)
                warn = time.monotonic() - self._last_warning > WARN_EVERY_S
                if warn:
                    self._last_warning = time.monotonic()
            if warn:
                logger.warning(
                    "nobody subscribes to %s (is the bridge running?): holding %d readings, publishing them again "
                    "every %.0fs",
                    self.topic,
                    held,
                    HOLD_RETRY_S,
                )
            return
        if counted:
            self._acknowledged(mid, payload, reason_code)

    def _acknowledged(self, mid: int, payload: bytes, reason_code: ReasonCode) -> None:
        # The broker has it (or refused it for good, which is counted and logged): off the disk.
        self.spool.remove(payload)
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
