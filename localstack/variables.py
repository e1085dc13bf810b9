"""The local stack's environment variables: :class:`StackSettings`, by name, with their defaults.

Read with pydantic-settings, as every service reads its own (``pipeline/settings.py``):
field names are the variables' names, and a malformed value stops ``start`` with a
message naming the variable (never its value). :mod:`localstack.config` turns them
into the :class:`~localstack.config.StackConfig` the rest of the package uses.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
#: What KAFKA_BROKERS may be: one node, or the three of docker-compose.cluster.yml.
KAFKA_BROKER_COUNTS = (1, 3)

# --------------------------------------------------------------------------- the variables


class StackSettings(BaseSettings):
    """The stack's environment variables, by name, with their defaults.

    Empty (or blank) variables count as unset, so ``MQTT_PORT=`` in a .env means 1883.
    Text values are stripped, except the passwords and secrets, which are taken as given.
    """

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True, env_ignore_empty=True)

    STACK_DIR: str = str(REPO_ROOT / ".stack")
    LOCALSTACK_CACHE: str = str(REPO_ROOT / ".cache" / "localstack")
    MQTT_PORT: int = Field(1883, ge=1, le=65535)
    MQTT_WS_PORT: int = Field(9001, ge=1, le=65535)
    KAFKA_PORT: int = Field(9092, ge=1, le=65535)
    KAFKA_CONTROLLER_PORT: int = Field(9093, ge=1, le=65535)
    KAFKA_NUM_PARTITIONS: int = Field(3, ge=1, le=1000)
    #: Kafka nodes (each a broker and a controller): 1, or 3 for a cluster (docker-compose.cluster.yml).
    KAFKA_BROKERS: int = Field(1, ge=1, le=max(KAFKA_BROKER_COUNTS))
    MONGO_PORT: int = Field(27017, ge=1, le=65535)
    MONGO_EXPRESS_PORT: int = Field(8081, ge=1, le=65535)
    MONGO_DATABASE: str = "sensor_pipeline"
    MONGO_APP_USERNAME: str = "pipeline"
    MONGO_APP_PASSWORD: str = ""
    MQTT_SERVER_USERNAME: str = "bridge"
    MQTT_SERVER_PASSWORD: str = ""
    #: The bridge's client ids, '*' a wildcard: only MQTT_SERVER_USERNAME may use them.
    MQTT_SERVER_CLIENT_IDS: str = "bridge-*"
    MQTT_SENSOR_USERNAME: str = "sensor"
    MQTT_SENSOR_PASSWORD: str = ""
    #: Sensors with a user of their own: "id:password,id:password,...".
    MQTT_SENSOR_ACCOUNTS: str = ""
    MONGO_EXPRESS_USERNAME: str = "admin"
    MONGO_EXPRESS_PASSWORD: str = ""
    # Only signing keys for mongo-express's cookies: a fresh random one is fine.
    MONGO_EXPRESS_COOKIE_SECRET: str = Field(default_factory=lambda: secrets.token_hex(16))
    MONGO_EXPRESS_SESSION_SECRET: str = Field(default_factory=lambda: secrets.token_hex(16))
    #: An external MongoDB: FerretDB is then not started.
    MONGO_URI: str | None = None
    #: TLS on every server: a folder with the files `python -m localstack certs` writes.
    STACK_TLS_DIR: str | None = None
    #: Kafka's SCRAM-SHA-512 users, with TLS: the bridge's, the model service's, the broker's own.
    KAFKA_SERVER_USERNAME: str = "bridge"
    KAFKA_SERVER_PASSWORD: str = ""
    KAFKA_MODEL_USERNAME: str = "model"
    KAFKA_MODEL_PASSWORD: str = ""
    KAFKA_BROKER_PASSWORD: str = ""

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, values: Any) -> Any:
        if isinstance(values, dict):
            return {k: v for k, v in values.items() if not (isinstance(v, str) and not v.strip())}
        return values

    @field_validator(
        "STACK_DIR",
        "LOCALSTACK_CACHE",
        "MONGO_DATABASE",
        "MONGO_APP_USERNAME",
        "MQTT_SERVER_USERNAME",
        "MQTT_SERVER_CLIENT_IDS",
        "MQTT_SENSOR_USERNAME",
        "MQTT_SENSOR_ACCOUNTS",
        "MONGO_EXPRESS_USERNAME",
        "MONGO_URI",
        "STACK_TLS_DIR",
        "KAFKA_SERVER_USERNAME",
        "KAFKA_MODEL_USERNAME",
        mode="before",
    )
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    # Two lists of variable names of the same shape: those trimmed (above) and those that must be whole numbers.
    @field_validator(
        "MQTT_PORT",
        "MQTT_WS_PORT",
        "KAFKA_PORT",
        "KAFKA_CONTROLLER_PORT",
        "KAFKA_NUM_PARTITIONS",
        "KAFKA_BROKERS",
        "MONGO_PORT",
        "MONGO_EXPRESS_PORT",
        mode="before",
    )
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        # Digits only: pydantic alone would also take "1_000" or "1.0".
        if isinstance(value, str) and not re.fullmatch(r"\s*\d+\s*", value):
            raise ValueError("must be a whole number")
        return value

    @field_validator("KAFKA_BROKERS")
    @classmethod
    def _broker_count(cls, value: int) -> int:
        if value not in KAFKA_BROKER_COUNTS:
            raise ValueError("must be 1 or 3 (the three nodes of docker-compose.cluster.yml)")
        return value

    @field_validator("MQTT_SERVER_USERNAME", "MQTT_SENSOR_USERNAME", "KAFKA_SERVER_USERNAME", "KAFKA_MODEL_USERNAME")
    @classmethod
    def _user_name(cls, value: str) -> str:
        # The password file and the owners file are "user:..." lines.
        if ":" in value or any(c.isspace() for c in value):
            raise ValueError("must not contain ':' or whitespace")
        return value

    @field_validator("MONGO_DATABASE")
    @classmethod
    def _database_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,63}", value):
            raise ValueError("must be 1-63 letters, digits, '_' or '-'")
        return value
