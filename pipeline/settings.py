"""Settings: one typed object per service, read from the environment once at start.

Field names are the environment variables' names. A service builds its
settings class from the groups below and calls :func:`load`; a missing or bad
value stops the service at start with a message naming the variable. Nothing
else in the code reads the environment.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Literal, TypeVar

from pydantic import Field, FilePath, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline import contract

logger = logging.getLogger(__name__)


class _Base(BaseSettings):
    # Environment only, names exactly as written: no .env parsing inside the
    # services (Compose and the local stack pass the environment).
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)


class CommonSettings(_Base):
    """What every service has."""

    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Port of /healthz, /readyz and /metrics (0 = none).
    HEALTH_PORT: int = Field(8000, ge=0, le=65535)


class MqttSettings(_Base):
    """How to reach Mosquitto."""

    MQTT_HOST: str = "localhost"
    MQTT_PORT: int = Field(1883, ge=1, le=65535)
    MQTT_USERNAME: str = Field(min_length=1)
    MQTT_PASSWORD: SecretStr = Field(min_length=1)
    MQTT_KEEPALIVE_S: int = Field(30, ge=5, le=3600)
    #: How long a persistent session outlives a disconnect (the broker keeps
    #: the QoS 1 messages for it meanwhile).
    MQTT_SESSION_EXPIRY_S: int = Field(7 * 24 * 3600, ge=0)
    #: TLS: the CA that signed the broker's certificate (set it to turn TLS on,
    #: usually with MQTT_PORT=8883).
    MQTT_TLS_CA_FILE: FilePath | None = None
    #: TLS client certificate and key, when the broker asks for one.
    MQTT_TLS_CERT_FILE: FilePath | None = None
    MQTT_TLS_KEY_FILE: FilePath | None = None


class KafkaSettings(_Base):
    """How to reach Kafka, and the topic names (tests set their own)."""

    KAFKA_BOOTSTRAP_SERVERS: str = Field("localhost:9092", min_length=3)
    KAFKA_TOPIC_READINGS: str = contract.TOPIC_READINGS
    KAFKA_TOPIC_RESULTS: str = contract.TOPIC_RESULTS
    KAFKA_TOPIC_DEADLETTER: str = contract.TOPIC_DEADLETTER
    KAFKA_TOPIC_ALERTS: str = contract.TOPIC_ALERTS
    #: Partitions for topics the pipeline creates: the most model-service
    #: replicas that can share the work.
    KAFKA_NUM_PARTITIONS: int = Field(3, ge=1, le=1000)


class MongoSettings(_Base):
    """How to reach MongoDB (or FerretDB). The URI carries credentials: it is secret."""

    MONGO_URI: SecretStr = Field(min_length=10)
    MONGO_DATABASE: str = Field(contract.DEFAULT_DATABASE, pattern=r"^[A-Za-z0-9_-]{1,63}$")


def hostname() -> str:
    """This host's name: a sensor's id and a replica's client id default to it."""
    return socket.gethostname()


S = TypeVar("S", bound=BaseSettings)


def describe_errors(error: ValidationError) -> str:
    """One line per bad variable, naming it and what is wrong, never its value."""
    lines = []
    for item in error.errors():
        name = ".".join(str(p) for p in item["loc"])
        if item["type"] == "missing":
            lines.append(f"{name} is not set (required)")
        else:
            lines.append(f"{name}: {item['msg']}")
    return "\n".join(lines)


def load(cls: type[S]) -> S:
    """Build the settings from the environment, or stop the process with a clear message."""
    try:
        return cls()
    except ValidationError as error:
        sys.stderr.write(f"invalid settings, the service cannot start:\n{describe_errors(error)}\n")
        raise SystemExit(2) from None
