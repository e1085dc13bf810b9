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
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, Field, FilePath, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline import contract, tls

logger = logging.getLogger(__name__)


def _ca_file(path: Path) -> Path:
    problem = tls.ca_file_problem(path)
    if problem:
        raise ValueError(problem)
    return path


#: A CA certificate file (PEM) that exists and loads.
CaFile = Annotated[FilePath, AfterValidator(_ca_file)]


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
    MQTT_TLS_CA_FILE: CaFile | None = None
    #: TLS client certificate and key, when the broker asks for one.
    MQTT_TLS_CERT_FILE: FilePath | None = None
    MQTT_TLS_KEY_FILE: FilePath | None = None


#: The most replicas a topic may ask for (KAFKA_REPLICATION_FACTOR): a cluster of seven brokers.
MAX_REPLICATION_FACTOR = 7


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
    #: Replicas of each topic the pipeline creates: 1 on one broker, 3 on a cluster of three.
    KAFKA_REPLICATION_FACTOR: int = Field(1, ge=1, le=MAX_REPLICATION_FACTOR)
    #: Replicas that must have a write before Kafka confirms it (with acks=all), for the topics the
    #: pipeline creates; unset: one less than KAFKA_REPLICATION_FACTOR, at least 1.
    KAFKA_MIN_INSYNC_REPLICAS: int | None = Field(None, ge=1, le=MAX_REPLICATION_FACTOR)
    #: TLS: the CA that signed the brokers' certificates (set it to turn TLS on).
    KAFKA_TLS_CA_FILE: CaFile | None = None
    #: SASL/SCRAM-SHA-512 login (set both to log in; with KAFKA_TLS_CA_FILE: SASL_SSL).
    KAFKA_SASL_USERNAME: str | None = Field(None, min_length=1)
    KAFKA_SASL_PASSWORD: SecretStr | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _login_is_a_pair(self) -> KafkaSettings:
        if (self.KAFKA_SASL_USERNAME is None) != (self.KAFKA_SASL_PASSWORD is None):
            given, missing = (
                ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
                if self.KAFKA_SASL_PASSWORD is None
                else ("KAFKA_SASL_PASSWORD", "KAFKA_SASL_USERNAME")
            )
            raise ValueError(f"{given} is set without {missing}: set both (a SCRAM login) or neither")
        return self

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> KafkaSettings:
        if (
            self.KAFKA_MIN_INSYNC_REPLICAS is not None
            and self.KAFKA_MIN_INSYNC_REPLICAS > self.KAFKA_REPLICATION_FACTOR
        ):
            raise ValueError(
                f"KAFKA_MIN_INSYNC_REPLICAS ({self.KAFKA_MIN_INSYNC_REPLICAS}) is more than KAFKA_REPLICATION_FACTOR "
                f"({self.KAFKA_REPLICATION_FACTOR}): no write could ever be confirmed"
            )
        return self

    @property
    def kafka_min_insync_replicas(self) -> int:
        """min.insync.replicas of the topics the pipeline creates (KAFKA_MIN_INSYNC_REPLICAS or its default)."""
        if self.KAFKA_MIN_INSYNC_REPLICAS is not None:
            return self.KAFKA_MIN_INSYNC_REPLICAS
        return max(1, self.KAFKA_REPLICATION_FACTOR - 1)

    @property
    def kafka_security_protocol(self) -> str:
        """librdkafka's security.protocol for these settings."""
        sasl = "SASL_" if self.KAFKA_SASL_USERNAME is not None else ""
        return sasl + ("SSL" if self.KAFKA_TLS_CA_FILE is not None else "PLAINTEXT")


class MongoSettings(_Base):
    """How to reach MongoDB (or FerretDB). The URI carries credentials: it is secret."""

    MONGO_URI: SecretStr = Field(min_length=10)
    MONGO_DATABASE: str = Field(contract.DEFAULT_DATABASE, pattern=r"^[A-Za-z0-9_-]{1,63}$")
    #: TLS: the CA that signed the server's certificate (set it to turn TLS on; the
    #: host name in MONGO_URI must be one the certificate names).
    MONGO_TLS_CA_FILE: CaFile | None = None


class HttpsSettings(_Base):
    """A web page served over HTTPS: its certificate and key (PEM). Both, or neither (plain HTTP)."""

    DASHBOARD_TLS_CERT_FILE: FilePath | None = None
    DASHBOARD_TLS_KEY_FILE: FilePath | None = None

    @model_validator(mode="after")
    def _cert_and_key(self) -> HttpsSettings:
        cert, key = self.DASHBOARD_TLS_CERT_FILE, self.DASHBOARD_TLS_KEY_FILE
        if (cert is None) != (key is None):
            raise ValueError("DASHBOARD_TLS_CERT_FILE and DASHBOARD_TLS_KEY_FILE: set both (HTTPS) or neither (HTTP)")
        if cert is not None and key is not None:
            problem = tls.key_pair_problem(cert, key)
            if problem:
                raise ValueError(f"DASHBOARD_TLS_CERT_FILE and DASHBOARD_TLS_KEY_FILE: {problem}")
        return self

    @property
    def https(self) -> bool:
        """Whether the page is served over HTTPS."""
        return self.DASHBOARD_TLS_CERT_FILE is not None

    def tls_files(self) -> tuple[str | None, str | None]:
        """The certificate and key files as uvicorn takes them (``ssl_certfile``, ``ssl_keyfile``); None for HTTP."""
        cert, key = self.DASHBOARD_TLS_CERT_FILE, self.DASHBOARD_TLS_KEY_FILE
        return (str(cert) if cert else None, str(key) if key else None)


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
        elif not name:  # a check of several variables: its message names them
            lines.append(str(item["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"{name}: {item['msg']}")
    return "\n".join(lines)


def tls_problems(settings: BaseSettings) -> list[str]:
    """For each server these settings reach over TLS whose certificate does not verify: why, naming the variable.

    A server that cannot be reached now is skipped (the service's clients retry it).
    """
    problems: list[str] = []
    if isinstance(settings, MqttSettings) and settings.MQTT_TLS_CA_FILE is not None:
        problem = tls.verify_problem(
            "MQTT_TLS_CA_FILE", settings.MQTT_TLS_CA_FILE, settings.MQTT_HOST, settings.MQTT_PORT
        )
        problems += [problem] if problem else []
    if isinstance(settings, KafkaSettings) and settings.KAFKA_TLS_CA_FILE is not None:
        for address in settings.KAFKA_BOOTSTRAP_SERVERS.split(","):
            host, port = tls.split_host_port(address.split("://")[-1], 9092)
            problem = tls.verify_problem("KAFKA_TLS_CA_FILE", settings.KAFKA_TLS_CA_FILE, host, port)
            problems += [problem] if problem else []
    if isinstance(settings, MongoSettings) and settings.MONGO_TLS_CA_FILE is not None:
        for host, port in tls.mongo_hosts(settings.MONGO_URI.get_secret_value()):
            problem = tls.verify_problem("MONGO_TLS_CA_FILE", settings.MONGO_TLS_CA_FILE, host, port)
            problems += [problem] if problem else []
    return problems


def load(cls: type[S]) -> S:
    """Build the settings from the environment, or stop the process with a clear message.

    With TLS on, it also checks each server's certificate (:func:`tls_problems`):
    one that does not verify stops the service here, naming the variable.
    """
    try:
        settings = cls()
    except ValidationError as error:
        sys.stderr.write(f"invalid settings, the service cannot start:\n{describe_errors(error)}\n")
        raise SystemExit(2) from None
    problems = tls_problems(settings)
    if problems:
        sys.stderr.write("TLS: a server's certificate does not verify, the service cannot start:\n")
        sys.stderr.write("\n".join(problems) + "\n")
        raise SystemExit(2)
    return settings
