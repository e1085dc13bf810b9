"""Configuration of the local stack: environment variables in, one :class:`StackConfig` out.

:class:`StackSettings` (:mod:`localstack.variables`) reads the variables with
pydantic-settings, as every service reads its own (``pipeline/settings.py``): a
malformed value stops ``start`` with a message naming the variable (never its
value). :class:`StackConfig` is what the rest of the package uses: the
same values with directories resolved and the cookie secrets drawn, plus the
checks that involve several variables (missing passwords, two servers on one port).

The defaults here are the ones localstack/README.md's Environment table promises.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from localstack.cluster import KafkaNode, kafka_nodes
from localstack.variables import PACKAGE_DIR, StackSettings
from localstack.variables import REPO_ROOT as REPO_ROOT  # (imported from here by the servers)
from pipeline.settings import describe_errors

#: Environment variables without a default: the stack refuses to start without them.
REQUIRED_SECRETS = ("MQTT_SERVER_PASSWORD", "MQTT_SENSOR_PASSWORD", "MONGO_EXPRESS_PASSWORD", "MONGO_APP_PASSWORD")


#: Characters a Kafka SCRAM password cannot hold here (the formatter's `[name=...,password=...]` syntax).
SCRAM_FORBIDDEN = frozenset(",[]=\"' \t\n\\")


class StackError(RuntimeError):
    """A server could not be started, reached or stopped."""


class ConfigError(ValueError):
    """The environment does not configure the stack: a variable is missing or malformed."""


def _default(name: str) -> Any:
    """The default of one variable, so :class:`StackConfig` and :class:`StackSettings` cannot disagree."""
    return StackSettings.model_fields[name].default


def sensor_accounts(text: str) -> dict[str, str]:
    """``MQTT_SENSOR_ACCOUNTS`` ("id:password,...") as {sensor id: password}.

    mosquitto/docker-entrypoint.sh checks the entries when the broker starts.
    """
    return dict(entry.split(":", 1) for entry in text.replace(",", " ").split() if ":" in entry)


# --------------------------------------------------------------------------- the resolved configuration


@dataclass(frozen=True)
class StackConfig:
    """Ports, credentials and directories of the local stack (see :meth:`from_env`).

    Secrets are excluded from ``repr`` so a config can be logged.
    """

    state_dir: Path
    cache_dir: Path
    mqtt_port: int = _default("MQTT_PORT")
    mqtt_ws_port: int = _default("MQTT_WS_PORT")
    kafka_port: int = _default("KAFKA_PORT")
    kafka_controller_port: int = _default("KAFKA_CONTROLLER_PORT")
    kafka_num_partitions: int = _default("KAFKA_NUM_PARTITIONS")
    #: Kafka nodes (KAFKA_BROKERS): 1, or 3 for a cluster (localstack/cluster.py).
    kafka_brokers: int = _default("KAFKA_BROKERS")
    mongo_port: int = _default("MONGO_PORT")
    mongo_express_port: int = _default("MONGO_EXPRESS_PORT")
    mongo_database: str = _default("MONGO_DATABASE")
    mongo_app_username: str = _default("MONGO_APP_USERNAME")
    mongo_app_password: str = field(default="", repr=False)
    mqtt_server_username: str = _default("MQTT_SERVER_USERNAME")
    mqtt_server_password: str = field(default="", repr=False)
    #: The bridge's client ids, '*' a wildcard (MQTT_SERVER_CLIENT_IDS): only its user may use them.
    mqtt_server_client_ids: str = _default("MQTT_SERVER_CLIENT_IDS")
    mqtt_sensor_username: str = _default("MQTT_SENSOR_USERNAME")
    mqtt_sensor_password: str = field(default="", repr=False)
    #: Sensors with a user of their own: "id:password,id:password,..." (MQTT_SENSOR_ACCOUNTS).
    mqtt_sensor_accounts: str = field(default="", repr=False)
    mongo_express_username: str = _default("MONGO_EXPRESS_USERNAME")
    mongo_express_password: str = field(default="", repr=False)
    mongo_express_cookie_secret: str = field(default="", repr=False)
    mongo_express_session_secret: str = field(default="", repr=False)
    #: MONGO_URI from the environment: use that MongoDB instead of starting FerretDB.
    external_mongo_uri: str | None = field(default=None, repr=False)
    #: STACK_TLS_DIR: every server speaks only TLS with these files (None: plain text).
    tls_dir: Path | None = None
    kafka_server_username: str = _default("KAFKA_SERVER_USERNAME")
    kafka_server_password: str = field(default="", repr=False)
    kafka_model_username: str = _default("KAFKA_MODEL_USERNAME")
    kafka_model_password: str = field(default="", repr=False)
    kafka_broker_password: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, require_secrets: bool = True) -> StackConfig:
        """Read the configuration from environment variables (``os.environ`` unless ``environ`` is given).

        Raises :class:`ConfigError` naming every variable that is malformed, or, unless
        ``require_secrets=False`` (commands that only look at or stop a running
        stack), every required password that is missing.
        """
        try:
            if environ is None:
                settings = StackSettings()
            else:
                names = StackSettings.model_fields
                settings = StackSettings.model_validate({k: v for k, v in environ.items() if k in names})
        except ValidationError as error:
            raise ConfigError(f"invalid environment variable(s):\n{describe_errors(error)}") from None
        config = cls.from_settings(settings)
        config.validate(require_secrets=require_secrets)
        return config

    @classmethod
    def from_settings(cls, s: StackSettings) -> StackConfig:
        """The configuration of validated settings: directories resolved, variables renamed."""
        return cls(
            state_dir=Path(s.STACK_DIR).expanduser().resolve(),
            cache_dir=Path(s.LOCALSTACK_CACHE).expanduser().resolve(),
            mqtt_port=s.MQTT_PORT,
            mqtt_ws_port=s.MQTT_WS_PORT,
            kafka_port=s.KAFKA_PORT,
            kafka_controller_port=s.KAFKA_CONTROLLER_PORT,
            kafka_num_partitions=s.KAFKA_NUM_PARTITIONS,
            kafka_brokers=s.KAFKA_BROKERS,
            mongo_port=s.MONGO_PORT,
            mongo_express_port=s.MONGO_EXPRESS_PORT,
            mongo_database=s.MONGO_DATABASE,
            mongo_app_username=s.MONGO_APP_USERNAME,
            mongo_app_password=s.MONGO_APP_PASSWORD,
            mqtt_server_username=s.MQTT_SERVER_USERNAME,
            mqtt_server_password=s.MQTT_SERVER_PASSWORD,
            mqtt_server_client_ids=s.MQTT_SERVER_CLIENT_IDS,
            mqtt_sensor_username=s.MQTT_SENSOR_USERNAME,
            mqtt_sensor_password=s.MQTT_SENSOR_PASSWORD,
            mqtt_sensor_accounts=s.MQTT_SENSOR_ACCOUNTS,
            mongo_express_username=s.MONGO_EXPRESS_USERNAME,
            mongo_express_password=s.MONGO_EXPRESS_PASSWORD,
            mongo_express_cookie_secret=s.MONGO_EXPRESS_COOKIE_SECRET,
            mongo_express_session_secret=s.MONGO_EXPRESS_SESSION_SECRET,
            external_mongo_uri=s.MONGO_URI,
            tls_dir=Path(s.STACK_TLS_DIR).expanduser().resolve() if s.STACK_TLS_DIR else None,
            kafka_server_username=s.KAFKA_SERVER_USERNAME,
            kafka_server_password=s.KAFKA_SERVER_PASSWORD,
            kafka_model_username=s.KAFKA_MODEL_USERNAME,
            kafka_model_password=s.KAFKA_MODEL_PASSWORD,
            kafka_broker_password=s.KAFKA_BROKER_PASSWORD,
        )

    def validate(self, *, require_secrets: bool = True) -> None:
        """Raise :class:`ConfigError` naming the variables that are missing or do not fit together."""
        if require_secrets:
            values = {
                "MQTT_SERVER_PASSWORD": self.mqtt_server_password,
                "MQTT_SENSOR_PASSWORD": self.mqtt_sensor_password,
                "MONGO_EXPRESS_PASSWORD": self.mongo_express_password,
                "MONGO_APP_PASSWORD": self.mongo_app_password,
            }
            if self.external_mongo_uri:
                del values["MONGO_APP_PASSWORD"]  # the external URI carries its own credentials
            missing = [name for name in REQUIRED_SECRETS if name in values and not values[name]]
            if missing:
                raise ConfigError(
                    "missing required environment variable(s): "
                    + ", ".join(missing)
                    + " (`make env` writes them to .env; see .env.example)"
                )
        if self.tls_dir is not None:
            if require_secrets:  # (stop, status and logs need no certificates)
                from localstack.tls import missing_files

                lacking = missing_files(self.tls_dir)
                if lacking:
                    raise ConfigError(
                        f"STACK_TLS_DIR ({self.tls_dir}) lacks {', '.join(lacking)}: "
                        f"`python -m localstack certs {self.tls_dir}` writes them"
                    )
                kafka = {
                    "KAFKA_SERVER_PASSWORD": self.kafka_server_password,
                    "KAFKA_MODEL_PASSWORD": self.kafka_model_password,
                    "KAFKA_BROKER_PASSWORD": self.kafka_broker_password,
                }
                missing = [name for name, value in kafka.items() if not value]
                if missing:
                    raise ConfigError(
                        "with STACK_TLS_DIR, Kafka wants logins: missing "
                        + ", ".join(missing)
                        + " (`make env` writes them to .env)"
                    )
                for name, value in kafka.items():
                    if set(value) & SCRAM_FORBIDDEN:
                        # kafka-storage --add-scram reads SCRAM-SHA-512=[name=...,password=...].
                        raise ConfigError(f"{name} must not contain any of {' '.join(sorted(SCRAM_FORBIDDEN))}")
            users = {"broker", self.kafka_server_username, self.kafka_model_username}
            if len(users) != 3:
                raise ConfigError("KAFKA_SERVER_USERNAME and KAFKA_MODEL_USERNAME must differ, and neither be 'broker'")
        seen: dict[int, str] = {}
        for name, port in self.ports().items():
            if port in seen:
                raise ConfigError(f"{name} and {seen[port]} are both {port}")
            seen[port] = name
        if self.mqtt_server_username == self.mqtt_sensor_username:
            raise ConfigError("MQTT_SERVER_USERNAME and MQTT_SENSOR_USERNAME must differ (they get different rights)")

    def ports(self) -> dict[str, int]:
        """Every port the stack listens on, by variable (MONGO_PORT only when FerretDB runs)."""
        ports = {"MQTT_PORT": self.mqtt_port, "MQTT_WS_PORT": self.mqtt_ws_port}
        for node in self.kafka_nodes():
            ports.update(node.port_variables())  # KAFKA_PORT_2 ...: KAFKA_PORT + 2, with KAFKA_BROKERS=3
        ports["MONGO_EXPRESS_PORT"] = self.mongo_express_port
        if self.uses_ferretdb:
            ports["MONGO_PORT"] = self.mongo_port
        return ports

    def kafka_nodes(self) -> list[KafkaNode]:
        """The Kafka nodes, ``kafka`` first (see :mod:`localstack.cluster`)."""
        return kafka_nodes(self.kafka_brokers, self.kafka_port, self.kafka_controller_port)

    # Directories -------------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        """Where each server's stdout and stderr go (``<server>.log``)."""
        return self.state_dir / "logs"

    def conf_dir(self, server: str) -> Path:
        """The rendered configuration of one server."""
        return self.state_dir / "conf" / server

    def data_dir(self, server: str) -> Path:
        """The persistent data of one server."""
        return self.state_dir / "data" / server

    # Connection details ------------------------------------------------------

    @property
    def uses_ferretdb(self) -> bool:
        """False when MONGO_URI points at an external MongoDB."""
        return not self.external_mongo_uri

    @property
    def tls(self) -> bool:
        """Whether every server speaks only TLS (STACK_TLS_DIR is set)."""
        return self.tls_dir is not None

    def tls_file(self, name: str) -> Path:
        """One file of STACK_TLS_DIR (``ca.crt``, ``server.crt``, ...)."""
        if self.tls_dir is None:
            raise StackError("TLS is off (STACK_TLS_DIR is not set)")
        return self.tls_dir / name

    @property
    def mongo_uri(self) -> str:
        """The application user's MongoDB URI (credentials included: do not log it)."""
        if self.external_mongo_uri:
            return self.external_mongo_uri
        user = urllib.parse.quote(self.mongo_app_username, safe="")
        password = urllib.parse.quote(self.mongo_app_password, safe="")
        # FerretDB stores the --setup-username user in the setup database, so that
        # database is the authSource (authSource=admin fails).
        return (
            f"mongodb://{user}:{password}@127.0.0.1:{self.mongo_port}/{self.mongo_database}"
            f"?authSource={self.mongo_database}"
        )

    def secret_values(self) -> list[str]:
        """Every secret in use, raw and URL-quoted, to scrub from error messages."""
        raw = [
            self.mongo_app_password,
            self.mqtt_server_password,
            self.mqtt_sensor_password,
            *sensor_accounts(self.mqtt_sensor_accounts).values(),
            self.mongo_express_password,
            self.mongo_express_cookie_secret,
            self.mongo_express_session_secret,
            self.kafka_server_password,
            self.kafka_model_password,
            self.kafka_broker_password,
        ]
        if self.external_mongo_uri:
            parsed = urllib.parse.urlsplit(self.external_mongo_uri)
            if parsed.password:
                raw += [parsed.password, urllib.parse.unquote(parsed.password)]
        values = {v for v in raw if v} | {urllib.parse.quote(v, safe="") for v in raw if v}
        return sorted(values, key=len, reverse=True)


# --------------------------------------------------------------------------- versions


def component_versions() -> dict[str, str]:
    """The versions install.sh builds, read from the committed manifests (the single source)."""
    pom = (PACKAGE_DIR / "kafka" / "pom.xml").read_text()
    gomod = (PACKAGE_DIR / "ferretdb" / "go.mod").read_text()
    package = json.loads((PACKAGE_DIR / "mongo-express" / "package.json").read_text())
    kafka = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom)
    ferretdb = re.search(r"^\s*(?:require\s+)?github\.com/FerretDB/FerretDB\s+(v\S+)", gomod, re.MULTILINE)
    if kafka is None or ferretdb is None:
        raise StackError("cannot read the Kafka or FerretDB version from localstack/kafka/pom.xml or ferretdb/go.mod")
    return {
        "kafka": kafka.group(1),
        "ferretdb": ferretdb.group(1),
        "mongo-express": package["dependencies"]["mongo-express"],
    }
