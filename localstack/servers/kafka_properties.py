"""Kafka's ``server.properties``, rendered from Compose's ``kafka`` services (pure functions).

The one source is the ``KAFKA_*`` variables Compose gives its brokers: the
``kafka`` service of docker-compose.yml, with docker-compose.tls.yml's (TLS),
docker-compose.cluster.yml's (``kafka``, ``kafka-2``, ``kafka-3``) or, on a
cluster with TLS, both and docker-compose.cluster-tls.yml's over them,
turned into properties as the apache/kafka image turns them
(:func:`kafka_property`, :func:`image_ssl_files`). Only what names a machine
differs (:data:`MACHINE_SETTINGS`: listeners on 127.0.0.1 with this stack's
ports, the quorum's addresses, the log directory, the partitions from
KAFKA_NUM_PARTITIONS); ``localstack/kafka/local.properties`` adds settings
Compose does not have, and may not change one it has.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from localstack.cluster import KafkaNode
from localstack.config import PACKAGE_DIR, REPO_ROOT, StackError

#: The file whose ``kafka`` service configures the broker, in Docker and here.
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
#: Compose's TLS override: its kafka service's variables replace those of COMPOSE_FILE when TLS is on.
COMPOSE_TLS_FILE = REPO_ROOT / "docker-compose.tls.yml"
#: Compose's three-broker override: its kafka, kafka-2 and kafka-3 services, with KAFKA_BROKERS=3.
COMPOSE_CLUSTER_FILE = REPO_ROOT / "docker-compose.cluster.yml"
#: Compose's TLS for kafka-2 and kafka-3, after COMPOSE_CLUSTER_FILE and COMPOSE_TLS_FILE.
COMPOSE_CLUSTER_TLS_FILE = REPO_ROOT / "docker-compose.cluster-tls.yml"
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


def _kafka_environment(compose_text: str, file: str, name: str = "kafka") -> dict[str, str]:
    service = (yaml.safe_load(compose_text).get("services") or {}).get(name)
    if not service:
        raise StackError(f"{file} has no {name} service to take the broker's settings from")
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # the `- NAME=value` form
        environment = dict(item.split("=", 1) for item in environment)
    return {str(k): str(v) for k, v in environment.items()}


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?[?-][^}]*)?\}")


#: One Compose file over docker-compose.yml: its text, its name (for errors) and the service to read from it.
Override = tuple[str, str, str]


def compose_kafka_settings(
    compose_text: str,
    overrides: Sequence[Override] = (),
    *,
    variables: Mapping[str, str] | None = None,
    secrets_dir: Path | None = None,
) -> dict[str, str]:
    """The properties Compose gives a broker: docker-compose.yml's kafka variables, then each override's, in order.

    Each of ``overrides`` (text, file name, service) replaces variables and adds
    its own, as ``docker compose -f docker-compose.yml -f ...`` merges the files
    in that order: docker-compose.tls.yml's ``kafka``; docker-compose.cluster.yml's
    ``kafka-2`` (it extends docker-compose.yml's ``kafka``, so its variables go
    over that service's); on a cluster with TLS, the node's service of
    docker-compose.cluster.yml, then TLS's ``kafka``, then the node's of
    docker-compose.cluster-tls.yml (which extends TLS's ``kafka``). ``${NAME...}``
    is filled from ``variables``; without a value for NAME it is refused. The
    image's SSL file variables (:data:`IMAGE_SSL_FILES`) and paths under
    /etc/kafka/secrets/ point into ``secrets_dir``, as the image's mount does.
    """
    environment = _kafka_environment(compose_text, "docker-compose.yml")
    for override_text, override_file, service in overrides:
        environment.update(_kafka_environment(override_text, override_file, service))
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


def _voter_ids(value: str) -> list[int]:
    """The node ids of a ``controller.quorum.voters`` value (``1@kafka:9093,2@kafka-2:9093``)."""
    try:
        return [int(voter.split("@", 1)[0]) for voter in value.split(",")]
    except ValueError:
        raise StackError(f"docker-compose: controller.quorum.voters {value!r} is not id@host:port,...") from None


def render_kafka_properties(
    compose: Mapping[str, str],
    local_text: str,
    ports: Mapping[str, int],
    *,
    num_partitions: int,
    log_dirs: Path,
    cluster: Sequence[KafkaNode] = (),
) -> str:
    """The local ``server.properties``: Compose's settings with this machine's, then ``local_text``.

    ``ports`` maps KAFKA_PORT and KAFKA_CONTROLLER_PORT to this node's ports.
    One node (no ``cluster``) gets its voter as ``controller.quorum.bootstrap.servers``,
    for ``format --standalone``; the nodes of a ``cluster`` keep Compose's static
    ``controller.quorum.voters``, each voter at its node's controller port here,
    and Compose's voters must be exactly the cluster's nodes.
    """
    missing = [key for key in MACHINE_SETTINGS if key not in compose and key != "log.dirs"]
    if missing:
        raise StackError(f"docker-compose.yml: the kafka service sets none of {missing}")
    lines = ["# Rendered by localstack/servers/kafka.py from docker-compose.yml (service kafka) at each start."]
    for key, value in compose.items():
        if key in ("listeners", "advertised.listeners"):
            value = _local_listeners(value, ports)
        elif key == "controller.quorum.voters" and cluster:
            ids = sorted(node.node_id for node in cluster)
            if sorted(_voter_ids(value)) != ids:
                raise StackError(f"docker-compose: the quorum's voters are {value!r}; this stack's nodes are {ids}")
            value = ",".join(f"{node.node_id}@127.0.0.1:{node.controller_port}" for node in cluster)
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
