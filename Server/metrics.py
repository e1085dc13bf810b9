"""The bridge's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
