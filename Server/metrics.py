"""The bridge's Prometheus metrics."""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

RECEIVED = Counter("pipeline_readings_received", "MQTT messages the bridge received")
STORED = Counter("pipeline_readings_stored", "Readings newly stored in MongoDB")
FORWARDED = Counter("pipeline_readings_forwarded", "Readings Kafka confirmed on the readings topic")
DUPLICATES = Counter("pipeline_readings_duplicate", "Redelivered readings found already stored (skipped)")
REJECTED = Counter("pipeline_rejections", "Payloads rejected, by reason", ["reason"])
RESULTS_STORED = Counter("pipeline_results_stored", "Predictions and prediction errors newly stored", ["kind"])
BATCH_SIZE = Histogram("pipeline_bridge_batch_size", "Messages per bridge batch", buckets=BATCH_BUCKETS)
INBOX = Gauge("pipeline_bridge_inbox", "MQTT messages received and not yet processed")
#: Mosquitto's own count ($SYS/broker/store/messages/...): what it holds for offline or slow sessions
#: (the bridge's queue while MongoDB or Kafka is away), in flight and retained. README "Outage budget".
BROKER_STORED = Gauge("pipeline_broker_stored_messages", "Messages the MQTT broker holds in its store")
BROKER_STORED_BYTES = Gauge("pipeline_broker_stored_bytes", "Bytes of the messages the MQTT broker holds")
MONGO_WRITE = Histogram(
    "pipeline_mongo_write_seconds",
    "Time of one batch insert into MongoDB, by collection",
    ["collection"],
    buckets=LATENCY_BUCKETS,
)
PUBLISH_TO_STORED = Histogram(
    "pipeline_publish_to_stored_seconds", "Reading time (sensor clock) to stored in MongoDB", buckets=LATENCY_BUCKETS
)
SCORED_TO_STORED = Histogram(
    "pipeline_scored_to_stored_seconds", "Prediction made to stored in MongoDB", buckets=LATENCY_BUCKETS
)
PUBLISH_TO_PREDICTION = Histogram(
    "pipeline_publish_to_prediction_stored_seconds",
    "Reading time (sensor clock) to its prediction stored in MongoDB",
    buckets=LATENCY_BUCKETS,
)

#: Per sensor (only ids of valid readings): readings stored, and when the last one was (the bridge's clock).
#: SensorSeries bounds how many sensors have these series and removes those of long-silent sensors.
SENSOR_STORED = Counter("pipeline_sensor_readings_stored", "Readings newly stored in MongoDB, by sensor", ["sensor"])
SENSOR_LAST_STORED = Gauge(
    "pipeline_sensor_last_stored_timestamp_seconds",
    "When the bridge last stored a reading of the sensor (Unix time, the bridge's clock)",
    ["sensor"],
)

#: A sensor with no reading stored for this long loses its per-sensor series (a recreated
#: container with a new id must not leave the old id's series behind for ever).
SENSOR_SERIES_TTL_S = 24 * 3600.0


class SensorSeries:
    """The per-sensor series of one bridge, at most ``max_sensors`` of them.

    :meth:`stored` counts a batch's stored readings by sensor. A sensor seen
    for the first time while ``max_sensors`` already have series gets none
    (the ones that have series keep them: hostile ids cannot push real sensors
    out), and that is logged once per time the limit is reached. A sensor with
    no reading stored for ``ttl_s`` loses its series (``.remove()``), which
    makes room again; that is looked for at each batch, at the cost of a look
    at the least recently stored sensor when none is due. ``clock`` gives Unix
    time (a test passes its own). Called from the bridge's batch thread only.
    """

    def __init__(
        self,
        max_sensors: int,
        ttl_s: float = SENSOR_SERIES_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_sensors = max_sensors
        self.ttl_s = ttl_s
        self.clock = clock
        #: sensor -> when its last reading was stored, least recently stored first.
        self._last: OrderedDict[str, float] = OrderedDict()
        self._full_logged = False

    def __contains__(self, sensor: object) -> bool:
        return sensor in self._last

    def __len__(self) -> int:
        return len(self._last)

    def stored(self, sensors: Iterable[str]) -> None:
        """Count one stored reading per item of ``sensors`` (ids of valid readings, repeats allowed)."""
        now = self.clock()
        self.expire(now)
        for sensor, count in collections.Counter(sensors).items():
            if sensor not in self._last:
                if len(self._last) >= self.max_sensors:
                    if not self._full_logged:
                        logger.warning(
                            "per-sensor metrics are kept for at most %d sensors (SERVER_SENSOR_METRICS_MAX); "
                            "sensor %r and other new ones get none until a sensor has been silent for %.0f h",
                            self.max_sensors,
                            sensor,
                            self.ttl_s / 3600,
                        )
                        self._full_logged = True
                    continue
            self._last[sensor] = now
            self._last.move_to_end(sensor)
            SENSOR_STORED.labels(sensor).inc(count)
            SENSOR_LAST_STORED.labels(sensor).set(now)

    def expire(self, now: float | None = None) -> list[str]:
        """Remove the series of sensors silent for ``ttl_s`` or longer; their ids."""
        now = self.clock() if now is None else now
        gone: list[str] = []
        while self._last:
            sensor, last = next(iter(self._last.items()))
            if now - last < self.ttl_s:
                break
            del self._last[sensor]
            for metric in (SENSOR_STORED, SENSOR_LAST_STORED):
                with contextlib.suppress(KeyError):
                    metric.remove(sensor)
            gone.append(sensor)
        if gone:
            logger.info("removed the per-sensor metrics of %d sensors silent for %.0f h", len(gone), self.ttl_s / 3600)
            self._full_logged = False
        return gone


RETENTION_DELETED = Counter(
    "pipeline_retention_deleted",
    "Documents the bridge deleted past their retention (where the server has no TTL index), by collection",
    ["collection"],
)
TIMELINE_FLUSH = Histogram(
    "pipeline_timeline_flush_seconds",
    "Time of one write of the live page's documents (minutes, sensors, rollups)",
    buckets=LATENCY_BUCKETS,
)
