"""docker-compose.tls.yml, the TLS opt-in: merged by the real Compose CLI, and held against the local stack.

The local stack runs the same TLS settings (STACK_TLS_DIR): Kafka's properties
come from the same kafka variables, Mosquitto's TLS listeners from the same
entry point. These tests keep the two from drifting apart; the servers
themselves are exercised in tests/integration/test_tls.py.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localstack.config import REQUIRED_SECRETS, StackConfig
from localstack.servers.kafka import MACHINE_SETTINGS, compose_kafka_settings, parse_properties
from localstack.stack import Stack
from localstack.tls import TLS_FILES, make_certificates, missing_files
from tests.unit.test_compose import compose_config, run_entrypoint

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_TLS = ROOT / "docker-compose.tls.yml"
#: docker-compose.tls.yml's kafka over docker-compose.yml's (compose_kafka_settings' override).
TLS_KAFKA = (COMPOSE_TLS.read_text(), COMPOSE_TLS.name, "kafka")
#: The Python services and the TLS files each must be given.
SERVICE_TLS = {
    "server": {"MQTT_TLS_CA_FILE", "KAFKA_TLS_CA_FILE", "MONGO_TLS_CA_FILE"},
    "sensor": {"MQTT_TLS_CA_FILE"},
    "model_analysis": {"KAFKA_TLS_CA_FILE"},
    "dashboard": {"MONGO_TLS_CA_FILE", "DASHBOARD_TLS_CERT_FILE", "DASHBOARD_TLS_KEY_FILE"},
    "train": {"MONGO_TLS_CA_FILE"},
    "trainer": {"MONGO_TLS_CA_FILE"},
}


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`docker compose -f docker-compose.yml -f docker-compose.tls.yml config` (every profile)."""
    result = compose_config(
        tmp_path_factory.mktemp("compose"), COMPOSE, COMPOSE_TLS, args=(), options=("--profile", "*")
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """{target: source} of a service's bind mounts."""
    return {v["target"]: v["source"] for v in service.get("volumes", []) if v.get("type") == "bind"}


def test_the_override_merges_and_needs_kafkas_passwords(tmp_path: Path) -> None:
    assert compose_config(tmp_path, COMPOSE, COMPOSE_TLS).returncode == 0
    for variable in ("KAFKA_BROKER_PASSWORD", "KAFKA_SERVER_PASSWORD", "KAFKA_MODEL_PASSWORD"):
        result = compose_config(tmp_path, COMPOSE, COMPOSE_TLS, dotenv={variable: None})
        assert result.returncode != 0 and variable in result.stderr, result.stderr
    # Without the override, Compose needs none of them: TLS stays an opt-in.
    none: dict[str, str | None] = {
        v: None for v in ("KAFKA_BROKER_PASSWORD", "KAFKA_SERVER_PASSWORD", "KAFKA_MODEL_PASSWORD")
    }
    assert compose_config(tmp_path, COMPOSE, dotenv=none).returncode == 0


@pytest.mark.parametrize("name", sorted(SERVICE_TLS))
def test_each_python_service_gets_the_ca_inside_a_mounted_tls_folder(merged: dict[str, Any], name: str) -> None:
    service = merged["services"][name]
    environment = service["environment"]
    assert SERVICE_TLS[name] <= set(environment), f"{name} lacks {SERVICE_TLS[name] - set(environment)}"
    tls_mount = mounts(service).get("/tls", "")
    assert tls_mount == str(ROOT / "tls"), f"{name} does not mount ./tls at /tls"
    for variable in SERVICE_TLS[name]:
        file = environment[variable]
        assert file.startswith("/tls/") and file.removeprefix("/tls/") in TLS_FILES, f"{name}: {variable}={file}"


@pytest.mark.parametrize("name", ["train", "trainer"])
def test_the_mongodb_uri_of_a_tool_that_builds_its_client_from_it_asks_for_tls(
    merged: dict[str, Any], name: str
) -> None:
    uri = merged["services"][name]["environment"]["MONGO_URI"]
    assert uri.endswith("&tls=true&tlsCAFile=/tls/ca.crt"), uri


def test_every_service_that_reaches_a_tls_server_is_in_the_override(merged: dict[str, Any]) -> None:
    """A new service in docker-compose.yml that talks to MongoDB, Kafka or Mosquitto needs TLS settings too."""
    talking = {
        name
        for name, service in merged["services"].items()
        if set(service.get("environment") or {}) & {"MONGO_URI", "KAFKA_BOOTSTRAP_SERVERS", "MQTT_HOST"}
    }
    assert talking <= set(SERVICE_TLS), f"no TLS settings for {sorted(talking - set(SERVICE_TLS))}"


def test_kafka_clients_log_in_with_the_users_the_broker_is_formatted_with(merged: dict[str, Any]) -> None:
    services = merged["services"]
    kafka = services["kafka"]["environment"]
    assert services["server"]["environment"]["KAFKA_SASL_USERNAME"] == kafka["SCRAM_SERVER_USERNAME"] == "bridge"
    assert services["model_analysis"]["environment"]["KAFKA_SASL_USERNAME"] == kafka["SCRAM_MODEL_USERNAME"] == "model"
    command = " ".join(services["kafka"]["command"])
    for user in ("broker", "$$SCRAM_SERVER_USERNAME", "$$SCRAM_MODEL_USERNAME"):
        assert f"name={user}," in command


def format_properties(merged: dict[str, Any], service: str = "kafka") -> dict[str, str]:
    """The properties a broker's command writes for its first `kafka-storage format` (its shell's $NAME filled in)."""
    script = merged["services"][service]["command"][-1]
    environment = merged["services"][service]["environment"]
    words = shlex.split(script.split(">", 1)[0].removeprefix("printf '%s\\n'"))
    filled = [re.sub(r"\$\$([A-Z_]+)", lambda m: str(environment[m[1]]), word) for word in words]
    return dict(word.split("=", 1) for word in filled)


def test_the_format_before_the_image_agrees_with_the_brokers_settings(merged: dict[str, Any], tmp_path: Path) -> None:
    """The storage is formatted (with the SCRAM users) from a few properties: they must be the broker's."""
    make_certificates(tmp_path)
    written = format_properties(merged)
    broker = compose_kafka_settings(
        COMPOSE.read_text(), [TLS_KAFKA], variables={"KAFKA_BROKER_PASSWORD": "x"}, secrets_dir=tmp_path
    )
    for key, value in written.items():
        assert broker.get(key) == value, f"the format step writes {key}={value}; the broker has {broker.get(key)}"


def test_the_local_stack_renders_kafka_as_compose_merges_it(merged: dict[str, Any], tmp_path: Path) -> None:
    """Kafka's TLS properties: the local stack's merge of the two files is Compose's."""
    make_certificates(tmp_path)
    variables = {"KAFKA_BROKER_PASSWORD": "x"}
    local = compose_kafka_settings(COMPOSE.read_text(), [TLS_KAFKA], variables=variables, secrets_dir=tmp_path)
    # Compose's own merge, read back the same way; `config` writes $$ for a literal $.
    composed = compose_kafka_settings(
        yaml.safe_dump({"services": {"kafka": merged["services"]["kafka"]}}).replace("$$", "$"),
        secrets_dir=tmp_path,
    )
    assert local == composed
    assert local["listener.security.protocol.map"] == "CONTROLLER:SSL,SASL_SSL:SASL_SSL"
    assert local["ssl.keystore.location"] == str(tmp_path / "kafka.p12")
    assert local["ssl.keystore.password"] == (tmp_path / "kafka.password").read_text()
    assert local["ssl.truststore.location"] == str(tmp_path / "ca.crt")
    assert 'password="x"' in local["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]


def test_the_certificates_command_writes_every_file(tmp_path: Path) -> None:
    assert missing_files(tmp_path) == list(TLS_FILES)
    make_certificates(tmp_path)
    assert missing_files(tmp_path) == []
    assert (tmp_path / "server.pem").read_text().count("BEGIN") == 2


# --- Mosquitto: the entry point's TLS listeners ---------------------------------------


def test_the_entrypoint_puts_the_certificate_on_every_listener(tmp_path: Path) -> None:
    assert shutil.which("mosquitto_passwd"), "mosquitto_passwd is missing: run `bash localstack/install.sh`"
    make_certificates(tmp_path / "tls")
    cert, key = tmp_path / "tls/server.crt", tmp_path / "tls/server.key"
    source = ROOT / "mosquitto/mosquitto.conf"
    result = run_entrypoint(
        tmp_path, MOSQUITTO_CONF=str(source), MOSQUITTO_TLS_CERT_FILE=str(cert), MOSQUITTO_TLS_KEY_FILE=str(key)
    )
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "auth/mosquitto.conf").read_text().splitlines()
    listeners = [i for i, line in enumerate(written) if line.split()[:1] == ["listener"]]
    assert len(listeners) == 2, "MQTT and websockets"
    for i in listeners:
        assert written[i + 1 : i + 3] == [f"certfile {cert}", f"keyfile {key}"]
    # Every other line is the image's configuration, unchanged.
    assert [
        line for line in written if not line.startswith(("certfile ", "keyfile "))
    ] == source.read_text().splitlines()


def test_without_tls_the_entrypoint_writes_no_configuration(tmp_path: Path) -> None:
    assert run_entrypoint(tmp_path).returncode == 0
    assert not (tmp_path / "auth/mosquitto.conf").exists()


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"MOSQUITTO_TLS_CERT_FILE": "cert"}, "set both or neither"),
        ({"MOSQUITTO_TLS_KEY_FILE": "key"}, "set both or neither"),
        (
            {"MOSQUITTO_TLS_CERT_FILE": "missing", "MOSQUITTO_TLS_KEY_FILE": "key"},
            "MOSQUITTO_TLS_CERT_FILE: cannot read",
        ),
        (
            {"MOSQUITTO_TLS_CERT_FILE": "cert", "MOSQUITTO_TLS_KEY_FILE": "missing"},
            "MOSQUITTO_TLS_KEY_FILE: cannot read",
        ),
    ],
)
def test_the_entrypoint_refuses_half_a_tls_setting(tmp_path: Path, files: dict[str, str], says: str) -> None:
    (tmp_path / "cert").write_text("x")
    (tmp_path / "key").write_text("x")
    result = run_entrypoint(
        tmp_path,
        MOSQUITTO_CONF=str(ROOT / "mosquitto/mosquitto.conf"),
        **{k: str(tmp_path / v) for k, v in files.items()},
    )
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert not (tmp_path / "auth").exists(), "nothing is written before every setting is checked"


def test_compose_file_in_env_switches_tls_on_for_every_command(tmp_path: Path) -> None:
    """README: COMPOSE_FILE=docker-compose.yml:docker-compose.tls.yml in .env, and `make up` runs with TLS."""
    result = compose_config(tmp_path, args=(), dotenv={"COMPOSE_FILE": "docker-compose.yml:docker-compose.tls.yml"})
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["services"]["kafka"]["environment"]["KAFKA_LISTENERS"] == "SASL_SSL://:9092,CONTROLLER://:9093"
    assert config["services"]["sensor"]["environment"]["MQTT_TLS_CA_FILE"] == "/tls/ca.crt"


# --------------------------------------------------------------------------- TLS on the Kafka cluster

COMPOSE_CLUSTER = ROOT / "docker-compose.cluster.yml"
COMPOSE_CLUSTER_TLS = ROOT / "docker-compose.cluster-tls.yml"
BROKERS = ("kafka", "kafka-2", "kafka-3")
KAFKA_PASSWORDS = ("KAFKA_BROKER_PASSWORD", "KAFKA_SERVER_PASSWORD", "KAFKA_MODEL_PASSWORD")


@pytest.fixture(scope="module")
def cluster_tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The four files as a user gives them: docker-compose.yml, cluster, tls, cluster-tls."""
    files = (COMPOSE, COMPOSE_CLUSTER, COMPOSE_TLS, COMPOSE_CLUSTER_TLS)
    result = compose_config(tmp_path_factory.mktemp("compose"), *files, args=())
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.mark.parametrize("name", BROKERS)
def test_every_broker_of_the_cluster_speaks_only_tls_under_its_own_name(cluster_tls: dict[str, Any], name: str) -> None:
    service = cluster_tls["services"][name]
    environment = service["environment"]
    assert environment["KAFKA_ADVERTISED_LISTENERS"] == f"SASL_SSL://{name}:9092"
    assert environment["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"] == "CONTROLLER:SSL,SASL_SSL:SASL_SSL"
    assert environment["KAFKA_LISTENER_NAME_CONTROLLER_SSL_CLIENT_AUTH"] == "required"
    assert environment["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"
    assert mounts(service)["/etc/kafka/secrets"] == str(ROOT / "tls")
    data = {v["target"]: v["source"] for v in service["volumes"] if v.get("type") == "volume"}
    assert data == {"/var/lib/kafka/data": "kafka-data" if name == "kafka" else f"{name}-data"}
    # Its storage is formatted with its own id, the cluster's quorum and the SCRAM users.
    written = format_properties(cluster_tls, name)
    assert written["node.id"] == str(BROKERS.index(name) + 1)
    assert written["controller.quorum.voters"] == environment["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert "--add-scram" in service["command"][-1]


def test_the_kafka_clients_know_every_broker_and_log_in_over_tls(cluster_tls: dict[str, Any]) -> None:
    for name in ("server", "model_analysis"):
        environment = cluster_tls["services"][name]["environment"]
        assert environment["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092,kafka-2:9092,kafka-3:9092"
        assert environment["KAFKA_TLS_CA_FILE"] == "/tls/ca.crt" and environment["KAFKA_SASL_USERNAME"]
        assert (environment["KAFKA_REPLICATION_FACTOR"], environment["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")


def test_the_certificate_names_every_host_a_client_of_the_cluster_connects_to(
    cluster_tls: dict[str, Any], tmp_path: Path
) -> None:
    make_certificates(tmp_path)
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(tmp_path / "server.crt")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = set(re.findall(r"DNS:([^,\s]+)", text))
    advertised = {
        cluster_tls["services"][b]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split("//")[1].split(":")[0]
        for b in BROKERS
    }
    assert advertised == set(BROKERS) and advertised <= names


@pytest.mark.parametrize("name", BROKERS)
def test_the_local_cluster_renders_each_broker_as_compose_merges_the_four_files(
    cluster_tls: dict[str, Any], tmp_path: Path, name: str
) -> None:
    """`make run KAFKA_BROKERS=3` with STACK_TLS_DIR: each node's properties are Compose's for that broker."""
    make_certificates(tmp_path / "tls")
    stack = Stack(
        StackConfig.from_env(
            {
                "STACK_DIR": str(tmp_path / "stack"),
                "STACK_TLS_DIR": str(tmp_path / "tls"),
                "KAFKA_BROKERS": "3",
                **{n: "x" for n in (*REQUIRED_SECRETS, *KAFKA_PASSWORDS)},
            }
        )
    )
    local = parse_properties(stack.servers[name].render())  # type: ignore[attr-defined]
    composed = compose_kafka_settings(
        yaml.safe_dump({"services": {"kafka": cluster_tls["services"][name]}}).replace("$$", "$"),
        variables={"KAFKA_BROKER_PASSWORD": "x"},
        secrets_dir=tmp_path / "tls",
    )
    for key, value in composed.items():
        if key not in MACHINE_SETTINGS:
            assert local[key] == value, f"{name}: {key}"
    assert local["listeners"].startswith("SASL_SSL://127.0.0.1:")
    assert local["node.id"] == str(BROKERS.index(name) + 1)
    assert local["controller.quorum.voters"].count("@127.0.0.1:") == 3
