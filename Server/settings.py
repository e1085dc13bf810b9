"""The bridge's settings (environment variables of the same names)."""

from __future__ import annotations

from pydantic import Field

from pipeline import contract
from pipeline.settings import CommonSettings, KafkaSettings, MongoSettings, MqttSettings


class Settings(CommonSettings, MqttSettings, KafkaSettings, MongoSettings):
    """What the bridge reads from its environment."""

    #: Fixed per replica, and stable across restarts: the broker keeps the
    #: replica's persistent session, and hands it its share of the readings
    #: even while it is away (Mosquitto 2.0), so an id must never change or
    #: be retired while its session holds readings. Replicas must differ.
    MQTT_CLIENT_ID: str = Field("bridge-1", min_length=1, max_length=128)
    #: Replicas in one group split the readings between them (MQTT 5 shared subscription).
    MQTT_SHARE_GROUP: str = Field("bridge", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    #: Readings the broker may send before the bridge acknowledges them (MQTT 5
    #: Receive Maximum): the bound on what the bridge holds in memory.
    SERVER_MAX_INFLIGHT: int = Field(1000, ge=1, le=65535)
    #: Most readings written to MongoDB and Kafka in one batch.
    SERVER_BATCH_MAX: int = Field(500, ge=1, le=10_000)
    #: How long a batch waits to fill before it is written.
    SERVER_BATCH_WAIT_MS: int = Field(100, ge=0, le=10_000)
    #: Payloads over this size are rejected unread.
    SERVER_MAX_PAYLOAD_BYTES: int = Field(contract.MAX_PAYLOAD_BYTES, ge=64, le=contract.MAX_PAYLOAD_LIMIT)
    #: The rejections collection is capped at this size: past it the oldest go first.
    SERVER_REJECTIONS_MAX_MB: int = Field(128, ge=1, le=1_000_000)
    #: The alerts collection is capped at this size: past it the oldest go first.
    SERVER_ALERTS_MAX_MB: int = Field(128, ge=1, le=1_000_000)
    #: Days each kind of document is kept (0: forever). Raw: readings, predictions,
    #: prediction errors and the per-minute documents; then the hourly and daily rollups.
    SERVER_RETENTION_RAW_DAYS: float = Field(30, ge=0, le=36_500)
    SERVER_RETENTION_HOURLY_DAYS: float = Field(400, ge=0, le=36_500)
    SERVER_RETENTION_DAILY_DAYS: float = Field(0, ge=0, le=36_500)
    SERVER_RETENTION_REJECTIONS_DAYS: float = Field(30, ge=0, le=36_500)
    SERVER_RETENTION_ALERTS_DAYS: float = Field(90, ge=0, le=36_500)
    #: Ids of recently stored readings kept in memory to skip redeliveries.
    SERVER_DEDUPE_CACHE: int = Field(200_000, ge=0, le=10_000_000)
    #: Most sensors with per-sensor metrics (pipeline_sensor_readings_stored_total and
    #: pipeline_sensor_last_stored_timestamp_seconds): bounds their series whatever ids arrive.
    SERVER_SENSOR_METRICS_MAX: int = Field(10_000, ge=0, le=1_000_000)
    #: How often the live page's documents (minutes, sensors, latest anomalies) are written. Each write rewrites
    #: the current minute's document whole, so a shorter interval costs MongoDB more: at 1,000 readings/s, FerretDB
    #: took about 0.27 ms of CPU a reading at 2 s and 0.16-0.22 ms at 6 s. The page asks every 3 s. At most a
    #: minute: what waits to be written is held in memory (every point of the interval), and a page older than
    #: a minute is not live.
    SERVER_TIMELINE_EVERY_S: float = Field(5.0, gt=0, le=60)
    #: A minute's aggregate (an hour's accuracy) is written once nothing was added to it for this long.
    SERVER_AGGREGATE_SETTLE_S: float = Field(10.0, ge=0, le=3600)
    #: Consumer group of the bridges reading predictions back from Kafka.
    KAFKA_RESULTS_GROUP_ID: str = Field("bridge-results", min_length=1)
