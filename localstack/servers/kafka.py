"""Kafka as one KRaft node (broker and controller), jars from Maven Central (``localstack/kafka/pom.xml``).

Its ``server.properties`` is rendered at each start from the one source Compose
uses: the ``KAFKA_*`` variables of the ``kafka`` service in docker-compose.yml
(and, with TLS, docker-compose.tls.yml over it), turned into properties as the
apache/kafka image turns them (:func:`kafka_property`, :func:`image_ssl_files`).
Only what names a machine differs (:data:`MACHINE_SETTINGS`: listeners on
127.0.0.1 with this stack's ports, the log directory, the partitions from
KAFKA_NUM_PARTITIONS); ``localstack/kafka/local.properties`` adds settings
Compose does not have, and may not change one it has.

With TLS (STACK_TLS_DIR) clients log in with SCRAM-SHA-512: the broker's own
user and the bridge's and model service's are written into the storage when it
is formatted, and the bridge's and the model's passwords are set again at every
start, once the broker answers (:meth:`Kafka._set_passwords`), so a changed
password takes effect. The broker's own (KAFKA_BROKER_PASSWORD) stays as it
was formatted.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import yaml

from localstack.config import PACKAGE_DIR, REPO_ROOT, StackError, component_versions
from localstack.process import base_env, find_executable, port_open
from localstack.servers.base import Server

#: The file whose ``kafka`` service configures the broker, in Docker and here.
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
#: Compose's TLS override: its kafka service's variables replace those of COMPOSE_FILE when TLS is on.
COMPOSE_TLS_FILE = REPO_ROOT / "docker-compose.tls.yml"
#: Where the apache/kafka image reads its keystore and credentials files (the ./tls folder in Compose).
IMAGE_SECRETS_DIR = "/etc/kafka/secrets/"
#: Image variables naming a file in IMAGE_SECRETS_DIR: the property each sets, and whether to the file's path
#: or to its content (a password).
IMAGE_SSL_FILES = {
    "KAFKA_SSL_KEYSTORE_FILENAME": ("ssl.keystore.location", "path"),
    "KAFKA_SSL_KEYSTORE_CREDENTIALS": ("ssl.keystore.password", "content"),
    "KAFKA_SSL_KEY_CREDENTIALS": ("ssl.key.password", "content"),
    "KAFKA_SSL_TRUSTSTORE_FILENAME": ("ssl.truststore.location", "path"),
    "KAFKA_SSL_TRUSTSTORE_CREDENTIALS": ("ssl.truststore.password", "content"),
}
#: What only the local stack sets (see its header).
LOCAL_PROPERTIES = PACKAGE_DIR / "kafka" / "local.properties"
#: Compose settings that name Compose's machine; the local stack gives its own values.
MACHINE_SETTINGS = ("listeners", "advertised.listeners", "controller.quorum.voters", "log.dirs", "num.partitions")
#: Listener ports in Compose -> the local stack's variable that replaces each.
KAFKA_LISTENERS = {"9092": "KAFKA_PORT", "9093": "KAFKA_CONTROLLER_PORT"}
#: KAFKA_* variables the apache/kafka image reads itself rather than as broker properties.
_NOT_PROPERTIES = {
    "KAFKA_HEAP_OPTS",
    "KAFKA_OPTS",
    "KAFKA_JVM_PERFORMANCE_OPTS",
    "KAFKA_GC_LOG_OPTS",
    "KAFKA_JMX_OPTS",
    "KAFKA_LOG4J_OPTS",
    "KAFKA_LOG4J_LOGGERS",
    "KAFKA_LOG4J_ROOT_LOGLEVEL",
    "KAFKA_TOOLS_LOG4J_LOGLEVEL",
    "KAFKA_VERSION",
}


def kafka_property(variable: str) -> str:
    """The broker property of a ``KAFKA_*`` variable, as the apache/kafka image maps it.

    ``KAFKA_`` goes, the rest is lower-cased, ``___`` becomes ``-``, ``__`` ``_`` and ``_`` ``.``:
    ``KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR`` is ``offsets.topic.replication.factor``.
    """
    name = variable.removeprefix("KAFKA_").lower()
    return name.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def _kafka_environment(compose_text: str, file: str) -> dict[str, str]:
    service = (yaml.safe_load(compose_text).get("services") or {}).get("kafka")
    if not service:
        raise StackError(f"{file} has no kafka service to take the broker's settings from")
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # the `- NAME=value` form
        environment = dict(item.split("=", 1) for item in environment)
    return {str(k): str(v) for k, v in environment.items()}


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?[?-][^}]*)?\}")


def compose_kafka_settings(
    compose_text: str,
    override_text: str | None = None,
    *,
    variables: Mapping[str, str] | None = None,
    secrets_dir: Path | None = None,
) -> dict[str, str]:
    """The properties Compose gives its broker: the kafka service's KAFKA_* variables, in file order.

    ``override_text`` (docker-compose.tls.yml) replaces variables and adds its own,
    as ``docker compose -f docker-compose.yml -f docker-compose.tls.yml`` merges
    them. ``${NAME...}`` is filled from ``variables``; without a value for NAME it
    is refused. The image's SSL file variables (:data:`IMAGE_SSL_FILES`) and paths
    under /etc/kafka/secrets/ point into ``secrets_dir``, as the image's mount does.
    """
    environment = _kafka_environment(compose_text, "docker-compose.yml")
    if override_text is not None:
        environment.update(_kafka_environment(override_text, "docker-compose.tls.yml"))
    settings: dict[str, str] = {}
    for variable, text in environment.items():
        if not variable.startswith("KAFKA_") or variable in _NOT_PROPERTIES:
            continue

        def fill(match: re.Match[str], variable: str = variable) -> str:
            if variables is None or match["name"] not in variables:
                raise StackError(
                    f"docker-compose: kafka's {variable} uses ${{{match['name']}}}, which localstack has no value for"
                )
            return variables[match["name"]]

        text = _INTERPOLATION.sub(fill, text)
        if "${" in text:
            raise StackError(f"docker-compose: kafka's {variable} uses interpolation, which localstack cannot follow")
        if variable in IMAGE_SSL_FILES or text.startswith(IMAGE_SECRETS_DIR):
            if secrets_dir is None:
                raise StackError(f"docker-compose: kafka's {variable} names a TLS file, and TLS is off here")
            if variable in IMAGE_SSL_FILES:
                key, kind = IMAGE_SSL_FILES[variable]
                file = secrets_dir / text
                settings[key] = str(file) if kind == "path" else file.read_text().strip()
                continue
            text = str(secrets_dir / text.removeprefix(IMAGE_SECRETS_DIR))
        settings[kafka_property(variable)] = text
    return settings


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a .properties file (comments and blank lines skipped), in order."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            result[key.strip()] = value.strip()
    return result


def _local_listeners(value: str, ports: Mapping[str, int]) -> str:
    """Compose's ``NAME://host:port,...`` with each host 127.0.0.1 and each port this stack's."""

    def replace(match: re.Match[str]) -> str:
        port = match["port"]
        if port not in KAFKA_LISTENERS:
            raise StackError(
                f"docker-compose.yml: kafka listens on {port}; localstack knows only {list(KAFKA_LISTENERS)}"
            )
        return f"{match['name']}://127.0.0.1:{ports[KAFKA_LISTENERS[port]]}"

    return re.sub(r"(?P<name>[A-Za-z0-9_]+)://[^,:]*:(?P<port>\d+)", replace, value)


def render_kafka_properties(
    compose: Mapping[str, str], local_text: str, ports: Mapping[str, int], *, num_partitions: int, log_dirs: Path
) -> str:
    """The local ``server.properties``: Compose's settings with this machine's, then ``local_text``.

    ``ports`` maps KAFKA_PORT and KAFKA_CONTROLLER_PORT to this stack's ports.
    """
    missing = [key for key in MACHINE_SETTINGS if key not in compose and key != "log.dirs"]
    if missing:
        raise StackError(f"docker-compose.yml: the kafka service sets none of {missing}")
    lines = ["# Rendered by localstack/servers/kafka.py from docker-compose.yml (service kafka) at each start."]
    for key, value in compose.items():
        if key in ("listeners", "advertised.listeners"):
            value = _local_listeners(value, ports)
        elif key == "controller.quorum.voters":
            # The same one voter, in the form `kafka-storage format --standalone` needs.
            key, value = "controller.quorum.bootstrap.servers", f"127.0.0.1:{ports['KAFKA_CONTROLLER_PORT']}"
        elif key == "log.dirs":
            value = str(log_dirs)
        elif key == "num.partitions":
            value = str(num_partitions)
        lines.append(f"{key}={value}")
    if "log.dirs" not in compose:
        lines.append(f"log.dirs={log_dirs}")
    local = parse_properties(local_text)
    clash = sorted(set(local) & (set(compose) | {"controller.quorum.bootstrap.servers", "log.dirs"}))
    if clash:
        raise StackError(
            f"localstack/kafka/local.properties sets {clash}, which docker-compose.yml sets: change it there"
        )
    lines.append("# localstack/kafka/local.properties")
    lines += [f"{key}={value}" for key, value in local.items()]
    return "\n".join(lines) + "\n"


def kafka_cluster_id() -> str:
    """A random cluster id like ``kafka-storage random-uuid`` (base64url, 22 chars, no leading '-')."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):  # it would be read as an option
            return value


class Kafka(Server):
    name = "kafka"
    ready_timeout = 180.0  # JVM start and log recovery after a kill -9, on 2 cores
    started_marker = "Kafka Server started"

    @property
    def port(self) -> int:
        return self.config.kafka_port

    @property
    def ports(self) -> dict[str, int]:
        return {"KAFKA_PORT": self.config.kafka_port, "KAFKA_CONTROLLER_PORT": self.config.kafka_controller_port}

    @property
    def lib_dir(self) -> Path:
        version = component_versions()["kafka"]
        return self.config.cache_dir / f"kafka-{version}" / "lib"

    @property
    def properties(self) -> Path:
        return self.config.conf_dir(self.name) / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.config.data_dir(self.name) / "kraft-logs"

    def render(self) -> str:
        """This stack's server.properties (see the module's docstring)."""
        config = self.config
        compose = (
            compose_kafka_settings(
                COMPOSE_FILE.read_text(),
                COMPOSE_TLS_FILE.read_text(),
                variables={"KAFKA_BROKER_PASSWORD": config.kafka_broker_password},
                secrets_dir=config.tls_dir,
            )
            if config.tls
            else compose_kafka_settings(COMPOSE_FILE.read_text())
        )
        return render_kafka_properties(
            compose,
            LOCAL_PROPERTIES.read_text(),
            self.ports,
            num_partitions=self.config.kafka_num_partitions,
            log_dirs=self.log_dirs,
        )

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
            return str(Path(java_home) / "bin" / "java")
        java = find_executable("java")
        if java is None:
            raise StackError("kafka: java is not installed; run `bash localstack/install.sh`")
        return java

    def _jvm_common(self) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={PACKAGE_DIR / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.config.logs_dir}",
            "-cp",
            f"{self.lib_dir}/*",  # a JVM classpath wildcard, not a shell glob
        ]

    def prepare(self, log: IO[bytes]) -> None:
        if not any(self.lib_dir.glob("kafka_2.13-*.jar")):
            raise StackError(f"kafka: {self.lib_dir} has no Kafka jars; run `bash localstack/install.sh`")
        self.config.conf_dir(self.name).mkdir(parents=True, exist_ok=True)
        self.log_dirs.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(self.render())
        self.properties.chmod(0o600)  # with TLS it holds the broker's and the keystore's passwords
        if (self.log_dirs / "meta.properties").exists():
            if self.config.tls and not self.scram_stamp.exists():
                # Its broker would never log in to itself, and the probe would time out.
                raise StackError(
                    f"kafka: the data in {self.log_dirs} was formatted without TLS, so it has no SCRAM users "
                    "(the broker's, the bridge's, the model's). Delete that directory (its topics are lost) "
                    "to start Kafka with TLS, or unset STACK_TLS_DIR"
                )
            return  # formatted once per data directory; formatting again would fail
        log.write(b"localstack: formatting Kafka storage\n")
        log.flush()
        result = subprocess.run(
            [
                self._java(),
                "-Xmx256M",
                *self._jvm_common(),
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "--cluster-id",
                kafka_cluster_id(),
                "--config",
                str(self.properties),
                *self._scram_users(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=base_env(),
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"kafka: formatting the storage in {self.log_dirs} failed (exit {result.returncode})")
        if self.config.tls:
            self.scram_stamp.write_text("formatted with the SCRAM users of STACK_TLS_DIR\n")

    @property
    def scram_stamp(self) -> Path:
        """Written when the storage is formatted with SCRAM users (TLS): without it, TLS cannot start."""
        return self.config.data_dir(self.name) / "scram-users"

    def _scram_users(self) -> list[str]:
        """``--add-scram`` options for the SCRAM-SHA-512 users, with TLS (none without).

        On the formatter's command line for the second it runs: the one way to put
        a user into a new KRaft cluster before any login works.
        """
        if not self.config.tls:
            return []
        users = {
            "broker": self.config.kafka_broker_password,
            self.config.kafka_server_username: self.config.kafka_server_password,
            self.config.kafka_model_username: self.config.kafka_model_password,
        }
        return [
            option
            for name, password in users.items()
            for option in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
        ]

    def client_config(self) -> dict[str, Any]:
        """What a client of this broker needs to connect (with TLS: the CA and the broker's own login)."""
        config: dict[str, Any] = {"bootstrap.servers": f"127.0.0.1:{self.config.kafka_port}"}
        if self.config.tls:
            config.update(
                {
                    "security.protocol": "SASL_SSL",
                    "ssl.ca.location": str(self.config.tls_file("ca.crt")),
                    "sasl.mechanism": "SCRAM-SHA-512",
                    "sasl.username": "broker",
                    "sasl.password": self.config.kafka_broker_password,
                }
            )
        return config

    def command(self) -> list[str]:
        return [
            self._java(),
            "-Xms512m",
            "-Xmx512m",
            "-server",
            # The flags of Kafka's own kafka-server-start.sh.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:MaxInlineLevel=15",
            "-Djava.awt.headless=true",
            *self._jvm_common(),
            "kafka.Kafka",
            str(self.properties),
        ]

    def probe(self) -> bool:
        if not port_open(self.config.kafka_port):
            return False  # spare librdkafka's connection-refused noise
        from confluent_kafka.admin import AdminClient

        probe_config: dict[str, Any] = {
            **self.client_config(),
            "socket.timeout.ms": 3000,
            "logger": logging.getLogger(f"{__name__}.probe"),
        }
        admin = AdminClient(probe_config)
        try:
            metadata = admin.list_topics(timeout=3)
            if metadata.brokers and self.config.tls:
                self._set_passwords(admin)
        except Exception:  # KafkaException, or a timeout while the broker settles
            return False
        return bool(metadata.brokers)

    #: SCRAM iterations of the passwords set at each start (the formatter uses 4096).
    SCRAM_ITERATIONS = 8192

    def _set_passwords(self, admin: Any) -> None:
        """Set the bridge's and the model service's SCRAM passwords to the current ones (a changed one takes effect).

        The broker's own user cannot be changed this way: it is the login that does it.
        """
        from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, self.SCRAM_ITERATIONS)
        users = {
            self.config.kafka_server_username: self.config.kafka_server_password,
            self.config.kafka_model_username: self.config.kafka_model_password,
        }
        futures = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(name, info, password.encode()) for name, password in users.items()]
        )
        for future in futures.values():
            future.result(timeout=10)
