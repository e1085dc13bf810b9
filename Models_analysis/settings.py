"""The model service's settings (environment variables of the same names)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pipeline.settings import CommonSettings, KafkaSettings, hostname


class Settings(CommonSettings, KafkaSettings):
    """What the model service reads from its environment."""

    #: The model file (joblib). Swap models by pointing this elsewhere.
    MODEL_PATH: Path = Path("models/default.joblib")
    #: Consumer group: replicas in one group split the topic's partitions (the seed's name).
    KAFKA_GROUP_ID: str = Field("analytics-group", min_length=1)
    #: Client id of this replica in Kafka's logs and metrics.
    KAFKA_CLIENT_ID: str = Field(default_factory=lambda: f"model-{hostname()}", min_length=1)
    #: Most readings scored by one predict call.
    MODEL_BATCH_MAX: int = Field(1000, ge=1, le=100_000)
    #: Longest a reading waits for its batch to fill (the latency budget).
    MODEL_BATCH_WAIT_MS: int = Field(200, ge=0, le=60_000)
