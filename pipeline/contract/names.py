"""The names every service shares: Kafka topics, MQTT topics and MongoDB collections, and a reading's id."""

from __future__ import annotations

import uuid

#: Kafka topic carrying validated readings to the model service (the seed's name).
TOPIC_READINGS = "analytics"
#: Kafka topic carrying predictions and prediction errors back (the seed's name).
TOPIC_RESULTS = "analytics_results"
#: Kafka topic carrying every rejected payload with its reason.
TOPIC_DEADLETTER = "deadletter"
#: Kafka topic carrying one alert per anomaly.
TOPIC_ALERTS = "alerts"

#: MQTT topic a sensor publishes its readings to.
MQTT_READINGS_TOPIC = "sensors/{sensor}/readings"
#: MQTT topic filter the bridge subscribes to (shared by its replicas).
MQTT_READINGS_FILTER = "sensors/+/readings"

#: MongoDB database used when MONGO_DATABASE is not set.
DEFAULT_DATABASE = "sensor_pipeline"
COLLECTION_READINGS = "readings"
COLLECTION_PREDICTIONS = "predictions"
COLLECTION_PREDICTION_ERRORS = "prediction_errors"
COLLECTION_REJECTIONS = "rejections"
#: Per sensor and minute of event time: count/sum/min/max, and the minute's points and forecasts.
COLLECTION_AGGREGATES = "aggregates"
#: The same totals per sensor and hour, and per sensor and day (no points): kept longer.
COLLECTION_AGGREGATES_HOURLY = "aggregates_hourly"
COLLECTION_AGGREGATES_DAILY = "aggregates_daily"
#: One document per sensor: its last reading, when it was seen, its rate and usual interval.
COLLECTION_SENSORS = "sensors"
#: One document per anomaly: a reading outside its forecast interval.
COLLECTION_ALERTS = "alerts"
#: One document per bridge (``_id`` its MQTT client id): the latest anomalies it stored, which the page lists.
COLLECTION_RECENT_ANOMALIES = "recent_anomalies"
#: Per sensor and model: rolling mean absolute error and interval coverage.
COLLECTION_ACCURACY = "accuracy"
#: Every decision of the trainer: sensor, both models and their holdout metrics, promoted or not and why.
COLLECTION_MODEL_VERSIONS = "model_versions"
#: One document per sensor (``_id`` = the sensor): the trainer's latest decisions, newest first.
COLLECTION_MODEL_HISTORY = "model_history"
#: Per-minute re-scored forecasts, by sensor, model and minute (Models_analysis.rescore).
COLLECTION_RESCORED = "rescored"
#: One summary per re-scoring run.
COLLECTION_RESCORES = "rescores"
#: Per sensor (``_id`` = the sensor): the models it was re-scored with, each with its latest run.
COLLECTION_RESCORED_MODELS = "rescored_models"
#: The same per sensor, model and hour, written when the hour has settled.
COLLECTION_ACCURACY_HOURLY = "accuracy_hourly"


def new_reading_id() -> str:
    """A fresh, globally unique reading id (set once, at the source)."""
    return uuid.uuid4().hex


def readings_topic(sensor: str) -> str:
    """The MQTT topic a sensor publishes to."""
    return MQTT_READINGS_TOPIC.format(sensor=sensor)


def sensor_of_topic(topic: str) -> str | None:
    """The sensor id inside ``sensors/<sensor>/readings``, or None for another topic."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "sensors" and parts[2] == "readings":
        return parts[1]
    return None
