"""The Kafka cluster's pure pieces, without starting a server.

- ``localstack/cluster.py``: each node's ports never collide, the quorum and the
  bootstrap list name every node (property-based);
- each node's ``server.properties`` as the local stack renders it from
  docker-compose.cluster.yml over docker-compose.yml;
- ``KAFKA_BROKERS``, ``KAFKA_REPLICATION_FACTOR`` and ``KAFKA_MIN_INSYNC_REPLICAS``
  validated at start, naming the variable;
- the override as the real Compose CLI resolves it (``docker compose config``):
  three brokers, one quorum, every Kafka client given all three.
The servers themselves are exercised in tests/faults/test_cluster.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from localstack.cluster import bootstrap_servers, kafka_nodes, node_name, quorum_voters, replication
from localstack.config import REQUIRED_SECRETS, ConfigError, StackConfig
from localstack.servers.kafka import (
    COMPOSE_CLUSTER_FILE,
    COMPOSE_FILE,
    LOCAL_PROPERTIES,
    MACHINE_SETTINGS,
    Kafka,
    compose_kafka_settings,
    parse_properties,
)
from localstack.services import _replicas, model_env, server_env
from localstack.stack import Stack, StackError
from localstack.testing import PORT_OFFSETS
from pipeline import contract
from pipeline.kafka import topic_replication_config
from pipeline.settings import KafkaSettings, describe_errors
from tests.unit.test_compose import compose_config

SECRETS = {name: f"secret-{n}" for n, name in enumerate(REQUIRED_SECRETS)}
#: Ports no test stack listens on (the workers' are 21000 and 23000 up, tests/conftest.py): one test here
#: starts servers, and must find its ports free.
BASE = 29000
CLUSTER_TEXT = COMPOSE_CLUSTER_FILE.read_text()


def config(tmp_path: Path, **extra: str) -> StackConfig:
    ports = {name: str(BASE + offset) for name, offset in PORT_OFFSETS.items()}
    return StackConfig.from_env({"STACK_DIR": str(tmp_path / "stack"), **ports, **SECRETS, **extra})


# --------------------------------------------------------------------------- nodes, ports, quorum


@given(st.integers(1, 7), st.integers(1024, 60000), st.integers(1024, 60000))
def test_every_node_has_ports_of_its_own_and_the_quorum_names_every_node(
    brokers: int, port: int, controller_port: int
) -> None:
    nodes = kafka_nodes(brokers, port, controller_port)
    assert [n.node_id for n in nodes] == list(range(1, brokers + 1))
    assert [n.name for n in nodes] == ["kafka"] + [f"kafka-{i}" for i in range(2, brokers + 1)]
    clients = [n.port for n in nodes]
    controllers = [n.controller_port for n in nodes]
    assert len(set(clients)) == len(set(controllers)) == brokers
    if abs(port - controller_port) % 2 == 1:  # the defaults (9092, 9093) and every port base of the tests
        assert len(set(clients) | set(controllers)) == 2 * brokers, "a client port is another node's controller port"
    voters = quorum_voters(nodes).split(",")
    assert voters == [f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes]
    assert bootstrap_servers(nodes).split(",") == [f"127.0.0.1:{p}" for p in clients]
    variables = {name for n in nodes for name in n.port_variables()}
    assert len(variables) == 2 * brokers and {"KAFKA_PORT", "KAFKA_CONTROLLER_PORT"} <= variables


@given(st.sampled_from([1, 3]), st.integers(10, 60).map(lambda k: k * 1000))
def test_a_stack_at_any_port_base_validates_with_no_two_ports_alike(brokers: int, base: int) -> None:
    offsets = {"MQTT_PORT": 883, "MQTT_WS_PORT": 884, "KAFKA_PORT": 92, "KAFKA_CONTROLLER_PORT": 93}
    offsets |= {"MONGO_PORT": 17, "MONGO_EXPRESS_PORT": 81}
    env = {name: str(base + offset) for name, offset in offsets.items()}
    loaded = StackConfig.from_env({**env, **SECRETS, "KAFKA_BROKERS": str(brokers), "STACK_DIR": "/tmp/x"})
    ports = loaded.ports()
    assert len(set(ports.values())) == len(ports) == 6 + 2 * (brokers - 1)


def test_two_kafka_nodes_on_one_port_are_refused_naming_both(tmp_path: Path) -> None:
    # Node 2's client port is KAFKA_PORT + 2: here that is MQTT's.
    with pytest.raises(ConfigError, match="KAFKA_PORT_2 and MQTT_PORT are both 29094|MQTT_PORT and KAFKA_PORT_2"):
        config(tmp_path, KAFKA_BROKERS="3", MQTT_PORT="29094")


@pytest.mark.parametrize("bad", ["2", "4", "0", "abc", "1.5"])
def test_kafka_brokers_is_one_or_three(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="(?m)^KAFKA_BROKERS: "):
        config(tmp_path, KAFKA_BROKERS=bad)


# --------------------------------------------------------------------------- each node's server.properties


def rendered(tmp_path: Path, brokers: int) -> dict[str, dict[str, str]]:
    stack = Stack(config(tmp_path, KAFKA_BROKERS=str(brokers)))
    nodes = {name: s for name, s in stack.servers.items() if isinstance(s, Kafka)}
    return {name: parse_properties(node.render()) for name, node in nodes.items()}


def test_one_broker_renders_as_before(tmp_path: Path) -> None:
    (single,) = rendered(tmp_path, 1).values()
    assert single["node.id"] == "1" and single["controller.quorum.bootstrap.servers"] == "127.0.0.1:29093"
    assert "controller.quorum.voters" not in single
    assert single["offsets.topic.replication.factor"] == "1"


def test_three_brokers_each_render_their_node_and_one_quorum(tmp_path: Path) -> None:
    nodes = rendered(tmp_path, 3)
    assert list(nodes) == ["kafka", "kafka-2", "kafka-3"]
    voters = "1@127.0.0.1:29093,2@127.0.0.1:29095,3@127.0.0.1:29097"
    for n, (name, properties) in enumerate(nodes.items(), start=1):
        port, controller = 29092 + 2 * (n - 1), 29093 + 2 * (n - 1)
        assert properties["node.id"] == str(n)
        assert properties["listeners"] == f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"
        assert properties["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{port}"
        assert properties["controller.quorum.voters"] == voters
        assert "controller.quorum.bootstrap.servers" not in properties
        assert properties["log.dirs"] == str(tmp_path.resolve() / "stack" / "data" / name / "kraft-logs")
        for key in ("offsets.topic.replication.factor", "default.replication.factor"):
            assert properties[key] == "3", key
        for key in ("min.insync.replicas", "transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr"):
            assert properties[key] == "2", key
        # Every other setting is Compose's for that service, and local.properties adds only its own.
        compose = compose_kafka_settings(
            COMPOSE_FILE.read_text(), [(COMPOSE_CLUSTER_FILE.read_text(), "cluster", name)]
        )
        for key, value in compose.items():
            if key not in MACHINE_SETTINGS:
                assert properties[key] == value, f"{name}: {key}"
        assert set(properties) - set(compose) - {"log.dirs"} == set(parse_properties(LOCAL_PROPERTIES.read_text()))


def test_a_quorum_that_is_not_the_stacks_nodes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = COMPOSE_CLUSTER_FILE.read_text().replace("3@kafka-3:9093", "4@kafka-4:9093")
    other = tmp_path / "docker-compose.cluster.yml"
    other.write_text(text)
    monkeypatch.setattr("localstack.servers.kafka.COMPOSE_CLUSTER_FILE", other)
    with pytest.raises(StackError, match="the quorum's voters are"):
        rendered(tmp_path, 3)


def test_data_formatted_for_another_number_of_nodes_is_refused(tmp_path: Path) -> None:
    single = Stack(config(tmp_path)).servers["kafka"]
    assert isinstance(single, Kafka)
    single._check_formatted_for(1)  # data from before KAFKA_BROKERS has no stamp: one node
    with pytest.raises(StackError, match="formatted for 1 Kafka node"):
        single._check_formatted_for(3)
    single.config.data_dir("kafka").mkdir(parents=True)
    single.brokers_stamp.write_text("3\n")
    with pytest.raises(StackError, match="formatted for 3 Kafka node.*KAFKA_BROKERS is 1"):
        single._check_formatted_for(1)


# --------------------------------------------------------------------------- what the services get


def test_the_services_get_every_broker_and_the_replication(tmp_path: Path) -> None:
    env = Stack(config(tmp_path, KAFKA_BROKERS="3")).service_env()
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    for service in (server_env(env), model_env(env)):
        assert service["KAFKA_BOOTSTRAP_SERVERS"] == env["KAFKA_BOOTSTRAP_SERVERS"]
        assert (service["KAFKA_REPLICATION_FACTOR"], service["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    single = Stack(config(tmp_path)).service_env()
    assert single["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:29092" and "KAFKA_REPLICATION_FACTOR" not in single


def test_replicas_of_the_services_have_ids_and_ports_of_their_own(tmp_path: Path) -> None:
    env = Stack(config(tmp_path, KAFKA_BROKERS="3")).service_env()
    services = _replicas(env, tmp_path, bridges=3, models=2)
    assert [s.name for s in services] == ["server", "server-2", "server-3", "model_analysis", "model_analysis-2"]
    assert [s.env["MQTT_CLIENT_ID"] for s in services[:3]] == ["bridge-1", "bridge-2", "bridge-3"]
    assert [s.env["KAFKA_CLIENT_ID"] for s in services[3:]] == ["model-1", "model-2"]
    ports = [s.env["HEALTH_PORT"] for s in services]
    assert len(set(ports)) == len(ports) and ports[0] == "8010" and ports[3] == "8011"
    assert len({s.log_path for s in services}) == len(services)


@pytest.mark.parametrize("brokers", [1, 2, 3, 5])
def test_replication_follows_the_broker_count(brokers: int) -> None:
    factor, min_insync = replication(brokers)
    assert factor == min(3, brokers) and 1 <= min_insync <= factor
    assert min_insync == (2 if brokers >= 3 else 1)
    assert node_name(brokers) == ("kafka" if brokers == 1 else f"kafka-{brokers}")


# --------------------------------------------------------------------------- the services' settings


def kafka_settings(**env: str) -> KafkaSettings:
    return KafkaSettings.model_validate(env)


@given(st.integers(1, 7), st.one_of(st.none(), st.integers(1, 7)))
def test_min_insync_replicas_is_valid_only_within_the_replicas(factor: int, min_insync: int | None) -> None:
    env = {"KAFKA_REPLICATION_FACTOR": str(factor)}
    if min_insync is not None:
        env["KAFKA_MIN_INSYNC_REPLICAS"] = str(min_insync)
    if min_insync is not None and min_insync > factor:
        with pytest.raises(ValidationError) as error:
            kafka_settings(**env)
        message = describe_errors(error.value)
        assert "KAFKA_MIN_INSYNC_REPLICAS" in message and "KAFKA_REPLICATION_FACTOR" in message
        return
    settings = kafka_settings(**env)
    expected = min_insync if min_insync is not None else max(1, factor - 1)
    assert settings.kafka_min_insync_replicas == expected
    topic = topic_replication_config(settings)
    assert topic == ({} if factor == 1 else {"min.insync.replicas": str(expected)})


@pytest.mark.parametrize("variable", ["KAFKA_REPLICATION_FACTOR", "KAFKA_MIN_INSYNC_REPLICAS"])
@pytest.mark.parametrize("bad", ["0", "-1", "abc", "8", "1.5"])
def test_a_bad_replication_setting_names_the_variable(variable: str, bad: str) -> None:
    with pytest.raises(ValidationError) as error:
        kafka_settings(**{variable: bad})
    assert describe_errors(error.value).startswith(f"{variable}: ")


def test_a_service_with_a_bad_replication_setting_stops_at_start_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.settings import load

    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "three")
    with pytest.raises(SystemExit) as stopped:
        load(KafkaSettings)
    assert stopped.value.code == 2
    assert "KAFKA_REPLICATION_FACTOR: " in capsys.readouterr().err


def test_the_defaults_keep_one_replica() -> None:
    settings = kafka_settings()
    assert (settings.KAFKA_REPLICATION_FACTOR, settings.kafka_min_insync_replicas) == (1, 1)
    assert topic_replication_config(settings) == {}


# --------------------------------------------------------------------------- the Compose override


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`docker compose -f docker-compose.yml -f docker-compose.cluster.yml config` (every profile), as JSON."""
    result = compose_config(
        tmp_path_factory.mktemp("compose"),
        COMPOSE_FILE,
        COMPOSE_CLUSTER_FILE,
        args=("--format", "json"),
        options=("--profile", "*"),
    )
    assert result.returncode == 0, result.stderr
    project: dict[str, Any] = json.loads(result.stdout)
    return project


BROKERS = {"kafka": 1, "kafka-2": 2, "kafka-3": 3}


def test_compose_runs_three_brokers_in_one_quorum(merged: dict[str, Any]) -> None:
    services = merged["services"]
    brokers = {name: s for name, s in services.items() if s.get("image", "").startswith("apache/kafka")}
    assert set(brokers) == set(BROKERS)
    clusters, volumes = set(), set()
    for name, service in brokers.items():
        env = service["environment"]
        assert env["KAFKA_NODE_ID"] == str(BROKERS[name])
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = sorted(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == [f"{n}@{host}:9093" for host, n in sorted(BROKERS.items(), key=lambda item: item[1])]
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert "healthcheck" in service
        clusters.add(env["CLUSTER_ID"])
        (data,) = [v["source"] for v in service["volumes"] if v["target"] == "/var/lib/kafka/data"]
        volumes.add(data)
    assert len(clusters) == 1, "the three nodes share one CLUSTER_ID"
    assert len(volumes) == 3, "each node has a data volume of its own"


def test_every_kafka_client_in_compose_knows_all_three_brokers(merged: dict[str, Any]) -> None:
    clients = {n: s for n, s in merged["services"].items() if "KAFKA_BOOTSTRAP_SERVERS" in s.get("environment", {})}
    assert {"server", "model_analysis"} <= set(clients)
    for name, service in clients.items():
        env = service["environment"]
        assert set(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == {f"{b}:9092" for b in BROKERS}, name
        assert (env["KAFKA_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2"), name
        assert set(BROKERS) <= set(service["depends_on"]), f"{name} starts before every broker is healthy"


def test_without_the_override_compose_keeps_one_broker(tmp_path: Path) -> None:
    result = compose_config(tmp_path, COMPOSE_FILE, args=("--format", "json"), options=("--profile", "*"))
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert "kafka-2" not in services and services["kafka"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] == (
        "1@kafka:9093"
    )
    assert services["server"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_the_local_stack_reads_the_same_override() -> None:
    override = yaml.safe_load(COMPOSE_CLUSTER_FILE.read_text())["services"]
    for name, node_id in BROKERS.items():
        settings = compose_kafka_settings(
            COMPOSE_FILE.read_text(), [(COMPOSE_CLUSTER_FILE.read_text(), "cluster", name)]
        )
        assert settings["node.id"] == str(node_id), name
        assert name in override


@pytest.mark.parametrize(
    ("factor", "min_insync", "expected"),
    [("1", None, {}), ("3", None, {"min.insync.replicas": "2"}), ("3", "3", {"min.insync.replicas": "3"})],
)
def test_topics_are_created_with_kafka_replication_factor_and_min_insync_replicas(
    factor: str, min_insync: str | None, expected: dict[str, str]
) -> None:
    """ensure_pipeline_topics hands the settings to Kafka's admin API (a recording stand-in here; the cluster's
    topics are read back from the real brokers in tests/faults/test_cluster.py)."""
    import confluent_kafka.admin

    from pipeline.kafka import DEADLETTER_RETENTION_BYTES, ensure_pipeline_topics
    from tests.unit.test_settings_table import RecordingAdmin

    env = {"KAFKA_REPLICATION_FACTOR": factor, **({"KAFKA_MIN_INSYNC_REPLICAS": min_insync} if min_insync else {})}
    RecordingAdmin.made.clear()
    with mock.patch.object(confluent_kafka.admin, "AdminClient", RecordingAdmin):
        ensure_pipeline_topics(kafka_settings(**env))
    created = RecordingAdmin.made[-1].created
    assert len(created) == 4 and {t.replication_factor for t in created} == {int(factor)}
    for topic in created:
        assert {k: v for k, v in topic.config.items() if k != "retention.bytes"} == expected, topic.topic
    deadletter = next(t for t in created if t.topic == contract.TOPIC_DEADLETTER)
    assert deadletter.config["retention.bytes"] == str(DEADLETTER_RETENTION_BYTES)


def test_named_servers_start_together_and_one_whose_dependency_is_down_is_refused(tmp_path: Path) -> None:
    stack = Stack(config(tmp_path, KAFKA_BROKERS="3"))
    with pytest.raises(StackError, match="mongo-express needs ferretdb running"):
        stack.start(["mongo-express"])
    with pytest.raises(StackError, match="unknown server 'kafka-4'"):
        stack.start(["kafka", "kafka-4"])


def test_the_nodes_of_a_cluster_are_all_signalled_before_any_is_waited_for(tmp_path: Path) -> None:
    """A node stopped only once the others were gone waits for a quorum that no longer exists (seen: 30 s, SIGKILL)."""
    stack = Stack(config(tmp_path, KAFKA_BROKERS="3"))
    calls: list[tuple[str, str]] = []

    def signal(name: str, sig: Any) -> bool:
        calls.append(("signal", name))
        return True

    def wait_gone(name: str, deadline: float, escalate: bool) -> None:
        calls.append(("wait", name))

    with (
        mock.patch.object(stack, "_signal", side_effect=signal),
        mock.patch.object(stack, "_wait_gone", side_effect=wait_gone),
    ):
        stack.stop(["kafka", "kafka-2", "kafka-3"])
        assert [what for what, _ in calls] == ["signal"] * 3 + ["wait"] * 3
        assert {name for _, name in calls} == {"kafka", "kafka-2", "kafka-3"}, "only the servers named"
        calls.clear()
        stack.stop([])
        assert calls == [], "an empty list stops nothing (`run` leaves servers it did not start)"
        stack.stop()
        assert {name for _, name in calls} == set(stack.servers)
    with pytest.raises(StackError, match="kafka-4"):
        stack.stop(["kafka-4"])
