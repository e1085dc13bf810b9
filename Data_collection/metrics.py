"""The sensor's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PUBLISHED = Counter("pipeline_sensor_published", "Readings handed to the MQTT client")
ACKED = Counter("pipeline_sensor_acknowledged", "Readings the broker acknowledged")
REFUSED = Counter("pipeline_sensor_refused", "Readings the broker refused (not authorised)")
REPLAYED = Counter(
    "pipeline_sensor_replayed", "Readings published again after a reconnect (acknowledged just before it was lost)"
)
PENDING = Gauge("pipeline_sensor_pending", "Readings published and not yet acknowledged")
HELD = Gauge(
    "pipeline_sensor_held", "Readings the broker took while nobody subscribed (dropped there), held to publish again"
)
PAUSED = Gauge("pipeline_sensor_paused", "1 while reading the CSV waits for room (SENSOR_QUEUE_MAX full, or the spool)")
